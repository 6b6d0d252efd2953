"""The sampler registry, the options a sampler declares, and the Denoiser every sampler calls.

A sampler is ``fn(den: Denoiser, x_T, noise: NoiseSource, *, progress, **options) -> x_0``,
registered with :func:`register_sampler` and the :class:`Option` s it owns (k-diffusion's
``sample_heun(..., s_churn=0.)``: the knobs are the sampler's keyword arguments and nothing else
knows them). A study sets them as ``sample.options``; :func:`check_options` validates them
against the declaration before any work. NFE is what the Denoiser counted, never a formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from bench.core.errors import BenchError
from bench.core.registry import Registry, did_you_mean
from bench.diffusion.chain import Chain
from bench.diffusion.noise import NoiseSource
from bench.diffusion.prediction import Conditioning, Level, Model, Prediction
from bench.diffusion.spacing import level_count, sigma_to_t

Diffusion = Any  # a bench.diffusion.core.Diffusion (not imported: core imports this module)

SamplerFn = Callable[..., torch.Tensor]
SAMPLERS: Registry[SamplerFn] = Registry("sampler")


@dataclass(frozen=True)
class Option:
    """One knob of a sampler: name, type (float | int | bool), default and closed range."""

    name: str
    type: type
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""
    choices: tuple[str, ...] = ()  # for a str option: the values it takes

    def check(self, value: Any, where: str) -> Any:
        """``value`` as this option's type, or one BenchError saying what is allowed."""
        if self.type is str:
            if value not in self.choices:
                raise BenchError(f"{where} = {value!r} is not one of {', '.join(self.choices)}: {self.help}."
                                 f"{did_you_mean(str(value), self.choices)} Fix the value")
            return value
        ok = isinstance(value, bool) if self.type is bool else (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            and (self.type is float or float(value).is_integer()))
        if not ok:
            raise BenchError(f"{where}: must be {'true or false' if self.type is bool else 'a number'} "
                             f"({self.type.__name__}), got {value!r}")
        value = self.type(value)
        if self.type is float and not math.isfinite(value) and value != self.default:
            # NaN lies in no range (every comparison is false); inf only where the default is (s_tmax)
            raise BenchError(f"{where} = {value!r} is not a finite number: {self.help}. Fix the value")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise BenchError(f"{where} = {value!r} is outside [{self.low}, {self.high}]: {self.help}. Fix the value")
        return value


def _one_call_per_level(levels: int, options: Mapping[str, Any]) -> int:
    return levels


def register_sampler(name: str, *, options: tuple[Option, ...] = (), paper: str,
                     stochastic: bool | Callable[[Mapping[str, Any]], bool] = False,
                     order: int | Callable[[Mapping[str, Any]], int] | None = None,
                     nfe: Callable[[int, Mapping[str, Any]], int] = _one_call_per_level,
                     **meta: Any) -> Callable[[SamplerFn], SamplerFn]:
    """Decorator: register a sampler with what it declares about itself.

    ``options``: its knobs. ``paper``: the paper and algorithm it implements. ``stochastic``: whether
    it draws noise (a function of the options where a knob decides, as DDIM's eta). ``order``: the
    global convergence order of the deterministic solver on the probability-flow ODE (a function
    of the options where ``order`` is one; None for samplers of the SDE only), checked by a
    convergence test. ``nfe(levels, options)``: network calls per image on a chain of that many
    levels (Heun: 2 levels - 1); the Denoiser's count must equal it, and ``sample.nfe`` budgets
    are met through it.
    """
    return SAMPLERS.register(name, options={o.name: o for o in options}, paper=paper,
                             stochastic=_of_options(stochastic), order=_of_options(order), nfe=nfe, **meta)


def _of_options(value: Any) -> Callable[[Mapping[str, Any]], Any]:
    """A declaration as a function of the options (a constant becomes one that ignores them)."""
    return value if callable(value) else (lambda opts: value)


def sampler_nfe(sampler: str, levels: int, options: Mapping[str, Any] | None = None) -> int:
    """Network calls per image of ``sampler`` on a chain of ``levels`` levels."""
    return int(SAMPLERS.meta(sampler)["nfe"](levels, check_options(sampler, options)))


def declared_options(sampler: str) -> dict[str, Option]:
    return SAMPLERS.meta(SAMPLERS.check(sampler, "sample.sampler"))["options"]


def apply_options(declared: Mapping[str, Option], options: Mapping[str, Any] | None, where: str,
                  owner: str) -> dict[str, Any]:
    """The declared options' defaults with ``options`` applied: every name declared, every value
    checked by its ``Option`` (one BenchError naming ``where`` and ``owner``, e.g. "sampler 'ddim'")."""
    out = {name: o.default for name, o in declared.items()}
    for name, value in (options or {}).items():
        if name not in declared:
            have = ", ".join(declared) or "none"
            raise BenchError(f"{where}.{name}: {owner} has no option {name!r}."
                             f"{did_you_mean(name, declared)} Its options: {have}.")
        out[name] = declared[name].check(value, f"{where}.{name}")
    return out


def check_options(sampler: str, options: Mapping[str, Any] | None, where: str = "sample.options") -> dict[str, Any]:
    """The sampler's options with ``options`` applied: every name declared, every value in range."""
    return apply_options(declared_options(sampler), options, where, f"sampler {sampler!r}")


@dataclass
class Denoiser:
    """The model as a sampler sees it, counting network calls.

    Two views of one network. ``den(x, i)``: the VP state x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
    at chain level i (the DDPM / DDIM / DPM-Solver papers' convention). ``den.ve(x, i)`` and
    ``den.ve_at(x, sigma)``: the state x = x_t / sqrt(abar) = x0 + sigma eps (Karras et al. 2022,
    k-diffusion) at level i or at any sigma in the trained range (the churned sigma-hat of
    Euler / Heun); the network sees the interpolated time (see :mod:`bench.diffusion.spacing`).
    Each returns a Prediction (eps, x0), the same in either view.

    ``calls`` is the number of network evaluations per image (one per call, whether the call
    runs B images or, guided, the 2B of cond + uncond as one call or two); ``guided_calls`` how
    many were guided; ``guide_calls`` how many times autoguidance's second network ran (``nfe``
    counts both). Everything a call needs that does not depend on x is computed once here: each
    level's :class:`~bench.diffusion.prediction.Level` (time tensors on the device, coefficients
    as python floats, whether and how strongly it is guided), ``abar[i]`` / ``abar_prev[i]`` /
    ``sigmas[i]`` as python floats (``sigmas[-1]`` is 0, the end of every chain), so a step does
    no host work beyond its sampler's arithmetic.
    """

    diffusion: Diffusion
    model: Model
    chain: Chain
    cond: Conditioning
    batch: int
    device: torch.device
    calls: int = 0
    guided_calls: int = 0
    guide_calls: int = 0

    def __post_init__(self) -> None:
        ints = not self.chain.t.is_floating_point()
        ts = [int(v) if ints else float(v) for v in self.chain.t.tolist()]
        self.abar = self.chain.abar.tolist()
        self.abar_prev = self.chain.abar_prev.tolist()
        self.sigmas = self.chain.sigma.tolist() + [0.0]
        self._sqrt_abar = [v**0.5 for v in self.abar]
        like = torch.empty((self.batch, 1, 1, 1), device=self.device)  # the batch's size and device
        self.levels = [self.diffusion.level(t, like, self.cond, ab) for t, ab in zip(ts, self.abar)]
        self._like = like
        self._quantize = bool(getattr(self.model, "discrete_time", False))
        # a continuous process whose top level is pure noise (alpha = 0: rectified flow, gvp at t = 1)
        # has sigma = inf there; samplers in sigma start through begin()
        self.pure_noise = self.abar[-1] == 0.0
        self._process = self.diffusion.process if getattr(self.diffusion, "continuous", False) else None

    def _eval(self, x_t: torch.Tensor, level: Level) -> Prediction:
        self.calls += 1
        self.guided_calls += level.guided  # both branches; outside a method's interval one B call is made
        self.guide_calls += level.guided and self.cond.guide is not None  # autoguidance: the guide's B call
        return self.diffusion.predict_at(self.model, x_t, level, self.cond)

    def __call__(self, x: torch.Tensor, i: int) -> Prediction:
        """(eps, x0) for the VP state ``x`` at chain level ``i``."""
        return self._eval(x, self.levels[i])

    def ve(self, x: torch.Tensor, i: int) -> Prediction:
        """(eps, x0) for the state x = x0 + sigma_i eps at level ``i``."""
        return self._eval(x * self._sqrt_abar[i], self.levels[i])

    def ve_at(self, x: torch.Tensor, sigma: float) -> Prediction:
        """(eps, x0) for x = x0 + sigma eps at a sigma that need not be a level of the chain."""
        abar = 1.0 / (1.0 + sigma * sigma)
        if self._process is not None:
            t = float(self._process.t_of_ve(sigma))
            level = self.diffusion.level(t, self._like, self.cond, abar)
            return self._eval(x * abar**0.5, level)
        t = sigma_to_t(sigma, self.diffusion.alphas_cumprod, quantize=self._quantize)
        level = self.diffusion.level(int(t) if self._quantize else float(t), self._like, self.cond, abar)
        return self._eval(x * abar**0.5, level)

    def to_ve(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The VP state at level ``i`` (x_T drawn as N(0, I)) as x0 + sigma eps: x / sqrt(abar_i)."""
        return x / self._sqrt_abar[i]

    def steps(self, progress: bool, desc: str) -> list[int]:
        idx = list(range(len(self.chain) - 1, -1, -1))
        return list(tqdm(idx, desc=desc, leave=False)) if progress else idx

    def begin(self, x: torch.Tensor, progress: bool, desc: str, noise: NoiseSource | None = None,
              eta: float = 0.0, s_noise: float = 1.0, heun: bool = False) -> tuple[torch.Tensor, list[int]]:
        """A sampler in sigma starts here: (x as x0 + sigma eps at its first level, the levels to step from).

        Where the top level is pure noise (sigma = inf, alpha = 0), the first step to the next level
        is taken here: the DDIM step x' = x0 + sigma' eps, the limit of every first-order step in
        sigma (Euler, DPM-Solver++, UniPC, iPNDM) as sigma -> inf; with ``eta`` (ancestral samplers) it
        keeps sigma_down = sigma' sqrt(1 - eta^2) of eps and adds s_noise eta sigma' fresh noise.
        Heun's step from there is Heun's method in the process's own time t (finite where sigma is
        not), two calls as on every other step. The chain then continues from the next level with an
        empty history (a level at sigma = inf carries no weight in a multistep update)."""
        n = len(self.chain)
        if not self.pure_noise:
            return self.to_ve(x, n - 1), self.steps(progress, desc)
        top = n - 1
        pred = self(x, top)
        if n == 1:
            return pred.x0, []
        nxt = top - 1
        s_next = self.sigmas[nxt]
        if heun:
            x_ve = self._heun_from_noise(x, pred, top, nxt)
        else:
            s_up = min(1.0, eta) * s_next
            x_ve = pred.x0 + (s_next**2 - s_up**2) ** 0.5 * pred.eps
            if s_up > 0 and noise is not None:
                x_ve = x_ve + noise() * (s_noise * s_up)
        return x_ve, self.steps(progress, desc)[1:]

    def _heun_from_noise(self, x: torch.Tensor, pred: Prediction, top: int, nxt: int) -> torch.Tensor:
        """Heun in t from the pure-noise level: v = alpha' x0 + sigma' eps, the trapezoid of v at both ends."""
        lv_top, lv_next = self.levels[top], self.levels[nxt]
        k0, k1 = lv_top.k, lv_next.k
        dt = float(self.chain.t[nxt]) - float(self.chain.t[top])
        x_t = x * lv_top.r
        v0 = k0.d_alpha * pred.x0 + k0.d_sigma * pred.eps
        x_e = x_t + dt * v0
        p1 = self.ve(x_e / k1.alpha, nxt)
        v1 = k1.d_alpha * p1.x0 + k1.d_sigma * p1.eps
        return (x_t + dt * 0.5 * (v0 + v1)) / k1.alpha

    def at_time(self, x: torch.Tensor, t: float) -> Prediction:
        """(eps, x0) for the VP state ``x`` (the process state x_t / sqrt(alpha^2 + sigma^2)) at any
        process time ``t`` in the trained range: the adaptive solvers' call (the discrete chain: the
        interpolated timestep, or the nearest one for a ``discrete_time`` model, at t's own level)."""
        process = self.diffusion.process
        abar = float(process.abar(torch.tensor(float(t), dtype=torch.float64)))
        if not process.continuous and self._quantize:
            t = int(sigma_to_t(((1 - abar) / abar) ** 0.5, self.diffusion.alphas_cumprod, quantize=True))
        return self._eval(x, self.diffusion.level(t, self._like, self.cond, abar))


def steps_for_nfe(sampler: str, nfe: int, spacing: str, timesteps: int,
                  options: Mapping[str, Any] | None = None, continuous: bool = False) -> int:
    """The fewest ``steps`` whose chain makes ``sampler`` call the network exactly ``nfe`` times
    (on a deduplicating spacing the chain may have fewer levels than steps; a continuous process's
    levels are never deduplicated), or one BenchError."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise BenchError(f"sample.nfe = {nfe!r} must be a positive int (network calls per image)")
    opts = check_options(sampler, options)
    if SAMPLERS.meta(sampler).get("adaptive"):
        raise BenchError(f"sampler {sampler!r} is adaptive: its network calls follow its error tolerances "
                         f"(sample.options), not a budget; drop sample.nfe for it (its counted nfe is logged) "
                         "or choose a fixed-step sampler")
    count = SAMPLERS.meta(SAMPLERS.check(sampler, "sample.sampler"))["nfe"]
    reachable = []
    for steps in range(1, timesteps + 1):
        got = count(steps if continuous else level_count(spacing, timesteps, steps), opts)
        if got == nfe:
            return steps
        if got < nfe + 3:
            reachable.append(got)
        if got > nfe and steps > nfe:
            break
    near = sorted({g for g in reachable if abs(g - nfe) <= 2})
    raise BenchError(f"sampler {sampler!r} cannot meet nfe = {nfe} on spacing {spacing!r} with T = {timesteps} "
                     f"(its calls per image: {_nfe_rule(sampler)}); "
                     f"nearby budgets it meets: {near or 'none'}. Choose one of those for this sampler")


def _nfe_rule(sampler: str) -> str:
    n = SAMPLERS.meta(sampler)["nfe"]
    return "one per level" if n is _one_call_per_level else f"{n(1, {})}, {n(2, {})}, {n(3, {})}, ... on 1, 2, 3 levels"
