"""Ancestral DDPM sampling (Ho et al. 2020, Alg. 2), on a respaced chain (Nichol & Dhariwal 2021)."""

from __future__ import annotations

import torch

from bench.diffusion.noise import NoiseSource
from bench.diffusion.samplers.registry import Denoiser, register_sampler


@register_sampler("ddpm", stochastic=True, order=None, paper="Ho et al. 2020, Alg. 2; respaced as Nichol & Dhariwal")
def ddpm(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, progress: bool = False) -> torch.Tensor:
    """Ancestral sampling: x_{prev} = mu(x_t, x0-hat) + sigma z, with the Diffusion's variance."""
    d, chain = den.diffusion, den.chain
    for i in den.steps(progress, "ddpm"):
        pred = den(x, i)
        mean, logvar = d.p_mean_logvar(chain, i, x, pred)
        x = mean + torch.exp(0.5 * logvar) * noise() if i > 0 else mean
    return x
