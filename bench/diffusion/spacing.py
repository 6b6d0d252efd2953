"""Which timesteps a sampler visits when it takes fewer steps than the schedule has.

Each spacing maps (T, steps) -> an increasing int64 tensor of distinct timesteps in [0, T).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.core.registry import Registry

SPACINGS: Registry[Callable[[int, int], np.ndarray]] = Registry("spacing")


@SPACINGS.register("leading", paper="DDIM (Song et al. 2021) 'uniform': 0, k, 2k, ...")
def leading(T: int, steps: int) -> np.ndarray:
    return np.arange(steps) * (T // steps)


@SPACINGS.register("linspace", paper="evenly from 0 to T-1 inclusive")
def linspace(T: int, steps: int) -> np.ndarray:
    return np.round(np.linspace(0, T - 1, steps))


@SPACINGS.register("trailing", paper="Lin et al. 2024, 'Common diffusion noise schedules...', Tab. 2")
def trailing(T: int, steps: int) -> np.ndarray:
    return np.round(np.arange(T, 0, -T / steps))[::-1] - 1


@SPACINGS.register("quadratic", paper="DDIM (Song et al. 2021), App. D.2, CIFAR-10")
def quadratic(T: int, steps: int) -> np.ndarray:
    return np.floor(np.linspace(0, np.sqrt(T * 0.8), steps) ** 2)


def make_timesteps(spacing: str, T: int, steps: int) -> torch.Tensor:
    """Increasing, distinct timesteps for a sampler; one clear error for any impossible request."""
    fn = SPACINGS.get(SPACINGS.check(spacing, "sample.spacing"))
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise BenchError(f"sample.steps={steps!r} is impossible: it must be an int in [1, {T}] "
                         f"(the schedule's timesteps). Use fewer steps or more diffusion.timesteps.")
    ts = np.asarray(fn(T, int(steps))).astype(np.int64)
    if len(ts) != steps or (ts < 0).any() or (ts >= T).any():
        raise BenchError(f"spacing {spacing!r} produced {len(ts)} timesteps in "
                         f"[{ts.min()}, {ts.max()}] for steps={steps}, T={T}; expected {steps} in [0, {T})")
    if len(np.unique(ts)) != len(ts):
        raise BenchError(f"spacing {spacing!r} with steps={steps} and T={T} repeats timesteps "
                         f"(e.g. {ts[:-1][np.diff(ts) == 0][:3].tolist()}); use fewer steps or "
                         "another spacing (leading, linspace, trailing)")
    return torch.from_numpy(np.sort(ts))
