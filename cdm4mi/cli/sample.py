"""``cdm4mi sample --checkpoint C --out FILE``: draw samples from an unconditional model."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cdm4mi.atomic import atomic_output, check_writable
from cdm4mi.data.registry import build_dataset
from cdm4mi.evaluation.figures import save_sample_preview
from cdm4mi.training.checkpoint import load_module


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "sample", parents=[common], help="draw samples from a trained model", description=__doc__
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by cdm4mi train")
    parser.add_argument("--out", required=True, help="output file: .npy or .pt")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--sampler", choices=["ddim", "ddpm"], help="default: the checkpoint's config")
    parser.add_argument("--steps", type=int, help="number of sampling steps")
    parser.add_argument("--eta", type=float, help="DDIM eta (0 = deterministic)")
    parser.add_argument("--spacing", choices=["leading", "trailing", "linspace"], help="timestep spacing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--png", help="preview figure (default: next to --out)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = check_writable(args.out, args.overwrite)
    if out.suffix not in (".npy", ".pt"):
        raise ValueError(f"--out: {out} must end in .npy or .pt")
    png = check_writable(args.png or out.with_suffix(".png"), args.overwrite, option="--png")
    if args.num_samples < 1 or args.batch_size < 1:
        raise ValueError("--num-samples and --batch-size must be >= 1")
    module = load_module(args.checkpoint, map_location=args.device)
    data = dict(module.config.data)
    reference_set = build_dataset(data.pop("name"), "val", **data)
    reference = torch.stack([reference_set[i]["x0"] for i in range(min(len(reference_set), args.num_samples))])
    if "cond" in reference_set[0]:
        raise ValueError(f"--checkpoint: {args.checkpoint} is a conditional model; sample it with cdm4mi denoise")
    overrides = {key: value for key, value in
                 {"sampler": args.sampler, "steps": args.steps, "eta": args.eta, "timestep_spacing": args.spacing}.items()
                 if value is not None}
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    batches = []
    for start in tqdm(range(0, args.num_samples, args.batch_size), desc="sampling", unit="batch"):
        count = min(args.batch_size, args.num_samples - start)
        x_T = torch.randn((count, *reference.shape[1:]), generator=generator, device=args.device)
        batches.append(module.sample(x_T, generator=generator, **overrides).cpu())
    samples = torch.cat(batches)
    with atomic_output(out, args.overwrite) as temporary:
        if out.suffix == ".npy":
            with open(temporary, "wb") as handle:
                np.save(handle, samples.numpy())
        else:
            torch.save(samples, temporary)
    save_sample_preview(samples, reference, png, title=f"{len(samples)} samples, {Path(args.checkpoint).name}")
    print(f"samples: {out} {tuple(samples.shape)}")
    print(f"figure:  {png}")
    return 0
