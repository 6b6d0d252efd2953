"""Ancestral DDPM sampling (Ho et al. 2020, Alg. 2), on a respaced chain (Nichol & Dhariwal 2021)."""

from __future__ import annotations

import math

import torch

from bench.diffusion.noise import NoiseSource
from bench.diffusion.samplers.registry import Denoiser, register_sampler


@register_sampler("ddpm", stochastic=True, order=None, paper="Ho et al. 2020, Alg. 2; respaced as Nichol & Dhariwal")
def ddpm(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, progress: bool = False) -> torch.Tensor:
    """Ancestral sampling: x_{prev} = mu(x_t, x0-hat) + sigma z, with the Diffusion's variance."""
    d, chain = den.diffusion, den.chain
    c_x0, c_xt = chain.coef_x0.tolist(), chain.coef_xt.tolist()  # the posterior mean's, per level
    # a fixed variance is one number per level: its standard deviation, computed once
    std = None if d.learned_variance else [math.exp(0.5 * float(d.variance(chain, i, den.chain.abar, None)))
                                           for i in range(len(chain))]
    for i in den.steps(progress, "ddpm"):
        pred = den(x, i)
        mean = c_x0[i] * pred.x0 + c_xt[i] * x
        if i == 0:
            return mean
        sd = std[i] if std is not None else torch.exp(0.5 * d.variance(chain, i, x, pred.var_out))
        x = mean + sd * noise()
    return x
