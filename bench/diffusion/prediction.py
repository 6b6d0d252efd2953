"""What the network's output means to a sampler: a leaf module every other part of the math imports.

A model is any callable ``model(x_t, t, y) -> Tensor``; a class-conditional one has an int
attribute ``num_classes`` whose index is the null (unconditional) label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Model = Callable[..., torch.Tensor]


@dataclass
class Prediction:
    eps: torch.Tensor
    x0: torch.Tensor
    var_out: torch.Tensor | None  # the learned-range interpolation value v, when the variance is learned


def null_label(model: Model) -> int:
    return int(model.num_classes)  # type: ignore[attr-defined]


def is_conditional(model: Model) -> bool:
    n = getattr(model, "num_classes", None)
    return isinstance(n, int) and not isinstance(n, bool) and n > 0


@dataclass(frozen=True)
class Level:
    """One noise level of a network call, precomputed once per chain (no per-step host work).

    ``t``: the network's time input [B], on the device; ``t2`` the same for a 2B guided call (None
    where the level is not guided; ``t`` is then its first half, a view). ``a`` = sqrt(abar), ``s`` = sqrt(1 - abar): python floats for one
    level (sampling), tensors [B, 1, 1, 1] for per-image timesteps. ``sigma`` = s / a (NaN for
    per-image timesteps; inf at pure noise, a = 0). ``guided``: whether this call runs both branches (a 2B call, or two B
    calls); ``w`` its guidance weight after the method's schedule.
    """

    t: torch.Tensor
    t2: torch.Tensor | None
    a: float | torch.Tensor
    s: float | torch.Tensor
    sigma: float
    guided: bool = False
    w: float = 0.0
    # a continuous process (or a rate objective): the process's Rates at this level (None: vp's
    # eps / x0 / v / score, today's path); the process state is x_t = r x (x the VP state the
    # samplers keep), and the network sees scale x = c_in r x
    k: Any = None
    r: float = 1.0
    scale: float = 1.0


@dataclass(frozen=True)
class Conditioning:
    """What stays fixed along one chain: the labels and how guided calls are made.

    ``y2`` = cat(y, null labels) for a 2B call; ``split``: run the two branches as two B calls
    instead (the same numbers up to rounding; faster on some devices, see
    :func:`bench.diffusion.batching.split_guided`); ``method``: the guidance function (None: none);
    ``guide``: autoguidance's second network; ``state``: a method's memory along the chain;
    ``guidance`` the weight w before the method's schedule; ``active(sigma, options)`` whether a
    call at that level needs both branches.
    """

    y: torch.Tensor | None = None
    y2: torch.Tensor | None = None
    method: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    options: dict | None = None
    own_eps: bool = False
    guide: Model | None = None
    split: bool = False
    clip_denoised: bool = False
    guidance_channels: int | None = None
    state: dict | None = None
    guidance: float = 0.0
    active: Callable[[float, dict], bool] | None = None
