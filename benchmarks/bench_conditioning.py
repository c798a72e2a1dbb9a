"""Does dose / noise-level conditioning let one model serve scans of several doses better than plain concat?

1. A phantom hospital with mixed doses (``HospitalSpec.dose_fraction = (0.1, 0.25, 0.5)``, cycled over the
   patients; I0, shape and spacing as ``cdm4mi demo``), split by patient so that every dose has training and
   test patients (per dose: the last ``--test-per-dose`` patients test, the one before them val, the rest train),
   each patient's ``dose_fraction`` in the manifest's metadata (``record_dose_fractions``).
2. Two models trained with the same budget, seed and data (``configs/demo_ldct_2d.yaml``, ``--steps`` each):
   ``concat`` as configured, and ``adaln`` with ``network.conditioning_key=adaln network.vector_dim=4
   data.metadata=[dose_fraction,noise_level] data.metadata_dropout=0.2`` (as ``configs/ldct_2d_adaln.yaml``).
3. Every test patient denoised by each model (``denoise_scan``, the config's warm-started DDIM) and scored per
   slice against full dose (PSNR / SSIM in [-1000, 1000] HU, data range 2000, as the demo); the adaln model
   also with the dose missing (``metadata={}``: only the noise level estimated from the scan is known).

The table gives, per dose, the mean over test patients of their per-slice means, and adaln - concat with how
many test patients adaln wins. Few test patients per dose: read differences of a few hundredths of a dB as ties.

    python benchmarks/bench_conditioning.py                      # about 10 min on 2 CPU cores
    python benchmarks/bench_conditioning.py --steps 800 --seed 1 --out /tmp/conditioning
    python benchmarks/bench_conditioning.py --patients 9 --test-per-dose 1 --slices 4 --steps 4   # smoke test
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cdm4mi.cohort.discover import build_manifest, scan_folder
from cdm4mi.cohort.manifest import Manifest, load_manifest, save_manifest
from cdm4mi.config import builtin_config, load_config
from cdm4mi.evaluation.metrics import evaluate_patient
from cdm4mi.inference.denoise import denoise_scan
from cdm4mi.io.read import load_scan
from cdm4mi.simulate.hospital import (
    HospitalSpec,
    build_phantom_hospital,
    record_dose_fractions,
)
from cdm4mi.training.checkpoint import load_module
from cdm4mi.training.run import CHECKPOINT_DIR, LAST_CHECKPOINT, fit

WINDOW = (-1000.0, 1000.0)  # HU, data range 2000: the demo's
ADALN_OVERRIDES = ["network.conditioning_key=adaln", "network.vector_dim=4",
                   "data.metadata=[dose_fraction,noise_level]"]


def dose_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated dose fractions, got {text!r}") from None


def patient_key(index: int) -> str:
    """The (synthetic) DICOM PatientID ``build_phantom_hospital`` gives patient ``index``."""
    return f"PHANTOM-{index + 1:04d}"


def splits_by_dose(spec: HospitalSpec, test_per_dose: int) -> dict[str, list[str]]:
    """Patient keys per split: for each dose, its last ``test_per_dose`` patients test, the one before val
    (when the dose has a patient to spare), the rest train. Every dose must keep a train and a test patient."""
    by_dose: dict[float, list[int]] = {}
    for index in range(spec.num_patients):
        by_dose.setdefault(spec.patient_dose_fraction(index), []).append(index)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for dose, indices in by_dose.items():
        if len(indices) < test_per_dose + 1:
            raise ValueError(f"--patients: dose {dose:g} has {len(indices)} patients; need --test-per-dose "
                             f"({test_per_dose}) + 1 so it is in train and test")
        rest, test = indices[:-test_per_dose], indices[-test_per_dose:]
        val = rest[-1:] if len(rest) > 1 else []
        splits["test"] += [patient_key(i) for i in test]
        splits["val"] += [patient_key(i) for i in val]
        splits["train"] += [patient_key(i) for i in rest[: len(rest) - len(val)]]
    if not splits["val"]:
        raise ValueError("--patients: too few for a val patient; give each dose at least --test-per-dose + 2")
    return splits


def build_data(out: Path, spec: HospitalSpec, test_per_dose: int) -> Path:
    """Write the hospital and its manifest (dose fractions in the metadata); returns the manifest path."""
    build_phantom_hospital(out / "hospital", spec, progress=False)
    manifest, _ = build_manifest(scan_folder(out / "hospital", layout="dicom"), out / "hospital", os.urandom(32),
                                 fixed=splits_by_dose(spec, test_per_dose))
    return save_manifest(record_dose_fractions(manifest, spec), out / "manifest.json")


def train(name: str, manifest_path: Path, out: Path, steps: int, seed: int,
          extra: list[str]) -> tuple[object, float]:
    """Train ``configs/demo_ldct_2d.yaml`` with ``extra`` overrides; returns (EMA module, seconds)."""
    started = time.monotonic()
    config = load_config(builtin_config("demo_ldct_2d.yaml"), [
        f"data.manifest={manifest_path}", f"output_dir={out / name}", f"training.max_steps={steps}",
        f"training.warmup_steps={min(50, steps // 4)}", "training.progress_bar=false", f"training.seed={seed}", *extra])
    fit(config)
    return load_module(out / name / CHECKPOINT_DIR / LAST_CHECKPOINT), time.monotonic() - started


def evaluate(models: dict[str, object], manifest: Manifest) -> tuple[list[dict], dict[str, float]]:
    """Per-slice rows (``patient_id``, ``method``, ``psnr``, ``ssim``, ``dose_fraction``) of every test patient,
    and the noise std estimated on each patient's input (model units)."""
    rows, noise = [], {}
    for entry in manifest.patients_in("test"):
        low, full = load_scan(manifest.input_path(entry)), load_scan(manifest.target_path(entry))
        outputs = {"low_dose_input": low.array}
        for method, (model, metadata) in {"concat": (models["concat"], entry.metadata),
                                          "adaln": (models["adaln"], entry.metadata),
                                          "adaln_dose_missing": (models["adaln"], {})}.items():
            result = denoise_scan(model, low, progress=False, metadata=metadata)
            if method == "adaln_dose_missing" and result.metadata_sources.get("dose_fraction") != "missing":
                raise RuntimeError(f"dose_fraction reached the model from {result.metadata_sources}")
            outputs[method] = result.mean
            noise[entry.patient_id] = result.input_noise_std
        for row in evaluate_patient(entry.patient_id, outputs, full.array, window=WINDOW):
            rows.append({**row, "dose_fraction": entry.metadata["dose_fraction"]})
    return rows, noise


def patient_means(rows: list[dict], metric: str) -> dict[tuple[float, str, str], float]:
    """(dose, patient, method) -> mean of ``metric`` over the patient's slices (undefined slices skipped)."""
    values: dict[tuple[float, str, str], list[float]] = {}
    for row in rows:
        if row[metric] is not None:
            values.setdefault((row["dose_fraction"], row["patient_id"], row["method"]), []).append(row[metric])
    return {key: statistics.fmean(v) for key, v in values.items()}


def table(rows: list[dict]) -> str:
    """Per dose and metric: mean over test patients of each method, adaln - concat and adaln's wins."""
    header = (f"{'dose':>5} {'metric':>6} {'n':>2} {'low-dose':>9} {'concat':>9} {'adaln':>9} {'adaln-no-dose':>13} "
              f"{'adaln-concat':>12} {'adaln wins':>10} {'no-dose-concat':>14}")
    lines = [header, "-" * len(header)]
    for metric, digits in (("psnr", 2), ("ssim", 4)):
        means = patient_means(rows, metric)
        for dose in sorted({key[0] for key in means}) + [None]:
            patients = sorted({p for d, p, _ in means if dose is None or d == dose})
            keys = [(d, p) for d, p, m in means if m == "concat" and p in patients]
            average = {method: statistics.fmean(means[(d, p, method)] for d, p in keys)
                       for method in ("low_dose_input", "concat", "adaln", "adaln_dose_missing")}
            wins = sum(means[(d, p, "adaln")] > means[(d, p, "concat")] for d, p in keys)
            cells = [f"{average[m]:9.{digits}f}" for m in ("low_dose_input", "concat", "adaln")]
            label = "all" if dose is None else f"{dose:g}"
            lines.append(f"{label:>5} {metric:>6} {len(keys):>2} {' '.join(cells)} "
                         f"{average['adaln_dose_missing']:13.{digits}f} {average['adaln'] - average['concat']:+12.{digits}f} "
                         f"{f'{wins}/{len(keys)}':>10} {average['adaln_dose_missing'] - average['concat']:+14.{digits}f}")
        lines.append("")
    return "\n".join(lines).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="training steps of each model (default 500)")
    parser.add_argument("--patients", type=int, default=18, help="phantom patients (default 18: 6 per dose)")
    parser.add_argument("--doses", type=dose_list, default=(0.1, 0.25, 0.5),
                        help="dose fractions cycled over the patients (default 0.1,0.25,0.5)")
    parser.add_argument("--test-per-dose", type=int, default=2, help="test patients per dose (default 2)")
    parser.add_argument("--slices", type=int, default=HospitalSpec.shape[0], help="slices per patient (default 24)")
    parser.add_argument("--metadata-dropout", type=float, default=0.2,
                        help="adaln: fraction of training items with a field marked missing (default 0.2, as "
                             "configs/ldct_2d_adaln.yaml; 0 makes a missing dose out of distribution)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantoms, their noise and both trainings")
    parser.add_argument("--out", help="output folder, new or empty (default: a temporary folder, removed after)")
    args = parser.parse_args()
    if args.steps < 1 or args.test_per_dose < 1:
        parser.error("--steps and --test-per-dose must be >= 1")
    print("command: " + shlex.join([sys.executable, *sys.argv]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.out and Path(args.out).exists() and any(Path(args.out).iterdir()):
        parser.error(f"--out: {args.out} is not empty")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_conditioning_"))
    spec = HospitalSpec(num_patients=args.patients, shape=(args.slices, *HospitalSpec.shape[1:]),
                        dose_fraction=args.doses, seed=args.seed)
    started = time.monotonic()
    try:
        manifest_path = build_data(out, spec, args.test_per_dose)
        manifest = load_manifest(manifest_path)
        print(f"hospital: {args.patients} patients of {spec.shape} voxels at {spec.spacing_mm} mm, I0 "
              f"{spec.incident_flux:g}, doses {args.doses}; " + ", ".join(
                  f"{n} {split}" for split, n in manifest.counts().items())
              + f" ({time.monotonic() - started:.0f} s)")
        models, seconds = {}, {}
        models["concat"], seconds["concat"] = train("concat", manifest_path, out, args.steps, args.seed, [])
        models["adaln"], seconds["adaln"] = train("adaln", manifest_path, out, args.steps, args.seed, [
            *ADALN_OVERRIDES, f"data.metadata_dropout={args.metadata_dropout}"])
        evaluated = time.monotonic()
        rows, noise = evaluate(models, manifest)
        seconds["evaluation"] = time.monotonic() - evaluated
        doses = {entry.patient_id: entry.metadata["dose_fraction"] for entry in manifest.patients_in("test")}
        print("\ntraining: " + ", ".join(f"{name} {seconds[name]:.0f} s" for name in ("concat", "adaln"))
              + f" ({args.steps} steps each); evaluation of {len(doses)} test patients {seconds['evaluation']:.0f} s")
        print("estimated input noise std (model units) per test patient: " + ", ".join(
            f"{doses[p]:g}: {noise[p]:.4f}" for p in sorted(noise, key=lambda p: (doses[p], p))))
        print(f"\nPSNR (dB) / SSIM in [{WINDOW[0]:g}, {WINDOW[1]:g}] HU, data range {WINDOW[1] - WINDOW[0]:g}; "
              "mean over test patients of per-slice means; adaln-no-dose: the adaln model given no dose_fraction")
        print(table(rows))
        print(f"\ntotal {time.monotonic() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
