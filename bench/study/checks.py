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
import itertools
import operator
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml

from bench import rules
from bench.core.config import FIELD_TYPES, SECTIONS, RunConfig, defaults, variance_is_trained
from bench.core.errors import BenchError
from bench.core.registry import did_you_mean

if TYPE_CHECKING:
    from bench.study import _Builder


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
    "diffusion.objective": ("bench.diffusion", "OBJECTIVES"),
    "diffusion.variance": ("bench.diffusion", "VARIANCES"),
    "diffusion.loss": ("bench.diffusion", "LOSSES"),
    "sample.sampler": ("bench.diffusion", "SAMPLERS"),
    "sample.spacing": ("bench.diffusion", "SPACINGS"),
    "sample.variance": ("bench.diffusion", "VARIANCES"),
    "eval.metrics": ("bench.metrics", "METRICS"),  # each entry
}
_CHOICES = {
    "model.space": ("pixel", "latent"),
    "train.precision": ("no", "bf16", "fp16"),
    "eval.fid_backend": ("torch-fidelity", "clean-fid"),
}
_POSITIVE = (
    "data.image_size", "diffusion.timesteps", "train.steps", "train.batch_size", "train.grad_accum",
    "train.checkpoint_every", "train.log_every", "sample.steps", "sample.batch_size", "eval.num_samples",
    "eval.kid_subset_size", "vae.factor", "vae.latent_channels", "vae.base_channels", "vae.steps",
    "vae.batch_size", "train.lr", "vae.lr",
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


def registry(key: str) -> Any:
    module, attr = _REGISTRIES[key]
    return getattr(importlib.import_module(module), attr)


def check_value(key: str, value: Any, where: str) -> None:
    """Registry names ("did you mean"), fixed choices and ranges of a single value."""
    if value is None:
        return
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


# --- expansion -------------------------------------------------------------------------------

_ORDER = ("data", "model", "vae", "diffusion", "train", "sample", "eval")


class Expander:
    """Grid points x seeds -> RunConfigs, running each cross-section check once per combination."""

    def __init__(self, b: _Builder) -> None:
        self.b = b
        self.base: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for k, v in b.base.items():
            section, name = k.split(".", 1)
            self.base[section][name] = v
        self.interned: dict[Any, Any] = {}
        self.done: set[tuple[Any, ...]] = set()
        # checks run once the grid is expanded, so a point's own errors (guidance needs label
        # dropout) are reported before the rules they imply (label dropout needs a conditional model)
        self.later: dict[tuple[int, int], tuple[tuple[int, ...], Any, Any]] = {}

    def expand(self, exclude: list[dict[int, set[int]]]) -> list[RunConfig]:
        b = self.b
        const = {s: self._make(s, {}) for s in _ORDER if not self._parts(s)}
        if b.vae_mode != "set":
            const["vae"] = None
        variable = [(s, *self._getter(s)) for s in _ORDER if s not in const]
        seeds = b.factors[-1][0].values
        out = []
        for idx in itertools.product(*(range(len(f[0].values)) for f in b.factors)):
            if exclude and any(all(idx[j] in ok for j, ok in e.items()) for e in exclude):
                continue
            secs = const.copy()
            for section, pick, memo, build in variable:
                k = pick(idx)
                inst = memo.get(k)
                secs[section] = inst if inst is not None else build(k, idx)
            if secs["model"].space != "latent":
                secs["vae"] = None  # unused by pixel runs: keep it out of their keys
            self._check(idx, secs)
            out.append(RunConfig(**secs, seed=seeds[idx[-1]]))
        for idx, model, train in self.later.values():  # after every point's own checks
            rules.check_label_dropout(train.p_uncond, model.class_cond,
                                      self._at(idx, "train.p_uncond", "model.class_cond"), self._origin(idx))
        return out

    def _parts(self, section: str) -> list[tuple[int, Any]]:
        return [(j, a) for j, f in enumerate(self.b.factors) for a in f if a.section == section]

    def _getter(
        self, section: str
    ) -> tuple[Callable[[tuple[int, ...]], Any], dict[Any, Any], Callable[..., Any]]:
        """(pick the factor indices the section depends on, memo, build the section there)."""
        parts = self._parts(section)
        pick = operator.itemgetter(*sorted({j for j, _ in parts}))
        memo: dict[Any, Any] = {}

        def build(k: Any, idx: tuple[int, ...]) -> Any:
            inst = memo[k] = self._make(section, {a.field: a.values[idx[j]] for j, a in parts})
            return inst

        return pick, memo, build

    def _make(self, section: str, values: dict[str, Any]) -> Any:
        inst = SECTIONS[section](**{**self.base[section], **values})
        return self.interned.setdefault(inst, inst)

    def _once(self, *key: Any) -> bool:
        """True the first time ``key`` (a check name and section identities) is seen."""
        if key in self.done:
            return False
        self.done.add(key)
        return True

    def _check(self, idx: tuple[int, ...], s: dict[str, Any]) -> None:
        """Every cross-section check, each once per combination of the sections it reads."""
        data, model, vae, diffusion = s["data"], s["model"], s["vae"], s["diffusion"]
        train, sample, ev = s["train"], s["sample"], s["eval"]
        if self._once("data", id(data)):
            self._check_data(idx, data)
        if self._once("diffusion", id(diffusion)):
            self._check_diffusion(idx, diffusion)
        if self._once("model", id(data), id(model), id(vae)):
            self._check_model(idx, data, model, vae)
        if self._once("guidance", id(model), id(train), id(sample)):
            origin = self._origin(idx)
            rules.check_guidance(sample.guidance, model.class_cond, train.p_uncond,
                                 self._at(idx, "sample.guidance", "model.class_cond", "train.p_uncond"), origin)
            self.later.setdefault((id(model), id(train)), (idx, model, train))
        if self._once("steps", id(diffusion), id(sample)):
            rules.check_steps(sample.steps, diffusion.timesteps,
                              self._at(idx, "sample.steps", "diffusion.timesteps", "sample.spacing"),
                              self._origin(idx), sample.spacing)
        if self._once("sampler", id(sample)):
            self._check_sampler(idx, sample)
        if sample.variance is not None and self._once("variance", id(diffusion), id(sample)):
            rules.check_sampling_variance(sample.variance, diffusion.variance, variance_is_trained(diffusion),
                                          self._at(idx, "sample.variance", "diffusion.loss"), self._origin(idx))
        if self._once("eval", id(data), id(model), id(ev)):
            self._check_eval(idx, data, model, ev)

    def _check_data(self, idx: tuple[int, ...], data: Any) -> None:
        datasets = _data_module()
        self._external(idx, ("data",), lambda w: datasets.check_available(data, w), "data")
        splits = datasets.dataset_info(data.dataset).splits
        if data.train_split not in splits:
            raise BenchError(
                f"{self._at(idx, 'data.train_split', 'data.dataset')}: dataset {data.dataset!r} has no split "
                f"{data.train_split!r}; its splits are {', '.join(splits)}"
            )

    def _check_diffusion(self, idx: tuple[int, ...], diffusion: Any) -> None:
        from bench.diffusion import make_schedule

        try:  # every beta in (0, 1): a linear schedule over 10 steps reaches beta = 1
            make_schedule(diffusion.schedule, diffusion.timesteps)
        except BenchError as e:
            raise BenchError(f"{self._at(idx, 'diffusion.schedule', 'diffusion.timesteps')}: {e}; use more "
                             "diffusion.timesteps or another schedule (cosine clips its betas)") from None
        rules.check_learned_variance(diffusion.variance, diffusion.loss,
                                     self._at(idx, "diffusion.variance", "diffusion.loss"), self._origin(idx))

    def _check_sampler(self, idx: tuple[int, ...], sample: Any) -> None:
        """``sample.options`` against the options the sampler declares."""
        from bench.diffusion import check_options

        options = sample.options.as_dict()
        where = self._at(idx, "sample.options", "sample.sampler")
        check_options(sample.sampler, options, where if "sample.options" in self.b.axis_at else "sample.options")
        if "eta" in options and sample.eta not in (0.0, options["eta"]):
            raise BenchError(f"{self._at(idx, 'sample.eta', 'sample.options')}: sample.eta = {sample.eta} and "
                             f"sample.options.eta = {options['eta']} disagree; give eta once")

    def _origin(self, idx: tuple[int, ...]) -> Callable[[str], str]:
        return lambda key: self.b.origin(key, idx)

    def _check_model(self, idx: tuple[int, ...], data: Any, model: Any, vae: Any) -> None:
        from bench.models import validate_model

        info = _data_module().dataset_info(data.dataset)
        size, channels = data.image_size or info.image_size, info.channels
        rules.check_class_labels(model.class_cond, data.dataset, info.has_labels,
                                 self._at(idx, "model.class_cond", "data.dataset"))
        if model.space == "latent":
            if vae is None:
                how = "`vae: null` switches it off" if self.b.vae_mode == "null" else "it is missing"
                raise BenchError(
                    f"{self._at(idx, 'model.space')}: latent space needs a `vae:` section ({how}); "
                    "add `vae: {}` under base for the default VAE, or use model.space: pixel"
                )
            from bench.models.vae import validate_vae

            self._external(idx, ("data", "vae"), lambda w: validate_vae(vae, size, w), "vae")
            latent = f" (in latent space: {size}px / vae.factor {vae.factor} = {size // vae.factor}px)"
            size, channels = size // vae.factor, vae.latent_channels
        where = self._at(idx, "model.backbone", "data.image_size", "vae.factor", "model.space")
        validate_model(model.backbone, channels, size, where + (latent if model.space == "latent" else ""))

    def _check_eval(self, idx: tuple[int, ...], data: Any, model: Any, ev: Any) -> None:
        from bench import metrics

        for name in ev.metrics:
            space = metrics.METRICS.get(name).needs_space
            if space is not None and model.space != space:
                other = [m for m in metrics.METRICS.names() if metrics.METRICS.get(m).needs_space == model.space]
                raise BenchError(
                    f"{self._at(idx, 'eval.metrics', 'model.space')}: {name} is measured on {space}-space models, "
                    f"but model.space is {model.space!r}; use {' or '.join(other) or 'another metric'} there")
        if "class_accuracy" in ev.metrics and not model.class_cond:
            raise BenchError(
                f"{self._at(idx, 'eval.metrics', 'model.class_cond')}: class_accuracy compares generated images "
                "with the labels they were asked for, so it needs model.class_cond: true; drop it or "
                "make the model class-conditional"
            )
        validate = getattr(metrics, "validate_eval", None)
        if validate is not None:
            self._external(idx, ("eval", "data"), lambda w: validate(ev, data, w), "eval")

    def _at(self, idx: tuple[int, ...], key: str, *context: str) -> str:
        """The origin of ``key`` at ``idx``, plus the axes among ``context`` that vary there."""
        extra = [self.b.origin(k, idx) for k in context if k != key and k in self.b.axis_at]
        return " with ".join([self.b.origin(key, idx), *extra])

    def _external(self, idx: tuple[int, ...], sections: tuple[str, ...], check: Callable[[str], None],
                  where: str) -> None:  # fmt: skip
        """Run a validator written elsewhere with ``where`` = the section (``base.<section>`` when
        none of ``sections`` varies, else the varying axes at ``idx`` lead the message)."""
        varying = self.b.varying(idx, sections)
        try:
            check(where if varying else f"base.{where}")
        except BenchError as e:
            raise BenchError(f"{', '.join(varying)}: {e}" if varying else str(e)) from None


def _data_module() -> Any:
    import bench.data

    return bench.data


# --- tables and plots ------------------------------------------------------------------------

def produced_outputs(configs: list[RunConfig]) -> tuple[set[str], dict[str, str]]:
    """(output keys the study's runs produce, every metric output -> the metric that makes it)."""
    from bench.metrics import METRICS, always_outputs

    maker = {out: name for name in METRICS.names() for out in METRICS.get(name).keys}
    requested = {m for ev in {id(c.eval): c.eval for c in configs}.values() for m in ev.metrics}
    produced = {out for out, name in maker.items() if name in requested} | set(always_outputs())
    return produced, maker
