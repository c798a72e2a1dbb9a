"""Crash-safe training: checkpoints written atomically and read without unpickling code, the random state
saved with every checkpoint, and a guard that stops (or skips the batch) on a non-finite loss and never lets
non-finite weights reach a checkpoint.

Lightning's own save goes through an fsspec transaction that writes to the system temp folder and moves the
file into place, a copy (not a rename) when that folder is on another file system; a kill during that copy
leaves half a checkpoint. Here the file is written beside its target and renamed (``cdm4mi.atomic``).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from cdm4mi.atomic import atomic_output

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"  # a denoiser's checkpoint of the best validation PSNR (cdm4mi.training.validation)


class NonFiniteTraining(ValueError):
    """Training produced a NaN/Inf loss or weights; reported as one line by the CLI."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves with temp file + rename; loads with ``weights_only=True`` (resuming never runs pickled code)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        with atomic_output(path, overwrite=True) as temporary:
            torch.save(checkpoint, temporary)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        try:
            return torch.load(path, map_location=map_location or (lambda storage, _: storage), weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
            raise ValueError(f"--resume: {path} is not a loadable checkpoint: {load_error(error)}") from None


def load_error(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words: the code a pickle payload names, what the
    weights-only unpickler met, or the first line (sentence, if long; with the next line if it ends with ':')
    of torch's message."""
    text = str(error).strip()
    payload = re.search(r"unsupported global:? (?:GLOBAL )?(\S+)", text, flags=re.IGNORECASE)
    if payload:
        return f"it carries code ({payload.group(1)}), which cdm4mi never unpickles"
    if isinstance(error, EOFError):
        return "the file ends early (cut short)"
    if not text:
        return type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[0].startswith("Weights only load failed"):  # then paragraphs of advice around what it met
        met = [line for line in lines[1:] if not line.startswith(("Please file an issue", "Check the documentation"))]
        return f"not a PyTorch checkpoint ({met[0] if met else 'its pickle stream is not one torch writes'})"
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:  # "Error(s) in loading state_dict for ...:" then the keys
        detail = lines[1]
        return f"{first} {detail[:200]}{' ...' if len(detail) > 200 else ''}"
    return first.split(". ")[0] if len(first) > 120 else first


class RandomState(Callback):
    """Saves the torch (CPU and CUDA), NumPy and Python random states with every checkpoint and restores
    them on resume, so a resumed run draws the same noise, timesteps and data order as an unbroken one.

    Stored as tensors, lists and ints only (``weights_only`` loading). Under DDP the checkpoint holds rank
    0's state, which every rank restores.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
            "python": list(random.getstate()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))


class NonFiniteGuard:
    """What to do with a NaN/Inf loss: ``stop`` (raise, keeping the checkpoints already written) or
    ``skip`` (drop the batch, no optimizer step), stopping after ``max_skips`` skipped batches in a row."""

    def __init__(self, action: str, max_skips: int, checkpoint: Path):
        self.action, self.max_skips, self.checkpoint = action, max_skips, checkpoint
        self.skipped_in_a_row = 0
        self.skipped_total = 0

    def check_loss(self, loss: torch.Tensor, step: int, finite: bool | None = None) -> bool:
        """True when the batch may be used; False to skip it; raises to stop. ``finite``: whether the loss of
        every process is finite (DDP); by default, whether ``loss`` is."""
        if finite is None:
            finite = bool(torch.isfinite(loss))
        if finite:
            self.skipped_in_a_row = 0
            return True
        if bool(torch.isfinite(loss)):
            what = f"the training loss of another process is NaN or Inf at step {step}"
        else:
            what = f"the training loss is {loss.item()} at step {step}"
        if self.action == "stop":
            raise NonFiniteTraining(f"training.nonfinite_loss=stop: {what}; stopped. {self._kept()} "
                                    "Lower training.learning_rate, check the data, or set training.nonfinite_loss=skip")
        self.skipped_in_a_row += 1
        self.skipped_total += 1
        if self.skipped_in_a_row > self.max_skips:
            raise NonFiniteTraining(f"training.max_nonfinite_skips: {what}, the {self.skipped_in_a_row}th non-finite "
                                    f"batch in a row; stopped. {self._kept()} Lower training.learning_rate or check the data")
        return False

    def check_weights(self, state_dict: dict[str, Any], step: int) -> None:
        """Raised before a checkpoint with NaN/Inf weights is written, so it never replaces a good one."""
        bad = next((name for name, value in state_dict.items()
                    if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())), None)
        if bad is not None:
            raise NonFiniteTraining(f"training: the weights became non-finite by step {step} ({bad}); that checkpoint "
                                    f"was not written. {self._kept()} Lower training.learning_rate or training.gradient_clip_val")

    def _kept(self) -> str:
        if self.checkpoint.is_file():
            return f"The last good checkpoint is kept: {self.checkpoint} (resume with --resume)."
        return "No checkpoint had been written yet."

