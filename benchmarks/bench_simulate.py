"""Time low-dose CT simulation and report the noise it inserts.

Run: ``python benchmarks/bench_simulate.py [--threads N]``. Prints seconds per slice for a 512 x 512
phantom slice and a small volume, and the inserted noise std (HU) per dose fraction in the centre of
a 30 cm water cylinder (0.7 mm pixels) and over the soft tissue of the phantom slice.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from cdm4mi.simulate.ct_dose import simulate_low_dose_ct
from cdm4mi.simulate.phantom import FIELD_OF_VIEW_MM, make_ct_phantom

DOSES = (0.1, 0.25, 0.5)


def _seconds(run, repeats: int) -> tuple[float, float]:
    """(best, median) wall-clock seconds of ``repeats`` calls after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")

    slice_hu = make_ct_phantom((1, 512, 512), seed=0)[0]
    spacing = FIELD_OF_VIEW_MM / 512
    threads = torch.get_num_threads()
    # One thread as well: on a shared machine two torch threads can lose more to waiting than they gain.
    for num_threads in sorted({1, threads}):
        torch.set_num_threads(num_threads)
        for model in ("gaussian", "poisson"):
            run = lambda: simulate_low_dose_ct(slice_hu, spacing, model=model, seed=0)  # noqa: E731
            best, median = _seconds(run, args.repeats)
            print(f"512x512 slice, {model:8s}, {num_threads} thread(s): best {best:.2f} s, median {median:.2f} s")
    torch.set_num_threads(threads)
    volume = make_ct_phantom((8, 256, 256), seed=1)
    run = lambda: simulate_low_dose_ct(volume, FIELD_OF_VIEW_MM / 256, seed=0)  # noqa: E731
    best, median = _seconds(run, max(1, args.repeats // 2))
    print(f"8x256x256 volume: best {best / 8:.3f} s, median {median / 8:.3f} s per slice")

    radius = np.hypot(*np.meshgrid(*(2 * [(np.arange(512) - 255.5) * 0.7]), indexing="ij"))
    water = np.where(radius < 150, 0.0, -1000.0).astype(np.float32)
    soft_tissue = (slice_hu > -50) & (slice_hu < 150)
    print("inserted noise std (HU), I0 = 1.5e5, Hann filter:")
    print("  dose  water30cm gaussian  water30cm poisson  phantom soft tissue gaussian")
    for dose in DOSES:
        water_gauss = (simulate_low_dose_ct(water, 0.7, dose, seed=1) - water)[radius < 40].std()
        water_poisson = (simulate_low_dose_ct(water, 0.7, dose, model="poisson", seed=1) - water)[radius < 40].std()
        phantom = (simulate_low_dose_ct(slice_hu, spacing, dose, seed=1) - slice_hu)[soft_tissue].std()
        print(f"  {dose:4.2f}  {water_gauss:17.1f}  {water_poisson:17.1f}  {phantom:27.1f}")


if __name__ == "__main__":
    main()
