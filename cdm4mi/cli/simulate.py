"""``cdm4mi simulate --input X --output Y --modality ct --dose 0.25``: make a low-dose (noisy) scan.

CT: projection-domain noise insertion (parallel-beam forward projection of the attenuation,
Gaussian approximation of the extra photon noise at ``dose`` times the incident flux I0 with
electronic noise, filtered back projection), added to the original HU so the full-dose image stays
the reference; see ``cdm4mi.simulate.ct_dose``. MRI: Rician noise with sigma a percentage of a
reference intensity (default the 99th percentile); see ``cdm4mi.simulate.mri_noise``.

CT dose is relative to the scan's own noise: the input already carries noise sigma_own, and noise
variance goes as 1/dose, so ``--dose d`` adds sigma_own * sqrt(1/d - 1) (quarter dose: sqrt(3) sigma_own).
By default sigma_own is estimated in the flattest soft-tissue windows (``--own-noise HU`` gives it) and
I0 is calibrated so that the simulated full-dose noise equals it; a scan with under 2 HU of noise looks
smoothed and gets the nominal I0 1.5e5. ``--flux I0`` sets I0 instead (the electronic noise is then taken
as given; calibrated, it is scaled with I0 / 1.5e5). The added noise also takes the scan's *texture*: the
simulator's reconstruction kernel (a Hann window) gets the cutoff whose noise correlates between neighbouring
pixels as the scan's own noise does (``--kernel-cutoff match``, the default; a number sets it: 1 is the plain
Hann kernel, smaller is smoother; see ``cdm4mi.simulate.relative_dose``). One line reports what was done.

A simulated CT series from a DICOM input that records its Exposure (mAs) records ``dose`` times it, so
the tags of the low-dose series tell its dose (``cdm4mi.data.metadata``, field ``exposure_mas``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from cdm4mi.atomic import check_writable, refuse_input_overlap
from cdm4mi.cli.options import cutoff_or_match, fraction, non_negative_float, non_negative_int, positive_float
from cdm4mi.data.metadata import dicom_metadata
from cdm4mi.io import NIFTI_SUFFIXES


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("simulate", parents=[common], help="simulate a low-dose / noisy scan",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="clean scan: DICOM folder, DICOM file or NIfTI")
    parser.add_argument("--output", required=True, help=".nii/.nii.gz file or a folder for a DICOM series")
    parser.add_argument("--modality", choices=["ct", "mri"], required=True)
    parser.add_argument("--series", help="SeriesInstanceUID, when the input folder holds several series")
    parser.add_argument("--dose", type=fraction, default=0.25, help="CT dose fraction in (0, 1] (default 0.25)")
    parser.add_argument("--flux", type=positive_float, help="CT full-dose incident flux I0 (photons per detector bin per "
                        "view); default: calibrated to the scan's own noise (nominal 1.5e5 for a smoothed scan)")
    parser.add_argument("--own-noise", type=non_negative_float, metavar="HU",
                        help="CT full-dose noise std in soft tissue (HU) to calibrate to, instead of estimating it")
    parser.add_argument("--electronic-noise", type=non_negative_float, default=10.0,
                        help="CT electronic noise variance, counts^2 (default 10; scaled by I0 / 1.5e5 when I0 is "
                        "calibrated)")
    parser.add_argument("--kernel-cutoff", type=cutoff_or_match, default="match", metavar="match|C",
                        help="CT noise texture: 'match' fits the kernel's Hann cutoff to the scan's own noise (default; "
                        "the plain Hann kernel, 1, for a smoothed scan), or a cutoff in Nyquists > 0")
    parser.add_argument("--sigma-percent", type=non_negative_float, default=5.0, help="MRI noise sigma in %% of the reference")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output (never the input)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cdm4mi.cli.denoise import warn_header_problems
    from cdm4mi.io.read import load_scan
    from cdm4mi.io.write import check_replaceable_series, write_volume
    from cdm4mi.simulate.ct_dose import simulate_low_dose_ct
    from cdm4mi.simulate.mri_noise import add_rician_noise
    from cdm4mi.simulate.relative_dose import scan_kernel_cutoff, simulate_relative_dose

    input_path, output = Path(args.input), Path(args.output)
    refuse_input_overlap(input_path, output)
    check_writable(output, args.overwrite, option="--output")
    check_replaceable_series(output, "--output")  # now, not after the simulation
    if args.modality == "ct" and args.flux is not None and args.own_noise is not None:
        raise ValueError("--flux, --own-noise: give at most one (--own-noise calibrates the flux)")
    scan = load_scan(input_path, series_uid=args.series, modality="CT" if args.modality == "ct" else "MR")
    if not output.name.endswith(NIFTI_SUFFIXES):
        warn_header_problems("simulate", input_path, scan, None)
    tags = {}
    if args.modality == "ct":
        if args.flux is not None:
            cutoff, fit = (scan_kernel_cutoff(scan.array) if args.kernel_cutoff == "match"
                           else (args.kernel_cutoff, None))
            noisy = simulate_low_dose_ct(scan.array, scan.spacing_mm[1:], dose_fraction=args.dose,
                                         incident_flux=args.flux, electronic_noise_var=args.electronic_noise,
                                         seed=args.seed, kernel_cutoff=cutoff)
            print(texture_line(cutoff, fit))
            description = f"simulated {args.dose:.0%} dose (I0 {args.flux:.3g})"
        else:
            noisy, info = simulate_relative_dose(scan.array, scan.spacing_mm[1:], args.dose, args.own_noise,
                                                 seed=args.seed, electronic_noise_var=args.electronic_noise,
                                                 kernel_cutoff=args.kernel_cutoff)
            print(calibration_line(info))
            print(texture_line(info["kernel_cutoff"], info["texture"]))
            description = (f"simulated {args.dose:.0%} dose (own noise {info['own_noise_hu']:.1f} HU, "
                           f"I0 {info['incident_flux']:.3g})" if info["calibrated"]
                           else f"simulated {args.dose:.0%} dose (I0 {info['incident_flux']:.3g}, nominal)")
        header = scan.dicom_reference.header if scan.dicom_reference is not None else None
        exposure = dicom_metadata(header, ["exposure_mas"]).get("exposure_mas")
        if exposure is not None:  # Exposure is an integer (IS) in mAs
            tags["Exposure"] = max(1, round(exposure * args.dose))
    else:
        noisy = add_rician_noise(scan.array, args.sigma_percent, seed=args.seed)
        description = f"simulated Rician noise {args.sigma_percent:g}%"
    write_volume(noisy, scan, output, description, overwrite=args.overwrite,
                 tags={**tags, "DerivationDescription": f"cdm4mi simulate: {description}"})
    change = noisy - scan.array
    print(f"{description}: added noise std {change.std():.2f} (scan units), mean {change.mean():+.2f}")
    print(f"output: {output}")
    return 0


def calibration_line(info: dict) -> str:
    """What ``simulate_relative_dose`` did, in one line."""
    from cdm4mi.simulate.relative_dose import MIN_OWN_NOISE_HU

    dose = f"{info['added_noise_hu']:.1f} HU inserted in soft tissue at {info['dose_fraction']:.0%} dose"
    own = info["own_noise_hu"]
    if info["calibrated"]:
        return (f"own noise {own:.1f} HU ({info['own_noise_source']}), I0 calibrated to {info['incident_flux']:.3g}: "
                f"{dose} (target {own * math.sqrt(1 / info['dose_fraction'] - 1):.1f})")
    reason = ("no soft tissue to measure its own noise in" if math.isnan(own) else
              f"scan looks smoothed (own noise {own:.1f} HU, {info['own_noise_source']}, < {MIN_OWN_NOISE_HU:g} HU)")
    return f"{reason}: nominal I0 {info['incident_flux']:.3g} used, {dose}"


def texture_line(cutoff: float, fit) -> str:
    """The noise texture used, in one line: the fitted kernel (``KernelFit``) or the cutoff given/defaulted."""
    if fit is not None:
        return f"texture matched to the scan's own noise: {fit.describe()}"
    return f"texture: kernel cutoff {cutoff:.2f} Nyquist (not matched: given, or no measurable own noise)"
