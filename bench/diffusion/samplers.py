"""Samplers: ``fn(den: Denoiser, x_T, noise, *, eta, progress) -> x_0``.

A sampler walks the chain from its last index to 0, asking the Denoiser for (eps, x0) and the
chain for coefficients. It never looks at the objective or the schedule (STYLE.md, point 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bench.diffusion.chain import Chain
from bench.diffusion.core import Diffusion, Model, Prediction
from bench.diffusion.noise import NoiseSource
from bench.registry import Registry

SamplerFn = Callable[..., torch.Tensor]
SAMPLERS: Registry[SamplerFn] = Registry("sampler")


@dataclass
class Denoiser:
    """The model as a sampler sees it: chain index -> Prediction, counting network calls."""

    diffusion: Diffusion
    model: Model
    chain: Chain
    y: torch.Tensor | None
    guidance: float
    clip_denoised: bool
    calls: int = 0

    def __call__(self, x: torch.Tensor, i: int) -> Prediction:
        self.calls += 1
        t = int(self.chain.t[i])
        return self.diffusion.predict(self.model, x, t, self.y, self.guidance, self.clip_denoised)

    def steps(self, progress: bool, desc: str) -> list[int]:
        idx = list(range(len(self.chain) - 1, -1, -1))
        return list(tqdm(idx, desc=desc, leave=False)) if progress else idx



@SAMPLERS.register("ddpm", stochastic=True, paper="Ho et al. 2020, Alg. 2; respaced as Nichol & Dhariwal")
def ddpm(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, eta: float = 1.0, progress: bool = False
         ) -> torch.Tensor:
    """Ancestral sampling: x_{prev} = mu(x_t, x0-hat) + sigma z, with the Diffusion's variance."""
    d, chain = den.diffusion, den.chain
    for i in den.steps(progress, "ddpm"):
        pred = den(x, i)
        mean, logvar = d.p_mean_logvar(chain, i, x, pred)
        x = mean + torch.exp(0.5 * logvar) * noise() if i > 0 else mean
    return x


@SAMPLERS.register("ddim", stochastic=False, paper="Song et al. 2021, eq. 12 and 16")
def ddim(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, eta: float = 0.0, progress: bool = False
         ) -> torch.Tensor:
    """x_{prev} = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar')."""
    chain = den.chain
    for i in den.steps(progress, "ddim"):
        pred = den(x, i)
        ab, ab_prev = float(chain.abar[i]), float(chain.abar_prev[i])
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
        x = ab_prev**0.5 * pred.x0 + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * pred.eps
        if sigma > 0 and i > 0:
            x = x + sigma * noise()
    return x


@SAMPLERS.register("dpm-solver++", stochastic=False, paper="Lu et al. 2022, DPM-Solver++(2M), Alg. 2")
def dpm_solver_pp_2m(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, eta: float = 0.0,
                     progress: bool = False) -> torch.Tensor:
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
