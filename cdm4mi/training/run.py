"""Build the Lightning Trainer from a config and fit. Scale-out (DDP, multi-node) is Lightning's:
set ``training.strategy``, ``training.devices`` and ``training.num_nodes``; no code changes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from cdm4mi.atomic import atomic_output, record_written, refuse_foreign, refuse_output_inside, remove_recorded
from cdm4mi.cohort.manifest import load_manifest
from cdm4mi.config import Config
from cdm4mi.data.metadata import metadata_vector_dim
from cdm4mi.models.registry import check_backbone_size
from cdm4mi.training.datamodule import DiffusionDataModule
from cdm4mi.training.ema import WarmupEMA
from cdm4mi.training.module import DiffusionModule
from cdm4mi.training.previews import SamplePreviews
from cdm4mi.training.safety import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    AtomicCheckpointIO,
    RandomState,
    load_error,
)
from cdm4mi.training.stopping import DeferredRequeue, SigtermStop, fit_until_stopped
from cdm4mi.training.validation import MONITOR, DenoisingValidation


class FinalCheckpoint(Callback):
    """Writes ``last.ckpt`` at the end of training when the periodic checkpoint missed the last step.

    Runs before the EMA callback's ``on_train_end``, so the live weights are still in the model and
    the checkpoint can be resumed exactly.
    """

    def __init__(self, path: Path, every_n_train_steps: int):
        self.path = path
        self.every_n_train_steps = every_n_train_steps

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step % self.every_n_train_steps:
            trainer.save_checkpoint(self.path, weights_only=False)


def device_overrides(device: str) -> list[str]:
    """Config overrides that train on ``device`` (``--device``, resolved: cpu, cuda, cuda:N, mps): ``cuda`` keeps
    ``training.devices`` (all GPUs for ``auto``), ``cuda:N`` trains on GPU N alone."""
    kind, _, index = device.partition(":")
    accelerator = {"cuda": "gpu"}.get(kind, kind)
    return [f"training.accelerator={accelerator}", *([f"training.devices=[{index}]"] if index else [])]


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``auto``: bf16 mixed precision on GPUs that support it, fp16 mixed on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def build_trainer(config: Config, denoiser: bool = False) -> L.Trainer:
    """The Lightning trainer of ``config``; a ``denoiser`` (a scan model) also scores its validation slices as
    ``cdm4mi denoise`` denoises them and keeps ``best.ckpt`` by that PSNR (``cdm4mi.training.validation``)."""
    training = config.training
    output_dir = Path(config.output_dir)
    checkpoint_dir = output_dir / CHECKPOINT_DIR
    callbacks: list[Callback] = [SigtermStop(checkpoint_dir / LAST_CHECKPOINT), DeferredRequeue(),
                                 FinalCheckpoint(checkpoint_dir / LAST_CHECKPOINT, training.checkpoint_every_n_steps),
                                 RandomState(),
                                 SamplePreviews(training.preview_samples, training.preview_t_start, training.seed,
                                                output_dir / "previews")]
    if training.ema_decay is not None:
        callbacks.append(WarmupEMA(training.ema_decay))
    callbacks += [
        LearningRateMonitor(logging_interval="step"),
        ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=training.checkpoint_every_n_steps,
            save_top_k=1,
            save_last=True,
        ),
    ]
    if denoiser and training.val_batches > 0:
        callbacks += [DenoisingValidation(training.seed),
                      ModelCheckpoint(dirpath=checkpoint_dir, filename=BEST_CHECKPOINT.removesuffix(".ckpt"),
                                      monitor=MONITOR, mode="max", save_top_k=1, auto_insert_metric_name=False,
                                      enable_version_counter=False)]
    # Versioned log folders (logs/version_0, version_1 after a resume, ...): a resumed run never
    # overwrites the curves of the run it continues.
    loggers = [CSVLogger(output_dir, name="logs"), TensorBoardLogger(output_dir, name="tensorboard")]
    return L.Trainer(
        default_root_dir=checkpoint_dir,  # where Lightning's SLURM auto-requeue saves and finds hpc_ckpt_<n>.ckpt
        max_steps=training.max_steps,
        accelerator=training.accelerator,
        devices=training.devices,
        num_nodes=training.num_nodes,
        strategy=training.strategy,
        precision=resolve_precision(training.precision, training.accelerator),
        gradient_clip_val=training.gradient_clip_val,
        accumulate_grad_batches=training.accumulate_grad_batches,
        val_check_interval=training.val_every_n_steps,
        check_val_every_n_epoch=None,
        limit_val_batches=training.val_batches,
        log_every_n_steps=training.log_every_n_steps,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=loggers,
        enable_progress_bar=training.progress_bar,
        enable_model_summary=training.progress_bar,
    )


def check_vector_dim(config: Config) -> None:
    """The network takes the metadata vector the data give: ``network.vector_dim`` must be
    ``2 * len(data.metadata)`` (0 without metadata), checked before any data are loaded."""
    fields = config.data.get("metadata")
    expected = 0 if fields is None else metadata_vector_dim(fields)
    vector_dim = config.network.get("vector_dim", 0)
    if vector_dim != expected:
        given = f"data.metadata {list(fields)} gives {expected} numbers (2 per field)" if fields else \
            "data.metadata is not set (the data give no vector)"
        raise ValueError(f"network.vector_dim: is {vector_dim} but {given}; set network.vector_dim={expected}")


def check_network_fits_data(config: Config, train_set) -> None:
    """The network's sizes agree with what the data give, checked before any training: ``network.dim`` with
    a vector's length (genes), ``network.out_channels`` with an image's channels, ``network.num_classes``
    with the data set's classes (a label condition)."""
    item = train_set[0]
    x0, network, data = item["x0"], config.network, config.data["name"]
    if x0.ndim == 1 and "dim" in network and network["dim"] != x0.shape[0]:
        what = "genes" if hasattr(train_set, "gene_names") else "numbers per item"
        raise ValueError(f"network.dim: is {network['dim']} but data '{data}' gives {x0.shape[0]} {what}; "
                         f"set network.dim={x0.shape[0]}")
    if x0.ndim >= 3 and network.get("out_channels", x0.shape[0]) != x0.shape[0]:
        raise ValueError(f"network.out_channels: is {network['out_channels']} but data '{data}' gives images "
                         f"with {x0.shape[0]} channels")
    cond = item.get("cond")
    if isinstance(cond, dict) and "label" in cond:
        classes = getattr(train_set, "num_classes", None)
        if classes is not None and network.get("num_classes", 0) != classes:
            raise ValueError(f"network.num_classes: is {network.get('num_classes', 0)} but data '{data}' has "
                             f"{classes} classes; set network.num_classes={classes}")


RUN_OUTPUTS = (CHECKPOINT_DIR, "logs", "tensorboard", "previews", "config.yaml")  # what a run writes


def check_output_dir(config: Config, resume: bool) -> None:
    """``output_dir`` lies outside the data it trains on, and holds no run entry that cdm4mi did not write
    (a user's own ``config.yaml`` or ``logs/``), which the run would overwrite or ``--overwrite`` delete;
    ``--resume`` says the folder is the run's own."""
    output_dir, data = Path(config.output_dir), config.data
    for key in ("root", "path"):  # the data sets' data folders and files
        if isinstance(data.get(key), str):
            refuse_output_inside(output_dir, [data[key]], "output_dir", f"data.{key}")
    if isinstance(data.get("manifest"), str) and Path(data["manifest"]).is_file():
        manifest = load_manifest(data["manifest"], root=data.get("root"), check_files=False)
        manifest.refuse_output_inside(output_dir, "output_dir")
    if not resume:
        refuse_foreign(output_dir, RUN_OUTPUTS, "output_dir")


HPC_CHECKPOINT = re.compile(r"hpc_ckpt_(\d+)\.ckpt")  # Lightning's, saved on SLURM's requeue signal


def run_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoints/last.ckpt`` and the checkpoints Lightning saves when SLURM signals a requeue
    (``checkpoints/hpc_ckpt_<n>.ckpt``, under ``--signal=SIGUSR1@T``), those that exist."""
    folder = output_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.name == LAST_CHECKPOINT or HPC_CHECKPOINT.fullmatch(path.name))


def resume_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint a resumed run continues from: of ``run_checkpoints``, the one of the latest training step
    (``last.ckpt`` on a tie: it is written between steps); None if there is none."""
    steps = {}
    for path in run_checkpoints(output_dir):
        try:  # mmap: reads the step, not the weights
            steps[path] = int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
        except Exception as error:  # torch raises many types for a bad file; KeyError, TypeError: not a checkpoint
            raise ValueError(f"--resume: {path} is not a loadable checkpoint: {load_error(error)}") from None

    def recency(path: Path) -> tuple[int, bool, int]:
        number = HPC_CHECKPOINT.fullmatch(path.name)
        return steps[path], number is None, int(number[1]) if number else 0

    return max(steps, key=recency, default=None)


def fit(config: Config, resume: bool | str = False, overwrite: bool = False) -> tuple[DiffusionModule, L.Trainer]:
    """Train as configured; with ``resume`` continue from the run's latest checkpoint (``resume_checkpoint``),
    with ``resume='auto'`` too if there is one and start otherwise (a job that may be requeued); with
    ``overwrite`` start over in an ``output_dir`` that holds a run (deleted once the data have loaded)."""
    L.seed_everything(config.training.seed, workers=True, verbose=False)
    output_dir = Path(config.output_dir)
    if resume and overwrite:
        raise ValueError("--overwrite: cannot be combined with --resume (continue the run, or start it over)")
    checkpoint = resume_checkpoint(output_dir) if resume else None
    if resume == "auto":
        resume = checkpoint is not None
    elif resume and checkpoint is None:
        raise ValueError(f"--resume: no checkpoint to resume from in {output_dir / CHECKPOINT_DIR}")
    if not resume and not overwrite and run_checkpoints(output_dir):
        raise ValueError(f"output_dir: {output_dir} already holds a run; pass --resume to continue it, "
                         "--overwrite to start over, or choose another output_dir")
    check_output_dir(config, resume)
    check_vector_dim(config)
    network = dict(config.network)
    check_backbone_size(network.pop("name"), network)  # before the data load, which may take hours
    datamodule = DiffusionDataModule(config.data, config.training.batch_size, config.training.num_workers,
                                     validate=config.training.val_batches > 0)
    datamodule.setup("fit")
    check_network_fits_data(config, datamodule.train_set)
    module = DiffusionModule(config.model_dump(mode="json"), datamodule.data_state())
    try:
        trainer = build_trainer(config, denoiser=module.task == "denoise")
    except (MisconfigurationException, ImportError, ValueError, TypeError) as error:  # what Lightning raises for them
        training = config.training
        options = (f"training.accelerator={training.accelerator} devices={training.devices} "
                   f"num_nodes={training.num_nodes} strategy={training.strategy} precision={training.precision}")
        first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ValueError(f"{options}: Lightning cannot run with these: {first_line}") from None
    if config.training.nonfinite_loss == "skip" and trainer.world_size > 1:
        raise ValueError(f"training.nonfinite_loss: 'skip' works on one process only (Lightning cannot skip a step "
                         f"in distributed training; this run has {trainer.world_size}); use 'stop', which every "
                         "process does together")
    if trainer.is_global_zero:
        if overwrite:
            remove_recorded(output_dir, RUN_OUTPUTS)  # check_output_dir refused any entry not recorded
        output_dir.mkdir(parents=True, exist_ok=True)
        record_written(output_dir, RUN_OUTPUTS)  # before writing: a run stopped midway still owns its files
        with atomic_output(output_dir / "config.yaml", overwrite=True) as temporary:
            temporary.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    try:
        stopper = next(callback for callback in trainer.callbacks if isinstance(callback, SigtermStop))
        fit_until_stopped(trainer, module, datamodule, str(checkpoint) if resume else None, stopper)
    finally:
        if trainer.is_global_zero:  # the record keeps only what this run left, so a user's later folder is theirs
            record_written(output_dir, [name for name in RUN_OUTPUTS if os.path.lexists(output_dir / name)], keep=False)
    return module, trainer
