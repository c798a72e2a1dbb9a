"""Time cdm4mi's ConditionalUNet against MONAI's DiffusionModelUNet built to the same design.

Both networks: 2D, 2 input channels (noisy target + conditioning image), 1 output, widths (64, 128, 256),
2 residual blocks per level, self-attention at the deepest level only, 32 channels per head, 32 norm groups.
Cases: one Adam training step (batch 8, 64x64) and an inference forward (batch 1, 256x256; 512x512 with --large).

    python benchmarks/bench_unet.py --device cpu --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def build_models(monai_flash: bool) -> dict[str, tuple[nn.Module, Callable]]:
    """Return ``{label: (network, predict(inputs [B, 2, H, W], t [B]))}`` for ours and MONAI's."""
    from monai.networks.nets import DiffusionModelUNet

    from cdm4mi.models.unet import ConditionalUNet

    torch.manual_seed(0)
    ours = ConditionalUNet(spatial_dims=2, in_channels=2, out_channels=1, base_channels=64, channel_mult=[1, 2, 4],
                           num_res_blocks=2, attention_levels=[False, False, True], num_head_channels=32,
                           norm_groups=32)
    monai = DiffusionModelUNet(spatial_dims=2, in_channels=2, out_channels=1, channels=(64, 128, 256),
                               attention_levels=(False, False, True), num_res_blocks=2, num_head_channels=32,
                               norm_num_groups=32, use_flash_attention=monai_flash)
    return {
        "ours": (ours, lambda inputs, t: ours(inputs[:, :1], t, inputs[:, 1:])),
        "MONAI": (monai, lambda inputs, t: monai(inputs, t)),
    }


def time_case(steps: dict[str, Callable[[], None]], repeats: int,
              device: torch.device) -> dict[str, tuple[float, float | None]]:
    """Per label: median wall time (s) of its step over ``repeats`` runs after one warm-up, and on CUDA the peak
    memory a step allocates above what is already resident (MiB: activations, gradients, workspace).

    Runs alternate between labels so that load from other processes on a shared machine hits both alike.
    """
    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in steps.values():
        step()
    synchronize()
    seconds: dict[str, list[float]] = {label: [] for label in steps}
    peaks: dict[str, float] = {label: 0.0 for label in steps}
    for _ in range(repeats):
        for label, step in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            step()
            synchronize()
            seconds[label].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[label] = max(peaks[label], (torch.cuda.max_memory_allocated(device) - resident) / 2**20)
    return {label: (statistics.median(seconds[label]), peaks[label] if device.type == "cuda" else None)
            for label in steps}


def train_step(network: nn.Module, predict: Callable, batch: int, size: int,
               device: torch.device) -> Callable[[], None]:
    """One forward + MSE loss + backward + Adam step on random data."""
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    inputs, target = torch.randn(batch, 2, size, size, device=device), torch.randn(batch, 1, size, size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(predict(inputs, t), target).backward()
        optimizer.step()

    return step


def eval_forward(network: nn.Module, predict: Callable, size: int, device: torch.device) -> Callable[[], None]:
    """One inference-mode forward at batch 1."""
    network.eval()
    inputs, t = torch.randn(1, 2, size, size, device=device), torch.tensor([500], device=device)

    def step() -> None:
        with torch.inference_mode():
            predict(inputs, t)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case after one warm-up; median shown")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=64, help="training image side (pixels)")
    parser.add_argument("--eval-size", type=int, default=256, help="inference image side (pixels)")
    parser.add_argument("--large", action="store_true", help="also time inference at 512x512 (slow for MONAI on CPU)")
    parser.add_argument("--monai-flash", action="store_true", help="MONAI use_flash_attention=True (SDPA, as ours)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")

    models = build_models(args.monai_flash)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}")
    for label, (network, _) in models.items():
        network.to(device)
        print(f"{label:>5} parameters: {sum(p.numel() for p in network.parameters()):,}")

    cases = {f"train b{args.train_batch} {args.train_size}x{args.train_size}":
             lambda net, predict: train_step(net, predict, args.train_batch, args.train_size, device)}
    for size in [args.eval_size] + ([512] if args.large else []):
        cases[f"eval b1 {size}x{size}"] = lambda net, predict, size=size: eval_forward(net, predict, size, device)

    header = f"{'case':<18} {'ours s':>8} {'MONAI s':>8} {'MONAI/ours':>10}"
    print(header + (f" {'ours +MiB':>9} {'MONAI +MiB':>10}" if device.type == "cuda" else ""))
    for case, make_step in cases.items():
        results = time_case({label: make_step(net, predict) for label, (net, predict) in models.items()},
                            args.repeats, device)
        (ours_s, ours_mib), (monai_s, monai_mib) = results["ours"], results["MONAI"]
        row = f"{case:<18} {ours_s:>8.3f} {monai_s:>8.3f} {monai_s / ours_s:>10.2f}"
        print(row + (f" {ours_mib:>9.0f} {monai_mib:>10.0f}" if device.type == "cuda" else ""), flush=True)


if __name__ == "__main__":
    main()
