"""``cdm4mi sample --checkpoint C --output FILE``: draw samples from an unconditional or class-conditional model.

Writes the samples (.npy or .pt; .h5ad for a model of gene expression, in the data's gene space) and
PNG figures: images get a grid (one row per class when classes are asked for) and a strip of the
denoising process over time; points and vectors get a scatter of samples over the data.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cdm4mi.atomic import atomic_output, check_writable, refuse_input_overlap
from cdm4mi.cli.options import add_runtime_options, non_negative_float, non_negative_int, positive_float, positive_int

if TYPE_CHECKING:  # annotations only: imported by the command as it runs, not for --help
    import torch

    from cdm4mi.training.module import DiffusionModule

SUFFIXES = (".npy", ".pt", ".h5ad")


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "sample", parents=[common], help="draw samples from a trained model", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by cdm4mi train")
    parser.add_argument("--output", "--out", dest="output", required=True,
                        help="output file: .npy, .pt, or .h5ad (gene-expression models)")
    parser.add_argument("--num-samples", type=positive_int, default=1000, help="samples to draw")
    parser.add_argument("--batch-size", type=positive_int, default=1000, help="samples per sampling batch")
    parser.add_argument("--classes", help="class-conditional models: 'all' or a comma list of class names or "
                                          "indices; samples are split evenly over them (one grid row each)")
    parser.add_argument("--guidance-scale", type=non_negative_float, help="classifier-free guidance weight (1 = none)")
    parser.add_argument("--sampler", choices=["ddim", "ddpm", "pc", "ode"], help="default: the checkpoint's config")
    parser.add_argument("--steps", type=positive_int, help="number of sampling steps")
    parser.add_argument("--eta", type=non_negative_float, help="DDIM eta (0 = deterministic)")
    parser.add_argument("--spacing", choices=["leading", "trailing", "linspace"], help="timestep spacing")
    parser.add_argument("--snr", type=positive_float, help="predictor-corrector: Langevin corrector signal-to-noise ratio")
    parser.add_argument("--n-corrector", type=non_negative_int, help="predictor-corrector: corrector steps per step")
    parser.add_argument("--ode-method", choices=["euler", "heun", "rk45"], help="probability-flow ODE solver")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the draws")
    add_runtime_options(parser)
    parser.add_argument("--png", help="sample figure (default: next to --output)")
    parser.add_argument("--strip", help="image models: denoising-process strip (default: <output>_process.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cdm4mi.data.registry import build_dataset
    from cdm4mi.evaluation.image_figures import save_image_grid, save_process_strip
    from cdm4mi.inference.checks import check_sampling_options
    from cdm4mi.inference.runtime import load_for_inference
    from cdm4mi.training.previews import save_sample_preview

    for option, path in (("--output", args.output), ("--png", args.png), ("--strip", args.strip)):
        if path:  # a checkpoint named model.pt is a valid --output
            refuse_input_overlap(args.checkpoint, path, option)
    out = check_writable(args.output, args.overwrite, option="--output")
    if out.suffix not in SUFFIXES:
        raise ValueError(f"--output: {out} must end in one of {', '.join(SUFFIXES)}")
    png = check_writable(args.png or out.with_suffix(".png"), args.overwrite, option="--png")
    overrides = {key: value for key, value in {
        "sampler": args.sampler, "steps": args.steps, "eta": args.eta, "timestep_spacing": args.spacing,
        "snr": args.snr, "n_corrector": args.n_corrector, "ode_method": args.ode_method,
        "guidance_scale": args.guidance_scale}.items() if value is not None}
    module = load_for_inference(args.checkpoint, args.device, args.precision, args.channels_last, args.compile)
    check_sampling_options(module, args.checkpoint, overrides)
    if out.suffix == ".h5ad" and not (module.data_state or {}).get("genes"):
        raise ValueError(f"--output: {out.name}: .h5ad needs a model of gene expression; {args.checkpoint} is not one")
    data = dict(module.config.data)
    reference_set = build_dataset(data.pop("name"), "val", **data)
    reference = torch.stack([reference_set[i]["x0"] for i in range(min(len(reference_set), args.num_samples))])
    class_names = resolve_class_names(module, reference_set)
    labels = sample_labels(args.classes, class_names, args.num_samples, reference_set[0].get("cond"), args.checkpoint)
    strip = None
    if reference.ndim >= 4:
        strip = check_writable(args.strip or out.with_name(f"{out.stem}_process.png"), args.overwrite, option="--strip")
    samples, frames = draw(module, reference.shape[1:], labels, args, overrides)
    write_samples(samples, labels, class_names, module, out, args.overwrite)
    title = f"{len(samples)} samples, {Path(args.checkpoint).name}"
    if reference.ndim >= 4 and labels is None:
        save_image_grid(samples[:64], png, title=title, columns=8)
    elif reference.ndim >= 4:
        classes = labels.unique().tolist()
        per_class = min(8, *(int((labels == c).sum()) for c in classes))  # equal rows, one per class
        rows = torch.cat([samples[labels == c][:per_class] for c in classes])
        save_image_grid(rows, png, title=title, columns=per_class, row_labels=[class_names[c] for c in classes])
    else:
        save_sample_preview(samples, reference, png, title=title)
    if strip is not None:
        save_process_strip(frames, strip, title="denoising process: noise, the state after the step at t, sample")
    print(f"samples: {out} {tuple(samples.shape)}")
    print(f"figure:  {png}")
    if strip is not None:
        print(f"process: {strip}")
    return 0


def resolve_class_names(module: DiffusionModule, reference_set) -> list[str] | None:
    names = getattr(reference_set, "class_names", None) or (module.data_state or {}).get("class_names")
    return [str(name) for name in names] if names else None


def sample_labels(classes: str | None, class_names: list[str] | None, count: int, example_cond: object,
                  checkpoint: str) -> torch.Tensor | None:
    """Labels [count] for the asked classes, in equal blocks; None for an unconditional draw."""
    import torch

    if example_cond is not None and not (isinstance(example_cond, dict) and set(example_cond) == {"label"}):
        raise ValueError(f"--checkpoint: {checkpoint} is conditioned on images or metadata; use cdm4mi denoise")
    if classes is None:
        return None
    if class_names is None:
        raise ValueError(f"--classes: {checkpoint} is not a class-conditional model")
    if classes == "all":
        chosen = list(range(len(class_names)))
    else:
        chosen = []
        for item in classes.split(","):
            item = item.strip()
            if item in class_names:
                chosen.append(class_names.index(item))
            elif item.isdigit() and int(item) < len(class_names):
                chosen.append(int(item))
            else:
                raise ValueError(f"--classes: unknown class '{item}'; the model knows {class_names}")
    return torch.tensor(chosen).repeat_interleave(-(-count // len(chosen)))[:count]


def draw(module: DiffusionModule, shape: torch.Size, labels: torch.Tensor | None, args: argparse.Namespace,
         overrides: dict) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """Samples in batches; the first batch's first rows are recorded along the way for the process strip."""

    from cdm4mi.evaluation.image_figures import pick_frames
    from cdm4mi.inference.generate import sample_batches

    steps = overrides.get("steps", module.config.sampling.steps)
    recorded = set(pick_frames(steps, count=8))
    frames: list[tuple[str, torch.Tensor]] = []

    def record(step: int, t: float, x: torch.Tensor, x0: torch.Tensor) -> None:
        if step in recorded:  # a column shows the state after the step taken at time t
            time = "sample" if step == steps - 1 else f"t={t:.0f}" if module.sde is None else f"t={t:.2f}"
            frames.append((time, x[:4].detach().cpu().clamp(-1, 1)))

    def noise_frame(x_T: torch.Tensor) -> None:
        if len(shape) >= 3:
            frames.append(("noise", x_T[:4].detach().cpu().clamp(-1, 1)))

    samples = sample_batches(module, tuple(shape), args.num_samples, labels, args.batch_size, args.seed, args.precision,
                             on_first_prior=noise_frame, callback=record, step_progress=True, **overrides)
    return samples, frames


def write_samples(samples: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None,
                  module: DiffusionModule, out: Path, overwrite: bool) -> None:
    import numpy as np
    import torch

    with atomic_output(out, overwrite) as temporary:
        if out.suffix == ".npy":
            with open(temporary, "wb") as handle:
                np.save(handle, samples.numpy())
        elif out.suffix == ".pt":
            torch.save(samples if labels is None else {"samples": samples, "labels": labels}, temporary)
        else:
            from cdm4mi.data.expression import samples_to_anndata

            names = None if labels is None else [class_names[c] for c in labels.tolist()]
            samples_to_anndata(samples, module.data_state, labels=names).write_h5ad(temporary)
