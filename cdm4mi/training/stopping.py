"""Stopping a training run on SIGTERM or Ctrl-C so that ``cdm4mi train --resume`` can continue it.

SIGTERM: ``SigtermStop`` notes the signal; at the end of the step under way every process asks whether any of
them got one (``strategy.reduce_boolean_decision``: one small all-reduce per step under DDP, so all ranks decide
at the same step, whichever rank the signal reached) and sets ``trainer.should_stop``. Lightning then ends the
run as it ends one at ``max_steps``: ``last.ckpt`` holds the last step (``ModelCheckpoint``, or
``FinalCheckpoint`` when that step is not a periodic one), and ``fit_until_stopped`` raises ``Terminated``.

Lightning has a SIGTERM handler of its own (``lightning.pytorch.trainer.connectors.signal_connector``), which
``SigtermStop`` replaces once training starts: under DDP it broadcasts inside the signal handler, which
deadlocks when the signal lands while another rank waits in a collective operation (seen with two CPU ranks,
gloo), and its loops then stop each rank where it stands, mid-validation included, without a checkpoint. A
SIGTERM in the moment between Lightning installing its handler and training starting still goes its way:
its ``SIGTERMException`` becomes ``Terminated`` too, and the checkpoints written so far are kept.

SLURM's requeue signal (``#SBATCH --signal=SIGUSR1@90``): Lightning's handler saves ``hpc_ckpt_N.ckpt`` and
runs ``scontrol requeue`` inside the signal handler, so mid-step: it can block on a lock that the interrupted
code holds (its logger flush and checkpoint save), and under DDP it enters a collective while the other ranks
are elsewhere. ``DeferredRequeue`` moves that handler to the end of the step under way, agreed by every rank as
for SIGTERM.

Ctrl-C: Lightning catches ``KeyboardInterrupt`` wherever it hits, mid-step, and calls ``sys.exit(1)``. A
mid-step state cannot be resumed exactly, so no checkpoint is written; the last periodic one is kept.
``fit_until_stopped`` raises ``KeyboardInterrupt`` again. The CLI reports the two with exit status 143 and 130,
in one line printed by rank 0 alone (``cdm4mi.termination.quiet``).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cdm4mi.termination import Terminated, quiet


class SigtermStop(Callback):
    """Stops training after the step under way once any process got SIGTERM; ``path`` is the checkpoint
    that then holds the last step."""

    def __init__(self, path: Path):
        self.path = path
        self.received = False
        self.stop_step: int | None = None
        self.last_checkpoint_step: int | None = None

    def note(self, signum: int, frame: Any) -> None:
        """The SIGTERM handler while ``trainer.fit`` runs. It only notes: Lightning calls it from its own
        handler until training starts, and Lightning must not be interrupted mid-step."""
        self.received = True

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._replace_lightning_handler()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._replace_lightning_handler()

    def _replace_lightning_handler(self) -> None:
        if threading.current_thread() is threading.main_thread():  # as Lightning does: signals are main-thread only
            signal.signal(signal.SIGTERM, self.note)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Every rank asks at every step, whether or not it got the signal: the question is a collective operation.
        if trainer.strategy.reduce_boolean_decision(self.received, all=False) and self.stop_step is None:
            self.stop_step = trainer.global_step
            trainer.should_stop = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.last_checkpoint_step = checkpoint.get("global_step")

    def outcome(self) -> str:
        """What a resume continues from, for the one-line message of a stopped run."""
        step = "" if self.last_checkpoint_step is None else f" (step {self.last_checkpoint_step})"
        if self.stop_step is not None and self.last_checkpoint_step == self.stop_step:
            return f"stopped after step {self.stop_step}, saved in {self.path}"
        if not self.path.is_file():
            return f"there is no {self.path.name} to resume from yet"
        return f"the last checkpoint {self.path}{step} is kept"


class DeferredRequeue(Callback):
    """Runs Lightning's SLURM requeue handler (when Lightning installed one: a SLURM job with auto-requeue) at the
    end of the step in which any rank got the requeue signal, instead of inside the signal handler."""

    def __init__(self):
        self.signum: int | None = None
        self.handler: Any = None
        self.received = False

    def note(self, signum: int, frame: Any) -> None:
        self.received = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        signum = getattr(environment, "requeue_signal", None)
        if signum is None or threading.current_thread() is not threading.main_thread():
            return
        handler = signal.getsignal(signum)
        if callable(handler) and handler != self.note:  # Lightning's, installed as training starts
            self.signum, self.handler = signum, handler
            signal.signal(signum, self.note)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.handler is None:  # the same on every rank: all ranks run in the same SLURM job
            return
        if trainer.strategy.reduce_boolean_decision(self.received, all=False):
            self.received = False
            self.handler(self.signum, None)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self.handler)  # Lightning restores its originals after this
        self.signum, self.handler = None, None


def fit_until_stopped(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
                      ckpt_path: str | None, stopper: SigtermStop) -> None:
    """``trainer.fit``; after a SIGTERM it raises ``Terminated``, after Ctrl-C ``KeyboardInterrupt``, their text
    ``stopper.outcome()``. ``stopper`` must be one of ``trainer.callbacks``."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    # Until Lightning installs its handler (it keeps this one, calling it after its own), a SIGTERM is noted
    # and training stops after its first step.
    previous = signal.signal(signal.SIGTERM, stopper.note) if in_main_thread else None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        release_process_group()
    except (SIGTERMException, Terminated):  # SIGTERMException is a SystemExit: exit status 0 if left alone
        raise as_reported(Terminated(stopper.outcome())) from None
    except SystemExit:
        if trainer.interrupted:  # Lightning's sys.exit(1) after a KeyboardInterrupt
            raise as_reported(KeyboardInterrupt(f"no checkpoint is written mid-step; {stopper.outcome()}")) from None
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    if stopper.received or stopper.stop_step is not None:  # the latter on the ranks the signal did not reach
        raise as_reported(Terminated(stopper.outcome()))


def release_process_group() -> None:
    """Destroy torch.distributed's process group once every process is past its last collective operation (a
    run that ended normally, or stopped at a step all ranks agreed on). Lightning destroys an NCCL group at exit
    but leaves a gloo group (CPU) to the interpreter's shutdown, where gloo's worker threads can still be alive
    and abort the process: exit status -6, "terminate called without an active exception", after its work was
    done and written (seen once in CI, with ``cdm4mi denoise --devices 2`` on the CPU). Not called after an
    error: a rank that failed while the others wait in a collective would hang here."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def as_reported(stop: BaseException) -> BaseException:
    """``stop`` as this process reports it: global rank 0 prints it, every other rank of a DDP run stops quietly.
    Lightning's ``rank_zero_only.rank`` is read from the launcher's environment (RANK, LOCAL_RANK, SLURM_PROCID)
    on import, so it is right even before the strategy is set up."""
    return stop if rank_zero_only.rank == 0 else quiet(stop)
