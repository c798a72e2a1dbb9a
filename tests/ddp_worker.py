"""Run by test_training.py as a real process: trains a few steps with Lightning's DDP strategy on
2 CPU processes (gloo); Lightning re-launches this script for rank 1. Each rank then saves its
weights, so the test can check that both ended identical."""

import sys
from pathlib import Path

import torch

from cdm4mi.config import builtin_config, load_config
from cdm4mi.training.run import fit

if __name__ == "__main__":
    out = Path(sys.argv[1])
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
        ],
    )
    module, trainer = fit(config)
    state = {key: value.detach().cpu() for key, value in module.state_dict().items()}
    torch.save({"global_step": trainer.global_step, "world_size": trainer.world_size, "state": state},
               out / f"rank{trainer.global_rank}.pt")
