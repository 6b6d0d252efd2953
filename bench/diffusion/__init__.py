"""The diffusion math: schedules, objectives, variances, losses, samplers, guidance, likelihood.

Depends on torch only (never on models, data, mlflow, optuna or pandas). Public contract in
shared/DESIGN.md, 'Public contract of bench.diffusion'.
"""

from bench.diffusion.chain import VARIANCES, Chain
from bench.diffusion.core import Diffusion
from bench.diffusion.guidance import GUIDANCE, check_guidance, register_guidance
from bench.diffusion.losses import LOSSES
from bench.diffusion.noise import NoiseSource
from bench.diffusion.objectives import (
    ALL_OBJECTIVES,
    OBJECTIVES,
    RATE_OBJECTIVES,
    Rates,
    convert,
    objective_names,
)
from bench.diffusion.prediction import Prediction, is_conditional
from bench.diffusion.processes import PROCESSES, Process
from bench.diffusion.request import SampleRequest, check_request
from bench.diffusion.samplers import SAMPLERS, Denoiser, Option, check_options
from bench.diffusion.schedules import SCHEDULES, NoiseSchedule, make_schedule
from bench.diffusion.spacing import SPACINGS, make_timesteps
from bench.diffusion.timesampling import TIME_SAMPLING, TimeSampler, check_t_sampling

__all__ = [
    "Diffusion", "Prediction", "Chain", "Denoiser", "NoiseSource", "NoiseSchedule",
    "make_schedule", "make_timesteps", "convert", "is_conditional",
    "Option", "check_options", "check_guidance", "register_guidance",
    "GUIDANCE", "SCHEDULES", "OBJECTIVES", "VARIANCES", "LOSSES", "SAMPLERS", "SPACINGS",
    "PROCESSES", "Process", "SampleRequest", "check_request", "RATE_OBJECTIVES", "ALL_OBJECTIVES", "Rates",
    "objective_names", "TIME_SAMPLING", "TimeSampler", "check_t_sampling",
]
