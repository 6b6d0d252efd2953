"""Euler and Heun on the probability-flow ODE, with stochastic churn (Karras et al. 2022, Alg. 1 and 2)."""

from __future__ import annotations

import math

import torch

from bench.diffusion.noise import NoiseSource
from bench.diffusion.samplers.registry import Denoiser, Option, register_sampler

CHURN = (
    Option("s_churn", float, 0.0, 0.0, None, "s_churn (Karras et al. S_churn) must be >= 0; 0 is the plain ODE"),
    Option("s_tmin", float, 0.0, 0.0, None, "s_tmin must be >= 0: churn only for sigma in [s_tmin, s_tmax]"),
    Option("s_tmax", float, math.inf, 0.0, None, "s_tmax must be >= 0: churn only for sigma in [s_tmin, s_tmax]"),
    Option("s_noise", float, 1.0, 0.0, None, "s_noise (S_noise) must be >= 0; it scales the churn's fresh noise"),
)


def _karras(den: Denoiser, x: torch.Tensor, noise: NoiseSource, heun: bool, s_churn: float, s_tmin: float,
            s_tmax: float, s_noise: float, progress: bool) -> torch.Tensor:
    """Alg. 2 of Karras et al.: at level sigma_i raise the noise to sigma-hat = sigma_i (1 + gamma_i),
    gamma_i = min(S_churn / N, sqrt 2 - 1) inside [S_tmin, S_tmax], by adding fresh noise; step to
    sigma_{i+1} along d = (x - D(x; sigma-hat)) / sigma-hat; Heun corrects with d at sigma_{i+1}
    except on the last step to sigma = 0 (2N - 1 network calls on N levels)."""
    n, sig = len(den.chain), den.sigmas
    x, steps = den.begin(x, progress, "heun" if heun else "euler", heun=heun)
    for i in steps:
        s, s_next = sig[i], sig[i - 1]  # sig[-1] is 0: the step after level 0 ends the chain
        gamma = min(s_churn / n, 2**0.5 - 1) if s_churn > 0 and s_tmin <= s <= s_tmax else 0.0
        if gamma > 0:
            s_hat = s * (1 + gamma)
            x = x + noise() * (s_noise * (s_hat**2 - s**2) ** 0.5)
            d = (x - den.ve_at(x, s_hat).x0) / s_hat
        else:
            s_hat = s
            d = (x - den.ve(x, i).x0) / s
        x_next = x + (s_next - s_hat) * d
        if heun and i > 0:
            d_next = (x_next - den.ve(x_next, i - 1).x0) / s_next
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return x


@register_sampler("euler", options=CHURN, stochastic=lambda o: o["s_churn"] > 0, order=1,
                  paper="Karras et al. 2022 (EDM), Alg. 2 without the second-order correction")
def euler(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, s_churn: float = 0.0, s_tmin: float = 0.0,
          s_tmax: float = math.inf, s_noise: float = 1.0, progress: bool = False) -> torch.Tensor:
    """Euler's method in sigma on dx / dsigma = (x - D(x; sigma)) / sigma (Alg. 1 is s_churn = 0)."""
    return _karras(den, x, noise, False, s_churn, s_tmin, s_tmax, s_noise, progress)


@register_sampler("heun", options=CHURN, stochastic=lambda o: o["s_churn"] > 0, order=2,
                  nfe=lambda levels, o: 2 * levels - 1,
                  paper="Karras et al. 2022 (EDM), Alg. 1 (deterministic) and Alg. 2 (s_churn > 0)")
def heun(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, s_churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = math.inf, s_noise: float = 1.0, progress: bool = False) -> torch.Tensor:
    """Heun's second-order method (the trapezoidal correction), with the churn of Alg. 2."""
    return _karras(den, x, noise, True, s_churn, s_tmin, s_tmax, s_noise, progress)


ANCESTRAL = (
    Option("eta", float, 1.0, 0.0, 1.0, "euler-ancestral's eta must be in [0, 1] (0 = euler, 1 = full ancestral)"),
    Option("s_noise", float, 1.0, 0.0, None, "s_noise must be >= 0; it scales the fresh noise"),
)


@register_sampler("euler-ancestral", options=ANCESTRAL, stochastic=lambda o: o["eta"] > 0, order=1,
                  paper="k-diffusion sample_euler_ancestral (Crowson); ancestral step of Ho et al. 2020 in sigma")
def euler_ancestral(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, eta: float = 1.0,
                    s_noise: float = 1.0, progress: bool = False) -> torch.Tensor:
    """An Euler step down to sigma_down, then fresh noise up to sigma_{next}:
    sigma_up = min(sigma', eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)), sigma_down =
    sqrt(sigma'^2 - sigma_up^2); with eta = 1 the marginal of each step is DDPM's posterior."""
    sig = den.sigmas
    x, steps = den.begin(x, progress, "euler-ancestral", noise, eta, s_noise)
    for i in steps:
        s, s_next = sig[i], sig[i - 1]
        s_up = min(s_next, eta * (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5)
        s_down = (s_next**2 - s_up**2) ** 0.5
        x = x + (s_down - s) * ((x - den.ve(x, i).x0) / s)
        if s_up > 0:
            x = x + noise() * (s_noise * s_up)
    return x
