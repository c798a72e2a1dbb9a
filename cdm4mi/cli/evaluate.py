"""``cdm4mi evaluate``: score a model on held-out data.

Generative models (images, cells, points; no ``--manifest``): sample as many items as the held-out
split holds and score them against it. Vectors and cells: MMD and Wasserstein-1 on PCA, per-gene mean
and variance correlations, kNN real-vs-generated AUC, cell-type accuracy, beside a matched Gaussian and
the real training set scored the same way. Images: FID and KID from the pytorch-fid Inception weights
(``--inception-weights``; never downloaded).

Denoisers (``--manifest``): held-out patients against full-dose targets and baselines. Per slice and
per patient: PSNR and SSIM (MONAI) in an HU window (default [-1000, 1000], data_range 2000), RMSE
and MAE in HU. Baselines in the same table: the low-dose input, a Gaussian filter
(sigma 1 px) and non-local means. Per-patient mean +- SD, a bootstrap 95 % CI over patients and a
paired Wilcoxon test of the model against each baseline. Writes metrics.csv, summary.json and PNG
figures. ``--folds K --config C`` instead trains and evaluates K patient-level folds and pools them.

CT also gets the physicist's measures per patient and method (physics.csv, a table, a figure each):
noise (HU SD) and HU bias in uniform regions found in the full dose, the noise power spectrum of
method - full dose (its peak frequency and shift from the low-dose input's), and the MTF50 at the
body edge relative to the full dose. ``--detectability`` adds low-contrast detectability: disks of
``--lesion-diameters`` x ``--lesion-contrasts`` inserted into the full and the low dose, every method run
again, CHO d' with bootstrap CIs per lesion class, the contrast each method keeps and the lesion classes
it keeps (CHO not below the low-dose input's).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cdm4mi.atomic import check_writable, refuse_foreign, refuse_output_inside, staged_folder
from cdm4mi.cli.options import (
    IncreasingPair,
    add_adapt_option,
    add_nlm_blend_option,
    add_process_options,
    add_runtime_options,
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
    process_options,
    whole_number,
)
from cdm4mi.cohort.manifest import load_manifest
from cdm4mi.cohort.splits import fold_manifests

if TYPE_CHECKING:  # annotations only: imported by the command as it runs, not for --help
    from cdm4mi.evaluation.heldout import HeldOutResult


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("evaluate", parents=[common], help="evaluate on held-out patients",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", help="denoisers: manifest JSON (cdm4mi manifest); without it the checkpoint "
                                           "is evaluated as a generative model on its own data set")
    parser.add_argument("--root", help="data root (default: the manifest's)")
    parser.add_argument("--output", "--out", dest="output", required=True,
                        help="output folder for metrics.csv, summary.json, figures")
    parser.add_argument("--checkpoint", help="trained model (not with --folds)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="the patients or items scored")
    parser.add_argument("--window", type=finite_float, nargs=2, action=IncreasingPair, default=[-1000.0, 1000.0],
                        metavar=("LOW", "HIGH"),
                        help="HU window for all metrics (default -1000 1000, data_range 2000)")
    parser.add_argument("--body-mask", action="store_true", help="score only the body (largest region > -500 HU)")
    parser.add_argument("--detectability", action="store_true",
                        help="CT: insert low-contrast lesions, run every method again, CHO d' per method and lesion "
                             "class and the lesions kept (about doubles the time)")
    parser.add_argument("--lesion-diameters", type=positive_float, nargs="+", metavar="MM",
                        help="--detectability: lesion diameters in mm (default 5 10)")
    parser.add_argument("--lesion-contrasts", type=finite_float, nargs="+", metavar="HU",
                        help="--detectability: lesion contrasts in HU (default 20 40)")
    parser.add_argument("--steps", type=positive_int, help="sampling steps (default: the checkpoint's)")
    parser.add_argument("--t-start", type=non_negative_int, help="warm-start timestep (default: from the estimated noise)")
    parser.add_argument("--draws", "--samples", dest="samples", type=positive_int, default=1,
                        help="denoisers: draws per scan, averaged; > 1 adds uncertainty maps")
    add_adapt_option(parser)
    add_nlm_blend_option(parser)
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the draws (and of --folds)")
    parser.add_argument("--folds", type=whole_number(2), help="patient-level K-fold cross-validation (needs --config)")
    parser.add_argument("--config", help="training config for --folds: a YAML file or a shipped config's name")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for --folds")
    parser.add_argument("--num-samples", type=positive_int,
                        help="generative: samples to draw, scored against as many held-out items (default: all of them)")
    parser.add_argument("--inception-weights", help="generative images: the pytorch-fid Inception weights file "
                                                    "(pt_inception-2015-12-05-6726825d.pth) for FID/KID")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="generative: samples per sampling batch")
    add_runtime_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder's results")
    add_process_options(parser.add_argument_group(
        "denoisers: spread the patients over processes with Lightning (--checkpoint; srun, torchrun or --devices N)"))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cdm4mi.config import load_config
    from cdm4mi.evaluation.crossval import cross_validate, fold_overrides
    from cdm4mi.evaluation.detectability import LesionStudy
    from cdm4mi.evaluation.heldout import evaluate_heldout
    from cdm4mi.inference.checks import check_denoiser, check_sampling_options
    from cdm4mi.inference.runtime import load_for_inference
    from cdm4mi.training.run import device_overrides

    out = Path(args.output)
    if (out / "metrics.csv").exists():
        check_writable(out / "metrics.csv", args.overwrite, option="--output")
    if args.checkpoint is not None:
        refuse_output_inside(out, [args.checkpoint], "--output", "--checkpoint")
    if args.manifest is None:
        return run_generative(args, out)
    if (args.folds is None) == (args.checkpoint is None):
        raise ValueError("give either --checkpoint (evaluate a model) or --folds K with --config (cross-validate)")
    if args.folds is not None and args.config is None:
        raise ValueError("--folds: needs --config, the training config to run for each fold")
    window = (float(args.window[0]), float(args.window[1]))
    manifest = load_manifest(args.manifest, root=args.root)
    if not args.detectability and (args.lesion_diameters or args.lesion_contrasts):
        raise ValueError("--lesion-diameters, --lesion-contrasts: describe the lesions of --detectability; add it")
    lesions = None
    if args.detectability:
        if manifest.modality != "CT":
            raise ValueError(f"--detectability: inserts lesions in HU, for CT; the manifest {manifest.path} is "
                             f"{manifest.modality}")
        defaults = LesionStudy()
        lesions = LesionStudy(tuple(args.lesion_diameters or defaults.diameters_mm),
                              tuple(args.lesion_contrasts or defaults.contrasts_hu), seed=args.seed)
    manifest.refuse_output_inside(out, "--output")
    for name in ("summary.json", "figures"):  # what the report writes beside metrics.csv: refused now, not at the end
        if (out / name).exists():
            check_writable(out / name, args.overwrite, option="--output")
    refuse_foreign(out, ["figures"], "--output")  # --overwrite replaces a figures/ folder only if cdm4mi wrote it
    options = {"steps": args.steps, "t_start": args.t_start, "samples": args.samples, "seed": args.seed,
               "precision": args.precision, "adapt_steps": args.adapt_steps, "nlm_blend": args.nlm_blend}
    evaluate = dict(window=window, use_body_mask=args.body_mask, denoise_options=options, lesions=lesions)
    processes = process_options(args)
    if processes is not None:
        if args.folds is not None:
            raise ValueError("--devices, --num-nodes, --strategy: spread the patients of a --checkpoint's evaluation; "
                             "--folds trains, on the config's training.devices")
        return run_on_processes(args, out, manifest, window, evaluate, processes)
    if args.folds is None:
        module = load_for_inference(args.checkpoint, args.device, args.precision, args.channels_last, args.compile)
        check_denoiser(module, args.checkpoint, manifest.modality, f"the manifest {manifest.path}")
        check_sampling_options(module, args.checkpoint, {} if args.steps is None else {"steps": args.steps},
                               t_start=args.t_start, warm_start=True)
        with staged_folder(out, overwrite=args.overwrite) as stage:
            result = evaluate_heldout(module, manifest, args.split, figures_dir=stage / "figures", **evaluate)
            return report(result, stage, out, window, args)
    # a bad config, or a --t-start its schedule lacks, fails before any fold is made
    diffusion = load_config(args.config, fold_overrides(args.overrides, out / "fold1")).diffusion
    highest = min(diffusion.timesteps - 1, diffusion.max_train_timestep if diffusion.max_train_timestep is not None
                  else diffusion.timesteps)
    if args.t_start is not None and diffusion.sde is None and args.t_start > highest:
        raise ValueError(f"--t-start: {args.t_start} lies beyond the timesteps {args.config} trains (0 to {highest})")
    folds = fold_manifests(manifest, args.folds, seed=args.seed)
    with staged_folder(out, overwrite=args.overwrite) as stage, removed_on_failure([out / f"fold{k + 1}" for k in range(len(folds))]):
        result = cross_validate(args.config, [*args.overrides, *device_overrides(args.device)], folds, out, stage,
                                evaluate, args.overwrite, device=args.device)
        return report(result, stage, out, window, args)




def run_on_processes(args: argparse.Namespace, out: Path, manifest, window: tuple[float, float], evaluate: dict,
                     processes: dict) -> int:
    """``--checkpoint``'s evaluation with its patients spread over processes (``--devices``, srun, torchrun): each
    process denoises and scores its patients, rank 0 gets every score and alone writes the report."""
    from cdm4mi.evaluation.heldout import evaluate_heldout, save_figures
    from cdm4mi.inference.batch import Placement
    from cdm4mi.inference.checks import check_denoiser, check_sampling_options
    from cdm4mi.training.checkpoint import load_module

    module = load_module(args.checkpoint)  # Lightning moves it to each process's device
    check_denoiser(module, args.checkpoint, manifest.modality, f"the manifest {manifest.path}")
    check_sampling_options(module, args.checkpoint, {} if args.steps is None else {"steps": args.steps},
                           t_start=args.t_start, warm_start=True)
    placement = Placement(args.precision, args.channels_last, args.compile)
    result = evaluate_heldout(module, manifest, args.split, processes={**processes, "prepare": placement}, **evaluate)
    if result is None:
        return 0  # not rank 0, which reports for every process
    with staged_folder(out, overwrite=args.overwrite) as stage:
        save_figures(result, stage / "figures", window)
        return report(result, stage, out, window, args)


@contextlib.contextmanager
def removed_on_failure(folders: list[Path]) -> Iterator[None]:
    """If the block fails, delete what it created of ``folders`` (a fold's manifest and training run), with
    any parent folders made for them (``--out`` itself)."""
    made = {next(path for path in (*reversed(folder.absolute().parents), folder.absolute()) if not path.exists())
            for folder in folders if not folder.exists()}
    try:
        yield
    except BaseException:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        raise




def report(result: HeldOutResult, stage: Path, out: Path, window: tuple[float, float], args: argparse.Namespace) -> int:
    """Write the report into ``stage`` (moved to ``out`` once this returns) and print it with the final paths."""
    from cdm4mi.evaluation.heldout import write_heldout_report

    split_label = args.split if args.folds is None else f"{args.folds}-fold cross-validation"
    written = write_heldout_report(result, stage, window, split_label, args.body_mask, args.seed)
    if result.nlm_blend:
        print(f"model: {1 - result.nlm_blend:.0%} the model's posterior mean, {result.nlm_blend:.0%} non-local means of "
              "the input (sampling.nlm_blend; --nlm-blend 0: the model alone)")
    print(written.table)
    for path in written.files:
        print(f"wrote: {out / path.relative_to(stage)}")
    return 0


def run_generative(args: argparse.Namespace, out: Path) -> int:
    from cdm4mi.extras import require

    require("sklearn", "evaluating a generative model (no --manifest)")  # its metrics and baselines (the bio extra)
    from cdm4mi.evaluation.generative import evaluate_generation
    from cdm4mi.inference.runtime import load_for_inference

    if args.checkpoint is None or args.folds is not None:
        raise ValueError("without --manifest, give --checkpoint: a generative model evaluated on its own data set")
    if process_options(args) is not None:
        raise ValueError("--devices, --num-nodes, --strategy: spread the patients of a denoiser (--manifest); a "
                         "generative model is evaluated in one process (--device)")
    if (out / "summary.json").exists():
        check_writable(out / "summary.json", args.overwrite, option="--output")
    module = load_for_inference(args.checkpoint, args.device, args.precision, args.channels_last, args.compile)
    for key in ("root", "path"):  # as for a manifest's data: never write into the data set it was trained on
        if isinstance(module.config.data.get(key), str):
            refuse_output_inside(out, [module.config.data[key]], "--output", f"the checkpoint's data.{key}")
    result = evaluate_generation(module, out, split=args.split, num_samples=args.num_samples,
                                 inception_weights=args.inception_weights, batch_size=args.batch_size,
                                 seed=args.seed, overwrite=args.overwrite, precision=args.precision)
    print(format_generation_table(result.reports))
    for path in result.files:
        print(f"wrote: {path}")
    return 0


def format_generation_table(reports: dict[str, dict]) -> str:
    """One line per method with the headline metrics that it has."""
    keys = [key for key in ("fid", "kid_mean", "mmd_rbf", "wasserstein1", "gene_mean_pearson", "gene_var_pearson",
                            "knn_auc", "celltype_accuracy_generated") if any(r.get(key) is not None for r in reports.values())]
    widths = [max(len(key), 8) + 2 for key in keys]
    lines = ["method".ljust(18) + "".join(key.rjust(width) for key, width in zip(keys, widths, strict=True))]
    for method, report in reports.items():
        cells = ["-" if report.get(key) is None else f"{report[key]:.4g}" for key in keys]
        lines.append(method.ljust(18) + "".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True)))
    return "\n".join(lines)
