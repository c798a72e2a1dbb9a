"""A supervised, non-diffusion denoiser of the same size and training budget as a diffusion config: the
baseline a user would train instead (RED-CNN style: predict the noise residual, L1, random crops).

It is the config's own backbone (same channels, levels, attention, conditioning on the metadata vector) fed
the low-dose image as its input *and* its condition at a fixed timestep 0, trained on the same data set
items (crops, flips, dose augmentation) with the same batch size, steps, learning-rate schedule and EMA-free
AdamW. So the two differ only in the objective: one regression to the target vs. the diffusion loss.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cdm4mi.config import Config
from cdm4mi.data.preprocessing import ScanPreprocessing
from cdm4mi.data.registry import build_dataset
from cdm4mi.inference.denoise import neighbour_stack, pad_to_multiple
from cdm4mi.models import build_backbone


class SupervisedDenoiser:
    """``backbone`` trained by ``train_supervised``; ``denoise`` maps a volume in HU to HU."""

    def __init__(self, preprocessing: ScanPreprocessing, backbone: torch.nn.Module):
        self.preprocessing, self.backbone = preprocessing, backbone.eval()

    def __call__(self, cond: Any) -> torch.Tensor:
        image = cond["image"] if isinstance(cond, dict) else cond
        centre = image.shape[1] // 2
        noisy = image[:, centre : centre + 1]
        t = torch.zeros(len(image), dtype=torch.long, device=image.device)
        output = self.backbone(noisy, t, cond)
        # Residual learning either way: a backbone with condition_skip adds the input itself.
        return output if getattr(self.backbone, "condition_skip", False) else noisy - output

    @torch.no_grad()
    def denoise(self, volume_hu: np.ndarray, vector: torch.Tensor | None = None, batch_size: int = 8) -> np.ndarray:
        """[D, H, W] HU -> [D, H, W] HU; ``vector``: the scan's encoded metadata (as ``cdm4mi denoise`` builds it)."""
        normalization = self.preprocessing.normalizer().fit(volume_hu)
        units = torch.as_tensor(np.asarray(normalization.forward(volume_hu.astype(np.float32))), dtype=torch.float32)
        stack = neighbour_stack(units, self.preprocessing.context)
        multiple = self.backbone.size_multiple
        outputs = []
        for start in range(0, len(stack), batch_size):
            batch, (height, width) = pad_to_multiple(stack[start : start + batch_size], multiple)
            cond: Any = batch if vector is None else {"image": batch, "vector": vector.expand(len(batch), -1)}
            outputs.append(self(cond)[:, 0, :height, :width])
        return np.asarray(normalization.inverse(torch.cat(outputs).numpy()), dtype=np.float32)


def train_supervised(config: Config, progress: bool = True) -> SupervisedDenoiser:
    """Train ``config.network`` on ``config.data``'s training split by L1 regression of the residual, with
    ``config.training``'s batch size, steps, warm-up + cosine learning rate and gradient clipping."""
    training = config.training
    torch.manual_seed(training.seed)
    options = {key: value for key, value in config.data.items() if key != "name"}
    dataset = build_dataset(config.data["name"], "train", **options)
    network = dict(config.network)
    backbone = build_backbone(network.pop("name"), **network)
    loader = DataLoader(dataset, batch_size=training.batch_size, shuffle=True, drop_last=len(dataset) > training.batch_size)
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)

    def lr_factor(step: int) -> float:
        if step < training.warmup_steps:
            return (step + 1) / training.warmup_steps
        progress_ = min(1.0, (step - training.warmup_steps) / max(1, training.max_steps - training.warmup_steps))
        return training.min_lr_ratio + (1 - training.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model = SupervisedDenoiser(ScanPreprocessing.from_dict(dataset.preprocessing_state()), backbone)
    backbone.train()
    step, bar = 0, tqdm(total=training.max_steps, desc="supervised baseline", unit="step", disable=not progress)
    while step < training.max_steps:
        for batch in loader:
            loss = torch.nn.functional.l1_loss(model(batch["cond"]), batch["x0"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if training.gradient_clip_val is not None:
                torch.nn.utils.clip_grad_norm_(backbone.parameters(), training.gradient_clip_val)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            if step >= training.max_steps:
                break
    bar.close()
    backbone.eval()
    return model
