"""The sections of a run configuration: frozen dataclasses with their defaults and types.

Every field's default is written beside it below (and listed by :func:`defaults`). Values are
type-checked by :func:`coerce_value` (ints are accepted for float fields and stored as floats, so
``eta: 1`` and ``eta: 1.0`` are the same run). A field declared with ``metadata=OMIT_DEFAULT``
is left out of the canonical JSON while it has its default, so adding such a field to a section
keeps the keys of every existing run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from bench.core.errors import BenchError
from bench.core.registry import did_you_mean

OMIT_DEFAULT = {"omit_default": True}


class Options(tuple):
    """A mapping of knobs (``sample.options``) as sorted (name, value) pairs: hashable, so equal
    sections are interned once; it reads back as a dict (:meth:`as_dict`, canonical JSON)."""

    @classmethod
    def of(cls, mapping: Any) -> Options:
        """Sorted pairs of ``mapping``; a nested mapping ({train: {steps: 100}}) becomes dotted keys."""
        if isinstance(mapping, Options):
            return mapping
        flat: dict[str, Any] = {}
        for k, v in dict(mapping).items():
            if isinstance(v, dict):
                flat.update({f"{k}.{kk}": vv for kk, vv in cls.of(v)})
            else:
                flat[k] = v
        return cls(sorted(flat.items()))

    def as_dict(self) -> dict[str, Any]:
        return dict(self)

    def __str__(self) -> str:  # how tables, plots and job labels show it: "order=3", "defaults"
        return ", ".join(f"{k}={v}" for k, v in self) or "defaults"


class _Spec:
    """Base of the section dataclasses: stores ints given for float fields as floats (and -0.0
    as 0.0), lists given for tuple fields as tuples, so equal settings have equal keys."""

    def __post_init__(self) -> None:
        for name in _float_fields(type(self)):
            value = self.__dict__[name]
            if type(value) is int or (type(value) is float and value == 0.0):  # -0.0 -> 0.0: JSON differs
                self.__dict__[name] = float(value) + 0.0  # frozen: write the instance dict directly
        if isinstance(self.__dict__.get("metrics"), list):
            self.__dict__["metrics"] = tuple(self.__dict__["metrics"])
        for name in ("options", "guidance_options", "guide", "feature_weights", "t_sampling_options"):
            if isinstance(self.__dict__.get(name), dict):
                self.__dict__[name] = Options.of(self.__dict__[name])


@dataclass(frozen=True)
class DataSpec(_Spec):
    """Which images: a registered dataset, its size and where it lives."""

    dataset: str = "digits"  # registry bench.data.DATASETS
    image_size: int | None = None  # None = the dataset's native size
    resize_filter: str = "bilinear"  # PIL filter used when image_size differs from native
    root: str | None = None  # folder for mnist / cifar10 / imagefolder (None = ~/.cache/bench/data)
    download: bool = False  # let torchvision download (users online)
    train_split: str = "train"


@dataclass(frozen=True)
class ModelSpec(_Spec):
    """The denoising network."""

    backbone: str = "unet-tiny"  # registry bench.models.MODELS
    space: str = "pixel"  # pixel | latent
    class_cond: bool = False  # class-conditional (adds the null label for guidance)
    dropout: float | None = None  # None = the preset's
    # a model not trained here: a diffusers pipeline folder, a hub id, or python:module:function;
    # its weights' sha256 (filled when the study is read) is the identity, not the path
    pretrained: str | None = field(default=None, metadata={"omit_default": True, "identity": False})
    pretrained_sha256: str | None = field(default=None, metadata=OMIT_DEFAULT)


@dataclass(frozen=True)
class VAESpec(_Spec):
    """A KL autoencoder for latent diffusion, trained once per (data, vae) and cached."""

    factor: int = 2  # downsampling factor: 2, 4 or 8
    latent_channels: int = 4
    base_channels: int = 32
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1.0e-3
    kl_weight: float = 1.0e-6
    seed: int = 0
    pretrained: str | None = None  # local folder of a diffusers AutoencoderKL


@dataclass(frozen=True)
class DiffusionSpec(_Spec):
    """The forward process and what the network predicts."""

    schedule: str = "linear"  # registry bench.diffusion.SCHEDULES
    timesteps: int = 1000
    objective: str = "eps"  # registry bench.diffusion.OBJECTIVES
    variance: str = "fixed_small"  # registry bench.diffusion.VARIANCES
    loss: str = "simple"  # registry bench.diffusion.LOSSES
    hybrid_weight: float = 0.001
    process: str = field(default="vp", metadata=OMIT_DEFAULT)  # registry bench.diffusion.PROCESSES
    shift: float = field(default=1.0, metadata=OMIT_DEFAULT)  # SD3's time shift of a continuous process


@dataclass(frozen=True)
class TrainSpec(_Spec):
    """The optimisation."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 2.0e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1
    ema_decay: float = 0.999
    p_uncond: float = 0.0  # label dropout for classifier-free guidance
    precision: str = "no"  # no | bf16 | fp16 (autocast; GPU only)
    checkpoint_every: int = 500
    log_every: int = 25
    t_sampling: str = field(default="uniform", metadata=OMIT_DEFAULT)  # registry bench.diffusion.TIME_SAMPLING:
    # the density of the training time t (SD3's logit-normal, mode, cosmap; EDM's log-normal)
    t_sampling_options: Options = field(default=Options(), metadata=OMIT_DEFAULT)  # the density's declared
    # knobs ({loc: 0.0, scale: 1.0}) and its loss weighting ({weighting: edm})


@dataclass(frozen=True)
class SampleSpec(_Spec):
    """How images are drawn from a trained model (inference-time axes)."""

    sampler: str = "ddim"  # registry bench.diffusion.SAMPLERS
    steps: int = 50
    eta: float = 0.0
    spacing: str = "leading"  # registry bench.diffusion.SPACINGS
    guidance: float = 0.0  # classifier-free guidance w (eps~ = (1+w) eps_c - w eps_u)
    clip_denoised: bool = True  # clamp predicted x0 to [-1, 1] (pixel space only)
    batch_size: int = 250
    options: Options = field(default=Options(), metadata=OMIT_DEFAULT)  # the sampler's declared knobs
    variance: str | None = field(default=None, metadata=OMIT_DEFAULT)  # a fixed variance to sample with
    # (None: diffusion.variance); only for a model whose loss did not train its variance
    guidance_channels: int | None = field(default=None, metadata=OMIT_DEFAULT)  # guide only the first N
    # channels: a checkpoint's own convention (3 for diffusers' DiT pipeline); None guides all
    nfe: int | None = field(default=None, metadata=OMIT_DEFAULT)  # a budget of network calls per image:
    # the study's steps are replaced by the count that makes this sampler meet it exactly
    rho: float = field(default=7.0, metadata=OMIT_DEFAULT)  # the karras schedule's rho (EDM eq. 5)
    guidance_method: str = field(default="cfg", metadata=OMIT_DEFAULT)  # registry bench.diffusion.GUIDANCE
    guidance_options: Options = field(default=Options(), metadata=OMIT_DEFAULT)  # the method's declared knobs
    guide: Options = field(default=Options(), metadata=OMIT_DEFAULT)  # autoguidance's guiding model: this
    # run's model with these model.* / train.* overrides ({train.steps: 100}), a node of the plan
    precision: str = field(default="auto", metadata=OMIT_DEFAULT)  # auto | fp32 | bf16: the sampling
    # network's autocast (bf16 on any device); auto: bf16 on a GPU where train.precision is bf16, else fp32
    compile: bool = field(default=False, metadata=OMIT_DEFAULT)  # torch.compile the network for sampling
    guidance_batch: str = field(default="auto", metadata=OMIT_DEFAULT)  # auto | measure | joint | split: a
    # guided call's two branches as one 2B call or two B calls (bench.diffusion.batching)


@dataclass(frozen=True)
class EvalSpec(_Spec):
    """What is measured, and under which protocol."""

    num_samples: int = 1000
    metrics: tuple[str, ...] = ("fid",)  # registry bench.metrics.METRICS
    extractor: str = "inception"  # registry bench.metrics.EXTRACTORS ("inception", "domain:<dataset>")
    reference_split: str = "test"
    fid_backend: str = "torch-fidelity"  # torch-fidelity | clean-fid
    inception_weights: str | None = None  # local weights file (offline); env BENCH_INCEPTION_WEIGHTS
    nll_samples: int = 0  # test images for nll_bpd (0 = skip)
    kid_subset_size: int = 1000
    nll_timesteps: int | None = field(default=None, metadata=OMIT_DEFAULT)  # K: the bound's unbiased
    # stratified estimate from K network calls per image (t = 0 and K - 1 strata); None: all T terms
    bootstrap: int = field(default=0, metadata=OMIT_DEFAULT)  # B resamples of the generated images:
    # 95 % intervals (fid_ci_lo / fid_ci_hi, ...) from the stored features; 0: none
    dinov2_model: str = field(default="dinov2-vit-l-14", metadata=OMIT_DEFAULT)  # fd_dinov2's extractor
    clip_model: str = field(default="clip-vit-l-14-336px", metadata=OMIT_DEFAULT)  # cmmd's extractor
    feature_weights: Options = field(default=Options(), metadata=OMIT_DEFAULT)  # extractor name -> local
    # weights file ({dinov2-vit-l-14: /data/dinov2_vitl14_pretrain.pth}); else $BENCH_WEIGHTS_DIR




SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "model": ModelSpec,
    "vae": VAESpec,
    "diffusion": DiffusionSpec,
    "train": TrainSpec,
    "sample": SampleSpec,
    "eval": EvalSpec,
}


def section_fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(SECTIONS[section])}


# --- types ----------------------------------------------------------------------------------


class FieldType(NamedTuple):
    """What a field accepts: ``base`` (bool, int, float, str), ``optional`` (None allowed),
    ``items`` (the item type of a ``tuple[T, ...]`` field, else None)."""

    base: type
    optional: bool
    items: type | None

    def describe(self) -> str:
        what = f"a list of {self.items.__name__}s" if self.items else _TYPE_WORDS[self.base]
        return f"{what} or null" if self.optional else what


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               dict: "a mapping of names to values"}


def _field_type(hint: Any) -> FieldType:
    if hint is Options:
        return FieldType(dict, False, None)
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return FieldType(tuple, optional, typing.get_args(hint)[0])
    return FieldType(hint, optional, None)


FIELD_TYPES: dict[str, dict[str, FieldType]] = {
    name: {k: _field_type(t) for k, t in typing.get_type_hints(cls).items()} for name, cls in SECTIONS.items()
}
_FLOATS: dict[type, tuple[str, ...]] = {}


def _float_fields(cls: type) -> tuple[str, ...]:
    names = _FLOATS.get(cls)
    if names is None:
        hints = typing.get_type_hints(cls)
        names = _FLOATS[cls] = tuple(k for k, t in hints.items() if _field_type(t).base is float)
    return names


def defaults() -> dict[str, Any]:
    """Every dotted key with its default (``vae.*`` apply once a ``vae:`` section is given)."""
    out = {f"{s}.{f.name}": getattr(cls(), f.name) for s, cls in SECTIONS.items() for f in fields(cls)}
    return out | {"seed": 0}


ALL_KEYS: tuple[str, ...] = tuple(defaults())


def resolve_key(dotted: str, where: str) -> tuple[str, str]:
    """``"sample.eta"`` -> ``("sample", "eta")``; anything else raises with "did you mean"."""
    section, _, name = str(dotted).partition(".")
    if section in SECTIONS and name in FIELD_TYPES[section]:
        return section, name
    hint = did_you_mean(dotted, [k for k in ALL_KEYS if k != "seed"])
    if section in SECTIONS:
        choices = ", ".join(f"{section}.{k}" for k in FIELD_TYPES[section])
        raise BenchError(f"{where}: unknown key {dotted!r}.{hint} Keys of {section}: {choices}.")
    raise BenchError(
        f"{where}: unknown key {dotted!r}.{hint} Keys are <section>.<field> with sections "
        f"{', '.join(SECTIONS)}."
    )


def coerce_value(section: str, name: str, value: Any, where: str) -> Any:
    """Type-check ``value`` for ``section.name`` and return it normalised (int -> float for float
    fields, list -> tuple for list fields); raises BenchError naming ``where`` otherwise."""
    ft = FIELD_TYPES[section][name]
    if value is None and ft.optional:
        return None
    if ft.items is not None:
        if isinstance(value, (list, tuple)) and all(isinstance(v, ft.items) for v in value):
            return tuple(value)
    elif ft.base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif ft.base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif ft.base is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return Options.of(value)
    elif isinstance(value, ft.base):
        return value
    default = getattr(SECTIONS[section](), name)
    example = f"[{', '.join(default)}]" if isinstance(default, tuple) else json.dumps(default)
    raise BenchError(
        f"{where}: must be {ft.describe()}, got {value!r} ({type(value).__name__}). "
        f"Write e.g. {section}.{name}: {example} (the default)."
    )



def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def asdict(obj: Any, key: bool = False) -> Any:
    """Nested dicts of a config; ``key=True``: only what is the run's identity (fields declared
    ``identity: False``, such as a checkpoint's folder, are left out: its weights' hash is in)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: asdict(v, key) for f in fields(obj)
                if not ((v := getattr(obj, f.name)) == f.default and f.metadata.get("omit_default"))
                and not (key and f.metadata.get("identity") is False)}
    if isinstance(obj, Options):
        return obj.as_dict()
    if isinstance(obj, (list, tuple)):
        return [asdict(v, key) for v in obj]
    return obj


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def unflatten(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``; the caller's values are copied, never written into."""
    out: dict[str, Any] = {}
    for k, v in dotted.items():
        parts = k.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = copy.deepcopy(v)
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins. A section set to None (``vae: null``) clears it."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out

