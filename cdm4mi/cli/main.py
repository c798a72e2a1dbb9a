"""``cdm4mi`` entry point: dispatches to sub-commands; however a run ends, it prints at most one line on stderr,
``cdm4mi <command>: ...``, and exits with a status a script or a batch scheduler can act on:

* 0: done;
* 2: bad input (a command line argparse refuses, ``ValueError``, ``OSError``, YAML errors, Lightning's ``MisconfigurationException``, input
  nested too deeply to read, input too large for the memory, an optional dependency it needs not installed): the line
  names the file or option;
* 1: an internal error (any other exception): a bug to report, rerun with ``--debug`` for the traceback;
* 130: Ctrl-C (SIGINT); 143: SIGTERM (``cdm4mi.termination``). Temporary outputs are removed either way.

``--debug`` re-raises errors with their traceback (and prints the traceback of a signal before its line).
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import sys
import traceback
from typing import NoReturn

import yaml

from cdm4mi import __version__
from cdm4mi.cli import demo, denoise, evaluate, export, info, manifest, sample, simulate, train
from cdm4mi.cli.options import HelpFormatter
from cdm4mi.extras import MissingExtra
from cdm4mi.termination import SIGINT_EXIT_STATUS, SIGTERM_EXIT_STATUS, Terminated, is_quiet, sigterm_raises

SUBCOMMANDS = (simulate, manifest, train, sample, denoise, evaluate, export, info, demo)
# Errors caused by what the user asked for: reported in one line, exit status 2. (pydantic's
# ValidationError and json's JSONDecodeError are ValueErrors; MissingExtra: an optional dependency the input needs.)
# Lightning's are named by module and class: Lightning is imported by the commands that use it, never for ``--help``
# (``lightning_error``).
USER_ERRORS = (ValueError, OSError, yaml.YAMLError, MissingExtra)
LIGHTNING_USER_ERRORS = (("lightning.fabric.utilities.exceptions", "MisconfigurationException"),)
LIGHTNING_SIGTERM = ("lightning.pytorch.utilities.exceptions", "SIGTERMException")
MESSAGE_LIMIT = 400  # characters: a message quoting a damaged value can be megabytes long
INPUT_OPTIONS = ("config", "manifest", "input", "root", "checkpoint")
OUTPUT_OPTIONS = ("output",)  # every command's output option (--out is an alias of --output)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that refuses a command line in one line on stderr naming the command, exit status 2:
    ``cdm4mi denoise: error: argument --steps: must be >= 1, got -5; see cdm4mi denoise --help`` (argparse's own
    prints its usage block above it, and names no command for an unknown option). Its sub-parsers must be of
    this class too (``add_subparsers(parser_class=...)``). Its ``--help`` shows each option's default
    (``cdm4mi.cli.options.HelpFormatter``)."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = HelpFormatter, **kwargs) -> None:
        if formatter_class is argparse.RawDescriptionHelpFormatter:  # what the commands ask for, and defaults too
            formatter_class = HelpFormatter
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.refuse(self.prog, message)

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:  # argparse refuses them in the top parser's name; they were given to a command
            command = getattr(parsed, "command", None)
            self.refuse(f"{self.prog} {command}" if command else self.prog,
                        f"unrecognized arguments: {' '.join(unknown)}")
        return parsed

    def refuse(self, prog: str, message: str) -> NoReturn:
        self.exit(2, f"{prog}: error: {shortened(message)}; see {prog} --help\n")


@functools.cache  # built once per process: main() may run many times in one (tests, notebooks)
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="cdm4mi", description="Conditional diffusion models for medical imaging (MONAI + Lightning)."
    )
    parser.add_argument("--version", action="version", version=f"cdm4mi {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full Python traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for subcommand in SUBCOMMANDS:
        subcommand.add_parser(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    # MONAI's DICOM reader warns on every CPU machine that the GPU decoder is absent: not the user's problem.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    # nibabel logs each NIfTI header field it repairs or cannot repair (level 40), without naming the file; a
    # header it cannot read is reported as our one-line error, naming the file.
    logging.getLogger("nibabel").setLevel(logging.CRITICAL)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version (0) or a refused command line (2), already printed
        return done.code if isinstance(done.code, int) else 2
    try:
        with sigterm_raises():
            return int(args.run(args) or 0)
    except KeyboardInterrupt as stop:
        return stopped(args, "interrupted (SIGINT)", stop, SIGINT_EXIT_STATUS)
    except Terminated as stop:
        return stopped(args, "terminated (SIGTERM)", stop, SIGTERM_EXIT_STATUS)
    except SystemExit as stop:  # Lightning's SIGTERMException is one, should it escape
        if not lightning_error(stop, LIGHTNING_SIGTERM):
            raise
        return stopped(args, "terminated (SIGTERM)", stop, SIGTERM_EXIT_STATUS)
    except Exception as error:
        if args.debug:
            raise
        status, message = describe(error, args)
        print(f"cdm4mi {args.command}: error: {message}", file=sys.stderr)
        return status


def stopped(args: argparse.Namespace, how: str, stop: BaseException, status: int) -> int:
    """One line for a run stopped by a signal; ``str(stop)`` says what was kept (training: its checkpoint). None
    from a DDP rank other than 0 (``quiet``): rank 0 prints it for the run."""
    if args.debug:
        traceback.print_exc()
    if is_quiet(stop):
        return status
    # not cut to MESSAGE_LIMIT: the text is cdm4mi's own, and may end with the command line that resumes the run
    detail = " ".join(str(stop).split()) or "unfinished outputs were removed"
    print(f"cdm4mi {args.command}: {how}; {detail}", file=sys.stderr)
    return status


def describe(error: Exception, args: argparse.Namespace) -> tuple[int, str]:
    """The exit status and the one-line message for an error that ended a run."""
    if isinstance(error, RecursionError):  # json and yaml parse nesting by recursion
        return 2, (f"an input ({given(args, INPUT_OPTIONS)}) is nested too deeply to read (thousands of nested "
                   "brackets or sections); check that it is the file you meant")
    if isinstance(error, MemoryError):
        return 2, (f"an input ({given(args, INPUT_OPTIONS)}) is too large for this machine's memory (or expands to "
                   "that: YAML aliases of aliases); check it, or use a smaller one")
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return 2, f"{one_line(error)}; free space there or write elsewhere ({given(args, OUTPUT_OPTIONS)})"
    if isinstance(error, USER_ERRORS) or lightning_error(error, *LIGHTNING_USER_ERRORS):
        return 2, one_line(error)
    return 1, f"internal error ({type(error).__name__}): {one_line(error)}; rerun with --debug and report it"


def lightning_error(error: BaseException, *classes: tuple[str, str]) -> bool:
    """Whether ``error`` is one of ``classes`` (module, class name); a class whose module was never imported
    cannot have raised it, so nothing is imported here."""
    return any(isinstance(error, getattr(sys.modules[module], name)) for module, name in classes
               if module in sys.modules)


def given(args: argparse.Namespace, options: tuple[str, ...]) -> str:
    """The options of ``options`` the command line set, as ``--name value``."""
    named = [f"--{name} {getattr(args, name)}" for name in options if getattr(args, name, None)]
    return ", ".join(named) or "see the command line"


def one_line(error: BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """``str(error)`` as one line of at most ``limit`` characters. A message that carries a traceback (pydicom
    quotes one for some damaged elements) keeps the text before it, else the traceback's last line."""
    text = str(error)
    before, marker, after = text.partition("Traceback (most recent call last)")
    if marker:
        text = before if before.strip() else next(
            (line for line in reversed(after.splitlines()) if line.strip()), "")
    return shortened(text, limit) or type(error).__name__


def shortened(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` as one line (runs of white space become one space) of at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
