"""iPNDM (Zhang & Chen 2023, DEIS paper, "improved PNDM"): Adams-Bashforth on the ODE in sigma.

In x = x0 + sigma eps the probability-flow ODE is dx / dsigma = d = (x - D(x; sigma)) / sigma (the
predicted eps), and iPNDM steps x' = x + (sigma' - sigma) sum_j w_j d_{k-j} over the history of
derivatives, warming up with orders 1, 2, 3 (as DEIS's ``get_sampler_ipndm`` and Zhou et al. 2024's
``ipndm_sampler``, github zju-pi/diff-sampler, ``diff-solvers-main/solvers.py``). Two knobs of those
codes are options here:

- ``variable``: the fixed-step weights (55, -59, 37, -9) / 24 of the papers, or the variable-step
  Adams-Bashforth weights w_j = int_0^1 L_j(u) du of the Lagrange basis through the history's
  sigmas (Zhou et al.'s ``ipndm_v_sampler``). The fixed weights assume equal steps; on karras
  levels successive steps shrink by 3-10x, so they extrapolate the history too far. Zhou et al.'s
  own order-3 and order-4 variable weights are not these (order 3 reads ``(1 - A * B) / 2`` for
  ``(1 - A) * B / 2``; order 4 is off even on equal steps), so ``variable`` is compared with their
  loop at orders 1-2 and with the Adams-Bashforth property at 3-4 (tests/test_ipndm.py).
- ``denoise_to_zero``: the chain's last level sigma_min is followed by the step to sigma = 0, which
  returns x0 = D(x; sigma_min) (one call; every sampler of this package ends so). The reference
  codes by default (``denoise_to_zero=False``) stop at sigma_min and return x there: their NFE 5
  is 5 Adams-Bashforth intervals over 6 levels, where ``denoise_to_zero`` spends the fifth call
  on D at sigma_min (4 intervals over 5 levels). With ``false`` the sampler makes one call fewer
  than its chain has levels (declared ``nfe``), so a ``sample.nfe`` budget buys one level more.
"""

from __future__ import annotations

import torch

from bench.diffusion.noise import NoiseSource
from bench.diffusion.samplers.registry import Denoiser, Option, register_sampler

ORDER = Option("order", int, 4, 1, 4, "ipndm's order must be in [1, 4] (the Adams-Bashforth history length)")
VARIABLE = Option("variable", bool, False, help=(
    "true: variable-step Adams-Bashforth weights from the levels' sigmas (Zhou et al.'s iPNDM-v); "
    "false: the fixed-step weights of the papers"))
DENOISE_TO_ZERO = Option("denoise_to_zero", bool, True, help=(
    "true: end with the step sigma_min -> 0 (x0 = D(x; sigma_min), one call); false: stop at sigma_min "
    "and return x there, as the reference codes do by default (one call fewer than levels)"))

# Adams-Bashforth weights, newest derivative first (fixed-step coefficients, as iPNDM uses them)
AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def ab_weights(sigmas: list[float], s_next: float) -> list[float]:
    """Variable-step Adams-Bashforth weights, newest first: the step from ``sigmas[0]`` to ``s_next``
    with the derivatives at ``sigmas`` (newest first) is x' = x + (s_next - sigmas[0]) sum_j w_j d_j,
    w_j = int_0^1 L_j(u) du, L_j the Lagrange basis through u_k = (sigmas[k] - sigmas[0]) / h.
    Equal steps give the fixed weights :data:`AB`."""
    h = s_next - sigmas[0]
    u = [(s - sigmas[0]) / h for s in sigmas]
    out = []
    for j, uj in enumerate(u):
        poly, den = [1.0], 1.0  # coefficients of prod_{k != j} (u - u_k), lowest power first
        for k, uk in enumerate(u):
            if k != j:
                poly = [(poly[i - 1] if i else 0.0) - uk * (poly[i] if i < len(poly) else 0.0)
                        for i in range(len(poly) + 1)]
                den *= uj - uk
        out.append(sum(c / (i + 1) for i, c in enumerate(poly)) / den)
    return out


def _nfe(levels: int, o: dict) -> int:
    return levels if o["denoise_to_zero"] or levels == 1 else levels - 1


@register_sampler("ipndm", options=(ORDER, VARIABLE, DENOISE_TO_ZERO), nfe=_nfe,
                  order=lambda o: o["order"] if o["variable"] else min(o["order"], 2),
                  paper="Zhang & Chen 2023 (DEIS), iPNDM; as in Zhou et al. 2024's fast-ODE-sampling code")
def ipndm(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, order: int = 4, variable: bool = False,
          denoise_to_zero: bool = True, progress: bool = False) -> torch.Tensor:
    """x' = x + (sigma' - sigma) sum_j w_j d_{k-j}, d = (x - D(x; sigma)) / sigma, with the
    Adams-Bashforth weights of the available history (warm-up 1, 2, ...): fixed-step, or
    (``variable``) those of the actual steps. With ``denoise_to_zero`` the last step, to sigma = 0,
    is first order (it returns x0); else the chain stops at its last level, sigma_min, without a
    call there. The fixed weights assume equal steps, so on the non-uniform levels of a real
    schedule the observed order is about 2 whatever the history (the declared ``order`` of the
    registry; measured by the convergence test); the variable weights keep the order."""
    sig = den.sigmas
    x, steps = den.begin(x, progress, "ipndm")
    if not denoise_to_zero and len(den.chain) > 1:
        steps = steps[:-1]  # no call at sigma_min: the step from level 1 lands there
    ds: list[torch.Tensor] = []
    ss: list[float] = []
    for i in steps:
        s, s_next = sig[i], sig[i - 1]
        x0 = den.ve(x, i).x0
        if s_next == 0.0:
            return x0
        ds = ([(x - x0) / s] + ds)[:order]
        ss = ([s] + ss)[:order]
        w = ab_weights(ss, s_next) if variable else AB[len(ds)]
        x = x + (s_next - s) * sum(wj * dj for wj, dj in zip(w, ds))
    return x
