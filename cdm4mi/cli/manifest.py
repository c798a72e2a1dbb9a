"""``cdm4mi manifest``: pair low-dose and full-dose scans under a folder into a pseudonymous, split manifest.

    cdm4mi manifest --root DIR --output FILE [--layout auto|nifti|dicom] [--split 0.7,0.15,0.15] [--seed 0]
                    [--test-patients ID ...] [--val-patients ID ...] [--salt-file F] [--id-map F]
                    [--dose-fraction 0.25] [--overwrite]
    cdm4mi manifest --check FILE [--root DIR]

Prints patient counts per split, never patient IDs or names.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from cdm4mi.atomic import check_writable, refuse_output_inside
from cdm4mi.cli.options import fraction, non_negative_int
from cdm4mi.cohort.discover import DEFAULT_INPUT_KEYWORDS, DEFAULT_TARGET_KEYWORDS, LAYOUTS, build_manifest, scan_folder
from cdm4mi.cohort.manifest import Manifest, load_manifest, save_manifest
from cdm4mi.cohort.splits import DEFAULT_FRACTIONS, SPLITS, check_fractions
from cdm4mi.io.pseudonyms import SALT_BYTES, check_outside_version_control, load_or_create_salt, write_id_map

_EPILOG = """layouts:
  nifti  <root>/<patient>/low.nii.gz (input) + <root>/<patient>/full.nii.gz (target); also .nii and the names
         input/target. Folder names end up in the manifest's paths: give them neutral names.
  dicom  DICOM files anywhere under <root>, one series per folder, grouped by PatientID; the low-dose series
         is the one whose SeriesDescription has an input keyword as a word, the full-dose one a target keyword.
  auto   nifti if any sub-folder of <root> holds such NIfTI files, else dicom.
Every pair is read once to check that both scans load and share a voxel grid (a damaged or mismatched pair is
an error, or with --skip-incomplete left out).
Patients are stored under pseudonyms P + 10 hex digits of HMAC-SHA256(salt, PatientID or folder name).
Keep the salt file and the id map private and apart from the manifest; inside a git working tree they are refused."""


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "manifest", parents=[common], help="pair low/full-dose scans into a pseudonymous, split manifest",
        description="Find low-dose/full-dose scan pairs under --root, pseudonymize the patients, split them by "
        "patient into train/val/test and write a manifest for data.name=paired_scans; or --check one.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--output", "--out", dest="output", help="manifest file to write (JSON)")
    action.add_argument("--check", metavar="MANIFEST", help="validate an existing manifest and print its counts")
    parser.add_argument("--root", help="data folder (required with --output; with --check it replaces the manifest's)")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto", help="folder layout")
    parser.add_argument("--split", type=_fractions, default=",".join(f"{f:g}" for f in DEFAULT_FRACTIONS),
                        help="train,val,test fractions of patients")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the patient split")
    for split in ("test", "val", "train"):
        parser.add_argument(f"--{split}-patients", nargs="+", default=[], metavar="ID",
                            help=f"patients pinned to {split}: PatientID, NIfTI folder name or pseudonym")
    parser.add_argument("--salt-file", help="secret salt of the pseudonyms; created with 32 random bytes if missing. "
                        "Without it the pseudonyms are random for this run only")
    parser.add_argument("--id-map", help="also write a CSV real_id,pseudonym here (private: it re-identifies)")
    parser.add_argument("--dose-fraction", type=fraction, help="record this dose fraction (0, 1] for every input")
    parser.add_argument("--modality", default="CT", help="modality of NIfTI data; DICOM says its own")
    parser.add_argument("--input-keywords", default=",".join(DEFAULT_INPUT_KEYWORDS),
                        help="words marking the low-dose DICOM series")
    parser.add_argument("--target-keywords", default=",".join(DEFAULT_TARGET_KEYWORDS),
                        help="words marking the full-dose DICOM series")
    parser.add_argument("--skip-incomplete", action="store_true",
                        help="leave out patients without exactly one usable pair (each is reported) instead of failing")
    parser.add_argument("--allow-ids-in-paths", action="store_true",
                        help="accept DICOM folders whose path holds the PatientID or name")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --output and --id-map files")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.check:
        manifest = load_manifest(args.check, root=args.root)
        print(f"manifest {args.check}: valid, every file found under {manifest.root}")
        _print_counts(manifest)
        return 0
    if not args.root:
        raise ValueError("--root: required with --output (the folder holding the scans)")
    fractions = args.split
    outputs = [Path(p).resolve() for p in (args.output, args.id_map, args.salt_file) if p]
    if len(set(outputs)) != len(outputs):
        raise ValueError("--output, --id-map and --salt-file must be three different files")
    for option, path in (("--output", args.output), ("--id-map", args.id_map)):
        if path:  # a file written into the scanned tree would be met as data by the next scan
            refuse_output_inside(path, [args.root], option, "the data root")
    out = check_writable(args.output, args.overwrite)  # fail before scanning a large tree
    if args.id_map:
        check_writable(args.id_map, args.overwrite, option="--id-map")
        check_outside_version_control(args.id_map, "--id-map")
    if args.salt_file:
        check_outside_version_control(args.salt_file, "--salt-file")
    scan = scan_folder(args.root, args.layout, _words(args.input_keywords), _words(args.target_keywords),
                       args.modality, args.skip_incomplete, args.allow_ids_in_paths)
    for line in scan.skipped:
        print(f"cdm4mi manifest: warning: skipped: {line}", file=sys.stderr)
    if args.salt_file:
        salt, created = load_or_create_salt(args.salt_file)
    else:
        salt, created = secrets.token_bytes(SALT_BYTES), False
    fixed = {"test": args.test_patients, "val": args.val_patients, "train": args.train_patients}
    manifest, id_map = build_manifest(scan, args.root, salt, fractions, args.seed,
                                      {split: _flatten(ids) for split, ids in fixed.items() if ids},
                                      args.dose_fraction)
    save_manifest(manifest, out, overwrite=args.overwrite)
    count = len(manifest.patients)
    print(f"manifest: {out} ({scan.layout} layout, modality {manifest.modality}, {count} patient{'s' * (count != 1)})")
    _print_counts(manifest)
    empty = [split for split, n in manifest.counts().items() if n == 0]
    if empty:
        print(f"cdm4mi manifest: warning: no patients in {' and '.join(empty)}; training needs train and val patients",
              file=sys.stderr)
    if created:
        print(f"salt: created {args.salt_file}; keep it private and never share it with the manifest")
    elif not args.salt_file:
        print("salt: none given, so these pseudonyms are random for this run; pass --salt-file to keep them stable")
    if args.id_map:
        write_id_map(id_map, args.id_map, overwrite=args.overwrite)
        print(f"id map: {args.id_map} (links real IDs to pseudonyms; keep it private)")
    return 0


def _print_counts(manifest: Manifest) -> None:
    counts = manifest.counts()
    print("split   patients")
    for split in SPLITS:
        print(f"{split:<7} {counts[split]:>8}")
    print(f"{'total':<7} {sum(counts.values()):>8}")


def _fractions(text: str) -> tuple[float, float, float]:
    """--split: 'train,val,test' fractions, three numbers >= 0 summing to 1 (argparse names the option)."""
    try:
        numbers = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.7,0.15,0.15, got {text!r}") from None
    try:
        return check_fractions(numbers, option="fractions")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).partition(": ")[2]) from None


def _words(text: str) -> list[str]:
    return [word.strip() for word in text.split(",") if word.strip()]


def _flatten(values: list[str]) -> list[str]:
    """IDs given as 'A B' or 'A,B'."""
    return [part for value in values for part in _words(value)]
