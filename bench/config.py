"""The run configuration: frozen dataclasses, canonical JSON and content-hash keys.

A run *is* its config (as nanoGPT logs its resolved config and edm writes
``training_options.json``): the canonical JSON of a :class:`RunConfig` and its sha256 prefix are
the run's identity. ``train_key`` hashes only the training-time sections, so every sampling
variant of one model shares one TRAIN job; ``vae_key`` hashes the data and VAE sections, so all
latent runs on one dataset share one VAE.

Every field's default is written beside it below (and listed by :func:`defaults`). Values are
type-checked by :func:`coerce_value` (ints are accepted for float fields and stored as floats, so
``eta: 1`` and ``eta: 1.0`` are the same run). Canonical JSON is cached per section instance: a
study shares section instances between grid points, so 100,000 keys cost 100,000 string joins.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, NamedTuple

from bench.errors import BenchError

SCHEMA_VERSION = 1
KEY_LENGTH = 16


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


@dataclass(frozen=True)
class RunConfig:
    """One point of a study grid: everything needed to train, sample and evaluate."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    vae: VAESpec | None = None  # required (``vae: {}`` for the defaults) when model.space is latent
    diffusion: DiffusionSpec = field(default_factory=DiffusionSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    sample: SampleSpec = field(default_factory=SampleSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    seed: int = 0  # replicate: seeds training and sampling

    # --- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **_asdict(self)}

    def canonical_json(self, sections: tuple[str, ...] | None = None) -> str:
        """``json.dumps(to_dict(), sort_keys=True, separators=(",", ":"))``, restricted to
        ``sections`` (names of fields, ``seed`` included) when given; built from cached parts."""
        return self._canonical(_SORTED_NAMES if sections is None else sorted({*sections, "schema"})).decode()

    def _canonical(self, names: Any) -> bytes:
        entries = self.__dict__.get("_entries") or self._make_entries()
        return b"{" + b",".join([entries[n] for n in names]) + b"}"

    def _make_entries(self) -> dict[str, bytes]:
        """``b'"name":<json>'`` per field (and schema), cached: the three keys share them."""
        d = self.__dict__
        seed = d["seed"]  # an int's JSON is its str(); anything else goes through json
        entries = {
            "schema": _SCHEMA_ENTRY,
            "seed": _PREFIX["seed"] + (str(seed) if type(seed) is int else json.dumps(seed)).encode(),
        }
        for n in _SECTION_NAMES:
            value = d[n]
            if value is None:
                entries[n] = _PREFIX[n] + b"null"
                continue
            entry = value.__dict__.get("_entry")  # a section's JSON is computed once per instance
            if entry is None:
                entry = value.__dict__["_entry"] = _PREFIX[n] + _dumps(_asdict(value))
            entries[n] = entry
        # frozen dataclass: caches live in the instance dict, outside fields, eq and repr
        d["_entries"] = entries
        return entries

    def key(self) -> str:
        """Key of the whole run (the EVAL job)."""
        key = self.__dict__.get("_key")
        if key is None:
            key = self.__dict__["_key"] = _hash(self._canonical(_SORTED_NAMES))
        return key

    def train_key(self) -> str:
        """Key of the TRAIN job: training-time sections only (data, model, diffusion, train,
        seed, and vae for latent runs); equal across sampling / evaluation changes."""
        key = self.__dict__.get("_train_key")
        if key is None:
            names = _TRAIN_SORTED[self.model.space == "latent"]
            key = self.__dict__["_train_key"] = _hash(self._canonical(names))
        return key

    def train_sections(self) -> tuple[str, ...]:
        return _TRAIN_LATENT if self.model.space == "latent" else _TRAIN_PIXEL

    def vae_key(self) -> str | None:
        """Key of the VAE job (shared by every latent run on the same data and VAE settings)."""
        if self.model.space != "latent" or self.vae is None:
            return None
        key = self.__dict__.get("_vae_key")
        if key is None:
            key = self.__dict__["_vae_key"] = _hash(self._canonical(_VAE_SORTED))
        return key

    # --- overrides ------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (``sample.steps``), as logged to MLflow."""
        return flatten(_asdict(self))

    def override(self, **dotted: Any) -> RunConfig:
        """``cfg.override(**{"sample.steps": 20})``: a new config with dotted keys replaced."""
        return from_dict(merge(_asdict(self), unflatten(dotted)))


_TRAIN_PIXEL = ("data", "model", "diffusion", "train", "seed")
_TRAIN_LATENT = (*_TRAIN_PIXEL, "vae")
_TRAIN_SORTED = {False: sorted({*_TRAIN_PIXEL, "schema"}), True: sorted({*_TRAIN_LATENT, "schema"})}
_VAE_SORTED = sorted({"data", "vae", "schema"})


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:KEY_LENGTH]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _asdict(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _asdict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_asdict(v) for v in obj]
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
    import copy

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


SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "model": ModelSpec,
    "vae": VAESpec,
    "diffusion": DiffusionSpec,
    "train": TrainSpec,
    "sample": SampleSpec,
    "eval": EvalSpec,
}
_SORTED_NAMES = sorted({*(f.name for f in fields(RunConfig)), "schema"})
_PREFIX = {n: f'"{n}":'.encode() for n in _SORTED_NAMES}
_SECTION_NAMES = tuple(f.name for f in fields(RunConfig) if f.name != "seed")
_SCHEMA_ENTRY = _PREFIX["schema"] + str(SCHEMA_VERSION).encode()


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


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _field_type(hint: Any) -> FieldType:
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
    close = difflib.get_close_matches(str(dotted), [k for k in ALL_KEYS if k != "seed"], n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
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
    elif isinstance(value, ft.base):
        return value
    default = getattr(SECTIONS[section](), name)
    example = f"[{', '.join(default)}]" if isinstance(default, tuple) else json.dumps(default)
    raise BenchError(
        f"{where}: must be {ft.describe()}, got {value!r} ({type(value).__name__}). "
        f"Write e.g. {section}.{name}: {example} (the default)."
    )


def from_dict(d: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a RunConfig from nested dicts; unknown sections or keys and wrong types raise
    BenchError. Omitted keys take the defaults; ``vae: {}`` is a VAE with default settings."""
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        if name == "schema":
            continue
        if name == "seed":
            if not isinstance(value, int) or isinstance(value, bool):
                raise BenchError(f"{where}: seed must be an integer, got {value!r}")
            kwargs["seed"] = value
            continue
        if name not in SECTIONS:
            close = difflib.get_close_matches(str(name), list(SECTIONS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise BenchError(
                f"{where}: unknown section {name!r}.{hint} Sections: {', '.join(SECTIONS)}, seed."
            )
        if value is None:
            if name != "vae":
                raise BenchError(f"{where}: section {name!r} cannot be null; omit it for the defaults")
            kwargs[name] = None
            continue
        if not isinstance(value, dict):
            raise BenchError(f"{where}: section {name!r} must be a mapping, got {value!r}")
        vals = {}
        for k, v in value.items():
            resolve_key(f"{name}.{k}", where)
            vals[k] = coerce_value(name, k, v, f"{where}: {name}.{k}")
        kwargs[name] = SECTIONS[name](**vals)
    return RunConfig(**kwargs)


__all__ = [
    "DataSpec",
    "ModelSpec",
    "VAESpec",
    "DiffusionSpec",
    "TrainSpec",
    "SampleSpec",
    "EvalSpec",
    "RunConfig",
    "SECTIONS",
    "FIELD_TYPES",
    "FieldType",
    "ALL_KEYS",
    "from_dict",
    "coerce_value",
    "resolve_key",
    "defaults",
    "section_fields",
    "flatten",
    "unflatten",
    "merge",
    "replace",
]
