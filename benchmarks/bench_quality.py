"""Denoising quality on real CT: leave one patient out over the real slices that ship in installed packages.

    python benchmarks/bench_quality.py            # every shipped CT patient, 25/10/50 % dose
    python benchmarks/bench_quality.py --quick    # smoke test: one fold, a few steps, small lesion set

For each real CT scan (``cdm4mi.io.shipped``: pydicom's and pydicom-data's CT test files):

1. Known low-contrast disks (``--lesion-diameters`` mm x ``--lesion-contrasts`` HU, at random soft-tissue
   positions, recorded) are inserted into the full-dose scan, which becomes the reference of its test fold.
2. Low dose is inserted by ``cdm4mi simulate``'s code, relative to the scan's own noise (calibrated flux) and in
   its texture (kernel cutoff fitted to the own noise's neighbour correlations), at each ``--doses`` fraction,
   ``--realizations`` noise draws each.
3. Fold: a manifest of the *other* patients, full-dose only, trains ``--config`` (default the recommended
   ``configs/ldct_2d.yaml``, dose augmentation) through cdm4mi's trainer, and the supervised U-Net of the same
   size and budget (``cdm4mi.evaluation.supervised``) on the same items. The held-out patient is denoised by
   ``cdm4mi denoise``'s code (``denoise_scan``, posterior mean of ``--samples`` draws, adapted to the scan as
   ``sampling.adapt_steps`` says, told the dose fraction as ``--metadata dose_fraction`` would) and by the baselines:
   the low-dose input, Gaussian (sigma 1 px), NLM, BM3D (only if the non-commercial ``bm3d`` package is
   installed: never a dependency). Where the recipe blends NLM into the posterior mean (``sampling.nlm_blend``), the
   mean of the draws alone is scored beside it (``posterior``); where the model adapted to the scan, the same model
   unadapted (blended as the recipe says) is scored beside it (``unadapted``): what each step adds.
4. Scores per case: PSNR/SSIM/RMSE in [-1000, 1000] HU (data range 2000) and in the soft-tissue window
   [-160, 240] (data range 400), over the body; ±2σ coverage of the truth by the samples' spread; per lesion
   class the CHO and NPW detectability (d') with a bootstrap CI over ROI pairs; invented-structure blobs.
   Beside them, the *ceiling* (``quality_report.ceiling_rows``): the reference keeps the full-dose scan's own
   noise, which no denoiser can tell from the added noise except by its share of the variance, so no output
   can pass PSNR 20 log10(2000 / (s a / sqrt(s^2 + a^2))) for own noise s and added noise a (approximate: s
   is estimated). At 25 % dose a = sqrt(3) s: the ceiling is 1.25 dB above a perfect removal of all noise.

Prints one table per measure and a verdict against the targets; writes ``results.json`` and figures to
``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from cdm4mi.config import load_config
from cdm4mi.evaluation.baselines import gaussian_filter_baseline, nlm_baseline
from cdm4mi.evaluation.calibration import calibrate_checkpoint, describe_calibration
from cdm4mi.evaluation.medical_figures import save_methods_with_lesions
from cdm4mi.evaluation.metrics import body_mask, slice_metrics
from cdm4mi.evaluation.supervised import train_supervised
from cdm4mi.inference.denoise import denoise_scan
from cdm4mi.io.read import load_scan
from cdm4mi.io.shipped import available_ct
from cdm4mi.io.write import write_nifti
from cdm4mi.simulate.noise_estimate import estimate_ct_noise_hu
from cdm4mi.simulate.relative_dose import scan_kernel_cutoff, simulate_relative_dose, texture_noise
from cdm4mi.training.checkpoint import load_module
from cdm4mi.training.run import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_report import ceiling_rows, detectability, invented_blobs, lesion_rois, print_report  # noqa: E402

WINDOWS = {"wide": (-1000.0, 1000.0), "soft": (-160.0, 240.0)}
ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "ldct_2d.yaml"))
    parser.add_argument("--out", default="bench_quality_out")
    parser.add_argument("--steps", type=int, default=200,
                        help="training steps per fold, for the model and the supervised U-Net each (default 200: "
                             "a fold in about 6 minutes on 2 CPU cores)")
    parser.add_argument("--doses", type=float, nargs="+", default=[0.25, 0.1, 0.5])
    parser.add_argument("--realizations", type=int, default=2, help="noise draws per case and dose")
    parser.add_argument("--samples", type=int, default=3, help="posterior samples per denoising (coverage)")
    parser.add_argument("--lesion-diameters", type=float, nargs="+", default=[3.0, 6.0])
    parser.add_argument("--lesion-contrasts", type=float, nargs="+", default=[10.0, 25.0])
    parser.add_argument("--lesions-per-class", type=int, default=12)
    parser.add_argument("--folds", nargs="*", default=None, help="names of the held-out cases (default: all)")
    parser.add_argument("--no-supervised", action="store_true")
    parser.add_argument("--quick", action="store_true", help="one fold, 30 steps, one dose: a smoke test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", metavar="RESULTS_JSON", help="print the tables of a saved results.json and exit")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.doses, args.realizations, args.samples = 30, [0.25], 1, 2
        args.lesions_per_class, args.folds = 4, args.folds or ["spine-128"]
    return args


def prepare_cases(args: argparse.Namespace, work: Path) -> list[dict]:
    """Each shipped CT: full-dose NIfTI (training), lesion-inserted reference and its low-dose draws (test)."""
    from cdm4mi.evaluation.detectability import insert_volume_lesions

    cases = []
    for index, (shipped, path) in enumerate(available_ct()):
        scan = load_scan(path, modality="CT")
        folder = work / "data" / shipped.name
        folder.mkdir(parents=True, exist_ok=True)
        write_nifti(scan.array, scan.affine, folder / "full_dose.nii.gz", overwrite=True)
        rng = np.random.default_rng(args.seed + index)
        pixel = float(min(scan.spacing_mm[1:]))
        reference, lesions = insert_volume_lesions(scan.array, pixel, args.lesion_diameters, args.lesion_contrasts,
                                                   args.lesions_per_class, rng)
        reference = reference.astype(scan.array.dtype)
        low = {}
        for dose in args.doses:
            draws = []
            for r in range(args.realizations):
                noisy, info = simulate_relative_dose(reference, scan.spacing_mm[1:], dose,
                                                     seed=args.seed + 1000 * index + r)
                draws.append(noisy)
            low[dose] = (draws, info)
        cases.append({"name": shipped.name, "scan": scan, "reference": reference, "lesions": lesions,
                      "low": low, "full_dose_file": folder / "full_dose.nii.gz"})
        print(f"  {shipped.name}: {scan.array.shape[0]} x {scan.array.shape[1]}x{scan.array.shape[2]}, "
              f"{pixel:.2f} mm pixels, own noise {info['own_noise_hu']:.1f} HU "
              f"({'calibrated' if info['calibrated'] else 'nominal flux'}), "
              + (f"texture: {info['texture'].describe()}, " if info["texture"] is not None else
                 f"texture: kernel cutoff {info['kernel_cutoff']:.2f} (not matched), ")
              + ", ".join(f"{d:.0%} dose adds {low[d][1]['added_noise_hu']:.1f} HU" for d in args.doses), flush=True)
    return cases


def fold_manifest(cases: list[dict], held_out: str, path: Path) -> Path:
    """Every other patient, full-dose only (trained by dose augmentation); the held-out one is not listed."""
    patients = [{"patient_id": f"P{i:02d}", "target": str(case["full_dose_file"].relative_to(path.parent)),
                 "split": "train"} for i, case in enumerate(cases) if case["name"] != held_out]
    path.write_text(json.dumps({"format": "cdm4mi-manifest/1", "modality": "CT", "patients": patients}, indent=1))
    return path


def run_fold(args: argparse.Namespace, cases: list[dict], held_out: dict, work: Path, rois: dict) -> list[dict]:
    """Train on the other cases, denoise the held-out one; adds its lesion ROIs to ``rois`` (pooled)."""
    # the manifest's folder is the data root, and the runs must lie outside it
    manifest = fold_manifest(cases, held_out["name"], work / "data" / f"fold_{held_out['name']}.json")
    overrides = [f"data.manifest={manifest}", f"output_dir={work / 'runs' / held_out['name']}",
                 "training.val_batches=0", "training.preview_samples=0", "training.progress_bar=false",
                 f"training.seed={args.seed}"]
    overrides += [f"training.max_steps={args.steps}", f"training.warmup_steps={min(50, args.steps // 5)}"]
    config = load_config(args.config, overrides)
    start = time.perf_counter()
    fit(config, overwrite=True)
    checkpoint = Path(config.output_dir) / "checkpoints" / "last.ckpt"
    if config.sampling.calibrate_coverage is not None:  # what `cdm4mi train` does after fitting
        calibration = calibrate_checkpoint(checkpoint, config.sampling.calibrate_coverage, args.samples, args.seed)
        print(f"  fold {held_out['name']}: {describe_calibration(calibration)}", flush=True)
    module = load_module(checkpoint)
    train_seconds = time.perf_counter() - start
    supervised = None
    if not args.no_supervised:
        start = time.perf_counter()
        supervised = train_supervised(config, progress=False)
        train_seconds += time.perf_counter() - start
    print(f"  fold {held_out['name']}: trained in {train_seconds:.0f} s", flush=True)
    rows = []
    reference = held_out["reference"]
    mask = body_mask(reference)
    for dose, (draws, info) in held_out["low"].items():
        outputs: dict[str, list[np.ndarray]] = {}
        coverage = []
        for r, low in enumerate(draws):
            low_scan = dataclasses.replace(held_out["scan"], array=low)
            # the dose is known here, as it is to a user who knows the protocol: it sets the adaptation's removal
            # budget (the model itself takes only the noise level, estimated)
            result = denoise_scan(module, low_scan, samples=args.samples, seed=args.seed + r, progress=False,
                                  metadata={"dose_fraction": dose})
            if result.std is not None:
                inside = np.abs(result.mean - reference) <= 2 * result.std
                coverage.append(float(inside[mask].mean()))
            # NLM tuned to the scan's real noise (the CT flat-region estimate, not the wavelet MAD that reads
            # FBP noise low): the strongest fair setting of the classical filter.
            methods = {"low_dose_input": low, "gaussian": gaussian_filter_baseline(low),
                       "nlm": nlm_baseline(low, sigma_hu=estimate_ct_noise_hu(low)), "model": result.mean}
            if supervised is not None:
                methods["supervised"] = supervised_denoise(supervised, module, low_scan)
            if result.posterior_mean is not None:  # what the blend with NLM (sampling.nlm_blend) adds
                methods["posterior"] = result.posterior_mean
            if result.adaptation is not None and result.adaptation.steps:  # what the adaptation to the scan adds
                methods["unadapted"] = denoise_scan(module, low_scan, adapt_steps=0, samples=args.samples,
                                                    seed=args.seed + r, progress=False).mean
            methods.update(optional_bm3d(low, held_out["scan"].spacing_mm[1:], args.seed + r))
            for name, image in methods.items():
                outputs.setdefault(name, []).append(np.asarray(image, dtype=np.float32))
        if dose == args.doses[0]:
            slice_images = {"full dose (+ lesions)": reference[0]} | {name: images[0][0] for name, images in outputs.items()}
            save_methods_with_lesions(slice_images, held_out["lesions"][0], min(held_out["scan"].spacing_mm[1:]),
                                      work / "figures" / f"{held_out['name']}_{dose:.0%}.png",
                                      title=f"{held_out['name']}, {dose:.0%} dose (held out)", overwrite=True)
        for name, images in outputs.items():
            row = {"case": held_out["name"], "dose": dose, "method": name}
            for window_name, window in WINDOWS.items():
                scores = [slice_metrics(image, reference, window=window, mask=mask) for image in images]
                for metric in ("psnr", "ssim", "rmse_hu"):
                    values = [s[metric] for per_draw in scores for s in per_draw if s[metric] is not None]
                    row[f"{metric}_{window_name}"] = float(np.mean(values)) if values else None
            if name == "model" and coverage:  # share of body voxels whose truth lies within mean ± 2 std
                row["coverage"] = float(np.mean(coverage))
            rows.append(row)
        rows += invented_blobs(held_out, dose, outputs, info)
        rows += ceiling_rows(held_out, dose, draws, info, mask)
        for key, (present, absent) in lesion_rois(held_out, dose, outputs, args.seed).items():
            entry = rois.setdefault((dose, *key), [present[:0], absent[:0]])
            entry[0], entry[1] = np.concatenate([entry[0], present]), np.concatenate([entry[1], absent])
    return rows


def supervised_denoise(supervised, module, low_scan) -> np.ndarray:
    """The supervised baseline on a scan, fed the metadata vector ``cdm4mi denoise`` would build for it."""
    from cdm4mi.inference.denoise import scan_vector

    vector = scan_vector(module, low_scan)
    return supervised.denoise(low_scan.array, vector)


def optional_bm3d(low: np.ndarray, spacing_mm, seed: int) -> dict[str, np.ndarray]:
    """BM3D (non-commercial licence: compared against when installed, never a dependency), in its strongest fair
    setting: told the power spectrum of the noise (``sigma_psd``), as BM3D takes correlated noise, from the input
    alone (``noise_psd``), as NLM gets its sigma. With a white-noise sigma instead (even the true total noise),
    BM3D scored up to 4.4 dB lower on the shipped scans, below NLM on most: CT noise is correlated."""
    try:
        import bm3d
    except ImportError:
        return {}
    if not hasattr(np, "trapz"):  # bm3d 4.0.3's PSD path calls np.trapz, which numpy 2.4 removed
        np.trapz = np.trapezoid
    return {"bm3d": np.stack([bm3d.bm3d(image.astype(np.float64), sigma_psd=noise_psd(image, spacing_mm, seed))
                              for image in low]).astype(np.float32)}


def noise_psd(image: np.ndarray, spacing_mm, seed: int, draws: int = 4) -> np.ndarray:
    """The noise power spectrum of a [H, W] slice in BM3D's convention (``|fft2|^2``, mean = pixels x variance):
    simulated noise in the slice's own texture (``texture_noise``: the kernel cutoff fitted to its noise's
    neighbour correlations) at the CT estimator's noise std, averaged over ``draws`` realizations."""
    sigma = estimate_ct_noise_hu(image)
    cutoff, _ = scan_kernel_cutoff(image[None], sigma)  # the level just measured: not estimated twice
    power = np.mean([np.abs(np.fft.fft2(texture_noise(image[None], spacing_mm, sigma, seed + k, cutoff)[0])) ** 2
                     for k in range(draws)], axis=0)
    return power * (image.size * sigma**2 / power.mean())


def save_results(path: Path, args: argparse.Namespace, rows: list[dict], rois: dict) -> list[dict]:
    """Image rows plus the lesion detectability of the ROIs pooled so far, written to ``path`` (JSON)."""
    detect = []
    for dose in args.doses:
        pooled = {key[1:]: value for key, value in rois.items() if key[0] == dose}
        detect += [{"dose": dose, **row} for row in detectability(pooled, args.seed)]
    path.write_text(json.dumps({"args": vars(args), "rows": rows + detect}, indent=1))
    return rows + detect


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:  # the tables of a finished (or stopped) run
        saved = json.loads(Path(args.report).read_text())
        return 0 if print_report(saved["rows"], saved["args"]["doses"]) else 1
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"bench_quality: config {args.config}, doses {args.doses}, {args.realizations} noise draws each")
    start = time.perf_counter()
    cases = prepare_cases(args, work)
    if len(cases) < 3:
        print("bench_quality: fewer than 3 real CT scans found; install pydicom-data (pip install pydicom-data)")
        return 2
    folds = [case for case in cases if args.folds is None or case["name"] in args.folds]
    rows, rois = [], {}
    for held_out in folds:
        fold_start = time.perf_counter()
        rows += run_fold(args, cases, held_out, work, rois)
        print(f"  fold {held_out['name']}: {time.perf_counter() - fold_start:.0f} s in all", flush=True)
        save_results(work / "results.json", args, rows, rois)  # after every fold: a stopped run keeps its folds
    rows = save_results(work / "results.json", args, rows, rois)
    ok = print_report(rows, args.doses)
    print(f"bench_quality: {time.perf_counter() - start:.0f} s; results in {work / 'results.json'}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
