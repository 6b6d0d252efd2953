"""Guidance methods: how the conditional and unconditional predictions combine at one call.

A method is ``fn(g: Guided, w, state, **options) -> (eps, x0)``, registered with
:func:`register_guidance` and the options it owns, written once in the CFG paper's convention
(Ho & Salimans 2022: ``w = 0`` is plain conditional sampling, eps~ = eps_c + w (eps_c - eps_u)).
For a method registered with ``guide=True`` (autoguidance) the second branch is a second,
weaker model's conditional prediction instead of the unconditional one. It sees both as (eps, x0) at the state x_t = a x0 + s eps, and the call's noise level
sigma = sqrt((1 - abar) / abar) (the EDM convention the interval paper uses), so it composes with
every sampler: a sampler only ever asks the Denoiser for (eps, x0).

``active(sigma, options)`` says whether a call needs the unconditional branch at all: outside
``cfg-interval``'s interval the Denoiser makes one B call instead of a 2B one, and counts so.
Every method takes a weight schedule over the chain, ``schedule`` (``constant``, ``linear``,
``cosine``; Wang et al. 2024): w(t) = w f(t / T), with f's mean over t in [0, 1] equal to 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from bench.core.errors import BenchError
from bench.core.registry import Registry
from bench.diffusion.samplers.registry import Option, apply_options

__all__ = ["GUIDANCE", "Guided", "OptionOrder", "WEIGHT_SCHEDULES", "register_guidance", "check_guidance",
           "guidance_weight", "guided_by_model"]

GuidanceFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
GUIDANCE: Registry[GuidanceFn] = Registry("guidance method")

# f(u), u = t / T in [0, 1] (1: pure noise); each has mean 1 over u, so w keeps its meaning on average
WEIGHT_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda u: 1.0,
    "linear": lambda u: 2.0 * (1.0 - u),  # weak guidance at high noise, strong near the data
    "cosine": lambda u: 1.0 + math.cos(math.pi * u),
}
_SCHEDULE = Option("schedule", str, "constant", help="the weight schedule over the chain",
                   choices=tuple(WEIGHT_SCHEDULES))


@dataclass(frozen=True)
class Guided:
    """Both branches of one guided call, as (eps, x0) at x_t = a x0 + s eps."""

    eps_c: torch.Tensor
    x0_c: torch.Tensor
    eps_u: torch.Tensor
    x0_u: torch.Tensor
    x_t: torch.Tensor
    a: torch.Tensor | float
    s: torch.Tensor | float
    sigma: float

    def from_x0(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) consistent with x_t for a guided x0."""
        return (self.x_t - self.a * x0) / self.s, x0


def always_active(sigma: float, options: Mapping[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class OptionOrder:
    """A joint constraint of two options of one method: ``low`` <= ``high`` (cfg-interval's
    sigma_lo <= sigma_hi). Checked on a run's options (:func:`check_guidance`) and on a search's
    ranges (``bench.study.search_spec``: the ranges may not overlap, so no trial draws them reversed);
    ``why`` ends the run-time message."""

    low: str
    high: str
    why: str = ""

    def check(self, options: Mapping[str, Any], where: str) -> None:
        if options[self.low] > options[self.high]:
            raise BenchError(f"{where}: {self.low} = {options[self.low]} is above {self.high} = "
                             f"{options[self.high]}" + (f"; {self.why}" if self.why else ""))

    def check_ranges(self, ranges: Mapping[str, tuple[float, float]], where: str, prefix: str = "") -> None:
        """``ranges``: option -> (low, high) searched; both searched and overlapping is refused."""
        lo, hi = ranges.get(self.low), ranges.get(self.high)
        if lo is not None and hi is not None and lo[1] > hi[0]:
            raise BenchError(f"{where}: {prefix}{self.low}'s range [{lo[0]}, {lo[1]}] overlaps {self.high}'s "
                             f"[{hi[0]}, {hi[1]}], so a trial could draw {self.low} above {self.high}; make "
                             f"{self.low}'s `high` at most {self.high}'s `low`")


def register_guidance(name: str, *, options: tuple[Option, ...] = (), paper: str,
                      active: Callable[[float, Mapping[str, Any]], bool] = always_active,
                      constraints: tuple[OptionOrder, ...] = (), guide: bool = False,
                      **meta: Any) -> Callable[[GuidanceFn], GuidanceFn]:
    """Decorator: a guidance method, its options (``schedule`` is added to every method), its paper,
    ``active(sigma, options)``: whether a call at that noise level needs the unconditional branch,
    ``constraints``: joint rules of its options, and ``guide``: whether its second branch is a
    second, weaker model (``sample.guide``, a TRAIN node of the plan) instead of the unconditional one."""
    declared = {o.name: o for o in (*options, _SCHEDULE)}
    return GUIDANCE.register(name, options=declared, paper=paper, active=active, constraints=tuple(constraints),
                             guide=guide, **meta)


def guided_by_model(method: str) -> bool:
    """Whether ``method`` takes a guide model (``guide=True``: autoguidance)."""
    return bool(GUIDANCE.meta(method)["guide"])


def check_guidance(method: str, options: Mapping[str, Any] | None,
                   where: str = "sample.guidance_options") -> dict[str, Any]:
    """The method's options with ``options`` applied, every name declared and value in range."""
    declared = GUIDANCE.meta(GUIDANCE.check(method, "sample.guidance_method"))["options"]
    out = apply_options(declared, options, where, f"guidance method {method!r}")
    for rule in GUIDANCE.meta(method)["constraints"]:
        rule.check(out, where)
    return out


def guidance_weight(w: float, schedule: str, t: float, timesteps: int) -> float:
    """w at a call of time ``t`` (0 .. T - 1, float between trained steps) under ``schedule``."""
    return w * WEIGHT_SCHEDULES[schedule](min(1.0, max(0.0, float(t) / max(1, timesteps - 1))))


# --- methods -------------------------------------------------------------------------------------


@register_guidance("cfg", paper="Ho & Salimans 2022, Classifier-Free Diffusion Guidance, eq. 6")
def cfg(g: Guided, w: float, state: dict[str, Any], **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return g.eps_c + w * (g.eps_c - g.eps_u), g.x0_c + w * (g.x0_c - g.x0_u)


def _in_interval(sigma: float, options: Mapping[str, Any]) -> bool:
    return options["sigma_lo"] < sigma <= options["sigma_hi"]  # the paper's (sigma_lo, sigma_hi]


@register_guidance(
    "cfg-interval", active=_in_interval,
    constraints=(OptionOrder("sigma_lo", "sigma_hi",
                             "the interval is [sigma_lo, sigma_hi] (EDM sigma = sqrt((1 - abar) / abar))"),),
    paper="Kynkäänniemi et al. 2024, Applying Guidance in a Limited Interval Improves Sample and "
          "Distribution Quality in Diffusion Models (sigma in (sigma_lo, sigma_hi]; EDM2 ImageNet-512 uses (0.28, 5.42])",
    options=(Option("sigma_lo", float, 0.0, 0.0, None, "the interval's lower noise level (EDM sigma)"),
             Option("sigma_hi", float, math.inf, 0.0, None, "the interval's upper noise level (EDM sigma)")),
)  # fmt: skip
def cfg_interval(g: Guided, w: float, state: dict[str, Any], sigma_lo: float, sigma_hi: float,
                 **_: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    if not _in_interval(g.sigma, {"sigma_lo": sigma_lo, "sigma_hi": sigma_hi}):
        return g.eps_c, g.x0_c
    return cfg(g, w, state)


@register_guidance(
    "cfg++", paper="Chung et al. 2024, CFG++: Manifold-constrained Classifier Free Guidance, Alg. 1 (DDIM)",
    own_eps=True,  # its eps (the unconditional one) is not x0's: clipping x0 keeps it
    weight_range=(0.0, 1.0),  # the paper's lambda (sample.guidance), checked by bench.diffusion.request.check_weight
)
def cfg_pp(g: Guided, w: float, state: dict[str, Any], **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's lambda is the study's w (its range [0, 1]; about 0.2-0.8 in the paper):
    x0 = x0_u + lam (x0_c - x0_u), and the renoising direction is the unconditional eps (the
    manifold constraint): a DDIM step x' = a' x0 + s' eps is then exactly Alg. 1. A sampler that
    uses x0 only (DPM-Solver++ data prediction) sees CFG with weight lam - 1. w = 0 is no guidance
    (conditional sampling), as for every method; lam -> 0+ tends to unconditional sampling."""
    return g.eps_u, g.x0_u + w * (g.x0_c - g.x0_u)


def _project(diff: torch.Tensor, onto: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(parallel, orthogonal) parts of ``diff`` relative to ``onto``, per image (float64)."""
    dims = tuple(range(1, diff.dim()))
    d, u = diff.double(), torch.nn.functional.normalize(onto.double().flatten(1), dim=1).view_as(onto)
    par = (d * u).sum(dim=dims, keepdim=True) * u
    return par.to(diff.dtype), (d - par).to(diff.dtype)


@register_guidance(
    "apg", paper="Sadat et al. 2024, Eliminating Oversaturation and Artifacts of High Guidance Scales in "
                 "Diffusion Models (adaptive projected guidance, Alg. 1), on the x0 prediction",
    options=(Option("eta", float, 1.0, 0.0, 1.0, "weight of the update's part parallel to x0_c (0: drop it)"),
             Option("momentum", float, 0.0, -1.0, 1.0, "beta of the running average of updates (negative in the paper)"),
             Option("norm_threshold", float, 0.0, 0.0, None, "rescale updates whose L2 norm exceeds r (0: off)")),
)  # fmt: skip
def apg(g: Guided, w: float, state: dict[str, Any], eta: float, momentum: float, norm_threshold: float,
        **_: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """x0 = x0_c + w (eta D_par + D_orth), D = x0_c - x0_u after momentum (D <- D + beta D_prev) and
    norm rescaling (D <- D min(1, r / ||D||)); eta = 1, beta = 0, r = 0 is CFG exactly."""
    diff = g.x0_c - g.x0_u
    if momentum != 0.0:
        previous = state.get("apg_running")
        diff = diff + momentum * previous if previous is not None else diff
        state["apg_running"] = diff
    if norm_threshold > 0.0:
        norm = diff.flatten(1).norm(dim=1).view(-1, *([1] * (diff.dim() - 1)))
        diff = diff * torch.clamp(norm_threshold / norm.clamp_min(1e-12), max=1.0)
    par, orth = _project(diff, g.x0_c)
    return g.from_x0(g.x0_c + w * (orth + eta * par))


@register_guidance(
    "autoguidance", guide=True,
    paper="Karras et al. 2024, Guiding a Diffusion Model with a Bad Version of Itself (EDM2 autoguidance)",
)
def autoguidance(g: Guided, w: float, state: dict[str, Any], **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """CFG's formula with the unconditional branch replaced by a weaker model's prediction for the
    same label (``g.eps_u`` / ``g.x0_u`` hold the guide's): x0 = x0_main + w (x0_main - x0_guide)."""
    return cfg(g, w, state)
