"""What the network predicts, and the exact conversions between the four parameterisations.

With x_t = a x_0 + s eps (a = sqrt(abar_t), s = sqrt(1 - abar_t), a^2 + s^2 = 1):
  eps   : the noise                                (Ho et al. 2020)
  x0    : the clean image
  v     : a eps - s x_0                            (Salimans & Ho 2022, Sec. 4)
  score : grad log q(x_t) = -eps / s               (Song et al. 2021; Vincent 2011)
Every objective maps its prediction to (eps, x0) and back; samplers only ever see eps and x0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from bench.core.registry import Registry


class Objective(Protocol):
    def to_eps_x0(self, pred: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def from_eps_x0(self, eps: torch.Tensor, x0: torch.Tensor, a: torch.Tensor, s: torch.Tensor
                    ) -> torch.Tensor: ...

    def loss_weight(self, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor: ...


OBJECTIVES: Registry[Objective] = Registry("objective")


@dataclass(frozen=True)
class EpsObjective:
    def to_eps_x0(self, pred, x_t, a, s):
        return pred, (x_t - s * pred) / a

    def from_eps_x0(self, eps, x0, a, s):
        return eps

    def loss_weight(self, a, s):
        return torch.ones_like(a)


@dataclass(frozen=True)
class X0Objective:
    def to_eps_x0(self, pred, x_t, a, s):
        return (x_t - a * pred) / s, pred

    def from_eps_x0(self, eps, x0, a, s):
        return x0

    def loss_weight(self, a, s):
        return torch.ones_like(a)


@dataclass(frozen=True)
class VObjective:
    def to_eps_x0(self, pred, x_t, a, s):
        # x0 = a x_t - s v, eps = s x_t + a v  (Salimans & Ho 2022, App. D)
        return s * x_t + a * pred, a * x_t - s * pred

    def from_eps_x0(self, eps, x0, a, s):
        return a * eps - s * x0

    def loss_weight(self, a, s):
        return torch.ones_like(a)


@dataclass(frozen=True)
class ScoreObjective:
    def to_eps_x0(self, pred, x_t, a, s):
        eps = -s * pred
        return eps, (x_t - s * eps) / a

    def from_eps_x0(self, eps, x0, a, s):
        return -eps / s

    def loss_weight(self, a, s):
        # Denoising score matching with lambda(t) = sigma_t^2 (Song et al. 2021, eq. 7): the
        # unweighted score target -eps/s explodes as s -> 0, this weighting keeps each t O(1).
        return s**2


OBJECTIVES.register("eps", EpsObjective(), paper="Ho et al. 2020")
OBJECTIVES.register("x0", X0Objective(), paper="Ho et al. 2020, Sec. 3.2 (mu from x0)")
OBJECTIVES.register("v", VObjective(), paper="Salimans & Ho 2022")
OBJECTIVES.register("score", ScoreObjective(), paper="Song et al. 2021 (sigma^2-weighted DSM)")


def convert(pred: torch.Tensor, src: str, dst: str, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor
            ) -> torch.Tensor:
    """Convert a prediction between objectives at the same (x_t, t)."""
    eps, x0 = OBJECTIVES.get(src).to_eps_x0(pred, x_t, a, s)
    return OBJECTIVES.get(dst).from_eps_x0(eps, x0, a, s)
