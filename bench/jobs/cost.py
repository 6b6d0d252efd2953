"""Estimated work of the jobs (arbitrary units: network evaluations x elements of the model's
input), for scheduling by downstream work (:mod:`bench.plan`). The logged ``nfe`` is counted, not this."""

from __future__ import annotations

import functools
from typing import Any

from bench.core.config import RunConfig


@functools.cache
def _native(dataset: str) -> tuple[int, int]:
    """(channels, native size) of a dataset; (3, 32) when the data package cannot tell."""
    try:
        from bench.data import dataset_info

        info = dataset_info(dataset)
        return info.channels, info.image_size or 32
    except Exception:  # an estimate only: never fail planning over it
        return 3, 32


@functools.cache
def _model_factor(backbone: str) -> float:
    """Relative cost of one forward pass per input element (metadata ``cost``, default 1)."""
    try:
        from bench.models import MODELS

        return float(MODELS.meta(backbone).get("cost", 1.0))
    except Exception:
        return 1.0


@functools.cache
def _on_model(metric: str) -> bool:
    """Whether a metric runs the model on test images (the variational bound: T calls per image)."""
    from bench.metrics import METRICS

    return metric in METRICS and METRICS.get(metric).needs_model


def _elements(cfg: RunConfig, model_space: bool = True) -> float:
    channels, native = _native(cfg.data.dataset)
    size = cfg.data.image_size or native
    if model_space and cfg.model.space == "latent" and cfg.vae is not None:
        return float((size // cfg.vae.factor) ** 2 * cfg.vae.latent_channels)
    return float(size * size * channels)


def vae_cost(cfg: RunConfig) -> float:
    """Forward + backward (about 3 forwards) of the VAE per image per step."""
    assert cfg.vae is not None
    return 3.0 * cfg.vae.steps * cfg.vae.batch_size * _elements(cfg, model_space=False)


def train_cost(cfg: RunConfig, unit: float | None = None) -> float:
    """Forward + backward (about 3 forwards) per example per step; ``unit`` = cost of one forward."""
    t = cfg.train
    unit = _elements(cfg) * _model_factor(cfg.model.backbone) if unit is None else unit
    return 3.0 * t.steps * t.batch_size * t.grad_accum * unit


def network_passes(cfg: RunConfig) -> int:
    """Images' worth of network work per generated image, an estimate for scheduling: one per
    step, twice for guided steps (cond + uncond). The logged ``nfe`` is counted, not this."""
    return _calls(cfg.sample, cfg.diffusion.timesteps) * (2 if cfg.sample.guidance != 0 else 1)


@functools.lru_cache(maxsize=4096)
def _calls(s: Any, timesteps: int) -> int:
    """The sampler's declared network calls per image on this chain (Heun: 2 levels - 1)."""
    from bench.diffusion.samplers import sampler_nfe
    from bench.diffusion.spacing import level_count

    return sampler_nfe(s.sampler, level_count(s.spacing, timesteps, s.steps), s.options.as_dict())


def eval_cost(cfg: RunConfig, unit: float | None = None) -> float:
    """Sampling (images x NFE) plus the NLL bound (test images x T) when ``nll`` is measured."""
    unit = _elements(cfg) * _model_factor(cfg.model.backbone) if unit is None else unit
    terms = cfg.eval.nll_timesteps or cfg.diffusion.timesteps  # K stratified terms, or the full bound
    nll = cfg.eval.nll_samples * terms if any(map(_on_model, cfg.eval.metrics)) else 0
    return (cfg.eval.num_samples * network_passes(cfg) + nll) * unit
