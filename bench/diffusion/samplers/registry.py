"""The sampler registry, the options a sampler declares, and the Denoiser every sampler calls.

A sampler is ``fn(den: Denoiser, x_T, noise: NoiseSource, *, progress, **options) -> x_0``,
registered with :func:`register_sampler` and the :class:`Option` s it owns (k-diffusion's
``sample_heun(..., s_churn=0.)``: the knobs are the sampler's keyword arguments and nothing else
knows them). A study sets them as ``sample.options``; :func:`check_options` validates them
against the declaration before any work. NFE is what the Denoiser counted, never a formula.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from bench.core.errors import BenchError
from bench.core.registry import Registry, did_you_mean
from bench.diffusion.chain import Chain
from bench.diffusion.prediction import Model, Prediction

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

    def check(self, value: Any, where: str) -> Any:
        """``value`` as this option's type, or one BenchError saying what is allowed."""
        ok = isinstance(value, bool) if self.type is bool else (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            and (self.type is float or float(value).is_integer()))
        if not ok:
            raise BenchError(f"{where}: must be {'true or false' if self.type is bool else 'a number'} "
                             f"({self.type.__name__}), got {value!r}")
        value = self.type(value)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise BenchError(f"{where} = {value!r} is outside [{self.low}, {self.high}]: {self.help}. Fix the value")
        return value


def register_sampler(name: str, *, options: tuple[Option, ...] = (), **meta: Any) -> Callable[[SamplerFn], SamplerFn]:
    """Decorator: register a sampler with the options it declares (and metadata: paper, stochastic)."""
    return SAMPLERS.register(name, options={o.name: o for o in options}, **meta)


def declared_options(sampler: str) -> dict[str, Option]:
    return SAMPLERS.meta(SAMPLERS.check(sampler, "sample.sampler"))["options"]


def check_options(sampler: str, options: Mapping[str, Any] | None, where: str = "sample.options") -> dict[str, Any]:
    """The sampler's options with ``options`` applied: every name declared, every value in range."""
    declared = declared_options(sampler)
    out = {name: o.default for name, o in declared.items()}
    for name, value in (options or {}).items():
        if name not in declared:
            have = ", ".join(declared) or "none"
            raise BenchError(f"{where}.{name}: sampler {sampler!r} has no option {name!r}."
                             f"{did_you_mean(name, declared)} Its options: {have}.")
        out[name] = declared[name].check(value, f"{where}.{name}")
    return out


@dataclass
class Denoiser:
    """The model as a sampler sees it: chain index -> Prediction, counting network calls.

    ``calls`` is the number of network evaluations per image (one per call, whether the call
    runs B images or, guided, the 2B of cond + uncond); ``guided_calls`` how many were guided.
    """

    diffusion: Diffusion
    model: Model
    chain: Chain
    y: torch.Tensor | None
    guidance: float
    clip_denoised: bool
    guidance_channels: int | None = None
    calls: int = 0
    guided_calls: int = 0

    def __call__(self, x: torch.Tensor, i: int) -> Prediction:
        self.calls += 1
        self.guided_calls += self.guidance != 0.0
        t = int(self.chain.t[i])
        return self.diffusion.predict(self.model, x, t, self.y, self.guidance, self.clip_denoised,
                                      self.guidance_channels)

    def steps(self, progress: bool, desc: str) -> list[int]:
        idx = list(range(len(self.chain) - 1, -1, -1))
        return list(tqdm(idx, desc=desc, leave=False)) if progress else idx
