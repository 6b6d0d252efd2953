"""Where on the noise process the training loss looks: the timestep density (``train.t_sampling``).

Stable Diffusion 3 (Esser et al. 2024, Sec. 3.1) trains with t drawn from a density pi(t) on
[0, 1] (t = 1 pure noise) instead of uniformly: ``logit-normal`` (m, s), ``mode`` (s), ``cosmap``.
EDM (Karras et al. 2022, Sec. 5 and Table 1) draws the noise level itself, ln sigma ~
N(P_mean, P_std^2), and weights the denoiser's error by lambda(sigma) = (sigma^2 + sigma_data^2) /
(sigma sigma_data)^2. Each density is one registry entry that declares its options with their
ranges (the samplers' :class:`~bench.diffusion.samplers.Option`), draws its samples and states
its closed-form density and CDF (what the tests check the samples against).

A density lives in one of two spaces, which a :class:`TimeSampler` maps onto any process:

- ``unit``: u in [0, 1], the process's unit time, t = ``process.from_unit(u)`` (SD3's t for
  rectified flow and GVP, shifted by SD3's ``shift``; EDM's rho ramp over [sigma_min, sigma_max]);
  the integer timestep floor(u T) for the discrete VP chain, as SD3 trains its eps / linear and
  v / cosine rows.
- ``sigma``: the noise-to-signal ratio sigma = sigma(t) / alpha(t) (EDM's sigma; the state x_t /
  alpha(t) = x0 + sigma eps), mapped to the process time that has it (``process.t_of_ve``: rectified
  flow t = sigma / (1 + sigma); the VP chain: the trained timestep nearest in log sigma), clamped to
  the trained range.

Loss weighting (the option ``weighting`` of every density): ``none`` keeps the objective's own MSE;
``edm`` replaces it by lambda(sigma) ||x0_hat - x0||^2 (EDM eq. 2 and Table 1; for EDM's F-target
under its preconditioning this is its own loss); ``min-snr`` by min(SNR, gamma) ||x0_hat - x0||^2
(Hang et al. 2023, Min-SNR-gamma; on the eps-MSE that is min(SNR, gamma) / SNR). The weight is on
the error of the predicted clean image, so it means the same for every objective.
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

__all__ = ["TIME_SAMPLING", "TimeDensity", "TimeSampler", "check_t_sampling", "register_density", "WEIGHTINGS"]


@dataclass(frozen=True)
class TimeDensity:
    """One training-time density: ``draw(n, generator, device, **options)`` -> float64 [n] in its
    ``space`` (``unit`` or ``sigma``), with its closed-form ``pdf`` and ``cdf`` there."""

    name: str
    space: str
    draw: Callable[..., torch.Tensor]
    pdf: Callable[..., torch.Tensor]
    cdf: Callable[..., torch.Tensor]


TIME_SAMPLING: Registry[TimeDensity] = Registry("timestep density")

# the weight on ||x0_hat - x0||^2 as a function of the noise-to-signal ratio sigma (tensor) and the options
WEIGHTINGS: dict[str, Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor] | None] = {
    "none": None,
    "edm": lambda sig, o: (sig**2 + o["sigma_data"] ** 2) / (sig * o["sigma_data"]) ** 2,
    "min-snr": lambda sig, o: torch.clamp(sig**-2, max=o["gamma"]),
}


def _weighting(default: str) -> tuple[Option, ...]:
    return (
        Option("weighting", str, default, help="the loss weighting on ||x0_hat - x0||^2 (none: the objective's "
               "own MSE; edm: Karras et al.'s lambda(sigma); min-snr: Hang et al.'s min(SNR, gamma))",
               choices=tuple(WEIGHTINGS)),
        Option("sigma_data", float, 0.5, 1e-6, None, "sigma_data (EDM's data std in lambda(sigma)) must be > 0"),
        Option("gamma", float, 5.0, 1e-6, None, "gamma (Min-SNR's clamp of the SNR) must be > 0"),
    )


def register_density(name: str, *, space: str, options: tuple[Option, ...] = (), weighting: str = "none",
                     paper: str, pdf: Callable[..., torch.Tensor], cdf: Callable[..., torch.Tensor],
                     discrete: Callable[..., torch.Tensor] | None = None,
                     ) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: a density's draw, with its space, options (``weighting``, ``sigma_data`` and
    ``gamma`` are added to every density, ``weighting`` defaulting to ``weighting``), paper, pdf
    and cdf. ``discrete(T, n, generator, device)``: its exact draw over integer timesteps [0, T)
    where it has one (uniform: today's ``randint``, so the VP chain's runs keep their numbers)."""
    if space not in ("unit", "sigma"):
        raise BenchError(f"timestep density {name!r}: space must be 'unit' or 'sigma', got {space!r}")
    declared = {o.name: o for o in (*options, *_weighting(weighting))}

    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        TIME_SAMPLING.register(name, TimeDensity(name, space, fn, pdf, cdf), options=declared, paper=paper,
                               discrete=discrete)
        return fn

    return add


def check_t_sampling(name: str, options: Mapping[str, Any] | None,
                     where: str = "train.t_sampling_options") -> dict[str, Any]:
    """The density's options with ``options`` applied: every name declared, every value in range
    (one BenchError naming ``where`` otherwise)."""
    declared = TIME_SAMPLING.meta(TIME_SAMPLING.check(name, "train.t_sampling"))["options"]
    return apply_options(declared, options, where, f"timestep density {name!r}")


def _rand(n: int, generator: torch.Generator | None, device: torch.device | str | None) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=dev, dtype=torch.float64)


def _randn(n: int, generator: torch.Generator | None, device: torch.device | str | None) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return torch.randn(n, generator=generator, device=dev, dtype=torch.float64)


def _std_normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


# --- uniform ------------------------------------------------------------------------------------

def _randint(T: int, n: int, generator: torch.Generator | None, device: torch.device | str | None) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return torch.randint(0, T, (n,), generator=generator, device=dev)


@register_density("uniform", space="unit", discrete=_randint, paper="Ho et al. 2020 (t ~ U); Lipman et al. 2023",
                  pdf=lambda u, **_: torch.ones_like(u), cdf=lambda u, **_: u.clamp(0.0, 1.0))
def uniform(n: int, generator: torch.Generator | None = None, device: Any = None, **_: Any) -> torch.Tensor:
    return _rand(n, generator, device)


# --- logit-normal (SD3 eq. 19) ---------------------------------------------------------------

def _logit(u: torch.Tensor) -> torch.Tensor:
    return torch.log(u) - torch.log1p(-u)


def _logit_normal_pdf(u: torch.Tensor, loc: float = 0.0, scale: float = 1.0, **_: Any) -> torch.Tensor:
    """pi_ln(t; m, s) = 1 / (s sqrt(2 pi)) 1 / (t (1 - t)) exp(-(logit(t) - m)^2 / (2 s^2))."""
    z = (_logit(u) - loc) / scale
    return torch.exp(-0.5 * z**2) / (scale * math.sqrt(2 * math.pi) * u * (1 - u))


@register_density("logit-normal", space="unit",
                  options=(Option("loc", float, 0.0, -10.0, 10.0, "loc (the logit's mean m) must be in [-10, 10]"),
                           Option("scale", float, 1.0, 1e-3, 10.0, "scale (the logit's std s) must be in [0.001, 10]")),
                  paper="Esser et al. 2024 (SD3), eq. 19: logit(t) ~ N(m, s^2)", pdf=_logit_normal_pdf,
                  cdf=lambda u, loc=0.0, scale=1.0, **_: _std_normal_cdf((_logit(u) - loc) / scale))
def logit_normal(n: int, generator: torch.Generator | None = None, device: Any = None, *, loc: float = 0.0,
                 scale: float = 1.0, **_: Any) -> torch.Tensor:
    return torch.sigmoid(loc + scale * _randn(n, generator, device))


# --- mode sampling with heavy tails (SD3 eq. 20) -------------------------------------------------

MODE_S_MAX = 2.0 / (math.pi - 2.0)  # f_mode is monotone on [0, 1] for -1 <= s <= 2 / (pi - 2)


def _f_mode(u: torch.Tensor, s: float) -> torch.Tensor:
    """f_mode(u; s) = 1 - u - s (cos^2(pi u / 2) - 1 + u): t = f_mode(u), u ~ U(0, 1)."""
    return 1.0 - u - s * (torch.cos(math.pi / 2 * u) ** 2 - 1.0 + u)


def _f_mode_inverse(t: torch.Tensor, s: float) -> torch.Tensor:
    """u with f_mode(u; s) = t, by bisection (f_mode decreases from 1 at u = 0 to 0 at u = 1)."""
    lo, hi = torch.zeros_like(t), torch.ones_like(t)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = _f_mode(mid, s) > t
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def _mode_pdf(t: torch.Tensor, s: float = 1.29, **_: Any) -> torch.Tensor:
    """pi_mode(t; s) = |d f_mode^{-1}(t) / dt| = 1 / |f_mode'(u)|, f_mode'(u) = -1 - s (1 - (pi/2) sin(pi u))."""
    u = _f_mode_inverse(t, s)
    return 1.0 / (1.0 + s * (1.0 - math.pi / 2 * torch.sin(math.pi * u))).abs()


@register_density("mode", space="unit",
                  options=(Option("scale", float, 1.29, -1.0, MODE_S_MAX,
                                  f"scale (SD3's s) must be in [-1, 2 / (pi - 2) = {MODE_S_MAX:.4f}] for "
                                  "f_mode to be monotone"),),
                  paper="Esser et al. 2024 (SD3), eq. 20: mode sampling with heavy tails, t = f_mode(u; s)",
                  pdf=lambda t, scale=1.29, **_: _mode_pdf(t, scale),
                  cdf=lambda t, scale=1.29, **_: 1.0 - _f_mode_inverse(t.clamp(0.0, 1.0), scale))
def mode(n: int, generator: torch.Generator | None = None, device: Any = None, *, scale: float = 1.29,
         **_: Any) -> torch.Tensor:
    return _f_mode(_rand(n, generator, device), scale).clamp(0.0, 1.0)


# --- cosmap (SD3 eq. 21-22) ----------------------------------------------------------------------

@register_density("cosmap", space="unit",
                  paper="Esser et al. 2024 (SD3), eq. 21-22: t = 1 - 1 / (tan(pi u / 2) + 1), the cosine "
                        "schedule's log-SNR on rectified flow",
                  pdf=lambda t, **_: 2.0 / (math.pi - 2 * math.pi * t + 2 * math.pi * t**2),
                  cdf=lambda t, **_: 2.0 / math.pi * torch.atan2(t.clamp(0.0, 1.0), 1.0 - t.clamp(0.0, 1.0)))
def cosmap(n: int, generator: torch.Generator | None = None, device: Any = None, **_: Any) -> torch.Tensor:
    u = _rand(n, generator, device)
    return 1.0 - 1.0 / (torch.tan(math.pi / 2 * u) + 1.0)


# --- EDM's log-normal over sigma (Karras et al. 2022, Table 1) ------------------------------------

@register_density("edm-lognormal", space="sigma", weighting="edm",
                  options=(Option("p_mean", float, -1.2, -10.0, 10.0, "p_mean (EDM's P_mean) must be in [-10, 10]"),
                           Option("p_std", float, 1.2, 1e-3, 10.0, "p_std (EDM's P_std) must be in [0.001, 10]")),
                  paper="Karras et al. 2022 (EDM), Table 1: ln sigma ~ N(P_mean, P_std^2), lambda(sigma) weighting",
                  pdf=lambda sig, p_mean=-1.2, p_std=1.2, **_: torch.exp(-0.5 * ((torch.log(sig) - p_mean) / p_std) ** 2)
                  / (sig * p_std * math.sqrt(2 * math.pi)),
                  cdf=lambda sig, p_mean=-1.2, p_std=1.2, **_: _std_normal_cdf((torch.log(sig) - p_mean) / p_std))
def edm_lognormal(n: int, generator: torch.Generator | None = None, device: Any = None, *, p_mean: float = -1.2,
                  p_std: float = 1.2, **_: Any) -> torch.Tensor:
    return torch.exp(p_mean + p_std * _randn(n, generator, device))


# --- onto a process --------------------------------------------------------------------------------

class TimeSampler:
    """A density with its checked options, drawing process times for :meth:`Diffusion.training_loss`.

    ``TimeSampler()`` is uniform over the trained range (the VP chain: ``randint(0, T)``, today's draw).
    """

    def __init__(self, name: str = "uniform", options: Mapping[str, Any] | None = None) -> None:
        self.options = check_t_sampling(name, options)
        self.name = name
        self.density = TIME_SAMPLING.get(name)
        self.discrete = TIME_SAMPLING.meta(name)["discrete"]
        self.weight_fn = WEIGHTINGS[self.options["weighting"]]

    def __repr__(self) -> str:
        return f"TimeSampler({self.name!r}, {self.options})"

    def draw(self, process: Any, n: int, generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> torch.Tensor:
        """``n`` process times on ``device``: int64 timesteps for a discrete process, else float32."""
        dev = torch.device(device) if device is not None else (generator.device if generator is not None
                                                                else torch.device("cpu"))
        continuous = bool(process.continuous)
        if not continuous and self.discrete is not None:
            lo, hi = int(process.t_min), int(process.t_max)
            return (lo + self.discrete(hi - lo + 1, n, generator, dev)).to(dev)
        x = self.density.draw(n, generator, dev, **self.options)
        t = self.unit_to_time(process, x) if self.density.space == "unit" else self.sigma_to_time(process, x)
        return t.to(dev) if not continuous else t.to(device=dev, dtype=torch.float32)

    @staticmethod
    def unit_to_time(process: Any, u: torch.Tensor) -> torch.Tensor:
        """The process's own map of unit time (``from_unit``: uniform in t for rectified flow and GVP,
        with SD3's shift; EDM's rho ramp); the discrete chain: floor(u T) over its T timesteps."""
        lo, hi = float(process.t_min), float(process.t_max)
        if not process.continuous:
            return (lo + torch.floor(u * (hi - lo + 1))).clamp(lo, hi).long()
        return torch.as_tensor(process.from_unit(u.clamp(0.0, 1.0)), dtype=torch.float64).clamp(lo, hi)

    @staticmethod
    def sigma_to_time(process: Any, sig: torch.Tensor) -> torch.Tensor:
        """The process time whose noise-to-signal ratio sigma(t) / alpha(t) is ``sig`` (``t_of_ve``),
        clamped to the trained range; the discrete chain: the trained timestep nearest in log sigma."""
        lo, hi = float(process.t_min), float(process.t_max)
        if not process.continuous:
            ts = torch.arange(int(lo), int(hi) + 1, device=sig.device)
            log_r = (torch.log(torch.as_tensor(process.sigma(ts), dtype=torch.float64))
                     - torch.log(torch.as_tensor(process.alpha(ts), dtype=torch.float64))).to(sig.device)
            return ts[(torch.log(sig)[:, None] - log_r[None, :]).abs().argmin(1)]
        return torch.as_tensor(process.t_of_ve(sig), dtype=torch.float64).to(sig.device).clamp(lo, hi)

    @property
    def is_default(self) -> bool:
        """Uniform t and the objective's own loss: what training did before densities existed."""
        return self.density is TIME_SAMPLING.get("uniform") and self.weight_fn is None

    def install(self, diffusion: Any) -> None:
        """Set ``diffusion``'s training hooks to this density (``t_sampler``) and weighting (``weighting``);
        the default (uniform, no weighting) leaves them unset: the Diffusion's own draw, today's numbers."""
        process = diffusion.process
        default = self.density is TIME_SAMPLING.get("uniform")
        diffusion.t_sampler = None if default else (lambda n, g, dev: self.draw(process, n, g, dev))
        diffusion.weighting = None if self.weight_fn is None else (lambda t: self.multiplier(diffusion, t))

    def multiplier(self, diffusion: Any, t: torch.Tensor) -> torch.Tensor:
        """The factor on the objective's own per-image loss (``weight (pred - target)^2``) that makes it
        w(sigma / alpha) |x0_hat - x0|^2. Every objective's target is linear in (eps, x0); at fixed x_t
        an error d in x0 is one of -(alpha / sigma) d in eps, so the target errs by c d with c =
        target(eps = -alpha / sigma, x0 = 1) and the loss by weight c^2 |d|^2: the factor is w / (weight c^2)."""
        like = torch.empty(len(t), dtype=torch.float64, device=t.device)
        k = diffusion.rates(t.double(), like)
        a, s = k.alpha, k.sigma
        c = diffusion.objective.from_eps_x0(-a / s, torch.ones_like(a), a, s, k)
        w = self.weight_fn(s / a, self.options)
        return (w / (diffusion.objective.loss_weight(a, s) * c * c)).float()

