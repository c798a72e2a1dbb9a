"""Run by test_training.py as a real process: trains a few steps with Lightning's DDP strategy on
2 CPU processes (gloo); Lightning re-launches this script for rank 1. Each rank then saves its
weights, so the test can check that both ended identical.

``python ddp_worker.py OUT [stop|skip]``: rank 1 alone gets a NaN training loss at its eighth step, and
``training.nonfinite_loss`` is set to that action."""

import os
import sys
from pathlib import Path

import torch

from cdm4mi.config import builtin_config, load_config
from cdm4mi.diffusion.objective import DiffusionObjective
from cdm4mi.training.run import fit

NAN_AT_CALL = 8  # after the checkpoint of step 6


def nan_on_rank_1(loss):
    """``DiffusionObjective.loss``, NaN at the eighth training call on rank 1 only."""
    calls = []

    def patched(self, *args, **kwargs):
        value = loss(self, *args, **kwargs)
        if torch.is_grad_enabled() and os.environ.get("LOCAL_RANK") == "1":
            calls.append(1)
            if len(calls) == NAN_AT_CALL:
                return value * float("nan")
        return value

    return patched


if __name__ == "__main__":
    out = Path(sys.argv[1])
    action = sys.argv[2] if len(sys.argv) > 2 else None
    if action is not None:
        DiffusionObjective.loss = nan_on_rank_1(DiffusionObjective.loss)
    config = load_config(
        builtin_config("vector_gaussian.yaml"),
        [
            f"output_dir={out}",
            "training.accelerator=cpu",
            "training.devices=2",
            "training.strategy=ddp",
            "training.max_steps=12",
            "training.batch_size=64",
            "training.val_every_n_steps=6",
            "training.checkpoint_every_n_steps=6",
            "training.preview_samples=64",
            "training.progress_bar=false",
            *([f"training.nonfinite_loss={action}"] if action else []),
        ],
    )
    module, trainer = fit(config)
    state = {key: value.detach().cpu() for key, value in module.state_dict().items()}
    torch.save({"global_step": trainer.global_step, "world_size": trainer.world_size, "state": state},
               out / f"rank{trainer.global_rank}.pt")
