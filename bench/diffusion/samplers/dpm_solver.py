"""DPM-Solver++ (Lu et al. 2022): multistep solvers of the diffusion ODE on data predictions."""

from __future__ import annotations

import torch

from bench.diffusion.noise import NoiseSource
from bench.diffusion.samplers.registry import Denoiser, register_sampler


@register_sampler("dpm-solver++", stochastic=False, paper="Lu et al. 2022, DPM-Solver++(2M), Alg. 2")
def dpm_solver_pp_2m(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, progress: bool = False
                     ) -> torch.Tensor:
    """Multistep second order in lambda = log(alpha / sigma), on data predictions x0.

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D,  D = (1 + 1/2r) x0_s - (1/2r) x0_{s'},
    r = h_{prev} / h; first order on the first step; the last step (to abar = 1) returns x0.
    """
    chain = den.chain
    x0_prev: torch.Tensor | None = None
    h_prev = 0.0
    for i in den.steps(progress, "dpm-solver++"):
        pred = den(x, i)
        if i == 0:
            return pred.x0
        ab_s, ab_t = float(chain.abar[i]), float(chain.abar_prev[i])
        a_s, s_s = ab_s**0.5, (1 - ab_s) ** 0.5
        a_t, s_t = ab_t**0.5, (1 - ab_t) ** 0.5
        h = torch.log(torch.tensor(a_t / s_t)).item() - torch.log(torch.tensor(a_s / s_s)).item()
        if x0_prev is None:
            D = pred.x0
        else:
            r = h_prev / h
            D = (1 + 1 / (2 * r)) * pred.x0 - (1 / (2 * r)) * x0_prev
        x = (s_t / s_s) * x - a_t * (torch.exp(torch.tensor(-h)).item() - 1) * D
        x0_prev, h_prev = pred.x0, h
    return x
