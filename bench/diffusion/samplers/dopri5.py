"""Adaptive Dormand-Prince (RK45) on the probability-flow ODE dx/dt = v(x, t) of any process
(Dormand & Prince 1980; torchdiffeq's ``dopri5``, Chen et al. 2018; Song et al. 2021 sample with RK45,
SiT and the flow-matching papers with dopri5).

The process state x_t = alpha x0 + sigma eps runs from the top of the trained range (the noisiest
level a model of this objective is sampled from, ``Diffusion.u_top``; vp: t = T - 1) down to t_min,
along v = alpha'(t) x0_hat + sigma'(t) eps_hat, with the step sizes that keep the local error within
``rtol`` / ``atol`` (on the clock of :mod:`bench.diffusion.ode`). Where sigma(t_min) > 0 (vp, edm) the
sample is the denoised x0_hat at t_min (one more call), as every chain of the other samplers ends;
where sigma(t_min) = 0 (rectified flow, gvp) it is x_{t_min} itself. ``sample.steps`` and the spacing
do not apply: the NFE is what the solver needed (counted), so a ``sample.nfe`` budget is refused.
One step size serves the whole batch: an image's result depends on its batch mates within the tolerance.
A ``discrete_time`` model (an embedding table over integer t) is called at the nearest timestep, so its
field is piecewise constant in t and the solver spends calls at every jump: an ODE solver wants a model
of continuous time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from bench.diffusion.noise import NoiseSource
from bench.diffusion.ode import integrate
from bench.diffusion.samplers.registry import Denoiser, Option, register_sampler

# SiT's defaults for its dopri5 ODE sampler (Ma et al. 2024, sample.py: --rtol 1e-3 --atol 1e-6)
TOLERANCES = (
    Option("rtol", float, 1e-3, 1e-10, 1.0, "rtol (dopri5's relative error tolerance per step) must be in [1e-10, 1]"),
    Option("atol", float, 1e-6, 1e-10, 1.0, "atol (dopri5's absolute error tolerance per step) must be in [1e-10, 1]"),
)


def estimated_nfe(levels: int, options: Mapping[str, Any]) -> int:
    """A planning estimate, never logged (the counted NFE is): six calls per accepted step (FSAL), the
    steps growing as tol^(-1/5) from ~25 at 1e-5 (Song et al. 2021: ~150 calls on CIFAR-10)."""
    tol = max(options["rtol"], options["atol"])
    return 6 * math.ceil(25 * (1e-5 / tol) ** 0.2)


@register_sampler("dopri5", options=TOLERANCES, order=5, nfe=estimated_nfe, adaptive=True,
                  paper="Dormand & Prince 1980 (RK45); torchdiffeq odeint(method='dopri5'); Song et al. 2021")
def dopri5(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, rtol: float = 1e-3, atol: float = 1e-6,
           progress: bool = False) -> torch.Tensor:
    p = den.diffusion.process
    t_top = float(p.from_unit(den.diffusion.u_top)) if p.continuous else float(p.t_max)
    t_end = float(p.t_min)

    def coef(f: Any, t: float) -> float:
        return float(f(torch.tensor(t, dtype=torch.float64)))

    def r(t: float) -> float:  # x_t = r x: the process state of the samplers' VP state x
        return math.hypot(coef(p.alpha, t), coef(p.sigma, t))

    def velocity(t: float, x_t: torch.Tensor) -> torch.Tensor:
        pred = den.at_time(x_t / r(t), t)
        return coef(p.d_alpha, t) * pred.x0 + coef(p.d_sigma, t) * pred.eps

    x_end = integrate(velocity, x * r(t_top), p, t_top, t_end, rtol=rtol, atol=atol)
    if coef(p.sigma, t_end) == 0.0:
        return x_end / coef(p.alpha, t_end)
    return den.at_time(x_end / r(t_end), t_end).x0
