"""Training losses, each ``fn(diffusion, x0, x_t, t, noise, pred, var_out) -> [B]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bench.core.registry import Registry

Diffusion = Any  # a bench.diffusion.core.Diffusion (not imported: core imports this module)

LossFn = Callable[..., torch.Tensor]
LOSSES: Registry[LossFn] = Registry("loss")


def _simple(d: Diffusion, x0, x_t, t, noise, pred) -> torch.Tensor:
    a, s = d.coefs(t, x0)
    target = d.objective.from_eps_x0(noise, x0, a, s)
    weight = d.objective.loss_weight(a, s)
    return (weight * (pred - target) ** 2).flatten(1).mean(1)


@LOSSES.register("simple", trains_variance=False, paper="Ho et al. 2020, eq. 14 (MSE on the target)")
def simple(d: Diffusion, x0, x_t, t, noise, pred, var_out) -> torch.Tensor:
    return _simple(d, x0, x_t, t, noise, pred)


@LOSSES.register("vlb", trains_variance=True, paper="Ho et al. 2020, eq. 5 (L_t, rescaled by T)")
def vlb(d: Diffusion, x0, x_t, t, noise, pred, var_out) -> torch.Tensor:
    """T * L_t at uniform t: an unbiased estimate of the whole bound (bits per dim)."""
    return d.timesteps * d.vb_term(x0, x_t, t, pred, var_out)


@LOSSES.register("hybrid", trains_variance=True, paper="Nichol & Dhariwal 2021, Sec. 3.1, L_hybrid")
def hybrid(d: Diffusion, x0, x_t, t, noise, pred, var_out) -> torch.Tensor:
    """L_simple + lambda L_vlb, the vlb term with the mean's gradient stopped (it trains only Sigma)."""
    vb = d.vb_term(x0, x_t, t, pred.detach(), var_out)
    return _simple(d, x0, x_t, t, noise, pred) + d.hybrid_weight * d.timesteps * vb
