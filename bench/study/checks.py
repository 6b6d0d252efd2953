"""The checks behind :mod:`bench.study`: YAML reading, value rules, grid expansion with
cross-section checks, and table / plot validation.

Registries live in the packages written around this one (diffusion, models, data, metrics) and
are imported lazily, inside the checks, so reading a study file imports torch only when a check
needs it. Cross-section checks (guidance needs label dropout, the backbone must divide the image
size, ...) are memoized on the identities of the interned section values they read: a 100,000
point grid runs each distinct check once, not 100,000 times.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from typing import Any

import yaml

from bench.core.config import FIELD_TYPES, RunConfig, defaults
from bench.core.errors import BenchError
from bench.core.registry import did_you_mean

_Builder = Any  # bench.study.build._Builder, which imports this module


class StudyError(BenchError):
    """A bad study file: the message names the file, the key and what to do."""


# --- YAML ------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads ``1e-4`` as a float (YAML 1.2 style)."""


def _mapping_no_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:  # the node's own keys: a key may override a merged (<<) one
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
        except TypeError:  # unhashable key: SafeLoader's own error follows
            continue
        if first is not None:
            raise BenchError(
                f"line {line}: key {key!r} appears twice (first on line {first}); YAML would silently keep "
                "only the last one. Merge the two entries into one"
            )
        seen[key] = line
    loader.flatten_mapping(node)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_no_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text; syntax errors and duplicate keys become a StudyError naming ``source``."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except BenchError as e:
        raise StudyError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        detail = str(e).replace('in "<unicode string>", ', "at ")
        raise StudyError(f"{source}: not valid YAML: {detail}") from None


# --- small readers ---------------------------------------------------------------------------


def mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BenchError(f"{where}: must be a mapping (key: value), got {value!r}")
    return value


def flat_axes(value: Any, where: str) -> dict[str, Any]:
    """``{sample: {eta: [..]}, train.lr: [..]}`` -> dotted keys; a key given twice is refused."""
    out: dict[str, Any] = {}
    for k, v in mapping(value, where).items():
        items = (
            {f"{k}.{kk}": vv for kk, vv in flat_axes(v, f"{where}.{k}").items()}
            if isinstance(v, dict)
            else {str(k): v}
        )
        for kk, vv in items.items():
            if kk in out:
                raise BenchError(f"{where}.{kk}: {kk} is given twice (dotted and nested); list each key once")
            out[kk] = vv
    return out


def read_seeds(value: Any) -> list[int]:
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    )
    if not ok:
        raise BenchError(f"seeds: must be a non-empty list of integers, e.g. seeds: [0, 1, 2]; got {value!r}")
    no_repeats([(s,) for s in value], [f"seeds[{i}]" for i in range(len(value))])
    return list(value)


def no_repeats(points: list[tuple[Any, ...]], origins: list[str] | tuple[str, ...]) -> None:
    seen: dict[tuple[Any, ...], int] = {}
    for i, p in enumerate(points):
        typed = tuple((type(v), v) for v in p)
        if typed in seen:
            shown = p[0] if len(p) == 1 else p
            raise BenchError(f"{origins[i]}: {shown!r} repeats {origins[seen[typed]]}; list each value once")
        seen[typed] = i


def FIELD_BASE(section: str, name: str) -> type:  # noqa: N802 (reads like the table it is)
    return FIELD_TYPES[section][name].base


def effective_base(b: _Builder) -> dict[str, Any]:
    """Every non-axis key of the sections that exist, with its default or base value."""
    out = {}
    for key, value in defaults().items():
        if key == "seed" or key in b.axis_at or (key.startswith("vae.") and b.vae_mode != "set"):
            continue
        out[key] = b.base.get(key, value)
    return out


# --- value rules -----------------------------------------------------------------------------

_REGISTRIES = {
    "data.dataset": ("bench.data", "DATASETS"),
    "model.backbone": ("bench.models", "MODELS"),
    "diffusion.schedule": ("bench.diffusion", "SCHEDULES"),
    "diffusion.objective": ("bench.diffusion", "ALL_OBJECTIVES"),
    "diffusion.process": ("bench.diffusion", "PROCESSES"),
    "diffusion.variance": ("bench.diffusion", "VARIANCES"),
    "diffusion.loss": ("bench.diffusion", "LOSSES"),
    "sample.sampler": ("bench.diffusion", "SAMPLERS"),
    "train.t_sampling": ("bench.diffusion", "TIME_SAMPLING"),
    "sample.spacing": ("bench.diffusion", "SPACINGS"),
    "sample.variance": ("bench.diffusion", "VARIANCES"),
    "eval.metrics": ("bench.metrics", "METRICS"),  # each entry
}
_CHOICES = {
    "model.space": ("pixel", "latent"),
    "train.precision": ("no", "bf16", "fp16"),
    "eval.fid_backend": ("torch-fidelity", "clean-fid"),
    "sample.precision": ("auto", "fp32", "bf16"),
    "sample.guidance_batch": ("auto", "measure", "joint", "split"),
}
_POSITIVE = (
    "data.image_size", "diffusion.timesteps", "train.steps", "train.batch_size", "train.grad_accum",
    "train.checkpoint_every", "train.log_every", "sample.steps", "sample.batch_size", "eval.num_samples",
    "eval.kid_subset_size", "vae.factor", "vae.latent_channels", "vae.base_channels", "vae.steps",
    "vae.batch_size", "train.lr", "vae.lr", "sample.guidance_channels", "diffusion.shift",
)  # fmt: skip
_NON_NEGATIVE = ("train.warmup_steps", "train.weight_decay", "train.grad_clip", "eval.nll_samples",
                 "diffusion.hybrid_weight", "vae.kl_weight")  # fmt: skip
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "sample.eta": (
        lambda v: 0.0 <= v <= 1.0,
        "DDIM's eta must be in [0, 1] (0 = deterministic, 1 = DDPM-like noise)",
    ),
    "train.p_uncond": (lambda v: 0.0 <= v < 1.0, "the label-dropout probability must be in [0, 1)"),
    "train.ema_decay": (lambda v: 0.0 <= v < 1.0, "the EMA decay must be in [0, 1), e.g. 0.999"),
    "model.dropout": (lambda v: 0.0 <= v < 1.0, "dropout must be in [0, 1), or null for the preset's"),
    **{k: (lambda v: v > 0, "must be positive") for k in _POSITIVE},
    **{k: (lambda v: v >= 0, "must not be negative") for k in _NON_NEGATIVE},
}


# keys whose value the math layer checks when a job runs: the study calls the same function first
_MATH_CHECKS = {"sample.rho": ("bench.diffusion.spacing", "check_rho")}


def registry(key: str) -> Any:
    module, attr = _REGISTRIES[key]
    return getattr(importlib.import_module(module), attr)


def check_value(key: str, value: Any, where: str) -> None:
    """Registry names ("did you mean"), fixed choices and ranges of a single value."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise BenchError(f"{where}: {key} = {value!r} is not a finite number. Fix the value")
    if key in _MATH_CHECKS:
        module, attr = _MATH_CHECKS[key]
        getattr(importlib.import_module(module), attr)(value, where)
    if key in _REGISTRIES:
        reg = registry(key)
        if isinstance(value, tuple):
            for i, v in enumerate(value):
                reg.check(v, f"{where}[{i}]")
        else:
            reg.check(value, where)
    if key in _CHOICES and value not in _CHOICES[key]:
        raise BenchError(
            f"{where}: unknown {key} {value!r}.{did_you_mean(value, _CHOICES[key])} "
            f"Available: {', '.join(_CHOICES[key])}."
        )
    if key in _RULES and not _RULES[key][0](value):
        sign = "negative " if isinstance(value, (int, float)) and value < 0 else ""
        raise BenchError(f"{where}: {sign}{key} = {value!r}: {_RULES[key][1]}. Fix the value")


# --- tables and plots ------------------------------------------------------------------------

def produced_outputs(configs: list[RunConfig]) -> tuple[set[str], dict[str, str]]:
    """(output keys the study's runs produce, every metric output -> the metric that makes it)."""
    from bench.metrics import METRICS, always_outputs

    maker = {out: name for name in METRICS.names() for out in METRICS.get(name).keys}
    evals = {id(c.eval): c.eval for c in configs}.values()
    requested = {m for ev in evals for m in ev.metrics}
    produced = {out for out, name in maker.items() if name in requested} | set(always_outputs())
    if any(ev.bootstrap for ev in evals):  # the bootstrap intervals of the metrics that have one
        produced |= {k for name in requested for k in METRICS.get(name).interval_keys}
    return produced, maker
