"""Compare the backbones ``unet`` (ours) and ``monai_unet`` (MONAI's DiffusionModelUNet) built to the same design.

Cases (``--cases``):

* ``eval2d``: one inference forward (batch 1, no grad, eval mode) on a 512x512 slice with the network of
  ``--config`` (default configs/ldct_2d_concat.yaml), mapped to monai_unet by dropping what MONAI has no
  equivalent for (``attention_window``: MONAI attends globally). Ours is timed as configured (windowed
  attention) and with ``attention_window: null`` (global, like MONAI); MONAI with and without
  ``use_flash_attention`` (monai_unet's default is on; MONAI's own default is off).
* ``train3d-64`` / ``train3d-128``: one training step (forward + L2 loss + backward + AdamW step) on 64^3
  (batch 2) and 128^3 (batch 1 on CPU, 2 on CUDA) patches; concat conditioning (2 input channels), widths
  16/32/32/32, 1 residual block per level, attention (global, 32 channels per head) at the deepest level
  only. Ours with and without ``gradient_checkpointing`` (MONAI has none).

Every (case, network) runs in a fresh process (``--worker``), so its peak memory is its own: on CPU the peak
resident set size (``ru_maxrss``) above the resident size once the network is built and has run once on a
small input (``prime``), before the case's inputs and the optimizer's state exist; on CUDA the peak
allocated memory above the allocated network. Each worker makes one warm-up and one timed step
(``bench_unet.time_case``); ``--repeats`` rounds of workers alternate between networks, so load from other
jobs hits all alike; medians over the rounds are shown (resident memory moves by some 10 % between
identical runs: allocator and kernel page accounting).

    python benchmarks/bench_backbones.py --device cpu        # about 7 min on 2 CPU cores
    python benchmarks/bench_backbones.py --cases train3d-128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_unet import time_case  # run as a script, benchmarks/ is on sys.path
from torch import nn

from cdm4mi.config import load_config
from cdm4mi.models import build_backbone

ROOT = Path(__file__).resolve().parent.parent
NETWORK_3D = {"spatial_dims": 3, "in_channels": 2, "out_channels": 1, "base_channels": 16,
              "channel_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attention_levels": [False, False, False, True],
              "num_head_channels": 32, "norm_groups": 16, "conditioning_key": "concat"}
# Per case: the networks to time, as (key, backbone name, option changes); ratios are against "monai".
NETWORKS = {
    "eval2d": [("ours", "unet", {}), ("ours-global", "unet", {"attention_window": None}),
               ("monai", "monai_unet", {}), ("monai-noflash", "monai_unet", {"use_flash_attention": False})],
    "train3d": [("ours", "unet", {}), ("ours-ckpt", "unet", {"gradient_checkpointing": True}),
                ("monai", "monai_unet", {})],
}
CASES = ("eval2d", "train3d-64", "train3d-128")


def monai_options(options: dict[str, Any]) -> dict[str, Any]:
    """``unet`` options as ``monai_unet`` options: the same names, less those MONAI has no equivalent for."""
    return {key: value for key, value in options.items()
            if key not in ("name", "attention_window", "gradient_checkpointing")}


def network_options(case: str, config: str) -> dict[str, Any]:
    """Our network's options for ``case``: the config's network in 2D, NETWORK_3D in 3D."""
    if case == "eval2d":
        options = dict(load_config(ROOT / config).network)
        if options.get("name") != "unet" or options.get("spatial_dims", 2) != 2:
            raise SystemExit(f"--config: eval2d times a 2D 'unet' network, got {options}")
        return options
    return dict(NETWORK_3D)


def build(case: str, key: str, config: str) -> nn.Module:
    """The network ``key`` of ``case`` (a NETWORKS entry), seeded so every round builds the same weights."""
    name, changes = next((name, changes) for k, name, changes in NETWORKS[case.split("-")[0]] if k == key)
    options = network_options(case, config)
    options = monai_options(options) if name == "monai_unet" else {k: v for k, v in options.items() if k != "name"}
    torch.manual_seed(0)
    return build_backbone(name, **{**options, **changes})


def case_shape(case: str, device: torch.device) -> tuple[int, tuple[int, ...]]:
    """Batch size and spatial size (pixels / voxels) of ``case``."""
    if case == "eval2d":
        return 1, (512, 512)
    side = int(case.split("-")[1])
    return (1 if side == 128 and device.type == "cpu" else 2), (side,) * 3


def random_inputs(batch: int, spatial: tuple[int, ...],
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy target and conditioning image [batch, 1, *spatial], and timesteps [batch]."""
    x, cond = torch.randn(batch, 1, *spatial, device=device), torch.randn(batch, 1, *spatial, device=device)
    return x, cond, torch.randint(0, 1000, (batch,), device=device)


def prime(case: str, network: nn.Module, device: torch.device) -> None:
    """Run ``network`` once on a small input (forward, and backward when training), so that code, kernels and
    thread pools loaded on first use (about 30 MiB on CPU) are resident before the memory baseline is taken."""
    _, spatial = case_shape(case, device)
    x, cond, t = random_inputs(1, tuple(2 * network.size_multiple for _ in spatial), device)
    if case == "eval2d":
        with torch.no_grad():
            network.eval()(x, t, cond)
        return
    network.train()(x, t, cond).square().mean().backward()
    network.zero_grad(set_to_none=True)


def make_step(case: str, network: nn.Module, device: torch.device) -> Callable[[], None]:
    """One inference forward (eval2d) or one training step (train3d-*) on random data, as a callable."""
    batch, spatial = case_shape(case, device)
    x, cond, t = random_inputs(batch, spatial, device)
    if case == "eval2d":
        network.eval()

        def forward() -> None:
            with torch.no_grad():
                network(x, t, cond)

        return forward
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    target = torch.randn_like(x)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(network(x, t, cond), target).backward()
        optimizer.step()

    return train_step


def worker(case: str, key: str, config: str, device: torch.device) -> dict[str, Any]:
    """Build one network, time one warm-up + one step: seconds, peak MiB above the built (and primed) network,
    parameter count."""
    network = build(case, key, config).to(device)
    prime(case, network, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        with open("/proc/self/status") as status:
            baseline = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024
    seconds, _ = time_case({key: make_step(case, network, device)}, 1, device)[key]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"seconds": seconds, "peak_mib": (peak - baseline) / 2**20,
            "parameters": sum(p.numel() for p in network.parameters()), "threads": torch.get_num_threads()}


def run_worker(case: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    """``worker`` in a fresh process; ``{"skipped": reason}`` when it fails or runs past its time limit."""
    command = [sys.executable, __file__, "--worker", case, key, "--device", args.device, "--config", args.config]
    limit = 60 + 2 * args.timeout  # start-up, then the warm-up and the timed step
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=limit,
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"skipped": f"ran past {limit} s (a step over --timeout {args.timeout} s)"}
    if done.returncode != 0:
        return {"skipped": f"worker failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def label(case: str, key: str, config: str) -> str:
    if key == "ours" and case == "eval2d":
        window = network_options(case, config).get("attention_window")
        return f"ours (window {window})" if window else "ours (global attn)"
    return {"ours": "ours", "ours-global": "ours (global attn)", "ours-ckpt": "ours + grad. ckpt",
            "monai": "MONAI", "monai-noflash": "MONAI (no flash)"}[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, help="rounds of fresh workers per case; median shown (default 3; "
                        "train3d-128 on CPU: 1, about 3 min)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--config", default="configs/ldct_2d_concat.yaml", help="our 2D network (eval2d)")
    parser.add_argument("--timeout", type=int, default=120, help="skip a network whose step takes longer (s)")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "NETWORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.worker:
        print(json.dumps(worker(*args.worker, args.config, device)))
        return
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")

    print(f"device={device} torch={torch.__version__} cpus={os.cpu_count()} load average {os.getloadavg()[0]:.1f}")
    print(f"eval2d network: {args.config}; train3d network: {NETWORK_3D} (ours: attention_window null)")
    print("peak MiB: " + ("peak allocated above the built network (CUDA)" if device.type == "cuda" else
                          "peak RSS above the built network's RSS, one fresh process per network (CPU)"))
    header = (f"{'case':<23} {'network':<20} {'parameters':>11} {'s/step':>8} {'peak MiB':>9} "
              f"{'s ours/MONAI':>12} {'MiB ours/MONAI':>14}")
    print("medians over rounds of fresh workers, each one warm-up + one timed step")
    print(header)
    for case in args.cases:
        batch, spatial = case_shape(case, device)
        slow = case == "train3d-128" and device.type == "cpu"
        rounds = args.repeats or (1 if slow else 3)
        if slow:
            print(f"  ({case}: batch {batch} on CPU, {rounds} round(s): about half a minute a step"
                  + ("; one round is a single sample, --repeats 3 for a median)" if rounds == 1 else ")"))
        keys = [key for key, _, _ in NETWORKS[case.split("-")[0]]]
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
        for _ in range(rounds):
            for key in keys:  # alternate networks within every round
                runs[key].append(run_worker(case, key, args))
        summary = {}
        for key in keys:
            done = [run for run in runs[key] if "skipped" not in run]
            if done:
                summary[key] = (statistics.median(run["seconds"] for run in done),
                                statistics.median(run["peak_mib"] for run in done), done[0]["parameters"])
        name = f"{case.split('-')[0]} {'x'.join(map(str, spatial))} b{batch}"
        for key in keys:
            if key not in summary:
                print(f"{name:<23} {label(case, key, args.config):<20} skipped: {runs[key][-1]['skipped']}")
                continue
            seconds, mib, parameters = summary[key]
            ratios = ""
            if key.startswith("ours") and "monai" in summary:
                ratios = f"{seconds / summary['monai'][0]:>12.2f} {mib / summary['monai'][1]:>14.2f}"
            print(f"{name:<23} {label(case, key, args.config):<20} {parameters:>11,} {seconds:>8.2f} {mib:>9.0f} "
                  f"{ratios}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
