"""What the network's output means to a sampler: a leaf module every other part of the math imports.

A model is any callable ``model(x_t, t, y) -> Tensor``; a class-conditional one has an int
attribute ``num_classes`` whose index is the null (unconditional) label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
