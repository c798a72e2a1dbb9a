"""Write a phantom hospital (synthetic CT patients as DICOM, full and simulated low dose) to a folder.

    python scripts/make_phantom_hospital.py OUT_DIR [--patients 12] [--slices 24] [--size 128] [--dose 0.25]
        [--manifest OUT_DIR/manifest.json]

The same data `cdm4mi demo` trains on; useful to try `cdm4mi manifest`/`train`/`evaluate` by hand.
``--dose 0.1,0.25,0.5`` spreads the dose over the patients (patient i gets the i-th, cycling); ``--manifest``
then writes a pseudonymous manifest (random salt, 70/15/15 split) with each patient's ``dose_fraction``
in its metadata, for models conditioned on it (``data.metadata: [dose_fraction]``).
"""

import argparse
import secrets

from cdm4mi.cohort.discover import build_manifest, scan_folder
from cdm4mi.cohort.manifest import save_manifest
from cdm4mi.simulate.hospital import (
    HospitalSpec,
    build_phantom_hospital,
    record_dose_fractions,
)


def dose_fractions(text: str) -> float | tuple[float, ...]:
    try:
        doses = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one dose fraction or a comma-separated list, got {text!r}") from None
    return doses[0] if len(doses) == 1 else doses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder (must not exist)")
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=128, help="rows and columns per slice")
    parser.add_argument("--dose", type=dose_fractions, default=0.25,
                        help="simulated dose fraction, or several comma-separated, cycled over the patients")
    parser.add_argument("--flux", type=float, default=HospitalSpec.incident_flux, help="incident flux I0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--manifest", help="also write a manifest recording each patient's dose fraction")
    args = parser.parse_args()
    pixel_mm = HospitalSpec.spacing_mm[1] * 128 / args.size  # keep the field of view
    spec = HospitalSpec(num_patients=args.patients, shape=(args.slices, args.size, args.size),
                        spacing_mm=(HospitalSpec.spacing_mm[0], pixel_mm, pixel_mm), dose_fraction=args.dose,
                        incident_flux=args.flux, seed=args.seed)
    for folder in build_phantom_hospital(args.out, spec):
        print(folder)
    if args.manifest:
        manifest, _ = build_manifest(scan_folder(args.out, layout="dicom"), args.out, secrets.token_bytes(32))
        print(f"manifest: {save_manifest(record_dose_fractions(manifest, spec), args.manifest)}")


if __name__ == "__main__":
    main()
