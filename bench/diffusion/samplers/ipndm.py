"""iPNDM (Zhang & Chen 2023, DEIS paper, "improved PNDM"): Adams-Bashforth on the ODE in sigma."""

from __future__ import annotations

import torch

from bench.diffusion.noise import NoiseSource
from bench.diffusion.samplers.registry import Denoiser, Option, register_sampler

ORDER = Option("order", int, 4, 1, 4, "ipndm's order must be in [1, 4] (the Adams-Bashforth history length)")

# Adams-Bashforth weights, newest derivative first (fixed-step coefficients, as iPNDM uses them)
AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@register_sampler("ipndm", options=(ORDER,), order=lambda o: min(o["order"], 2),
                  paper="Zhang & Chen 2023 (DEIS), iPNDM; as in Zhou et al. 2024's fast-ODE-sampling code")
def ipndm(den: Denoiser, x: torch.Tensor, noise: NoiseSource, *, order: int = 4, progress: bool = False
          ) -> torch.Tensor:
    """x' = x + (sigma' - sigma) sum_j w_j d_{k-j}, d = (x - D(x; sigma)) / sigma, with the
    fixed-step Adams-Bashforth weights of the available history (warm-up 1, 2, ...); the last step,
    to sigma = 0, is first order (it returns x0). The weights assume equal steps, so on the
    non-uniform levels of a real schedule the observed order is about 2 whatever the history
    (the declared ``order`` of the registry; measured by the convergence test)."""
    sig = den.sigmas
    x, steps = den.begin(x, progress, "ipndm")
    ds: list[torch.Tensor] = []
    for i in steps:
        s, s_next = sig[i], sig[i - 1]
        x0 = den.ve(x, i).x0
        if s_next == 0.0:
            return x0
        ds = ([(x - x0) / s] + ds)[:order]
        w = AB[len(ds)]
        x = x + (s_next - s) * sum(wj * dj for wj, dj in zip(w, ds))
    return x
