"""Noise schedules: beta_t and alpha-bar_t for t = 0..T-1, in float64.

Each schedule is registered by name in :data:`SCHEDULES` as ``fn(timesteps) -> betas``; users
register more the same way, or pass their own betas to :func:`make_schedule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bench.core.errors import BenchError
from bench.core.registry import Registry

BetaFn = Callable[[int], torch.Tensor]
SCHEDULES: Registry[BetaFn] = Registry("schedule")

MAX_BETA = 0.999  # clip as in Nichol & Dhariwal (2021), Sec. 3.2, to avoid singularities at t = T


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""

    name: str
    betas: torch.Tensor  # float64 [T]

    def __post_init__(self) -> None:
        b = self.betas
        if b.ndim != 1 or len(b) < 1:
            raise BenchError(f"schedule {self.name!r}: betas must be a 1-D tensor with T >= 1 entries")
        if not torch.isfinite(b).all() or (b <= 0).any() or (b >= 1).any():
            raise BenchError(f"schedule {self.name!r}: every beta must lie in (0, 1); got min "
                             f"{b.min().item():.3g}, max {b.max().item():.3g}")

    @property
    def timesteps(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, dim=0)


def _betas_from_alpha_bar(alpha_bar: Callable[[float], float], timesteps: int) -> torch.Tensor:
    """beta_t = 1 - abar(t+1 / T) / abar(t / T), clipped at MAX_BETA (Nichol & Dhariwal, eq. 17)."""
    betas = [
        min(1.0 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), MAX_BETA)
        for i in range(timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


@SCHEDULES.register("linear", paper="Ho et al. 2020, Sec. 4")
def linear(timesteps: int) -> torch.Tensor:
    """Linear from 1e-4 to 0.02 at T = 1000; rescaled by 1000/T so other T keep the same process."""
    scale = 1000.0 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


@SCHEDULES.register("scaled_linear", paper="Rombach et al. 2022 (LDM / Stable Diffusion)")
def scaled_linear(timesteps: int) -> torch.Tensor:
    """Linear in sqrt(beta) from sqrt(0.00085) to sqrt(0.012) (the latent-diffusion schedule)."""
    scale = 1000.0 / timesteps
    return torch.linspace((scale * 0.00085) ** 0.5, (scale * 0.012) ** 0.5, timesteps,
                          dtype=torch.float64) ** 2


@SCHEDULES.register("cosine", paper="Nichol & Dhariwal 2021, eq. 17")
def cosine(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """abar(t) = f(t)/f(0), f(t) = cos(((t/T + s) / (1 + s)) * pi/2)^2; betas clipped at 0.999."""

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return _betas_from_alpha_bar(lambda u: f(u) / f(0.0), timesteps)


@SCHEDULES.register("sigmoid", paper="Chen 2023, 'On the importance of noise scheduling', Alg. 1")
def sigmoid(timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """abar(t) = (-sigmoid((t (end - start) + start) / tau) + v_end) / (v_end - v_start)."""

    def sig(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    v_start, v_end = sig(start / tau), sig(end / tau)

    def alpha_bar(u: float) -> float:
        return max((v_end - sig((u * (end - start) + start) / tau)) / (v_end - v_start), 1e-12)

    return _betas_from_alpha_bar(alpha_bar, timesteps)


def make_schedule(schedule: str | Sequence[float] | torch.Tensor, timesteps: int | None = None) -> NoiseSchedule:
    """A registered schedule by name (``make_schedule("cosine", 1000)``), or user-given betas."""
    if isinstance(schedule, str):
        if timesteps is None or int(timesteps) < 1:
            raise BenchError(f"schedule {schedule!r}: timesteps must be a positive int, got {timesteps!r}")
        fn = SCHEDULES.get(SCHEDULES.check(schedule, "diffusion.schedule"))
        return NoiseSchedule(schedule, fn(int(timesteps)).to(torch.float64))
    betas = torch.as_tensor(schedule, dtype=torch.float64).flatten()
    if timesteps is not None and len(betas) != timesteps:
        raise BenchError(f"user-given betas have {len(betas)} entries but timesteps={timesteps}")
    return NoiseSchedule("custom", betas)
