"""What the network predicts, and the exact conversions between the four parameterisations.

With x_t = a x_0 + s eps (a = sqrt(abar_t), s = sqrt(1 - abar_t), a^2 + s^2 = 1):
  eps   : the noise                                (Ho et al. 2020)
  x0    : the clean image
  v     : a eps - s x_0                            (Salimans & Ho 2022, Sec. 4)
  score : grad log q(x_t) = -eps / s               (Song et al. 2021; Vincent 2011)
Every objective maps its prediction to (eps, x0) and back; samplers only ever see eps and x0.

On a continuous process (bench.diffusion.processes) x_t = alpha x0 + sigma eps with a = alpha,
s = sigma not on the unit circle; ``k`` (:class:`Rates`) then carries the process's coefficients:
  velocity : d x_t / dt = alpha' x0 + sigma' eps   (flow matching; eps - x0 for rectified flow,
             Lipman et al. 2023, Liu et al. 2023)
  edm      : the F-target of Karras et al. 2022 (Table 1): D = c_skip x + c_out F on the VE state
             x = x_t / alpha at sigma_ve = sigma / alpha, with sigma_data
  v        : Salimans & Ho's v of the normalised state x_t / r, r = sqrt(alpha^2 + sigma^2)
eps / x0 / score keep their meaning (score = grad log q(x_t) = -eps / sigma). On process ``vp``
``k`` is None for eps / x0 / v / score: today's formulas, today's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bench.core.registry import Registry


@dataclass(frozen=True)
class Rates:
    """A process's coefficients at the call's t (python floats, or tensors [B, 1, 1, 1])."""

    alpha: Any
    sigma: Any
    d_alpha: Any
    d_sigma: Any
    sigma_data: float = 0.5


class Objective(Protocol):
    def to_eps_x0(self, pred: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor,
                  k: Rates | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def from_eps_x0(self, eps: torch.Tensor, x0: torch.Tensor, a: torch.Tensor, s: torch.Tensor,
                    k: Rates | None = None) -> torch.Tensor: ...

    def loss_weight(self, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor: ...


OBJECTIVES: Registry[Objective] = Registry("objective")


@dataclass(frozen=True)
class EpsObjective:
    def to_eps_x0(self, pred, x_t, a, s, k=None):
        return pred, (x_t - s * pred) / a

    def from_eps_x0(self, eps, x0, a, s, k=None):
        return eps

    def loss_weight(self, a, s):
        return torch.ones_like(a)


@dataclass(frozen=True)
class X0Objective:
    def to_eps_x0(self, pred, x_t, a, s, k=None):
        return (x_t - a * pred) / s, pred

    def from_eps_x0(self, eps, x0, a, s, k=None):
        return x0

    def loss_weight(self, a, s):
        return torch.ones_like(a)


@dataclass(frozen=True)
class VObjective:
    def to_eps_x0(self, pred, x_t, a, s, k=None):
        if k is not None:  # a continuous process: the v of the normalised state x_t / r
            r = _hypot(a, s)
            return VObjective().to_eps_x0(pred, x_t / r, a / r, s / r)
        # x0 = a x_t - s v, eps = s x_t + a v  (Salimans & Ho 2022, App. D)
        return s * x_t + a * pred, a * x_t - s * pred

    def from_eps_x0(self, eps, x0, a, s, k=None):
        if k is not None:
            r = _hypot(a, s)
            return (a / r) * eps - (s / r) * x0
        return a * eps - s * x0

    def loss_weight(self, a, s):
        return torch.ones_like(a)


@dataclass(frozen=True)
class ScoreObjective:
    def to_eps_x0(self, pred, x_t, a, s, k=None):
        eps = -s * pred
        return eps, (x_t - s * eps) / a

    def from_eps_x0(self, eps, x0, a, s, k=None):
        return -eps / s

    def loss_weight(self, a, s):
        # Denoising score matching with lambda(t) = sigma_t^2 (Song et al. 2021, eq. 7): the
        # unweighted score target -eps/s explodes as s -> 0, this weighting keeps each t O(1).
        return s**2


def _hypot(a, s):
    return (a * a + s * s) ** 0.5


@dataclass(frozen=True)
class VelocityObjective:
    """v = alpha' x0 + sigma' eps; with x_t = alpha x0 + sigma eps and det = alpha sigma' - sigma alpha'
    (> 0 for every registered process): x0 = (sigma' x_t - sigma v) / det, eps = (alpha v - alpha' x_t) / det."""

    def to_eps_x0(self, pred, x_t, a, s, k=None):
        det = k.alpha * k.d_sigma - k.sigma * k.d_alpha
        return (k.alpha * pred - k.d_alpha * x_t) / det, (k.d_sigma * x_t - k.sigma * pred) / det

    def from_eps_x0(self, eps, x0, a, s, k=None):
        return k.d_alpha * x0 + k.d_sigma * eps

    def loss_weight(self, a, s):
        return torch.ones_like(torch.as_tensor(a))


@dataclass(frozen=True)
class EdmObjective:
    """The F-target: D(x; sigma) = c_skip x + c_out F on x = x_t / alpha, sigma = sigma_t / alpha
    (Karras et al. 2022, Table 1 and eq. 7); its plain MSE is the paper's lambda-weighted loss on D."""

    @staticmethod
    def _c(a, s, k):
        sv, sd = s / a, k.sigma_data
        return sd**2 / (sv**2 + sd**2), sv * sd / (sv**2 + sd**2) ** 0.5

    def to_eps_x0(self, pred, x_t, a, s, k=None):
        c_skip, c_out = self._c(a, s, k)
        x0 = c_skip * (x_t / a) + c_out * pred
        return (x_t - a * x0) / s, x0

    def from_eps_x0(self, eps, x0, a, s, k=None):
        c_skip, c_out = self._c(a, s, k)
        return (x0 - c_skip * (x0 + (s / a) * eps)) / c_out

    def loss_weight(self, a, s):
        return torch.ones_like(torch.as_tensor(a))


# at_pure_noise: whether the prediction gives x0 where alpha = 0 (t = 1 of rectified flow / gvp);
# a sampler of an objective that cannot starts at unit time 1 - U_EDGE instead (as SiT's samplers do)
OBJECTIVES.register("eps", EpsObjective(), at_pure_noise=False, paper="Ho et al. 2020")
OBJECTIVES.register("x0", X0Objective(), at_pure_noise=True, paper="Ho et al. 2020, Sec. 3.2 (mu from x0)")
OBJECTIVES.register("v", VObjective(), at_pure_noise=True, paper="Salimans & Ho 2022")
OBJECTIVES.register("score", ScoreObjective(), at_pure_noise=False, paper="Song et al. 2021 (sigma^2-weighted DSM)")

# The targets defined through a process's rates (t-derivatives, sigma_data): a registry of their
# own, so the four above keep being "what (a, s) alone define". Every process takes either kind.
RATE_OBJECTIVES: Registry[Objective] = Registry("objective")
RATE_OBJECTIVES.register("velocity", VelocityObjective(), at_pure_noise=True,
                         paper="Lipman et al. 2023; Liu et al. 2023 (flow matching: d x_t / dt)")
RATE_OBJECTIVES.register("edm", EdmObjective(), at_pure_noise=False,
                         paper="Karras et al. 2022 (EDM), Table 1: F-target with c_skip, c_out")


# Every objective a Diffusion takes (``diffusion.objective``), with ``rates``: whether it needs them.
ALL_OBJECTIVES: Registry[Objective] = Registry("objective")
for _reg, _rates in ((OBJECTIVES, False), (RATE_OBJECTIVES, True)):
    for _name in _reg.names():
        ALL_OBJECTIVES.register(_name, _reg.get(_name), **_reg.meta(_name), rates=_rates)


def objective_names() -> list[str]:
    return ALL_OBJECTIVES.names()


def check_objective(name: str, where: str = "diffusion.objective") -> str:
    """``name`` if it is an objective of either registry, else one BenchError listing them all."""
    return ALL_OBJECTIVES.check(name, where)


def get_objective(name: str) -> Objective:
    return ALL_OBJECTIVES.get(check_objective(name))


def objective_meta(name: str) -> dict[str, Any]:
    return ALL_OBJECTIVES.meta(check_objective(name))


def convert(pred: torch.Tensor, src: str, dst: str, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor,
            k: Rates | None = None) -> torch.Tensor:
    """Convert a prediction between objectives at the same (x_t, t) (``k``: a continuous process's
    rates, needed by velocity and edm)."""
    eps, x0 = get_objective(src).to_eps_x0(pred, x_t, a, s, k)
    return get_objective(dst).from_eps_x0(eps, x0, a, s, k)
