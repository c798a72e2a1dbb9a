"""Peak memory of whole-scan denoising against the size of the scan: does it stay bounded as scans get longer and
``--samples`` grows?

Each case runs ``denoise_volume`` in a fresh process on a [D, H, W] float32 volume (a CT phantom with noise) and
prints the process's peak resident memory (``ru_maxrss``) beside the volume's own size: the ratio is how many
volumes' worth of memory the run needs. A streamed pipeline keeps the ratio flat in D and in the number of draws.
The network is the design of ``--config`` at ``--base-channels`` (untrained; memory, not image quality).

    python benchmarks/bench_memory.py                               # 60, 200, 600 slices of 512^2; 1 and 4 draws
    python benchmarks/bench_memory.py --slices 600 --samples 1 8 --size 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(slices: int, size: int, samples: int, config: str, base_channels: int) -> dict:
    """Run one case in this process (``--child``) and return its numbers."""
    import numpy as np
    import torch

    from cdm4mi.config import load_config
    from cdm4mi.inference.denoise import denoise_volume
    from cdm4mi.training.module import DiffusionModule

    torch.manual_seed(0)
    overrides = [f"network.base_channels={base_channels}", "network.norm_groups=4", f"network.num_head_channels={base_channels}",
                 "data.manifest=unused.json"]
    module = DiffusionModule(load_config(config, overrides).model_dump(mode="json"),
                             {"modality": "CT", "normalization": {"name": "hu_window"}}).eval()
    rng = np.random.default_rng(0)
    volume = np.full((slices, size, size), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    volume[:, (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2] = 40.0
    volume += rng.normal(0.0, 30.0, volume.shape).astype(np.float32)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux: KiB)
    start = time.perf_counter()
    denoise_volume(module, volume, samples=samples, batch_size=8, progress=False, input_noise_std=0.03)
    return {"slices": slices, "size": size, "samples": samples, "seconds": time.perf_counter() - start,
            "volume_gib": volume.nbytes / 2**30, "rss_before_gib": baseline,
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, nargs="+", default=[60, 200, 600])
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--config", default=str(ROOT / "configs" / "ldct_2d.yaml"))
    parser.add_argument("--base-channels", type=int, default=8, help="network width (memory of weights is small)")
    parser.add_argument("--child", nargs=3, type=int, metavar=("SLICES", "SIZE", "SAMPLES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.config, args.base_channels)))
        return
    print(f"{'slices':>6} {'samples':>7} {'volume GiB':>10} {'peak GiB':>9} {'peak/volume':>11} {'s/slice':>8}")
    for slices in args.slices:
        for samples in args.samples:
            child = subprocess.run([sys.executable, __file__, "--child", str(slices), str(args.size), str(samples),
                                    "--config", args.config, "--base-channels", str(args.base_channels)],
                                   capture_output=True, text=True, check=True)
            row = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"{slices:>6} {samples:>7} {row['volume_gib']:>10.2f} {row['peak_gib']:>9.2f} "
                  f"{row['peak_gib'] / row['volume_gib']:>11.1f} {row['seconds'] / slices / samples:>8.3f}")


if __name__ == "__main__":
    main()
