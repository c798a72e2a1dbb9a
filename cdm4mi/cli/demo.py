"""``cdm4mi demo``: the medical denoising pipeline end to end, on a phantom hospital it builds itself.

1. 12 synthetic CT patients (body outline, fat, muscle, organs, lungs, bone, fine texture) written
   as DICOM series, with a simulated quarter-dose series beside each full-dose one;
2. a pseudonymous manifest split by patient (7 train, 1 val, 4 test);
3. a small 2D conditional U-Net trained on the training patients (configs/demo_ldct_2d.yaml);
4. the test patients denoised and scored against full dose next to the low-dose input, a
   Gaussian filter and non-local means: PSNR/SSIM, then the physicist's measures (noise, HU bias,
   noise power spectrum, MTF50) and low-contrast detectability of inserted lesions (``cdm4mi evaluate
   --detectability``); one of them written back as a DERIVED DICOM series;
5. a real CT slice the model never trained on (pydicom's CT_small.dcm) with inserted low-contrast lesions,
   at quarter dose relative to its own noise: the model's row next to the classical filters, and a figure
   with the lesions circled.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from cdm4mi.atomic import check_writable, record_written, refuse_foreign, remove_recorded
from cdm4mi.cli.options import positive_int, whole_number
from cdm4mi.cohort.discover import build_manifest, scan_folder
from cdm4mi.cohort.manifest import load_manifest, save_manifest

WINDOW = (-1000.0, 1000.0)
DEMO_OUTPUTS = ("hospital", "manifest.json", "run", "evaluation", "denoised", "real_ct")  # what a demo writes
PATIENTS, MAX_STEPS = 12, 800
# --quick: every stage on a small hospital (the same field of view at half the resolution), to check an install
QUICK_PATIENTS, QUICK_MAX_STEPS, QUICK_SHAPE, QUICK_SPACING_MM = 4, 5, (8, 64, 64), (3.0, 5.6, 5.6)


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("demo", parents=[common], help="run the end-to-end medical demo",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", "--out", dest="output", default="demo_out", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing demo output folder")
    # at least 4 patients: train, val and test each need one
    parser.add_argument("--patients", type=whole_number(4),
                        help=f"phantom patients, at least 4 (default: {PATIENTS}; {QUICK_PATIENTS} with --quick)")
    parser.add_argument("--max-steps", type=positive_int,
                        help=f"training steps (default: {MAX_STEPS}; {QUICK_MAX_STEPS} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"check an install in a minute or two: every stage, on {QUICK_PATIENTS} patients of "
                             f"{'x'.join(map(str, QUICK_SHAPE))} voxels with {QUICK_MAX_STEPS} training steps; the "
                             "model learns next to nothing, so its numbers mean nothing")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cdm4mi.config import builtin_config, load_config
    from cdm4mi.evaluation.detectability import LesionStudy
    from cdm4mi.evaluation.heldout import evaluate_heldout, write_heldout_report
    from cdm4mi.evaluation.real_slice import denoise_shipped_ct, format_rows
    from cdm4mi.inference.denoise import denoise_scan
    from cdm4mi.io.read import load_scan
    from cdm4mi.io.write import write_volume
    from cdm4mi.simulate.hospital import HospitalSpec, build_phantom_hospital
    from cdm4mi.training.checkpoint import load_module
    from cdm4mi.training.run import CHECKPOINT_DIR, LAST_CHECKPOINT, fit

    out = Path(args.output)
    patients = args.patients or (QUICK_PATIENTS if args.quick else PATIENTS)
    max_steps = args.max_steps or (QUICK_MAX_STEPS if args.quick else MAX_STEPS)
    if out.exists() and any(out.iterdir()):
        check_writable(out, args.overwrite, option="--output")
        refuse_foreign(out, DEMO_OUTPUTS, "--output")  # --overwrite deletes an earlier demo, never a user's files
        remove_recorded(out, DEMO_OUTPUTS)
    out.mkdir(parents=True, exist_ok=True)
    record_written(out, DEMO_OUTPUTS)
    started = time.monotonic()

    def step(message: str) -> None:
        print(f"\n== [{time.monotonic() - started:4.0f} s] {message}", flush=True)

    step("1/5 building the phantom hospital (DICOM, full and simulated quarter dose)")
    quick = {"shape": QUICK_SHAPE, "spacing_mm": QUICK_SPACING_MM} if args.quick else {}
    spec = HospitalSpec(num_patients=patients, **quick)
    build_phantom_hospital(out / "hospital", spec)

    step("2/5 pseudonymous manifest, split by patient")
    salt = os.urandom(32)  # the demo keeps no way back to the (synthetic) patient IDs
    manifest, _ = build_manifest(scan_folder(out / "hospital", layout="dicom"), out / "hospital", salt,
                                 fractions=(0.6, 0.1, 0.3), seed=0)
    manifest_path = save_manifest(manifest, out / "manifest.json")
    print(f"manifest: {manifest_path} " + ", ".join(f"{n} {split}" for split, n in manifest.counts().items()))

    step(f"3/5 training a conditional U-Net for {max_steps} steps")
    config = load_config(builtin_config("demo_ldct_2d.yaml"), [
        f"data.manifest={manifest_path}", f"output_dir={out / 'run'}", f"training.max_steps={max_steps}"])
    fit(config)
    module = load_module(out / "run" / CHECKPOINT_DIR / LAST_CHECKPOINT)

    step("4/5 denoising and evaluating the held-out test patients")
    manifest = load_manifest(manifest_path)  # as a user's evaluate would read it
    result = evaluate_heldout(module, manifest, "test", window=WINDOW, figures_dir=out / "evaluation" / "figures",
                              lesions=LesionStudy())
    written = write_heldout_report(result, out / "evaluation", WINDOW, "test")
    example = manifest.patients_in("test")[0]
    low = load_scan(manifest.input_path(example))
    denoised = denoise_scan(module, low, progress=False)
    series = write_volume(denoised.mean, low, out / "denoised" / example.patient_id, "cdm4mi denoised (demo)")

    print("\n" + written.table)
    print(f"\ndenoised DICOM series of {example.patient_id}: {series}")
    for path in written.files:
        print(f"wrote: {path}")
    print(verdict(written.summary))

    step("5/5 a real CT slice it never trained on (pydicom CT_small.dcm, lesions inserted, 25 % dose)")
    rows, figure, info = denoise_shipped_ct(module, out / "real_ct" / "ct_small_lesions.png")
    texture = "matched to its own noise" if info["texture"] is not None else "not matched"
    print(f"own noise {info['own_noise_hu']:.1f} HU ({info['own_noise_source']}); 25 % dose added "
          f"{info['added_noise_hu']:.1f} HU (kernel cutoff {info['kernel_cutoff']:.2f} Nyquist, {texture}); "
          "PSNR/SSIM/RMSE over the body in [-1000, 1000] HU:")
    print(format_rows(rows))
    print(f"wrote: {figure}")
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0


def verdict(summary: dict) -> str:
    """One line: does the model beat the low-dose input and the Gaussian filter on PSNR and SSIM?"""
    means = {method: {metric: summary["methods"][method][metric]["mean"] for metric in ("psnr", "ssim")}
             for method in summary["methods"]}
    lines = []
    for baseline in ("low_dose_input", "gaussian", "nlm"):
        better = all(means["model"][m] > means[baseline][m] for m in ("psnr", "ssim"))
        lines.append(f"{'beats' if better else 'does NOT beat'} {baseline} "
                     f"(PSNR {means['model']['psnr']:.2f} vs {means[baseline]['psnr']:.2f} dB, "
                     f"SSIM {means['model']['ssim']:.4f} vs {means[baseline]['ssim']:.4f})")
    return "model " + "; ".join(lines)
