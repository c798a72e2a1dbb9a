"""``cdm4mi denoise --checkpoint C --input X --output Y``: denoise a CT/MRI scan with a trained model.

X: a DICOM series folder, a DICOM file (Enhanced multi-frame included) or a NIfTI file.
Y: ``.nii``/``.nii.gz`` (affine kept) or a folder, which receives a DERIVED DICOM series that files
next to the original (HU kept through rescale slope/intercept). With ``--draws K > 1`` the per-voxel
standard deviation over the K draws is written beside Y (``<Y>_std``): an uncertainty map.

A model trained with ``data.metadata`` (e.g. ``[dose_fraction, noise_level, kvp]``) is told the scan's
metadata: ``--metadata key=value`` (repeatable, e.g. ``--metadata dose_fraction=0.25``) first, then the
input's DICOM tags, then the noise level estimated from the scan. Fields: see ``cdm4mi.data.metadata``.

Many patients: X a manifest (.json; its test split, or --split) or a folder of scans (NIfTI files, sub-folders
each holding a DICOM series), Y a folder that receives one output per patient; --devices N spreads them over
processes (GPUs) with Lightning, --skip-existing leaves out the patients already written
(``cdm4mi.cli.denoise_batch``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cdm4mi.atomic import check_writable, refuse_input_overlap
from cdm4mi.cli.options import (
    add_adapt_option,
    add_nlm_blend_option,
    add_runtime_options,
    non_negative_float,
    non_negative_int,
    positive_int,
    timestep_or_auto,
)
from cdm4mi.data.metadata import FIELDS, parse_value
from cdm4mi.io import NIFTI_SUFFIXES
from cdm4mi.io.pseudonyms import load_or_create_salt

if TYPE_CHECKING:  # annotations only: imported by the command as it runs, not for --help
    from cdm4mi.inference.denoise import DenoiseResult
    from cdm4mi.io.deidentify import Deidentifier

PRIVATE_FIELDS = ("age_years", "sex")  # used, but their values are never printed


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("denoise", parents=[common], help="denoise a scan with a trained model",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by cdm4mi train")
    parser.add_argument("--input", required=True, help="DICOM folder, DICOM file or NIfTI file; for many patients a "
                                                       "manifest (.json) or a folder of scans")
    parser.add_argument("--output", required=True, help=".nii/.nii.gz file or a folder for a DICOM series; for many "
                                                        "patients a folder for their outputs")
    parser.add_argument("--series", help="SeriesInstanceUID, when the input folder holds several series")
    parser.add_argument("--steps", type=positive_int, help="sampling steps (default: the checkpoint's config)")
    parser.add_argument("--eta", type=non_negative_float, help="DDIM eta (0 = deterministic)")
    parser.add_argument("--t-start", type=timestep_or_auto, default=None, metavar="T|auto",
                        help="warm-start timestep, or 'auto' to match the input's estimated noise (default)")
    parser.add_argument("--draws", "--samples", dest="samples", type=positive_int, default=1,
                        help="draws to average; > 1 also writes <output>_std")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="slices (or 3D windows) per forward pass")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help=f"a metadata value for models trained with data.metadata, repeatable; keys: "
                             f"{', '.join(FIELDS)} (default: the DICOM tags, the estimated noise level)")
    add_adapt_option(parser)
    add_nlm_blend_option(parser)
    add_runtime_options(parser)
    from cdm4mi.cli.denoise_batch import add_batch_options  # here: it imports this module

    add_batch_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (never the input)")
    parser.add_argument("--deidentify", action="store_true",
                        help="DICOM output with the basic de-identification profile (PS3.15 Annex E): names and IDs "
                             "become the manifest's pseudonym, UIDs and dates are remapped the same way for one salt")
    parser.add_argument("--salt-file", help="secret salt for --deidentify (the one cdm4mi manifest used, so the "
                                            "pseudonyms agree); created with 32 random bytes if missing")
    parser.set_defaults(run=run)


def std_output(output: Path) -> Path:
    """Where the uncertainty map of ``output`` goes: ``<name>_std.nii.gz`` beside ``<name>.nii.gz``, ``<folder>_std``."""
    name = output.name
    return output.with_name(next((name[: -len(s)] + "_std" + s for s in NIFTI_SUFFIXES[::-1] if name.endswith(s)),
                                 name + "_std"))


def output_paths(inputs: list[Path], output: Path, samples: int, overwrite: bool) -> tuple[Path, Path | None]:
    """The denoised output and, for several samples, the std output; refuses to touch the ``inputs`` (the
    scan, the checkpoint)."""
    from cdm4mi.io.write import check_replaceable_series

    std_path = std_output(output) if samples > 1 else None
    for path in (output, std_path):
        if path is not None:
            for input_path in inputs:
                refuse_input_overlap(input_path, path)
            check_writable(path, overwrite, option="--output")
            check_replaceable_series(path, "--output")  # now, not after the denoising
    return output, std_path


def parse_metadata(items: list[str]) -> dict[str, float | str]:
    """``["dose_fraction=0.25", "kvp=100"]`` -> parsed values; unknown keys, repeats and bad values refused."""
    values: dict[str, float | str] = {}
    for item in items:
        key, separator, value = item.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ValueError(f"--metadata: expected key=value such as dose_fraction=0.25, got {item!r}")
        if key not in FIELDS:
            raise ValueError(f"--metadata: unknown key {key!r}; allowed: {list(FIELDS)}")
        if key in values:
            raise ValueError(f"--metadata: {key} is given twice")
        values[key] = parse_value(key, value.strip(), "--metadata")
    return values




def warn_header_problems(command: str, input_path: Path, scan, deidentify: Deidentifier | None) -> None:
    """One stderr line per source header element the DICOM output copies though its value is not valid DICOM,
    naming the element, never its value (it may be a birth date or a name); an element it cannot copy unchanged
    is refused here, before the work."""
    from cdm4mi.io.write import carried_header_problems, refuse_unwritable_header

    refuse_unwritable_header(scan, str(input_path))
    try:
        problems = carried_header_problems(scan, deidentify)
    except ValueError as error:
        raise ValueError(f"--deidentify: {input_path}: {error}") from None
    for problem in problems:
        print(f"cdm4mi {command}: warning: input header element {problem}", file=sys.stderr)


def describe_metadata(result: DenoiseResult) -> str:
    """One line: each metadata field, its value (except age and sex) and where it came from."""
    parts = []
    for key, source in result.metadata_sources.items():
        if source == "missing" or key in PRIVATE_FIELDS:
            parts.append(f"{key} ({source})")
        else:
            value = result.metadata[key]
            parts.append(f"{key}={value:.4g} ({source})" if isinstance(value, float) else f"{key}={value} ({source})")
    return "metadata: " + ", ".join(parts)






def deidentifier(args: argparse.Namespace, input_path: Path, output: Path) -> Deidentifier | None:
    """The de-identifier of ``--deidentify``, keyed by ``--salt-file`` (required, kept apart from the output)."""
    from cdm4mi.io.deidentify import Deidentifier

    if args.salt_file and not args.deidentify:
        raise ValueError("--salt-file: only used with --deidentify")
    if not args.deidentify:
        return None
    if output.name.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"--deidentify: {output} is NIfTI, which holds no patient data; de-identification is for "
                         "DICOM output (give a folder)")
    if not args.salt_file:
        raise ValueError("--deidentify: needs --salt-file (the salt cdm4mi manifest used, or a new file to create)")
    salt_file = Path(args.salt_file)
    refuse_input_overlap(input_path, salt_file, option="--salt-file")
    if output.resolve() in salt_file.resolve().parents:
        raise ValueError(f"--salt-file: {salt_file} lies inside the output {output}; keep the salt apart from the data")
    salt, created = load_or_create_salt(salt_file)
    if created:
        print(f"salt: created {salt_file}; keep it private, and pass it again to get the same pseudonyms")
    return Deidentifier(salt)


def run(args: argparse.Namespace) -> int:
    from cdm4mi.cli.denoise_batch import is_batch, run_batch  # here: it imports this module
    from cdm4mi.evaluation.calibration import describe_calibration
    from cdm4mi.inference.checks import check_compatible, check_metadata, check_sampling_options
    from cdm4mi.inference.denoise import denoise_scan, model_normalization
    from cdm4mi.inference.runtime import load_for_inference
    from cdm4mi.io.read import load_scan
    from cdm4mi.io.write import write_volume

    if is_batch(args):  # a manifest or a folder of scans
        return run_batch(args)
    input_path, output = Path(args.input), Path(args.output)
    output, std_path = output_paths([input_path, Path(args.checkpoint)], output, args.samples, args.overwrite)
    deidentify = deidentifier(args, input_path, output)
    metadata = parse_metadata(args.metadata)
    module = load_for_inference(args.checkpoint, args.device, args.precision, args.channels_last, args.compile)
    check_metadata(metadata, module, args.checkpoint)
    check_sampling_options(module, args.checkpoint, {} if args.steps is None else {"steps": args.steps},
                           t_start=args.t_start, warm_start=True)
    scan = load_scan(input_path, series_uid=args.series)
    check_compatible(scan, module, args.checkpoint)
    if scan.modality == "OT":  # NIfTI says nothing of modality: it is the model's (needed to write DICOM)
        scan = dataclasses.replace(scan, modality="CT" if model_normalization(module).name == "hu_window" else "MR")
    if not output.name.endswith(NIFTI_SUFFIXES):  # before the work: a date --deidentify cannot shift stops here
        warn_header_problems("denoise", input_path, scan, deidentify)
    result = denoise_scan(module, scan, steps=args.steps, eta=args.eta, t_start=args.t_start,
                          samples=args.samples, batch_size=args.batch_size, seed=args.seed, metadata=metadata,
                          precision=args.precision, adapt_steps=args.adapt_steps,
                          nlm_blend=args.nlm_blend)
    write_volume(result.mean, scan, output, "cdm4mi denoised", args.overwrite, deidentifier=deidentify)
    print(f"denoised {scan.array.shape[0]} slices of {scan.array.shape[1]}x{scan.array.shape[2]} "
          f"(warm start t={result.t_start}, input noise {result.input_noise_std:.3f} model units)")
    if result.adaptation is not None:
        print(result.adaptation.describe())
    if result.nlm_blend:
        print(f"blended: {1 - result.nlm_blend:.0%} the model's mean, {result.nlm_blend:.0%} non-local means of the input "
              f"(sigma {result.input_noise_scan:.1f}, the estimated input noise; --nlm-blend 0: the model alone)")
    if result.metadata_sources:
        print(describe_metadata(result))
        missing = [key for key, source in result.metadata_sources.items() if source == "missing"]
        if missing:
            print(f"cdm4mi denoise: warning: no value for {', '.join(missing)} (not given with --metadata, no DICOM "
                  "tag); the model was told they are unknown", file=sys.stderr)
    print(f"output: {output}")
    if std_path is not None:
        write_volume(result.std, scan, std_path, "cdm4mi uncertainty (std)", args.overwrite, deidentifier=deidentify)
        what = "calibrated std" if result.calibration else "std"
        print(f"uncertainty ({what} over {args.samples} samples): {std_path}")
        if result.calibration:
            print(describe_calibration(result.calibration))
    return 0
