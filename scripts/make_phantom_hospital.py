"""Write a phantom hospital (synthetic CT patients as DICOM, full and simulated low dose) to a folder.

    python scripts/make_phantom_hospital.py OUT_DIR [--patients 12] [--slices 24] [--size 128] [--dose 0.25]

The same data `cdm4mi demo` trains on; useful to try `cdm4mi manifest`/`train`/`evaluate` by hand.
"""

import argparse

from cdm4mi.data.hospital import HospitalSpec, build_phantom_hospital


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder (must not exist)")
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=128, help="rows and columns per slice")
    parser.add_argument("--dose", type=float, default=0.25, help="simulated dose fraction")
    parser.add_argument("--flux", type=float, default=HospitalSpec.incident_flux, help="incident flux I0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pixel_mm = HospitalSpec.spacing_mm[1] * 128 / args.size  # keep the field of view
    spec = HospitalSpec(num_patients=args.patients, shape=(args.slices, args.size, args.size),
                        spacing_mm=(HospitalSpec.spacing_mm[0], pixel_mm, pixel_mm), dose_fraction=args.dose,
                        incident_flux=args.flux, seed=args.seed)
    for folder in build_phantom_hospital(args.out, spec):
        print(folder)


if __name__ == "__main__":
    main()
