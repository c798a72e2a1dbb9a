"""The diffusion core: schedules, objectives, denoisers (a network wrapped with its parameterization and
noise process) and samplers over a denoiser.

Nothing here assumes a tensor shape beyond a leading batch dimension.
"""

from cdm4mi.diffusion.ddim import ddim_invert, ddim_sample, ddim_step
from cdm4mi.diffusion.ddpm import ddpm_sample, ddpm_step
from cdm4mi.diffusion.denoiser import Denoiser, ScheduleDenoiser, SDEDenoiser, guided
from cdm4mi.diffusion.guidance import classifier_free_guidance
from cdm4mi.diffusion.objective import (
    LOSS_TYPES,
    PARAMETERIZATIONS,
    DiffusionObjective,
    prediction_target,
    q_sample,
    split_prediction,
)
from cdm4mi.diffusion.ode import ODE_METHODS, ode_encode, ode_sample
from cdm4mi.diffusion.pc import pc_sample
from cdm4mi.diffusion.sampling import warm_start
from cdm4mi.diffusion.schedule import SCHEDULES, NoiseSchedule, make_betas
from cdm4mi.diffusion.sde import (
    SDE_KINDS,
    VESDE,
    VPSDE,
    DiscreteVPSDE,
    ScoreMatchingObjective,
    sampling_times,
    sde_from_config,
)
from cdm4mi.diffusion.timesteps import SPACINGS, sampling_timesteps

__all__ = [
    "LOSS_TYPES", "ODE_METHODS", "PARAMETERIZATIONS", "SCHEDULES", "SDE_KINDS", "SPACINGS", "VESDE", "VPSDE",
    "Denoiser", "DiffusionObjective", "DiscreteVPSDE", "NoiseSchedule", "SDEDenoiser", "ScheduleDenoiser",
    "ScoreMatchingObjective", "classifier_free_guidance", "ddim_invert", "ddim_sample", "ddim_step", "ddpm_sample",
    "ddpm_step", "guided", "make_betas", "ode_encode", "ode_sample", "pc_sample", "prediction_target", "q_sample",
    "sampling_times", "sampling_timesteps", "sde_from_config", "split_prediction", "warm_start",
]
