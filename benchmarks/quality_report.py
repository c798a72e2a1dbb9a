"""Lesion detectability scores and the printed report of ``bench_quality.py``."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from cdm4mi.evaluation import detectability as lesion_detectability
from cdm4mi.evaluation.detectability import classes_lost
from cdm4mi.evaluation.observers import invented_structure

BASELINES = ("gaussian", "nlm", "bm3d")
ROI_PIXEL_MM = 0.5  # lesion ROIs of every case are resampled to this pixel size, so classes pool over cases
LEARNED = ("model", "posterior", "unadapted", "supervised")
CEILING_KEYS = ("psnr_wide", "rmse_hu_wide")  # the ceiling (ceiling_rows) is derived for the wide window only


def lesion_rois(case: dict, dose: float, outputs: dict[str, list[np.ndarray]], seed: int) -> dict[tuple, list]:
    """Signal-present ROIs at the inserted lesions and signal-absent ROIs at lesion-free soft-tissue centres,
    the SAME centres in the full dose and every method's output, for each lesion class (diameter, contrast),
    resampled to ``ROI_PIXEL_MM`` (``cdm4mi.evaluation.detectability.lesion_rois``).
    Returns {(method, diameter_mm, contrast_hu): [present [N, s, s], absent [M, s, s]]}."""
    pixel = float(min(case["scan"].spacing_mm[1:]))
    # absent centres are chosen in the scan without lesions, where no lesion can be
    return lesion_detectability.lesion_rois(case["scan"].array, case["lesions"], pixel,
                                            {"full_dose": [case["reference"]]} | outputs, seed,
                                            roi_pixel_mm=ROI_PIXEL_MM)


def detectability(pooled: dict[tuple, list], seed: int) -> list[dict]:
    """CHO (Laguerre-Gauss channels) and NPW d' with 95 % bootstrap CIs per method and lesion class."""
    return lesion_detectability.detectability(pooled, seed, roi_pixel_mm=ROI_PIXEL_MM)


def invented_blobs(case: dict, dose: float, outputs: dict[str, list[np.ndarray]], info: dict) -> list[dict]:
    """Blobs of |output - full dose| above 3 noise sigmas that the low-dose input does not explain, per slice."""
    reference, pixel = case["reference"], float(min(case["scan"].spacing_mm[1:]))
    sigma = max(info["own_noise_hu"], 1.0)  # what remains of the reference's own noise where nothing is invented
    rows = []
    for method, draws in outputs.items():
        if method == "low_dose_input":
            continue
        counts = [invented_structure(image[k], reference[k], low[k], sigma, pixel)[0]
                  for image, low in zip(draws, outputs["low_dose_input"]) for k in range(image.shape[0])]
        rows.append({"case": case["name"], "dose": dose, "method": method, "invented_blobs": float(np.mean(counts))})
    return rows


def ceiling_rows(case: dict, dose: float, draws: list[np.ndarray], info: dict, mask: np.ndarray) -> list[dict]:
    """The best PSNR any denoiser can reach against this reference (approximate): the reference is the full-dose
    scan *with its own noise* (std s), and the input adds independent noise (std a, measured exactly as
    input - reference over the body). Even knowing the noise-free anatomy, the own noise can only be told from the
    added noise by their variances: the least error is s*a / sqrt(s^2 + a^2) (MMSE of Gaussian noises). The own
    noise is the flat-soft-tissue estimate, so the ceiling is approximate (a filter can pass it by a few tenths
    of a dB where the own noise is not uniform). None for a scan whose own noise could not be measured."""
    own = float(info["own_noise_hu"])
    if not own > 0:
        return []
    added = float(np.mean([np.sqrt(np.mean((low - case["reference"])[mask] ** 2)) for low in draws]))
    rmse = own * added / np.hypot(own, added)
    return [{"case": case["name"], "dose": dose, "method": "ceiling", "psnr_wide": float(20 * np.log10(2000 / rmse)),
             "rmse_hu_wide": float(rmse), "own_noise_hu": own, "added_noise_hu": added}]


def _table(rows: list[dict], key: str, methods: list[str], cases: list[str]) -> list[str]:
    lines = [f"{'case':<20}" + "".join(f"{m:>14}" for m in methods)]
    for case in cases + ["mean"]:
        cells = []
        for method in methods:
            values = [r[key] for r in rows if r["method"] == method and r.get(key) is not None
                      and (case == "mean" or r["case"] == case)]
            cells.append(f"{np.mean(values):14.2f}" if values else f"{'-':>14}")
        lines.append(f"{case:<20}" + "".join(cells))
    return lines


def print_report(rows: list[dict], doses: list[float]) -> bool:
    """Tables per dose; returns whether the recommended recipe met the issue's targets at the first dose."""
    image_rows = [r for r in rows if "psnr_wide" in r]
    methods = [m for m in ("low_dose_input", "gaussian", "nlm", "bm3d", "supervised", "unadapted", "posterior", "model",
                           "ceiling")
               if any(r["method"] == m for r in image_rows)]
    cases = sorted({r["case"] for r in image_rows})
    for dose in doses:
        at_dose = [r for r in image_rows if r["dose"] == dose]
        for key, label in (("psnr_wide", "PSNR dB [-1000, 1000] HU"), ("psnr_soft", "PSNR dB [-160, 240] HU"),
                           ("ssim_wide", "SSIM [-1000, 1000] HU"), ("rmse_hu_wide", "RMSE HU (body)")):
            print(f"\n{label}, {dose:.0%} dose")
            print("\n".join(_table(at_dose, key, [m for m in methods if m != "ceiling" or key in CEILING_KEYS], cases)))
        coverage = [r["coverage"] for r in at_dose if r.get("coverage") is not None]
        if coverage:
            print(f"\n±2σ coverage of the truth (body voxels), {dose:.0%} dose: mean {np.mean(coverage):.1%}, "
                  f"range {min(coverage):.1%}–{max(coverage):.1%} (target 90–98 %)")
        print_lesions([r for r in rows if r.get("cho") is not None and r["dose"] == dose], dose)
        lesion_check(rows, dose)
        blobs = [r for r in rows if "invented_blobs" in r and r["dose"] == dose]
        if blobs:
            print(f"\ninvented-structure blobs per slice, {dose:.0%} dose: " + ", ".join(
                f"{m} {np.mean([r['invented_blobs'] for r in blobs if r['method'] == m]):.1f}"
                for m in methods if m != "low_dose_input" and any(r["method"] == m for r in blobs)))
    return verdict(image_rows, rows, doses[0])


def print_lesions(rows: list[dict], dose: float) -> None:
    if not rows:
        return
    print(f"\nLesion detectability d' (CHO with 95 % CI; NPW), {dose:.0%} dose, ROIs pooled over cases")
    by_class: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_class[(r["lesion_mm"], r["lesion_hu"])].append(r)
    for (diameter, contrast), found in sorted(by_class.items()):
        print(f"  {diameter:g} mm, {contrast:g} HU ({found[0]['rois'][0]} lesion / {found[0]['rois'][1]} background ROIs)")
        for r in found:
            cho, lo, hi = r["cho"]
            print(f"    {r['method']:<16} CHO {cho:6.2f} [{lo:5.2f}, {hi:5.2f}]   NPW {r['npw'][0]:6.2f}")


def lesion_check(rows: list[dict], dose: float) -> None:
    """No lesion class may lose CHO detectability against the low-dose input (within its CI)."""
    found = [r for r in rows if r.get("cho") is not None and r["dose"] == dose]
    for method in LEARNED + BASELINES:
        lost = classes_lost(found, method)
        if lost is not None:
            losses = [f"{diameter:g} mm/{contrast:g} HU" for diameter, contrast in lost]
            print(f"  {method}: {'loses detectability on ' + ', '.join(losses) if losses else 'keeps every lesion class'}"
                  " (CHO vs the low-dose input)")


def verdict(image_rows: list[dict], rows: list[dict], dose: float) -> bool:
    """The issue's 'done when', checked at ``dose`` (25 % by default) in the wide window."""
    at_dose = [r for r in image_rows if r["dose"] == dose]
    cases = sorted({r["case"] for r in at_dose})

    def psnr(case: str, method: str) -> float | None:
        found = [r["psnr_wide"] for r in at_dose if r["case"] == case and r["method"] == method]
        return found[0] if found else None

    checks = []
    best_classical = {c: max(v for m in BASELINES if (v := psnr(c, m)) is not None) for c in cases}
    model = {c: psnr(c, "model") for c in cases}
    gain = np.mean([model[c] - best_classical[c] for c in cases])
    checks.append((f"mean PSNR >= best classical + 2 dB (gain {gain:+.2f} dB)", gain >= 2.0))
    ceiling = {c: psnr(c, "ceiling") for c in cases}
    if all(v is not None for v in ceiling.values()):  # what that target asks against what any denoiser can reach
        above = [c for c in cases if best_classical[c] + 2 > ceiling[c]]
        room = np.mean([ceiling[c] - best_classical[c] for c in cases])
        print(f"\nThe ceiling (no denoiser can pass it, see ceiling_rows) lies {room:+.2f} dB from the best classical "
              f"filter on the mean; best classical + 2 dB lies above it on {len(above)} of {len(cases)} cases "
              f"({', '.join(above) or 'none'}).")
    below_input = [c for c in cases if model[c] < psnr(c, "low_dose_input")]
    checks.append((f"no case below the low-dose input ({', '.join(below_input) or 'none'})", not below_input))
    below_filter = [c for c in cases if model[c] < best_classical[c]]
    checks.append((f"no case below the best classical filter ({', '.join(below_filter) or 'none'})", not below_filter))
    supervised = [psnr(c, "supervised") for c in cases]
    if all(v is not None for v in supervised):
        margin = np.mean([model[c] for c in cases]) - np.mean(supervised)
        checks.append((f">= the supervised U-Net on the mean ({margin:+.2f} dB)", margin >= 0))
    coverage = [r["coverage"] for r in at_dose if r.get("coverage") is not None]
    if coverage:
        checks.append((f"±2σ coverage in 90–98 % (mean {np.mean(coverage):.1%})", 0.90 <= np.mean(coverage) <= 0.98))
    checks += blob_checks(rows, dose, cases, psnr)
    print(f"\nTargets at {dose:.0%} dose:")
    for text, passed in checks:
        print(f"  [{'met' if passed else 'MISSED'}] {text}")
    return all(passed for _, passed in checks)


def blob_checks(rows: list[dict], dose: float, cases: list[str], psnr) -> list[tuple[str, bool]]:
    """The target: invented blobs per slice at most the classical filter with the fewest (in practice the Gaussian,
    whose residual is its input's by construction). Also printed: the count of the best classical filter by PSNR
    on each case, the filter a user would otherwise pick."""
    blobs = {(r["case"], r["method"]): r["invented_blobs"] for r in rows if "invented_blobs" in r and r["dose"] == dose}
    filters = [m for m in BASELINES if all((c, m) in blobs for c in cases)]
    if not cases or (cases[0], "model") not in blobs or not filters:
        return []

    def mean(method_of) -> float:
        return float(np.mean([blobs[c, method_of(c)] for c in cases]))

    model = mean(lambda c: "model")
    fewest = min(filters, key=lambda m: mean(lambda c: m))
    by_psnr = mean(lambda c: max(filters, key=lambda m: psnr(c, m)))
    print(f"\nInvented blobs per slice: model {model:.1f}, the best classical filter by PSNR on each case {by_psnr:.1f}, "
          f"{fewest} {mean(lambda c: fewest):.1f}.")
    return [(f"invented blobs <= the classical filter with the fewest ({fewest} {mean(lambda c: fewest):.1f}, "
             f"model {model:.1f})", model <= mean(lambda c: fewest))]
