"""``cdm4mi`` entry point: dispatches to sub-commands and turns user errors into one clear line."""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from cdm4mi import __version__
from cdm4mi.cli import demo, denoise, evaluate, manifest, sample, simulate, train

SUBCOMMANDS = (simulate, manifest, train, sample, denoise, evaluate, demo)
# Errors caused by what the user asked for: reported in one line, exit status 2.
USER_ERRORS = (ValueError, OSError)


@functools.cache  # built once per process: main() may run many times in one (tests, notebooks)
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdm4mi", description="Conditional diffusion models for medical imaging (MONAI + Lightning)."
    )
    parser.add_argument("--version", action="version", version=f"cdm4mi {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full Python traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for subcommand in SUBCOMMANDS:
        subcommand.add_parser(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    # MONAI's DICOM reader warns on every CPU machine that the GPU decoder is absent: not the user's problem.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    # nibabel logs each NIfTI header field it repairs or cannot repair (level 40), without naming the file; a
    # header it cannot read is reported as our one-line error, naming the file.
    logging.getLogger("nibabel").setLevel(logging.CRITICAL)
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"cdm4mi {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cdm4mi {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
