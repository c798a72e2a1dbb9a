"""Time whole-scan denoising: cdm4mi's warm-started DDIM against MONAI's DiffusionInferer from pure noise.

ours:  ``denoise_volume`` with a ``DiffusionModule`` built from ``--config`` (the recommended configs/ldct_2d.yaml):
       warm start at the timestep matching 40 HU of noise, the config's DDIM steps, slices in batches of
       ``--batch-size``; a model that takes metadata (``data.metadata: [noise_level]``) gets the estimated noise
       level, as ``cdm4mi denoise`` does.
compare: with ``--compare-set KEY=VALUE ...``, a second design of ours (e.g. ``network.pixel_unshuffle=1``, the
       slower full-resolution U-Net) timed in the same run, alternating with the others.
MONAI: ``DiffusionInferer.sample(noise, net, DDIMScheduler(1000), conditioning=slices, mode="concat")`` with a
       ``DiffusionModelUNet`` of the same design (widths, residual blocks, attention levels, head channels, norm
       groups; the low-dose slice concatenated on the channels; full resolution: MONAI has no pixel-unshuffle
       stem), from pure noise as MONAI's tutorials do, with as many DDIM steps as ours and with ``--peer-steps``
       (50; estimated from the measured per-step time unless ``--measure-peer-steps``).
The networks have untrained weights: random init, and every all-zero parameter (output conv, the last conv
of each residual branch, attention output, norm biases, AdaLN projections) perturbed so every branch does real
work. The times are those of trained models; the images are not. Also times one network forward (batch 1), the
cost of a step.

    python benchmarks/bench_denoise.py                              # < 2 min on 2 CPU cores
    python benchmarks/bench_denoise.py --repeats 3 --compare-set network.pixel_unshuffle=1   # old vs new design
    python benchmarks/bench_denoise.py --slices 16 --batch-size 8 --device cuda --measure-peer-steps
    python benchmarks/bench_denoise.py --set network.attention_levels=[false,false,false,false]   # design what-ifs
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import numpy as np
import torch
from bench_unet import time_case  # benchmarks/ is on sys.path when this file is run as a script
from torch import nn

from cdm4mi.config import builtin_config, load_config
from cdm4mi.inference.denoise import denoise_volume, model_normalization
from cdm4mi.simulate.phantom import make_ct_phantom
from cdm4mi.training.module import DiffusionModule

TARGET_S_PER_SLICE = 1.0  # the project's goal for a 512 x 512 slice on 2 CPU cores
NOISE_HU = 40.0  # quarter-dose noise level the warm start is matched to


def unzero(network: nn.Module, std: float = 0.02) -> None:
    """Give every all-zero parameter small random values, so zero-initialised branches compute real outputs."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in network.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def build_ours(config_path: str, overrides: list[str]) -> DiffusionModule:
    torch.manual_seed(0)
    config = load_config(config_path, overrides)
    if config.network.get("name") != "unet" or config.network.get("spatial_dims", 2) != 2:
        raise SystemExit(f"--config: this benchmark times 2D 'unet' networks, got {config.network}")
    if config.data.get("mode", "2d") != "2d":
        raise SystemExit(f"--config: data.mode must be '2d' (one slice in, one out), got {config.data.get('mode')!r}")
    module = DiffusionModule(config.model_dump()).eval()
    unzero(module.backbone)
    return module


def build_peer(module: DiffusionModule, flash: bool) -> nn.Module:
    """MONAI's DiffusionModelUNet with our network's design."""
    from monai.networks.nets import DiffusionModelUNet

    net = module.backbone
    options = module.config.network
    torch.manual_seed(0)
    base = options.get("base_channels", 64)
    peer = DiffusionModelUNet(spatial_dims=2, in_channels=net.in_channels, out_channels=options.get("out_channels", 1),
                              channels=[base * m for m in options.get("channel_mult", [1, 2, 4])],
                              attention_levels=options.get("attention_levels", [False, False, True]),
                              num_res_blocks=options.get("num_res_blocks", 2),
                              num_head_channels=options.get("num_head_channels", 32),
                              norm_num_groups=options.get("norm_groups", 32), use_flash_attention=flash).eval()
    unzero(peer)
    return peer


class Measured:
    """A step for ``bench_unet.time_case`` whose first call (the warm-up there) runs ``warm_up`` instead, and
    whose later calls record peak resident memory above what was resident before (Linux only, else None).

    A cheap warm-up (a small image) spares a second 512 x 512 run; with ``--compile`` it must be the step itself.
    """

    def __init__(self, step: Callable[[], object], warm_up: Callable[[], object]):
        self.step, self.warm_up, self.peak_mib = step, warm_up, None

    def __call__(self) -> None:
        if self.warm_up is not None:
            self.warm_up()
            self.warm_up = None
            return
        resident = _reset_peak_rss_mib()
        self.step()
        if resident is not None:
            self.peak_mib = max(self.peak_mib or 0.0, _status_mib("VmHWM") - resident)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak_rss_mib() -> float | None:
    """Reset the process's peak RSS (VmHWM) to its current RSS and return that, in MiB; None where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return _status_mib("VmRSS")
    except OSError:
        return None


def monai_sample_volume(peer: nn.Module, units: torch.Tensor, steps: int, batch_size: int,
                        device: torch.device) -> torch.Tensor:
    """MONAI's way: for each batch of slices [B, 1, H, W] (model units), DDIM from pure noise, conditioned by concat."""
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps, device=device)
    inferer = DiffusionInferer(scheduler)
    generator = torch.Generator(device=device).manual_seed(0)
    outputs = []
    for start in range(0, len(units), batch_size):
        cond = units[start : start + batch_size, None].to(device)
        noise = torch.randn(cond.shape, generator=generator, device=device)
        outputs.append(inferer.sample(noise, peer, scheduler, conditioning=cond, mode="concat", verbose=False).cpu())
    return torch.cat(outputs)[:, 0]


def profile_forward(networks: dict[str, Callable[[torch.Tensor], object]], size: int, device: torch.device) -> None:
    """Print where one batch-1 forward spends its time, by operator."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    inputs = torch.randn(1, 2, size, size, device=device)
    for label, forward in networks.items():
        with torch.inference_mode(), profile(activities=activities) as prof:
            forward(inputs)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\nprofile: {label}, forward b1 {size}x{size}")
        print(prof.key_averages().table(sort_by=sort, row_limit=10, max_name_column_width=48))


class Ours:
    """One design of ours to time: the module, its warm start and the functions the cases call."""

    def __init__(self, module: DiffusionModule, device: torch.device, batch: int):
        self.module, self.device, self.batch = module, device, batch
        normalization = model_normalization(module)
        noise_units = float(np.diff(normalization.forward(np.array([0.0, NOISE_HU], dtype=np.float32)))[0])
        self.t_start = module.schedule.timestep_for_noise_std(noise_units)
        self.steps = min(module.config.sampling.steps, self.t_start + 1)  # as denoise_volume caps them
        self.vector_dim = module.backbone.condition.vector_dim  # metadata (noise_level): a placeholder vector

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        cond = inputs[:, 1:]
        if self.vector_dim:
            cond = {"image": cond, "vector": torch.ones(len(inputs), self.vector_dim, device=self.device)}
        return self.module.backbone(inputs[:, :1], torch.full((len(inputs),), self.t_start, device=self.device), cond)

    def denoise(self, hu: np.ndarray) -> None:
        denoise_volume(self.module, hu, t_start=self.t_start, batch_size=self.batch, progress=False)

    def describe(self) -> str:
        return (f"warm start t_start={self.t_start} ({NOISE_HU:.0f} HU), {self.steps} DDIM steps "
                f"({self.module.config.sampling.timestep_spacing}), "
                f"{sum(p.numel() for p in self.module.backbone.parameters()):,} parameters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case after a warm-up; median shown")
    parser.add_argument("--slices", type=int, default=1, help="slices in the timed volume")
    parser.add_argument("--batch-size", type=int, default=1, help="slices per network call (both pipelines)")
    parser.add_argument("--size", type=int, default=512, help="slice side in pixels")
    parser.add_argument("--peer-steps", type=int, default=50, help="MONAI's usual number of DDIM steps")
    parser.add_argument("--measure-peer-steps", action="store_true",
                        help="run MONAI at --peer-steps instead of estimating it from its per-step time")
    parser.add_argument("--config", default=str(builtin_config("ldct_2d.yaml")))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (both networks)")
    parser.add_argument("--compare-set", nargs="+", default=None, metavar="KEY=VALUE",
                        help="time a second design of ours in the same run (the config with --set, then these "
                             "overrides), alternating with the others: e.g. network.pixel_unshuffle=1")
    parser.add_argument("--monai-flash", action="store_true", help="MONAI use_flash_attention=True (SDPA, as ours)")
    parser.add_argument("--channels-last", action="store_true", help="both networks in channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks (warm-up compiles)")
    parser.add_argument("--bf16", action="store_true", help="both pipelines under bfloat16 autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true",
                        help="only print an operator profile of one forward of each network, then exit")
    args = parser.parse_args()
    for option in ("repeats", "slices", "batch_size", "peer_steps"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)

    size, batch = args.size, min(args.batch_size, args.slices)
    designs = {"ours": args.set} | ({"compare": [*args.set, *args.compare_set]} if args.compare_set else {})
    modules = {label: build_ours(args.config, overrides) for label, overrides in designs.items()}
    peer = build_peer(modules["ours"], args.monai_flash)
    multiple = max(module.backbone.size_multiple for module in modules.values())
    if args.size % multiple:
        parser.error(f"--size must be a multiple of {multiple} (one pixel per level)")
    peer.to(device)
    for module in modules.values():
        module.to(device)
    if args.channels_last:
        peer.to(memory_format=torch.channels_last)
        for module in modules.values():
            module.to(memory_format=torch.channels_last)
    if args.compile:
        peer = torch.compile(peer, dynamic=False)
        for module in modules.values():
            module.backbone = torch.compile(module.backbone, dynamic=False)
    ours = {label: Ours(module, device, batch) for label, module in modules.items()}
    t_start, steps = ours["ours"].t_start, ours["ours"].steps

    load_before = os.getloadavg()
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"load average (1, 5, 15 min) {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    if device.type == "cpu" and torch.get_num_threads() > 1 and load_before[0] > 0.5:
        # Seen here with one other job on the 2 cores: 2 threads ran a 64x64 forward 50x, 256x256 3x slower than
        # 1 thread (every operator ends in a barrier that waits for whichever thread was descheduled).
        print("warning: other processes are using the CPU; multi-threaded times suffer most, compare --threads 1")
    flags = [f"--{flag}" for flag in ("monai-flash", "channels-last", "compile", "bf16")
             if getattr(args, flag.replace("-", "_"))]
    print(f"config {' '.join([os.path.relpath(args.config), *args.set])}; untrained random weights (timing only); "
          f"flags: {' '.join(flags) or 'none'}")
    for label, design in ours.items():
        extra = f" (+ {' '.join(args.compare_set)})" if label == "compare" else ""
        print(f"{label}{extra}: {design.describe()}")
    print(f"MONAI: pure noise, DDIMScheduler(1000), {steps} and {args.peer_steps} steps, full resolution, "
          f"{sum(p.numel() for p in peer.parameters()):,} parameters")

    small = 8 * multiple  # warm-up image side: exercises every kernel without a second full-size run
    rng = np.random.default_rng(0)
    volume = make_ct_phantom((args.slices, size, size), seed=0)
    volume = volume + rng.normal(0, NOISE_HU, volume.shape).astype(np.float32)
    units = torch.as_tensor(model_normalization(modules["ours"]).forward(volume))

    def peer_forward(inputs: torch.Tensor) -> torch.Tensor:
        return peer(inputs, timesteps=torch.full((len(inputs),), t_start, device=device))

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def forward_step(forward: Callable, side: int) -> Callable[[], None]:
        inputs = torch.randn(1, 2, side, side, device=device)

        def step() -> None:
            with torch.inference_mode(), autocast():
                forward(inputs)

        return step

    def ours_denoise(design: Ours, hu: np.ndarray) -> Callable[[], None]:
        def step() -> None:
            with autocast():
                design.denoise(hu)

        return step

    def peer_denoise(slices: torch.Tensor, peer_steps: int) -> Callable[[], None]:
        def step() -> None:
            with torch.inference_mode(), autocast():
                monai_sample_volume(peer, slices, peer_steps, batch, device)

        return step

    def measured(step: Callable, warm_up: Callable) -> Measured:
        return Measured(step, step if args.compile else warm_up)

    if args.profile:
        with autocast():
            profile_forward({label: design.forward for label, design in ours.items()} | {"MONAI": peer_forward},
                            size, device)
        return

    volume_case = f"denoise {args.slices}x{size}x{size}"
    volume_key = f"{volume_case}, {steps} steps"
    cases = {
        f"forward b1 {size}x{size}": {
            label: measured(forward_step(design.forward, size), forward_step(design.forward, small))
            for label, design in ours.items()}
        | {"MONAI": measured(forward_step(peer_forward, size), forward_step(peer_forward, small))},
        volume_key: {
            label: measured(ours_denoise(design, volume), ours_denoise(design, volume[:1, :small, :small]))
            for label, design in ours.items()}
        | {"MONAI": measured(peer_denoise(units, steps), peer_denoise(units[:1, :small, :small], steps))},
    }
    if args.measure_peer_steps:
        cases[f"{volume_case}, MONAI {args.peer_steps} st."] = {
            "MONAI": measured(peer_denoise(units, args.peer_steps), peer_denoise(units[:1, :small, :small], 1))}

    memory = "peak +MiB" if device.type == "cuda" else "peak RSS +MiB"
    compare = "compare" in ours
    header = f"{'case':<40} {'ours s':>8}" + (f" {'compare s':>9}" if compare else "")
    print(f"{header} {'MONAI s':>8} {'MONAI/ours':>10}" + (f" {'compare/ours':>12}" if compare else "")
          + f"   {memory}: {', '.join([*ours, 'MONAI'])}")
    results = {}
    for case, steps_by_label in cases.items():
        timed = time_case(steps_by_label, args.repeats, device)
        results[case] = {label: (seconds, cuda_mib if device.type == "cuda" else steps_by_label[label].peak_mib)
                         for label, (seconds, cuda_mib) in timed.items()}
        # The MONAI-only case (--measure-peer-steps) compares with ours at its own steps.
        row = results[case] if "ours" in results[case] else {**results[volume_key], "MONAI": results[case]["MONAI"]}
        ours_s, monai_s = row["ours"][0], row["MONAI"][0]
        line = f"{case:<40} {ours_s:>8.2f}" + (f" {row['compare'][0]:>9.2f}" if compare else "")
        line += f" {monai_s:>8.2f} {monai_s / ours_s:>10.1f}" + (f" {row['compare'][0] / ours_s:>12.1f}"
                                                                  if compare else "")
        mib = " ".join(f"{value:>7.0f}" if value is not None else f"{'-':>7}"
                       for value in (row[label][1] for label in [*ours, "MONAI"]))
        print(f"{line}   {mib}", flush=True)

    ours_volume_s, _ = results[volume_key]["ours"]
    monai_volume_s, _ = results[volume_key]["MONAI"]
    if not args.measure_peer_steps:
        # MONAI's cost is all per step (each runs the network once); its fixed costs are negligible.
        estimate = monai_volume_s / steps * args.peer_steps
        print(f"{volume_case + f', MONAI {args.peer_steps} st. (est.)':<40} {ours_volume_s:>8.2f} {estimate:>8.1f} "
              f"{estimate / ours_volume_s:>10.1f}   (estimate: MONAI's {steps}-step time x {args.peer_steps}/{steps})")

    per_slice = ours_volume_s / args.slices
    print(f"\nours: {per_slice:.2f} s per {size}x{size} slice (batch {batch}), {ours_volume_s:.2f} s per "
          f"{args.slices}-slice volume" + ("" if args.slices == 16 else
                                           f", est. {16 * per_slice:.1f} s per 16-slice volume"))
    if compare:
        compare_s = results[volume_key]["compare"][0] / args.slices
        print(f"compare ({' '.join(args.compare_set)}): {compare_s:.2f} s per slice, {compare_s / per_slice:.1f}x ours")
    setting = f"{device}, {torch.get_num_threads()} thread(s)"
    if size != 512 or device.type != "cpu" or torch.get_num_threads() != 2:
        would_be = "met" if per_slice <= TARGET_S_PER_SLICE else "missed"
        print(f"target <= {TARGET_S_PER_SLICE:.0f} s per 512x512 slice on 2 CPU cores: not this setting ({setting}, "
              f"{size}x{size}); at {per_slice:.2f} s it would be {would_be}")
    else:
        verdict = "MET" if per_slice <= TARGET_S_PER_SLICE else f"NOT met ({per_slice / TARGET_S_PER_SLICE:.1f}x over)"
        print(f"target <= {TARGET_S_PER_SLICE:.0f} s per 512x512 slice on 2 CPU cores: {verdict}")
    load_after = os.getloadavg()
    print(f"load average at the end (1, 5, 15 min) {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


if __name__ == "__main__":
    main()
