"""Spread patients over processes with Lightning: ``Trainer.predict`` with one patient per item.

Lightning starts the processes (``devices=N`` on one machine) or finds them started by ``srun`` (SLURM) or
``torchrun`` (its cluster environments), and gives each process its share of the patients: in predict mode its
sampler is ``UnrepeatedDistributedSampler``, which hands process r the items r, r + W, r + 2W, ... and pads
nothing, so no patient is done twice. That sampler needs an item for every process; a cohort smaller than the
number of processes gets idle items (indices past the last patient) that do nothing.

Each process runs ``task(model, index)`` on its patients (the task writes its outputs itself, so no volume
crosses processes) and the small results are gathered to every process at the end, each with the rank that
made it. A result must not depend on which process made it: ``denoise_volume`` seeds a fresh generator for
each scan from ``--seed``, so a patient comes out the same with one process or many.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from torch.utils.data import DataLoader, Dataset

from cdm4mi.training.module import DiffusionModule
from cdm4mi.training.stopping import release_process_group

Task = Callable[[DiffusionModule, int], Any]  # (model on this process's device, patient index) -> a small result


class PatientIndices(Dataset):
    """Items ``0 .. length - 1``: a patient's index below ``count``, an idle item from there on."""

    def __init__(self, count: int, length: int):
        self.count, self.length = count, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


def only_item(items: list[int]) -> int:
    """The collate function of a loader with batch_size 1: the item itself, not a batched tensor."""
    return items[0]


@dataclass
class Done:
    """What one process did with one patient: its index, the result of the task and the process's global rank."""

    index: int
    rank: int
    result: Any


@dataclass
class Failed:
    """The result of a task that raised one of ``predict_patients``'s ``errors`` (its message: exceptions
    themselves may not survive the trip to the other processes)."""

    message: str


class PatientPredictor(L.LightningModule):
    """Runs ``task`` on the patients of this process and gathers every ``Done`` into ``done`` (in index order,
    on every process). ``prepare(model, device)``, if given, runs once the model is on the process's device
    (placement options such as channels_last or torch.compile that depend on the device)."""

    def __init__(self, model: DiffusionModule, task: Task, count: int,
                 prepare: Callable[[DiffusionModule, torch.device], Any] | None = None,
                 errors: tuple[type[Exception], ...] = ()):
        super().__init__()
        self.model = model
        self.task, self.count, self.prepare, self.errors = task, count, prepare, errors
        self.local: list[Done] = []
        self.done: list[Done] = []

    def on_predict_start(self) -> None:
        self.model.eval()
        if self.prepare is not None:
            self.prepare(self.model, self.device)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # an index: the task reads the patient and moves its tensors itself

    def predict_step(self, index: int, batch_idx: int) -> int:
        if index < self.count:
            try:
                result = self.task(self.model, index)
            except self.errors as error:  # reported by every process after the gather, not by this one alone now
                result = Failed(str(error) or type(error).__name__)
            self.local.append(Done(index, self.global_rank, result))
        return index  # not None, which Lightning warns of; nothing is collected (return_predictions=False)

    def on_predict_epoch_end(self) -> None:
        gathered = [self.local]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self.local)
        self.done = sorted((item for part in gathered for item in part), key=lambda item: item.index)
        indices = [item.index for item in self.done]
        if indices != list(range(self.count)):  # a sampler that pads or drops would break the outputs' contract
            twice = sorted({i for i in indices if indices.count(i) > 1})
            missing = sorted(set(range(self.count)) - set(indices))
            raise RuntimeError(f"the processes did patients {twice} twice and {missing} not at all")


@dataclass
class PredictRun:
    done: list[Done]  # every patient's result, in index order (on every process)
    world_size: int
    global_rank: int

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def results(self) -> list[Any]:
        """Every patient's result in index order; the message of the first that ``Failed`` as a ``ValueError``
        (on every process alike)."""
        failed = next((item.result for item in self.done if isinstance(item.result, Failed)), None)
        if failed is not None:
            raise ValueError(failed.message)
        return [item.result for item in self.done]


def lightning_devices(device: str, devices: int | str | None) -> tuple[str, int | str | list[int]]:
    """Lightning's ``accelerator`` and ``devices`` for a resolved ``--device`` (cpu, cuda, cuda:N, mps) and
    ``--devices`` (a count, 'auto' or None: all GPUs of the machine, one process on the CPU)."""
    kind, _, index = device.partition(":")
    accelerator = {"cuda": "gpu"}.get(kind, kind)
    if index:
        if devices not in (None, "auto", 1):
            raise ValueError(f"--devices: {devices} processes, but --device {device} names one GPU; give "
                             "--device cuda to use several")
        return accelerator, [int(index)]
    return accelerator, "auto" if devices is None else devices


def predict_patients(model: DiffusionModule, task: Task, count: int, device: str = "cpu",
                     devices: int | str | None = None, num_nodes: int = 1, strategy: str = "auto",
                     prepare: Callable[[DiffusionModule, torch.device], Any] | None = None,
                     errors: tuple[type[Exception], ...] = ()) -> PredictRun:
    """Run ``task(model, i)`` for every patient ``i < count``, each exactly once, spread over the processes of
    ``devices`` x ``num_nodes`` (see ``lightning_devices``); every process gets every result back. A task that
    raises one of ``errors`` gives a ``Failed`` result and the others go on; any other exception ends the run.

    With more than one process and no external launcher, Lightning starts the others by running this
    program's command line again: everything before this call must give every process the same ``count``.
    """
    if count < 1:
        raise ValueError("no patients to run")
    accelerator, lightning_count = lightning_devices(device, devices)
    # Under SLURM, Lightning's auto-requeue would save a training checkpoint of this predictor on SIGUSR1.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    with quiet_lightning():
        trainer = L.Trainer(accelerator=accelerator, devices=lightning_count, num_nodes=num_nodes, strategy=strategy,
                            precision="32-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, plugins=plugins)
        check_launched(trainer.world_size, devices, num_nodes)
        predictor = PatientPredictor(model, task, count, prepare, errors)
        items = PatientIndices(count, max(count, trainer.world_size))
        loader = DataLoader(items, batch_size=1, shuffle=False, collate_fn=only_item)
        trainer.predict(predictor, dataloaders=loader, return_predictions=False)
    release_process_group()  # every process has the gathered results: no collective operation follows
    return PredictRun(predictor.done, trainer.world_size, trainer.global_rank)


def check_launched(world_size: int, devices: int | str | None, num_nodes: int) -> None:
    """Processes started by torchrun (``WORLD_SIZE``) are the processes Lightning plans for: with fewer, each
    would take itself for the only one and do every patient (Lightning checks SLURM's tasks itself)."""
    launched = os.environ.get("WORLD_SIZE")
    if launched is not None and launched.isdigit() and int(launched) != world_size:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", "N")
        raise ValueError(f"--devices: {launched} processes were started (torchrun: WORLD_SIZE) but --devices "
                         f"{devices or 'auto'} on --num-nodes {num_nodes} makes {world_size}; pass --devices {per_node}"
                         f" (processes per node) and --num-nodes (nodes)")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Without Lightning's notes (accelerators found, tips, 'Initializing distributed'), once per process: the
    command says what ran (its processes) itself. Lightning's warnings and errors still show."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Lightning 2.6 on torch 2.13 warns of its own use of a deprecated torch API
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
