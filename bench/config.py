"""The run configuration: frozen dataclasses, canonical JSON and content-hash keys.

A run *is* its config (as nanoGPT logs its resolved config and edm writes
``training_options.json``): the canonical JSON of a :class:`RunConfig` and its sha256 prefix are
the run's identity. ``train_key`` hashes only the training-time sections, so every sampling
variant of one model shares one TRAIN job; ``vae_key`` hashes the data and VAE sections, so all
latent runs on one dataset share one VAE.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from bench.errors import BenchError

SCHEMA_VERSION = 1
KEY_LENGTH = 16


@dataclass(frozen=True)
class DataSpec:
    """Which images: a registered dataset, its size and where it lives."""

    dataset: str = "digits"  # registry bench.data.DATASETS
    image_size: int | None = None  # None = the dataset's native size
    resize_filter: str = "bilinear"  # PIL filter used when image_size differs from native
    root: str | None = None  # folder for mnist / cifar10 / imagefolder (None = ~/.cache/bench/data)
    download: bool = False  # let torchvision download (users online)
    train_split: str = "train"


@dataclass(frozen=True)
class ModelSpec:
    """The denoising network."""

    backbone: str = "unet-tiny"  # registry bench.models.MODELS
    space: str = "pixel"  # pixel | latent
    class_cond: bool = False  # class-conditional (adds the null label for guidance)
    dropout: float | None = None  # None = the preset's


@dataclass(frozen=True)
class VAESpec:
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
class DiffusionSpec:
    """The forward process and what the network predicts."""

    schedule: str = "linear"  # registry bench.diffusion.SCHEDULES
    timesteps: int = 1000
    objective: str = "eps"  # registry bench.diffusion.OBJECTIVES
    variance: str = "fixed_small"  # registry bench.diffusion.VARIANCES
    loss: str = "simple"  # registry bench.diffusion.LOSSES
    hybrid_weight: float = 0.001


@dataclass(frozen=True)
class TrainSpec:
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
class SampleSpec:
    """How images are drawn from a trained model (inference-time axes)."""

    sampler: str = "ddim"  # registry bench.diffusion.SAMPLERS
    steps: int = 50
    eta: float = 0.0
    spacing: str = "leading"  # registry bench.diffusion.SPACINGS
    guidance: float = 0.0  # classifier-free guidance w (eps~ = (1+w) eps_c - w eps_u)
    clip_denoised: bool = True  # clamp predicted x0 to [-1, 1] (pixel space only)
    batch_size: int = 250


@dataclass(frozen=True)
class EvalSpec:
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
    vae: VAESpec | None = None
    diffusion: DiffusionSpec = field(default_factory=DiffusionSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    sample: SampleSpec = field(default_factory=SampleSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    seed: int = 0  # replicate: seeds training and sampling

    # --- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **_asdict(self)}

    def canonical_json(self, sections: tuple[str, ...] | None = None) -> str:
        d = self.to_dict()
        if sections is not None:
            d = {"schema": SCHEMA_VERSION, **{s: d[s] for s in sections}}
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """Key of the whole run (the EVAL job)."""
        return _hash(self.canonical_json())

    def train_key(self) -> str:
        """Key of the TRAIN job: training-time sections only."""
        sections = ("data", "model", "diffusion", "train", "seed")
        if self.model.space == "latent":
            sections = (*sections, "vae")
        return _hash(self.canonical_json(sections))

    def vae_key(self) -> str | None:
        """Key of the VAE job (shared by every latent run on the same data and VAE settings)."""
        if self.model.space != "latent" or self.vae is None:
            return None
        return _hash(self.canonical_json(("data", "vae")))

    # --- overrides ------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (``sample.steps``), as logged to MLflow."""
        return flatten(_asdict(self))

    def override(self, **dotted: Any) -> RunConfig:
        """``cfg.override(**{"sample.steps": 20})``: a new config with dotted keys replaced."""
        return from_dict(merge(_asdict(self), unflatten(dotted)))


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


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
    out: dict[str, Any] = {}
    for k, v in dotted.items():
        parts = k.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
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


def section_fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(SECTIONS[section])}


def from_dict(d: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a RunConfig from nested dicts; unknown sections or keys raise BenchError."""
    d = {k: v for k, v in d.items() if k != "schema"}
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        if name == "seed":
            kwargs["seed"] = value
            continue
        if name not in SECTIONS:
            raise BenchError(f"{where}: unknown section {name!r}. Sections: {', '.join(SECTIONS)}, seed.")
        if value is None:
            if name != "vae":
                raise BenchError(f"{where}: section {name!r} cannot be null")
            kwargs[name] = None
            continue
        if not isinstance(value, dict):
            raise BenchError(f"{where}: section {name!r} must be a mapping, got {value!r}")
        known = section_fields(name)
        for k in value:
            if k not in known:
                import difflib

                close = difflib.get_close_matches(k, list(known), n=1)
                hint = f" Did you mean {name}.{close[0]!r}?" if close else ""
                raise BenchError(
                    f"{where}: unknown key {name}.{k}.{hint} Keys of {name}: {', '.join(known)}."
                )
        vals = dict(value)
        if name == "eval" and "metrics" in vals and isinstance(vals["metrics"], list):
            vals["metrics"] = tuple(vals["metrics"])
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
    "from_dict",
    "flatten",
    "unflatten",
    "merge",
    "replace",
]
