"""``cdm4mi demo``: the whole pipeline end to end on data it generates itself.

Today: learn a 2-D Gaussian mixture (configs/toy2d.yaml), sample it and check the modes against
the truth. The medical pipeline (phantom hospital -> simulated low dose -> train -> denoise ->
evaluate) replaces this as it lands.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from cdm4mi.atomic import check_writable
from cdm4mi.config import builtin_config, load_config
from cdm4mi.data.registry import build_dataset
from cdm4mi.evaluation.distributions import mixture_report
from cdm4mi.evaluation.figures import save_sample_preview
from cdm4mi.training.run import fit


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("demo", parents=[common], help="run the end-to-end demo", description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--max-steps", type=int, default=1500, help="training steps (default 1500)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        check_writable(out, args.overwrite)
        _remove_previous_demo(out)
    config = load_config(builtin_config("toy2d.yaml"), [f"output_dir={out / 'run'}", f"training.max_steps={args.max_steps}"])
    module, _ = fit(config)
    data = dict(config.data)
    truth = build_dataset(data.pop("name"), "test", **data).truth
    generator = torch.Generator().manual_seed(0)
    samples = module.sample(torch.randn(5000, 2, generator=generator), generator=generator, progress=True)
    report = mixture_report(samples, truth["means"], truth["weights"], float(truth["std"]))
    figure = save_sample_preview(samples, build_dataset("gaussian_mixture", "test", **data).points, out / "samples.png",
                                 title="cdm4mi demo: generated (red) over data (grey)")
    print("\nmode   true weight   sampled weight   true mean          sampled mean")
    for mode, (w_true, w, m_true, m) in enumerate(zip(report["true_proportions"], report["proportions"],
                                                       report["true_means"], report["mode_means"])):
        print(f"{mode:>4}   {w_true:>11.3f}   {w:>14.3f}   {_fmt(m_true):<17}  {_fmt(m)}")
    print(f"samples between modes (> 4 std from every mean): {report['outlier_fraction']:.2%}")
    print(f"figure: {figure}")
    return 0


def _fmt(point: list[float]) -> str:
    return "(" + ", ".join(f"{value:+.2f}" for value in point) + ")"


def _remove_previous_demo(out: Path) -> None:
    shutil.rmtree(out)
