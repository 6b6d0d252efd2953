"""DPM-Solver++ (Lu et al. 2022): multistep solvers of the diffusion ODE / SDE on data predictions.

Written in x = x0 + sigma eps with lambda = -log sigma (the half log-SNR log(alpha / sigma)),
h = lambda_next - lambda. The papers' VP updates divided by alpha_next are these.
"""

from __future__ import annotations

import math

import torch

from bench.diffusion.noise import NoiseSource
from bench.diffusion.samplers.registry import Denoiser, Option, register_sampler

ORDER = Option("order", int, 2, 1, 3, "dpm-solver++'s order must be 1, 2 (2M) or 3 (3M)")
REFERENCE_3M = Option("reference_3m", bool, False, help=(
    "true: 3M exactly as the authors' code, diffusers and k-diffusion write it, whose second-difference "
    "term has half the Taylor weight (globally second order); false: the third-order update"))


def step_orders(n: int, order: int) -> list[int]:
    """The order of each of the n steps: warm-up 1, 2, ... from the start (multistep needs a history);
    the last step, to sigma = 0, first order (it returns x0); for 3M under 15 steps the one before
    it second order (diffusers' and the authors' ``lower_order_final``)."""
    out = [min(order, k + 1) for k in range(n)]
    out[-1] = 1
    if n >= 2 and n < 15:
        out[-2] = min(out[-2], 2)
    return out


def _multistep(den: Denoiser, x: torch.Tensor, noise: NoiseSource, order: int, sde: bool,
               progress: bool, desc: str, reference_3m: bool = False) -> torch.Tensor:
    sig = den.sigmas
    x, steps = den.begin(x, progress, desc, noise, 1.0 if sde else 0.0)
    orders = step_orders(len(steps), order) if steps else []
    hist: list[tuple[torch.Tensor, float]] = []  # (x0, lambda), newest last
    for k, i in enumerate(steps):
        s, s_next = sig[i], sig[i - 1]
        m0 = den.ve(x, i).x0
        lam = -math.log(s)
        # kept across calls: a copy, as a compiled network's output buffer is overwritten by its next replay
        hist = (hist + [(m0.clone() if order > 1 else m0, lam)])[-3:]
        if s_next == 0.0:
            return m0
        h = -math.log(s_next) - lam
        p = orders[k]
        if p == 1:
            D = m0
        elif p == 2:
            r0 = (lam - hist[-2][1]) / h
            D = m0 + (0.5 / r0) * (m0 - hist[-2][0])
        else:
            (m2, l2), (m1, l1) = hist[-3], hist[-2]
            r0, r1 = (lam - l1) / h, (l1 - l2) / h
            d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)  # = h^2 x0''(lambda) / 2 + O(h^3)
            # x' = e^{-h} x + (1 - e^{-h}) x0 + phi_2 h x0' - phi_3 h^2 x0'' with phi_2 = 1 + (e^{-h} - 1) / h,
            # phi_3 = (e^{-h} - 1 + h) / h^2 - 1/2 (the exact integral of the Taylor terms): h^2 x0'' is 2 D2.
            # The reference codes weight D2 by phi_3 alone, a local O(h^3) error: second order overall.
            em = math.expm1(-h)
            w2 = 1.0 if reference_3m else 2.0
            x = (s_next / s) * x - em * m0 + (em / h + 1.0) * d1 - w2 * ((em + h) / h**2 - 0.5) * d2
            continue
        if sde:  # x' = e^{-2h} x + (1 - e^{-2h}) D + sigma' sqrt(1 - e^{-2h}) z (2M SDE, midpoint)
            e2 = -math.expm1(-2.0 * h)
            x = (s_next / s) * math.exp(-h) * x + e2 * D + noise() * (s_next * e2**0.5)
        else:  # x' = e^{-h} x + (1 - e^{-h}) D
            x = (s_next / s) * x - math.expm1(-h) * D
    return x


@register_sampler("dpm-solver++", options=(ORDER, REFERENCE_3M),
                  order=lambda o: 2 if o["order"] == 3 and o["reference_3m"] else o["order"],
                  paper="Lu et al. 2022, DPM-Solver++ multistep: 2M (Alg. 2) and 3M (App. B)")
def dpm_solver_pp(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, order: int = 2,
                  reference_3m: bool = False, progress: bool = False) -> torch.Tensor:
    """Multistep order 1 (= DDIM), 2 (2M) or 3 (3M) in lambda, on data predictions x0."""
    return _multistep(den, x, noise, order, False, progress, "dpm-solver++", reference_3m)


@register_sampler("dpm-solver++-sde", stochastic=True, order=None,
                  paper="Lu et al. 2022, SDE-DPM-Solver++(2M), eq. 18 (diffusers' sde-dpmsolver++, midpoint)")
def dpm_solver_pp_sde(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, progress: bool = False
                      ) -> torch.Tensor:
    """Second-order multistep solver of the reverse SDE in lambda, on data predictions."""
    return _multistep(den, x, noise, 2, True, progress, "dpm-solver++-sde")
