"""Checks that a checkpoint fits what it is asked to denoise, shared by ``cdm4mi denoise`` and ``cdm4mi evaluate``:
a denoiser (not a generative model) of the data's modality, 3D only for volumes, metadata it was trained with."""

from __future__ import annotations

from cdm4mi.inference.denoise import (
    model_metadata_fields,
    model_normalization,
)
from cdm4mi.io.read import Scan


def check_metadata(given: dict[str, float | str], module, checkpoint: str) -> None:
    """Every ``--metadata`` key is one the model was trained with."""
    fields = model_metadata_fields(module)
    unused = [key for key in given if key not in fields]
    if unused:
        trained = f"data.metadata {list(fields)}" if fields else "no metadata (data.metadata is not set)"
        raise ValueError(f"--metadata: {checkpoint} was trained with {trained}, so {unused[0]} cannot be used")


def check_compatible(scan: Scan, module, checkpoint: str) -> None:
    """The checkpoint is a denoiser for this kind of scan: trained on paired scans, of the input's modality
    (NIfTI carries none: the model's is used), and 2D or the input has the depth a 3D model needs."""
    check_denoiser(module, checkpoint, scan.modality, "the input")
    if module.card["data_mode"] == "3d" and scan.array.shape[0] < 2:
        raise ValueError(f"--input: {scan.array.shape[0]} slice, but {checkpoint} is a 3D model that needs a volume; "
                         "use a 2D model for single slices")


def check_denoiser(module, checkpoint: str, modality: str, what: str) -> None:
    """The checkpoint was trained to denoise scans of ``modality`` ('OT': unknown, accepted); ``what`` names
    the data in the message ("the input", "the manifest ...")."""
    card = module.card
    if card["task"] != "denoise":
        raise ValueError(f"--checkpoint: {checkpoint} was trained to generate samples of data '{card['data']}', "
                         "not to denoise scans (train on paired_scans data)")
    trained_on = card["modality"] or ("CT" if model_normalization(module).name == "hu_window" else "MR")
    if modality not in (trained_on, "OT"):
        raise ValueError(f"--checkpoint: {checkpoint} was trained on {trained_on} "
                         f"({model_normalization(module).name} normalization) but {what} is {modality}")


# The command-line option that sets each sampling option (cdm4mi sample, denoise, evaluate).
SAMPLING_OPTIONS = {"sampler": "--sampler", "steps": "--steps", "eta": "--eta", "timestep_spacing": "--spacing",
                    "snr": "--snr", "n_corrector": "--n-corrector", "ode_method": "--ode-method",
                    "guidance_scale": "--guidance-scale"}


def check_sampling_options(module, checkpoint: str, overrides: dict, t_start: int | None = None,
                           warm_start: bool = False) -> None:
    """What a command asks of the sampler (``overrides`` of ``sampling``; ``t_start``; ``warm_start`` for
    denoising, which starts from the input) against what the checkpoint can do, right after it is loaded and
    before any work. Errors name the option given, or the checkpoint when its own config is the obstacle."""
    options = {**module.config.sampling.model_dump(), **overrides}

    def name(key: str) -> str:
        return SAMPLING_OPTIONS[key] if key in overrides else f"--checkpoint: {checkpoint}'s sampling.{key}"

    sampler = options["sampler"]
    if module.sde is not None and (sampler in ("ddim", "ddpm") or warm_start):
        what = "warm-start denoising" if warm_start else sampler
        raise ValueError(f"{name('sampler')}: {what} needs a discrete-time model, but {checkpoint} was trained on "
                         f"the {module.sde.name} SDE (diffusion.sde)")
    if warm_start and sampler not in ("ddim", "ddpm"):
        raise ValueError(f"{name('sampler')}: is {sampler}; warm-start denoising needs ddim or ddpm")
    if options["guidance_scale"] != 1.0 and not module.backbone.cond_drop_prob:
        raise ValueError(f"{name('guidance_scale')}: {checkpoint} was trained without condition dropout "
                         "(network.cond_drop_prob 0), so it has no unconditional branch to guide with")
    if module.sde is not None:
        return
    timesteps = module.schedule.timesteps
    limit = module.objective.max_train_timestep
    highest = timesteps - 1 if limit is None else min(limit, timesteps - 1)
    if t_start is not None and t_start > highest:
        raise ValueError(f"--t-start: {t_start} lies beyond the timesteps {checkpoint} was trained on (0 to {highest})")
    steps = overrides.get("steps")
    if steps is not None and not warm_start and sampler in ("ddim", "ddpm") and steps > timesteps:
        raise ValueError(f"--steps: {steps} is more than the {timesteps} timesteps of {checkpoint}'s schedule")
