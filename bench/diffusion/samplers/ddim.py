"""DDIM (Song et al. 2021): the generalized, non-Markovian reverse process with its eta knob."""

from __future__ import annotations

import torch

from bench.diffusion.noise import NoiseSource
from bench.diffusion.samplers.registry import Denoiser, Option, register_sampler

ETA = Option("eta", float, 0.0, 0.0, 1.0, "DDIM's eta must be in [0, 1] (0 = deterministic, 1 = DDPM-like noise)")


@register_sampler("ddim", options=(ETA,), stochastic=lambda o: o["eta"] > 0, order=1, eta_shortcut=True,
                  paper="Song et al. 2021, eq. 12 and 16")
def ddim(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, eta: float = 0.0, progress: bool = False
         ) -> torch.Tensor:
    """x_{prev} = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar').

    With eta = 0 this is Euler's method on the probability-flow ODE in x / sqrt(abar) (first order)."""
    coefs = []  # per level (sqrt(abar'), sqrt(1 - abar' - sigma^2), sigma), python floats, computed once
    for ab, ab_prev in zip(den.abar, den.abar_prev):
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
        coefs.append((ab_prev**0.5, max(1 - ab_prev - sigma**2, 0.0) ** 0.5, sigma))
    for i in den.steps(progress, "ddim"):
        pred = den(x, i)
        c_x0, c_eps, sigma = coefs[i]
        x = c_x0 * pred.x0 + c_eps * pred.eps
        if sigma > 0 and i > 0:
            x = x + sigma * noise()
    return x
