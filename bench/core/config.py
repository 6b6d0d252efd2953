"""The run configuration: frozen dataclasses, canonical JSON and content-hash keys.

A run *is* its config (as nanoGPT logs its resolved config and edm writes
``training_options.json``): the canonical JSON of a :class:`RunConfig` and its sha256 prefix are
the run's identity. ``train_key`` hashes only the training-time sections, so every sampling
variant of one model shares one TRAIN job; ``vae_key`` hashes the data and VAE sections, so all
latent runs on one dataset share one VAE.

The sections, their types and defaults are in :mod:`bench.core.sections` (re-exported here). Canonical JSON is cached per section instance: a
study shares section instances between grid points, so 100,000 keys cost 100,000 string joins.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

from bench.core.errors import BenchError
from bench.core.registry import did_you_mean
from bench.core.sections import (
    ALL_KEYS,
    FIELD_TYPES,
    OMIT_DEFAULT,
    SECTIONS,
    DataSpec,
    DiffusionSpec,
    EvalSpec,
    FieldType,
    ModelSpec,
    Options,
    SampleSpec,
    TrainSpec,
    VAESpec,
    asdict,
    coerce_value,
    defaults,
    dumps,
    flatten,
    merge,
    resolve_key,
    section_fields,
    unflatten,
)

SCHEMA_VERSION = 1
KEY_LENGTH = 16


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
        return {"schema": SCHEMA_VERSION, **asdict(self)}

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
        for n in _SECTION_NAMES:  # a section's JSON is computed once per instance (_section_entry)
            value = d[n]
            entries[n] = _NULL_ENTRY[n] if value is None else value.__dict__.get("_entry") or _section_entry(n, value)
        # frozen dataclass: caches live in the instance dict, outside fields, eq and repr
        d["_entries"] = entries
        return entries

    def key(self) -> str:
        """Key of the whole run (the EVAL job)."""
        key = self.__dict__.get("_key")
        if key is None:
            key = self.__dict__["_key"] = _hash(self._canonical(_SORTED_NAMES))
        return key

    def sample_key(self) -> str:
        """Key of the generated image sequence: the run without its ``eval`` section (what only
        measures the images: metrics, extractor, reference, bootstrap, and the sample count: image i
        has seed ``seed * 2^32 + i`` whatever the count, so a run of n images is the first n of a
        longer one). Runs that differ only in how they are scored share one sampling."""
        key = self.__dict__.get("_sample_key")
        if key is None:
            key = self.__dict__["_sample_key"] = _hash(self._canonical([n for n in _SORTED_NAMES if n != "eval"]))
        return key

    def train_key(self) -> str:
        """Key of the TRAIN job: training-time sections only (data, model, diffusion, train,
        seed, and vae for latent runs); equal across sampling / evaluation changes.

        A fixed variance does not enter the ``simple`` loss, so it is not a training setting: such
        runs are keyed as if the variance were the default ``fixed_small`` and share one model
        (the DDIM table's sigma-hat row samples with ``fixed_large`` from the same network)."""
        key = self.__dict__.get("_train_key")
        if key is None and self.model.pretrained is not None:  # not trained here: the model is its weights
            entries = self.__dict__.get("_entries") or self._make_entries()
            key = self.__dict__["_train_key"] = _hash(b'{"pretrained":' + entries["model"] + b"}")
        if key is None:
            entries = self.__dict__.get("_entries") or self._make_entries()
            names = _TRAIN_SORTED[self.model.space == "latent"]
            parts = [_train_diffusion_entry(self.diffusion) if n == "diffusion" else entries[n] for n in names]
            key = self.__dict__["_train_key"] = _hash(b"{" + b",".join(parts) + b"}")
        return key

    def train_sections(self) -> tuple[str, ...]:
        return _TRAIN_LATENT if self.model.space == "latent" else _TRAIN_PIXEL

    def vae_key(self) -> str | None:
        """Key of the VAE job (shared by every latent run on the same data and VAE settings)."""
        if self.model.space != "latent" or self.vae is None or self.model.pretrained is not None:
            return None
        key = self.__dict__.get("_vae_key")
        if key is None:
            key = self.__dict__["_vae_key"] = _hash(self._canonical(_VAE_SORTED))
        return key

    # --- overrides ------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (``sample.steps``), as logged to MLflow."""
        return flatten(asdict(self))

    def value(self, dotted: str) -> Any:
        """The value at a dotted key, defaults included (``flat`` leaves out a field omitted at its
        default, e.g. ``sample.guidance_method: cfg``); ``sample.options.eta`` reads one option."""
        if dotted == "seed":
            return self.seed
        section, _, name = dotted.partition(".")
        name, _, option = name.partition(".")
        value = getattr(getattr(self, section), name)
        return value.as_dict().get(option) if option else value

    def guide_config(self) -> RunConfig | None:
        """Autoguidance's guiding model as a config (``sample.guide`` applied), or None."""
        return self.override(**self.sample.guide.as_dict()) if self.sample.guide else None

    def override(self, **dotted: Any) -> RunConfig:
        """``cfg.override(**{"sample.steps": 20})``: a new config with dotted keys replaced."""
        return from_dict(merge(asdict(self), unflatten(dotted)))


_TRAIN_PIXEL = ("data", "model", "diffusion", "train", "seed")
_TRAIN_LATENT = (*_TRAIN_PIXEL, "vae")
_TRAIN_SORTED = {False: sorted({*_TRAIN_PIXEL, "schema"}), True: sorted({*_TRAIN_LATENT, "schema"})}
_VAE_SORTED = sorted({"data", "vae", "schema"})


# Fixed variances and the losses that do not train a variance (checked against the registries'
# metadata in the tests: VARIANCES learned=False, LOSSES trains_variance=False).
FIXED_VARIANCES = ("fixed_small", "fixed_large")
LOSSES_WITHOUT_VARIANCE = ("simple",)


def variance_is_trained(diffusion: DiffusionSpec) -> bool:
    """Whether ``diffusion.variance`` affects training (False: a fixed variance with a loss that
    ignores it, so it may be chosen at sampling time)."""
    return not (diffusion.variance in FIXED_VARIANCES and diffusion.loss in LOSSES_WITHOUT_VARIANCE)


def _train_diffusion_entry(diffusion: DiffusionSpec) -> bytes:
    entry = diffusion.__dict__.get("_train_entry")
    if entry is None:
        d = asdict(diffusion, key=True)
        if not variance_is_trained(diffusion):
            d["variance"] = DiffusionSpec.variance  # the dataclass default: existing keys are kept
        entry = diffusion.__dict__["_train_entry"] = _PREFIX["diffusion"] + dumps(d)
    return entry


def _section_entry(name: str, section: Any) -> bytes:
    entry = section.__dict__["_entry"] = _PREFIX[name] + dumps(asdict(section, key=True))
    return entry


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:KEY_LENGTH]


_SORTED_NAMES = sorted({*(f.name for f in fields(RunConfig)), "schema"})
_PREFIX = {n: f'"{n}":'.encode() for n in _SORTED_NAMES}
_SECTION_NAMES = tuple(f.name for f in fields(RunConfig) if f.name != "seed")
_SCHEMA_ENTRY = _PREFIX["schema"] + str(SCHEMA_VERSION).encode()
_NULL_ENTRY = {n: _PREFIX[n] + b"null" for n in _SECTION_NAMES}


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
            hint = did_you_mean(name, SECTIONS, n=1)
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
    "DataSpec", "ModelSpec", "VAESpec", "DiffusionSpec", "TrainSpec", "SampleSpec", "EvalSpec", "RunConfig",
    "Options", "OMIT_DEFAULT", "variance_is_trained", "FIXED_VARIANCES", "SECTIONS", "FIELD_TYPES", "FieldType", "ALL_KEYS", "from_dict", "coerce_value",
    "resolve_key", "defaults", "section_fields", "flatten", "unflatten", "merge", "replace",
]
