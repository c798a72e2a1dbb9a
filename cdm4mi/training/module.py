"""The one LightningModule: backbone + objective for training, backbone + schedule + sampler for sampling.

It never looks at the data's shape: batches are dicts with ``x0`` (any shape ``[B, ...]``) and an
optional ``cond`` that is handed to the backbone untouched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

import cdm4mi
from cdm4mi.config import Config, SamplingConfig, validate
from cdm4mi.data.preprocessing import ScanPreprocessing
from cdm4mi.diffusion import DiffusionObjective, NoiseSchedule, ddim_sample, ddpm_sample
from cdm4mi.diffusion.denoiser import Denoiser, ScheduleDenoiser, SDEDenoiser, guided
from cdm4mi.diffusion.objective import Objective
from cdm4mi.diffusion.ode import ode_sample
from cdm4mi.diffusion.pc import pc_sample
from cdm4mi.diffusion.sampling import StepCallback
from cdm4mi.diffusion.sde import DiscreteVPSDE, ScoreMatchingObjective, sampling_times, sde_from_config
from cdm4mi.diffusion.timesteps import sampling_timesteps
from cdm4mi.models import build_backbone
from cdm4mi.training.safety import CHECKPOINT_DIR, LAST_CHECKPOINT, NonFiniteGuard


class DiffusionModule(L.LightningModule):
    """``config`` is a run config (see cdm4mi.config); ``data_state`` is what the data set fitted on its
    training split (gene list, scaling, class names: plain JSON types), kept with every checkpoint so
    generated samples map back to the data's units."""

    def __init__(self, config: dict[str, Any], data_state: dict[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters({"config": config, "data_state": data_state})
        self.data_state = data_state
        self.config: Config = validate(config)
        network = dict(self.config.network)
        self.backbone = build_backbone(network.pop("name"), **network)
        diffusion = self.config.diffusion
        self.schedule = NoiseSchedule.from_config(
            diffusion.beta_schedule,
            diffusion.timesteps,
            beta_start=diffusion.beta_start,
            beta_end=diffusion.beta_end,
            betas=diffusion.betas,
        )
        self.objective: Objective
        if diffusion.sde is None:
            self.sde = None
            self.objective = DiffusionObjective(
                self.schedule,
                diffusion.parameterization,
                diffusion.loss_type,
                diffusion.huber_delta,
                diffusion.min_snr_gamma,
                diffusion.max_train_timestep,
                diffusion.warm_start_share,
            )
        else:
            self.sde = sde_from_config(**diffusion.sde.model_dump())
            self.objective = ScoreMatchingObjective(
                self.sde, diffusion.parameterization, diffusion.loss_type, diffusion.huber_delta
            )
        training = self.config.training
        self.nonfinite = NonFiniteGuard(training.nonfinite_loss, training.max_nonfinite_skips,
                                        Path(self.config.output_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        return self.backbone(x, t, cond)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        loss = self.objective.loss(self.backbone, batch["x0"], batch.get("cond"),
                                   input_noise_std=batch.get("input_noise_std"))
        finite = bool(torch.isfinite(loss))
        if self._trainer is not None and self.trainer.world_size > 1:
            # Every process stops or skips together; alone, the others would wait for it forever.
            finite = bool(self.trainer.strategy.reduce_boolean_decision(finite, all=True))
        if not self.nonfinite.check_loss(loss, self.global_step, finite):
            self.log("train/skipped_batches", float(self.nonfinite.skipped_total))
            return None  # Lightning skips the backward pass and the optimizer step
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["x0"].shape[0])
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for key in ("state_dict", "current_model_state"):  # the EMA and the live weights
            self.nonfinite.check_weights(checkpoint.get(key, {}), self.global_step)
        checkpoint["cdm4mi"] = self.model_card()

    @property
    def preprocessing(self) -> ScanPreprocessing:
        """How the model sees a scan (the data set's contract, stored with the checkpoint); for scan models."""
        return ScanPreprocessing.of_model(self.config.data, self.data_state)

    @property
    def task(self) -> str:
        """'denoise' (a scan model: ``preprocessing`` applies) or 'generate'."""
        return self.preprocessing.task

    def model_card(self) -> dict[str, Any]:
        """What a checkpoint says about its model, so that a tool can check it fits an input before use."""
        data, network, state = self.config.data, self.config.network, self.data_state or {}
        return {
            "version": cdm4mi.__version__,
            "task": self.task,
            "data": data["name"],
            "modality": state.get("modality"),
            "normalization": state.get("normalization"),
            "data_mode": self.preprocessing.mode if self.task == "denoise" else data.get("mode"),
            "spatial_dims": network.get("spatial_dims"),
            "in_channels": network.get("in_channels"),
            "out_channels": network.get("out_channels"),
            "parameterization": self.config.diffusion.parameterization,
        }

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # The same timesteps and noise at every validation, so the curve shows the model, not the draw.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        batch = pad_images(batch, self.backbone.size_multiple)
        loss = self.objective.loss(self.backbone, batch["x0"], batch.get("cond"), generator=generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["x0"].shape[0])
        return loss

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A draw from the model's prior: N(0, I), or the SDE's prior at t = 1 (N(0, sigma_max^2 I) for VE)."""
        if self.sde is None:
            return torch.randn(shape, generator=generator, device=self.device, dtype=dtype)
        return self.sde.prior_sample(shape, generator=generator, dtype=dtype, device=self.device)

    @torch.no_grad()
    def sample(
        self,
        x: torch.Tensor,
        cond: object = None,
        t_start: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """Sample with the configured sampler (``overrides`` replace ``sampling`` options).

        ``x`` is a draw from ``prior``, or the warm-start state at ``t_start`` (ddim/ddpm only);
        ``callback(step, t, x, x0)`` sees every step.
        """
        options = SamplingConfig.model_validate({**self.config.sampling.model_dump(), **overrides})
        if options.guidance_scale != 1.0 and not self.backbone.cond_drop_prob:
            raise ValueError("sampling.guidance_scale: this network was trained without condition dropout "
                             "(network.cond_drop_prob = 0), so it has no unconditional branch to guide with")
        denoiser = guided(self.denoiser(options.sampler, options.clip_x0), options.guidance_scale)
        common = dict(cond=cond, generator=generator, callback=callback, progress=progress)
        if options.sampler in ("pc", "ode"):
            if t_start is not None:
                raise ValueError(f"sampling.sampler: warm starts (t_start) need ddim or ddpm, not {options.sampler}")
            times = sampling_times(denoiser.sde, options.steps)
            if options.sampler == "pc":
                return pc_sample(denoiser, x, times, snr=options.snr, n_corrector=options.n_corrector, **common)
            return ode_sample(denoiser, x, times, method=options.ode_method, **common)
        timesteps = sampling_timesteps(self.schedule.timesteps, options.steps, options.timestep_spacing, t_start)
        if options.sampler == "ddim":
            return ddim_sample(denoiser, x, timesteps, eta=options.eta, **common)
        return ddpm_sample(denoiser, x, timesteps, variance=options.variance, **common)

    def denoiser(self, sampler: str = "ddim", clip_x0: tuple[float, float] | None = None) -> Denoiser:
        """The backbone as the denoiser ``sampler`` needs: over the schedule's timesteps (ddim, ddpm), or over
        SDE time (pc, ode; a DDPM-trained model is a score model of the VP SDE its discrete schedule implies)."""
        parameterization = self.config.diffusion.parameterization
        if sampler in ("pc", "ode"):
            sde = self.sde if self.sde is not None else DiscreteVPSDE(self.schedule)
            return SDEDenoiser(self.backbone, sde, parameterization)
        if self.sde is not None:
            raise ValueError(f"sampling.sampler: {sampler} needs a discrete-time model; this one was trained "
                             f"on the {self.sde.name} SDE (diffusion.sde): use pc or ode")
        return ScheduleDenoiser(self.backbone, self.schedule, parameterization, clip_x0)

    def configure_optimizers(self):
        training = self.config.training
        optimizer = torch.optim.AdamW(self.backbone.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
        warmup, total, floor = training.warmup_steps, training.max_steps, training.min_lr_ratio

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def pad_images(batch: dict[str, Any], multiple: int) -> dict[str, Any]:
    """``x0`` and the conditioning image(s) of a batch of whole slices/volumes, edge-padded at the end of each
    spatial axis to a multiple of ``multiple`` (a U-Net halves the size at each level): validation runs
    whole scans, whose size need not be one the network can take."""
    x0 = batch["x0"]
    if multiple <= 1 or x0.ndim < 4 or all(size % multiple == 0 for size in x0.shape[2:]):
        return batch
    padding = [p for size in reversed(x0.shape[2:]) for p in (0, -size % multiple)]

    def pad(value: object) -> object:
        if torch.is_tensor(value) and value.ndim == x0.ndim and value.shape[2:] == x0.shape[2:]:
            return torch.nn.functional.pad(value, padding, mode="replicate")
        if isinstance(value, dict):
            return {key: pad(item) for key, item in value.items()}
        return value

    return {**batch, "x0": pad(x0), "cond": pad(batch.get("cond"))}
