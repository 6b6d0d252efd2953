"""The VAE job: train (or load a pretrained) KL autoencoder once per (data, vae) and cache it."""

from __future__ import annotations

import time
from typing import Any

from bench.core.config import RunConfig
from bench.core.errors import BenchError
from bench.jobs.fp32 import strict_fp32
from bench.jobs.store import vae_path


def load_codec(cfg: RunConfig, device: str = "cpu"):
    from bench.models import LatentCodec

    path = vae_path(cfg.vae_key())
    if not path.exists():
        raise BenchError(f"latent run needs its VAE at {path}, which is missing; run the study's VAE job first")
    return LatentCodec.load(path, map_location=device).to(device)


def run_vae(cfg: RunConfig, key: str, device: str, progress: bool = True) -> dict[str, Any]:
    from bench.data import load_images
    from bench.models import LatentCodec, fit_vae, load_pretrained_vae

    fp32_tag = strict_fp32()
    path = vae_path(key)
    codec = None
    if path.exists():
        try:
            codec = LatentCodec.load(path)
        except BenchError:
            from bench.training.checkpoint import quarantine

            quarantine(path)  # kept aside as vae.pt.corrupt; the VAE is trained again
    if codec is None:
        t0 = time.perf_counter()
        if cfg.vae.pretrained:
            codec = load_pretrained_vae(cfg.vae.pretrained)
        else:
            images = load_images(cfg.data, cfg.data.train_split).images
            codec = fit_vae(images, cfg.vae, device=device, progress=progress)
        codec.metrics["vae_seconds"] = time.perf_counter() - t0
        codec.save(path)
    m = codec.metrics
    metrics = {k: m[k] for k in ("recon_mse", "recon_psnr", "latent_std", "vae_seconds") if k in m}
    metrics["scale_factor"] = float(codec.scale_factor)
    return {"metrics": metrics, "tags": {"bench.vae_path": str(path), **fp32_tag}}
