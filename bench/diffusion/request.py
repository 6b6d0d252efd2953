"""The sampling settings as one object: what ``Diffusion.sample`` is asked to do.

A study's ``sample`` section becomes one :class:`SampleRequest` (:meth:`SampleRequest.of`, each
field by name), built once and passed whole, as EDM's ``generate.py`` passes ``**sampler_kwargs``:
a new setting is a field of its section and of this class, read by its consumer, and nothing in
between copies it. :func:`check_request` holds every rule on the settings alone (sampler name, its
options, eta's range, the guidance method and its options, the batching mode); study validation
calls it before any work and ``Diffusion.sample`` calls it on the run, so a rule and its message
are written once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from bench.core.errors import BenchError
from bench.core.registry import did_you_mean
from bench.diffusion.batching import GUIDANCE_BATCH
from bench.diffusion.guidance import GUIDANCE, check_guidance
from bench.diffusion.samplers import SAMPLERS, check_options


@dataclass(frozen=True)
class SampleRequest:
    """How to sample (the defaults are ``Diffusion.sample``'s); per-call inputs (labels, seeds,
    x_T, the device, a guiding model) are arguments of ``sample`` itself."""

    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0  # DDIM's shortcut for its option of that name
    spacing: str = "leading"
    options: Mapping[str, Any] = field(default_factory=dict)  # the sampler's declared knobs
    rho: float = 7.0
    guidance: float = 0.0
    guidance_method: str = "cfg"
    guidance_options: Mapping[str, Any] | None = None
    guidance_channels: int | None = None
    guidance_batch: str = "auto"
    clip_denoised: bool = False

    @classmethod
    def of(cls, source: Any, **overrides: Any) -> SampleRequest:
        """The request of ``source`` (a study's sample section, any object or mapping with these
        names): every field it has, by name; mappings (``Options``) as dicts; then ``overrides``."""
        get = source.get if isinstance(source, Mapping) else (lambda n, d=None: getattr(source, n, d))
        values = {}
        for f in fields(cls):
            v = get(f.name, None)
            if v is None and f.name not in ("guidance_options", "guidance_channels"):
                continue
            values[f.name] = v.as_dict() if hasattr(v, "as_dict") else v
        return cls(**{**values, **overrides})

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], base: SampleRequest | None = None) -> SampleRequest:
        """``base`` (or the defaults) with keyword ``settings``; an unknown name is one BenchError."""
        names = [f.name for f in fields(cls)]
        for k in settings:
            if k not in names:
                raise BenchError(f"sample: no setting {k!r}.{did_you_mean(k, names)} Settings: {', '.join(names)}")
        return replace(base, **settings) if base is not None else cls(**settings)


def check_request(req: SampleRequest, options_at: str = "sample.options",
                  guidance_at: str = "sample.guidance_options", weight_at: str = "sample.guidance") -> dict[str, Any]:
    """Every rule on the settings alone; returns the sampler's keyword arguments (its options with
    the defaults filled in, eta through the shortcut where the sampler declares one)."""
    sampler = SAMPLERS.check(req.sampler, "sample.sampler")
    if not 0.0 <= float(req.eta) <= 1.0:
        raise BenchError(f"sample.eta={req.eta} is outside [0, 1]: 0 is deterministic DDIM, 1 is DDPM-like")
    given = dict(req.options or {})
    if SAMPLERS.meta(sampler).get("eta_shortcut"):
        given.setdefault("eta", float(req.eta))
    kwargs = check_options(sampler, given, options_at)
    GUIDANCE.check(req.guidance_method, "sample.guidance_method")
    check_guidance(req.guidance_method, req.guidance_options, guidance_at)
    check_weight(req.guidance, req.guidance_method, weight_at)
    if req.guidance_batch not in GUIDANCE_BATCH:
        raise BenchError(f"sample.guidance_batch = {req.guidance_batch!r} is not one of {', '.join(GUIDANCE_BATCH)}")
    return kwargs


def check_weight(w: float, method: str, at: str = "sample.guidance") -> None:
    """The weight ``sample.guidance``: a finite number within the range its method declares
    (``weight_range``: cfg++'s lambda in [0, 1], Chung et al. 2024)."""
    if not math.isfinite(float(w)):
        raise BenchError(f"{at}: sample.guidance = {w!r} is not a finite number. Fix the value")
    low, high = GUIDANCE.meta(method).get("weight_range", (None, None))
    if (low is not None and w < low) or (high is not None and w > high):
        raise BenchError(f"{at}: sample.guidance = {w} is outside [{low:g}, {high:g}], the range of guidance "
                         f"method {method!r}'s weight; use a weight in that range or another method")
