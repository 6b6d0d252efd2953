"""SiT's SDE sampler: Euler-Maruyama on the reverse-time SDE of an interpolant with a free diffusion
coefficient w(t) (Ma et al. 2024, Sec. 2.3 and eq. 8; the SiT code's ``sample_sde``).

For x_t = alpha x0 + sigma eps with velocity v = alpha' x0 + sigma' eps and score s = -eps / sigma, the
SDE  dx = [v - w(t) s] dt + sqrt(2 w(t)) dW-bar, integrated from the noise (t_max) towards t_min (dt < 0),
has the interpolant's marginals for every w >= 0: w = 0 is the probability-flow ODE (this is then Euler
in t), and larger w adds Langevin correction along the way. The options are SiT's: ``diffusion`` the
form of w, ``norm`` its scale:

  sigma (SiT's default)     w = norm sigma(t)
  sbdm                      w = norm sigma^2 (sigma' / sigma - alpha' / alpha): the score-based diffusion
                            model's reverse SDE (Song et al. 2021), what ddpm / dpm-solver++-sde sample
  constant                  w = norm
  linear                    w = norm u
  decreasing                w = (1 - norm cos(pi u))^2 / 4
  increasing-decreasing     w = norm sin^2(pi u)

with u = (t - t_min) / (t_max - t_min) the unit time (1: noise; SiT's forms are written for t in
[0, 1], so on a longer range, vp's timesteps or edm's sigma, w per unit of u, w dt = w_u du). One step per level of the chain, x_t
-> x_t + (t' - t) (v - w s) + sqrt(2 w (t - t')) z; the last level ends, as every chain here does, at
the model's x0 (Tweedie's denoised mean, SiT's ``last_step="Tweedie"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bench.diffusion.noise import NoiseSource
from bench.diffusion.samplers.registry import Denoiser, Option, register_sampler

FORMS: dict[str, Callable[[float, float, float, float], float]] = {  # (norm, u, sigma, sbdm) -> w
    "sigma": lambda n, u, s, sbdm: n * s,
    "sbdm": lambda n, u, s, sbdm: n * sbdm,
    "constant": lambda n, u, s, sbdm: n,
    "linear": lambda n, u, s, sbdm: n * u,
    "decreasing": lambda n, u, s, sbdm: 0.25 * (1.0 - n * math.cos(math.pi * u)) ** 2,
    "increasing-decreasing": lambda n, u, s, sbdm: n * math.sin(math.pi * u) ** 2,
}
OPTIONS = (
    Option("diffusion", str, "sigma", help="the form of the diffusion coefficient w(t) (SiT's diffusion_form)",
           choices=tuple(FORMS)),
    Option("norm", float, 1.0, 0.0, None, "norm (SiT's diffusion_norm, w's scale) must be >= 0; 0 with a form "
           "other than decreasing is the probability-flow ODE"),
)


def _stochastic(o: dict) -> bool:
    return o["diffusion"] == "decreasing" or o["norm"] > 0


@register_sampler("euler-maruyama", options=OPTIONS, stochastic=_stochastic, order=1,
                  paper="Ma et al. 2024 (SiT), eq. 8: Euler-Maruyama with a free diffusion coefficient")
def euler_maruyama(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, diffusion: str = "sigma",
                   norm: float = 1.0, progress: bool = False) -> torch.Tensor:
    p = den.diffusion.process
    span = float(p.t_max - p.t_min)
    form = FORMS[diffusion]
    ts = [float(v) for v in den.chain.t.tolist()]

    def coef(f: Callable, t: float) -> float:
        return float(f(torch.tensor(t, dtype=torch.float64)))

    x_t = x * math.hypot(coef(p.alpha, ts[-1]), coef(p.sigma, ts[-1]))  # the process state at the top level
    for i in den.steps(progress, "euler-maruyama"):
        t = ts[i]
        a, s, da, ds = (coef(f, t) for f in (p.alpha, p.sigma, p.d_alpha, p.d_sigma))
        r = math.hypot(a, s)
        pred = den(x_t / r, i)
        if i == 0:
            return pred.x0
        h = t - ts[i - 1]  # > 0: the step towards the data
        v = da * pred.x0 + ds * pred.eps
        # sbdm is intrinsic (w dt = sigma^2 d lambda); infinite where alpha = 0: an ODE step from pure noise
        sbdm = s * s * (ds / s - da / a) if den.levels[i].a > 0 else 0.0  # the level's own abar: 0 at pure noise
        w = form(norm, (t - p.t_min) / span, s, sbdm) / (1.0 if diffusion == "sbdm" else span)
        # score s = -eps / sigma: the drift v - w s is v + (w / sigma) eps
        x_t = x_t - h * (v + (w / s) * pred.eps) if s > 0 else x_t - h * v
        if w > 0:
            x_t = x_t + noise() * math.sqrt(2.0 * w * h)
    return x_t
