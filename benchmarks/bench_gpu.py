"""GPU throughput: training (images/s, MFU under bf16) and denoising (s per 512² slice, s per 300-slice volume),
cdm4mi against MONAI's ``DiffusionModelUNet`` of the same design on the same GPU, in the same run.

training:  one optimizer step (AdamW) of the DDPM objective on a batch of ``--train-batch`` crops of
           ``--train-size``² under bf16 autocast: ours through ``DiffusionModule.objective.loss``, MONAI's
           network with the usual eps-MSE step (``DDPMScheduler.add_noise``). MFU = model FLOPs per step
           (``torch.utils.flop_counter`` on one forward + backward) / step time / the GPU's dense bf16 peak.
denoising: ``denoise_volume`` (warm start at 40 HU, the config's DDIM steps, ``--batch-size`` slices per call)
           against MONAI's ``DiffusionInferer`` from pure noise at the same steps and at 50 (estimated from
           its per-step time), on a 512² slice batch and on a ``--volume-slices`` (300) slice volume.
Untrained random weights (``bench_denoise.unzero``): the times are those of trained models, the images are not.

    python benchmarks/bench_gpu.py                     # on a machine with an NVIDIA GPU
    python benchmarks/bench_gpu.py --device cuda:1 --config configs/ldct_2d_concat.yaml
    python benchmarks/bench_gpu.py --smoke-cpu         # tiny sizes on the CPU: checks the script, times nothing

Without a GPU (and without ``--smoke-cpu``) it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from bench_denoise import NOISE_HU, build_ours, build_peer, monai_sample_volume  # benchmarks/ is on sys.path

from cdm4mi.config import builtin_config
from cdm4mi.inference.denoise import denoise_volume, model_normalization
from cdm4mi.simulate.phantom import make_ct_phantom

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, matched on the device name.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.2, "V100": 125.0}
PEER_STEPS = 50  # MONAI's tutorials' DDIM steps


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak * 1e12 for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``repeats`` runs after ``warmup`` untimed ones (kernel selection, allocator)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def step_flops(step: Callable[[], object]) -> int:
    """FLOPs of one training step's forward and backward, counted by PyTorch's operator flop formulas."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def training_steps(module, peer, batch: int, size: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """One bf16 AdamW step of each network's DDPM objective on the same random batch (target + condition)."""
    from monai.networks.schedulers import DDPMScheduler

    generator = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(batch, 1, size, size, generator=generator, device=device)
    cond = torch.randn(batch, 1, size, size, generator=generator, device=device)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    ours_optimizer = torch.optim.AdamW(module.backbone.parameters(), lr=1e-4)
    peer_optimizer = torch.optim.AdamW(peer.parameters(), lr=1e-4)

    def ours() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = module.objective.loss(module.backbone, x0, cond)
        loss.backward()
        ours_optimizer.step()
        ours_optimizer.zero_grad(set_to_none=True)

    def monai() -> None:
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            prediction = peer(torch.cat([scheduler.add_noise(x0, noise, t), cond], 1), timesteps=t)
            loss = torch.nn.functional.mse_loss(prediction.float(), noise)
        loss.backward()
        peer_optimizer.step()
        peer_optimizer.zero_grad(set_to_none=True)

    return {"ours": ours, "MONAI": monai}


def noisy_phantom(slices: int, size: int) -> np.ndarray:
    """A CT phantom volume with 40 HU of white noise; 8 distinct slices repeated (building 300 costs minutes)."""
    base = make_ct_phantom((min(slices, 8), size, size), seed=0)
    volume = np.resize(base, (slices, size, size))
    return volume + np.random.default_rng(0).normal(0, NOISE_HU, volume.shape).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N")
    parser.add_argument("--config", default=str(builtin_config("ldct_2d_concat.yaml")))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (both networks)")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=128, help="training crop side")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per network call when denoising")
    parser.add_argument("--volume-slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="slice side")
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps (median)")
    parser.add_argument("--smoke-cpu", action="store_true", help="tiny sizes on the CPU: exercises the code only")
    args = parser.parse_args()
    if args.smoke_cpu:
        args.device, args.train_batch, args.train_size, args.batch_size = "cpu", 2, 32, 2
        args.volume_slices, args.size, args.repeats = 3, 64, 1
    device = torch.device(args.device)
    if device.type != "cuda" and not args.smoke_cpu:
        parser.error(f"--device {args.device}: this benchmark times a CUDA GPU (cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing to time. "
              "Run it where `nvidia-smi` lists a GPU, or pass --smoke-cpu to check the script.")
        return 0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = "CPU (smoke run: sizes are tiny, numbers mean nothing)"

    module = build_ours(args.config, args.set).to(device)
    peer = build_peer(module, flash=True).to(device)
    print(f"device {device}: {name}; torch {torch.__version__}; config {args.config} {' '.join(args.set)}")
    print(f"parameters: ours {sum(p.numel() for p in module.backbone.parameters()):,}, "
          f"MONAI {sum(p.numel() for p in peer.parameters()):,}")

    # ---- training
    module.train()
    peer.train()
    steps = training_steps(module, peer, args.train_batch, args.train_size, device)
    peak = bf16_peak(device)
    print(f"\ntraining, bf16 autocast, batch {args.train_batch} x {args.train_size}², AdamW "
          f"(peak bf16 {peak / 1e12:.0f} TFLOP/s)" if peak else
          f"\ntraining, bf16 autocast, batch {args.train_batch} x {args.train_size}², AdamW (peak unknown: no MFU)")
    print(f"{'network':<8} {'s/step':>8} {'img/s':>9} {'TFLOP/step':>11} {'MFU':>6}")
    throughput = {}
    for label, step in steps.items():
        seconds = timed(step, device, args.repeats)
        flops = step_flops(step)
        throughput[label] = args.train_batch / seconds
        mfu = f"{flops / seconds / peak:>6.1%}" if peak else f"{'-':>6}"
        print(f"{label:<8} {seconds:>8.4f} {throughput[label]:>9.1f} {flops / 1e12:>11.3f} {mfu}", flush=True)
    print(f"ours/MONAI training throughput: {throughput['ours'] / throughput['MONAI']:.2f}x")

    # ---- denoising
    module.eval()
    peer.eval()
    normalization = model_normalization(module)
    noise_units = float(np.diff(normalization.forward(np.array([0.0, NOISE_HU], dtype=np.float32)))[0])
    t_start = module.schedule.timestep_for_noise_std(noise_units)
    ddim_steps = min(module.config.sampling.steps, t_start + 1)
    print(f"\ndenoising, bf16 autocast, {args.batch_size} slices per call; ours: warm start t={t_start}, "
          f"{ddim_steps} DDIM steps; MONAI: pure noise, {ddim_steps} steps (and {PEER_STEPS}, estimated)")
    print(f"{'case':<26} {'ours s':>9} {'MONAI s':>9} {'MONAI/ours':>10} {'MONAI 50 st. s':>15}")
    for label, slices in (("one batch", args.batch_size), (f"{args.volume_slices}-slice volume", args.volume_slices)):
        volume = noisy_phantom(slices, args.size)
        units = torch.as_tensor(normalization.forward(volume))

        def ours(volume: np.ndarray = volume) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                denoise_volume(module, volume, t_start=t_start, batch_size=args.batch_size, progress=False)

        def monai(units: torch.Tensor = units) -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                monai_sample_volume(peer, units, ddim_steps, args.batch_size, device)

        repeats = 1 if slices > args.batch_size else args.repeats
        ours_s, monai_s = timed(ours, device, repeats, warmup=1), timed(monai, device, repeats, warmup=1)
        estimate = monai_s / ddim_steps * PEER_STEPS
        print(f"{label:<26} {ours_s:>9.3f} {monai_s:>9.3f} {monai_s / ours_s:>10.1f} {estimate:>15.2f}")
        print(f"{'':<26} ours {ours_s / slices:.4f} s per {args.size}² slice", flush=True)
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
