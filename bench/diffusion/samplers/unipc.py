"""UniPC (Zhao et al. 2023): the unified predictor-corrector, B(h) = e^h - 1 ("bh2"), on x0.

Written in x = x0 + sigma eps with lambda = -log sigma, h = lambda_next - lambda. The corrector
UniC at level t reuses the network output already computed there for the next predictor step,
so it costs no network call: NFE = levels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.diffusion.noise import NoiseSource
from bench.diffusion.samplers.registry import Denoiser, Option, register_sampler

OPTIONS = (
    Option("order", int, 2, 1, 3, "unipc's order p must be 1, 2 or 3 (UniPC-p; with the corrector, order p + 1)"),
    Option("corrector", bool, True, help="false runs the predictor UniP alone"),
)


def _bh_coefficients(h: float, rks: list[float], order: int, corrector: bool) -> tuple[float, float, np.ndarray]:
    """h phi_1, B(h) and the rho's of UniP (``corrector`` False) or UniC, Zhao et al. Alg. 2/3:
    R rho = b, R_ij = r_j^(i-1), b_i = (h phi_{i+1}(h)) i! / B(h), phi from phi_{k+1} = (phi_k - 1/k!) / h."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = h_phi_1
    h_phi_k = h_phi_1 / hh - 1.0
    fact, b = 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    r = np.array(rks + [1.0])
    R = np.stack([r ** (k - 1) for k in range(1, order + 1)])
    b = np.array(b)
    if corrector:
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
    else:
        rhos = np.array([0.5]) if order == 2 else (np.linalg.solve(R[:-1, :-1], b[:-1]) if order > 2
                                                   else np.zeros(0))
    return h_phi_1, b_h, rhos


def _update(x: torch.Tensor, s: float, s_next: float, hist: list[tuple[torch.Tensor, float]], order: int,
            corrector: bool, m_new: torch.Tensor | None) -> torch.Tensor:
    """One UniP step from (x, sigma s) to s_next on the history (x0, lambda), newest last; or, with
    ``m_new`` (the x0 at s_next), the UniC correction of that step."""
    m0, lam0 = hist[-1]
    h = -math.log(s_next) - lam0
    rks = [(hist[-(k + 1)][1] - lam0) / h for k in range(1, order)]
    h_phi_1, b_h, rhos = _bh_coefficients(h, rks, order, corrector)
    out = (s_next / s) * x - h_phi_1 * m0
    res = sum(float(rho) * (hist[-(k + 1)][0] - m0) / rk for k, (rho, rk) in enumerate(zip(rhos, rks), 1))
    if corrector:
        res = res + float(rhos[-1]) * (m_new - m0)
    return out - b_h * res if isinstance(res, torch.Tensor) else out


@register_sampler("unipc", options=OPTIONS, order=lambda o: o["order"] + int(o["corrector"]),
                  paper="Zhao et al. 2023, UniPC, Alg. 2 (UniP-p) and 3 (UniC-p), B(h) = e^h - 1")
def unipc(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, order: int = 2, corrector: bool = True,
          progress: bool = False) -> torch.Tensor:
    """UniP-p predicts the next level from the last p outputs; at that level, UniC-p corrects the
    prediction with the new output before the next UniP step. The order warms up 1, 2, ... and
    falls to 1 toward the end (``min(p, steps left)``); the last step, to sigma = 0, returns x0."""
    sig = den.sigmas
    x, steps = den.begin(x, progress, "unipc")
    n = len(steps)
    hist: list[tuple[torch.Tensor, float]] = []
    last: tuple[torch.Tensor, float, int] | None = None  # (x before the predictor, its sigma, its order)
    for k, i in enumerate(steps):
        s, s_next = sig[i], sig[i - 1]
        m_new = den.ve(x, i).x0.clone()  # kept across calls (a compiled network's buffer is reused)
        if last is not None and corrector:
            x = _update(last[0], last[1], s, hist, last[2], True, m_new)
        hist = (hist + [(m_new, -math.log(s))])[-order:]
        if s_next == 0.0:
            return m_new
        p = min(order, n - k, k + 1)
        last = (x, s, p)
        x = _update(x, s, s_next, hist, p, False, None)
    return x
