"""What a worker does with one job: train a VAE, train a model, or sample and evaluate.

Each job reads and writes only under ``bench.paths.cache_dir()``, by content key, and returns a
plain dict (metrics, histories, tags, artifact paths) that the driver logs to MLflow: workers
never touch the tracking store.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from bench.config import RunConfig, from_dict
from bench.errors import BenchError
from bench.paths import atomic_write_bytes, cache_dir

FIDELITY = ("fid", "is", "kid", "precision", "recall", "class_accuracy")


def vae_path(vae_key: str) -> Path:
    return cache_dir() / "vae" / vae_key / "vae.pt"


def train_dir(train_key: str) -> Path:
    return cache_dir() / "train" / train_key


def checkpoint_path(train_key: str) -> Path:
    return train_dir(train_key) / "checkpoint.pt"


def artifact_dir(key: str) -> Path:
    d = cache_dir() / "artifacts" / key
    d.mkdir(parents=True, exist_ok=True)
    return d


def is_done_on_disk(kind: str, cfg: RunConfig) -> bool:
    """A finished VAE / TRAIN job must also have left its file (a wiped cache means redo)."""
    if kind == "vae":
        return vae_path(cfg.vae_key()).exists()
    if kind == "train":
        return (train_dir(cfg.train_key()) / "result.json").exists()
    return True


def run_job(kind: str, config: dict[str, Any], key: str, device: str = "cpu", progress: bool = True
            ) -> dict[str, Any]:
    cfg = from_dict(config)
    fn = {"vae": run_vae, "train": run_train, "eval": run_eval}[kind]
    return fn(cfg, key, device, progress)


# --- VAE ----------------------------------------------------------------------------------------
def load_codec(cfg: RunConfig, device: str = "cpu"):
    from bench.models import LatentCodec

    path = vae_path(cfg.vae_key())
    if not path.exists():
        raise BenchError(f"latent run needs its VAE at {path}, which is missing; run the study's VAE job first")
    return LatentCodec.load(path, map_location=device).to(device)


def run_vae(cfg: RunConfig, key: str, device: str, progress: bool = True) -> dict[str, Any]:
    from bench.data import load_images
    from bench.models import LatentCodec, fit_vae, load_pretrained_vae

    path = vae_path(key)
    codec = None
    if path.exists():
        try:
            codec = LatentCodec.load(path)
        except BenchError:
            from bench.checkpoint import quarantine

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
    return {"metrics": metrics, "tags": {"bench.vae_path": str(path)}}


# --- TRAIN --------------------------------------------------------------------------------------
def run_train(cfg: RunConfig, key: str, device: str, progress: bool = True) -> dict[str, Any]:
    from bench.train import train_model

    codec = load_codec(cfg, device) if cfg.model.space == "latent" else None
    res = train_model(cfg, train_dir(key), device=device, progress=progress, codec=codec)
    summary = {"train_seconds": res.train_seconds, "final_loss": res.final_loss, "num_params": res.num_params,
               "steps": res.steps}
    atomic_write_bytes(train_dir(key) / "result.json", json.dumps(summary).encode())
    curve = artifact_dir(key) / "loss_curve.png"
    _plot_loss(res.loss_history, curve, title=f"train {key}")
    return {"metrics": {k: float(v) for k, v in summary.items()},
            "history": {"train_loss": [(int(s), float(v)) for s, v in res.loss_history]},
            "tags": {"bench.checkpoint": str(res.checkpoint), "bench.resumed_from": str(res.resumed_from)},
            "artifacts": [str(curve)]}


def _plot_loss(history: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    if history:
        steps, losses = zip(*history)
        ax.plot(steps, losses)
    ax.set(xlabel="step", ylabel="loss", title=title, yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- EVAL ---------------------------------------------------------------------------------------
def sample_seeds(cfg: RunConfig, n: int) -> list[int]:
    """Image i of replicate s has seed s * 10^6 + i: it depends on nothing else (STYLE.md, 6)."""
    return [cfg.seed * 1_000_000 + i for i in range(n)]


def generate(cfg: RunConfig, model: Any, diffusion: Any, codec: Any, device: str, progress: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """``eval.num_samples`` uint8 images (decoded to pixels in latent space), labels, seconds."""
    from tqdm.auto import tqdm

    from bench.data import dataset_info

    n, bs, s = cfg.eval.num_samples, cfg.sample.batch_size, cfg.sample
    info = dataset_info(cfg.data.dataset)
    size = cfg.data.image_size or info.image_size
    shape = codec.latent_shape(info.channels, size) if codec is not None else (info.channels, size, size)
    seeds = sample_seeds(cfg, n)
    labels = torch.arange(n) % info.num_classes if cfg.model.class_cond else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=device.startswith("cuda") and cfg.train.precision == "bf16")
    out = []
    _sync(device)
    t0 = time.perf_counter()
    for lo in tqdm(range(0, n, bs), desc="sampling", disable=not progress, leave=False):
        hi = min(n, lo + bs)
        y = labels[lo:hi].to(device) if labels is not None else None
        with autocast:
            x = diffusion.sample(model, (hi - lo, *shape), sampler=s.sampler, steps=s.steps, eta=s.eta,
                                 spacing=s.spacing, guidance=s.guidance, y=y, seeds=seeds[lo:hi],
                                 clip_denoised=s.clip_denoised and codec is None, device=device)
            if codec is not None:
                x = codec.decode(x.float())
        out.append(x.float().cpu())
    _sync(device)
    seconds = time.perf_counter() - t0
    x = torch.cat(out)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise FloatingPointError(f"{bad} of {n} generated images contain NaN or inf (model {cfg.train_key()})")
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), labels, seconds


def run_eval(cfg: RunConfig, key: str, device: str, progress: bool = True) -> dict[str, Any]:
    from bench.metrics import compute_metrics
    from bench.train import load_trained

    model, diffusion, _ = load_trained(checkpoint_path(cfg.train_key()), device=device)
    codec = load_codec(cfg, device) if cfg.model.space == "latent" else None
    images, labels, sample_seconds = generate(cfg, model, diffusion, codec, device, progress)
    t0 = time.perf_counter()
    ev = cfg.eval
    wanted = [m for m in ev.metrics if m in FIDELITY]
    values: dict[str, float] = {}
    tags: dict[str, str] = {}
    if wanted:
        res = compute_metrics(images, reference=f"{cfg.data.dataset}:{ev.reference_split}",
                              extractor=ev.extractor, metrics=wanted, fid_backend=ev.fid_backend,
                              inception_weights=ev.inception_weights, kid_subset_size=ev.kid_subset_size,
                              device=device, run_name=key, data=cfg.data, labels=labels, progress=progress)
        values.update(res)
        tags.update({f"protocol.{k}": str(v) for k, v in res.protocol.items() if v is not None})
    if "nll" in ev.metrics and ev.nll_samples > 0:
        values["nll_bpd"] = _cached_nll(cfg, model, diffusion, codec, device, progress)
        tags["protocol.nll_space"] = "latent" if codec is not None else "pixel"
        tags["protocol.nll_samples"] = str(ev.nll_samples)
    eval_seconds = time.perf_counter() - t0
    nfe = cfg.sample.steps * (2 if cfg.sample.guidance != 0 else 1)
    values.update(sample_seconds=sample_seconds, eval_seconds=eval_seconds,
                  seconds_per_image=sample_seconds / len(images), nfe=nfe)
    result_file = train_dir(cfg.train_key()) / "result.json"
    if result_file.exists():
        values["train_seconds"] = json.loads(result_file.read_text())["train_seconds"]
    grid = artifact_dir(key) / "samples.png"
    save_grid(images[:64], grid)
    clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
    return {"metrics": clean, "tags": tags, "artifacts": [str(grid)]}


def _cached_nll(cfg: RunConfig, model: Any, diffusion: Any, codec: Any, device: str, progress: bool) -> float:
    """NLL depends on the trained model, not on the sampler: computed once per (model, protocol)."""
    path = train_dir(cfg.train_key()) / f"nll_{cfg.eval.reference_split}_{cfg.eval.nll_samples}.json"
    if path.exists():
        return float(json.loads(path.read_text())["nll_bpd"])
    value = _nll(cfg, model, diffusion, codec, device, progress)
    atomic_write_bytes(path, json.dumps({"nll_bpd": value}).encode())
    return value


def _nll(cfg: RunConfig, model: Any, diffusion: Any, codec: Any, device: str, progress: bool) -> float:
    """Bits per dim on ``eval.nll_samples`` test images (of the latents, for latent models)."""
    from bench.data import load_images
    from bench.metrics import nll_bpd

    test = load_images(cfg.data, cfg.eval.reference_split)
    n = min(cfg.eval.nll_samples, len(test.images))
    images = test.images[:n]
    y = test.labels[:n] if (cfg.model.class_cond and test.labels is not None) else None
    if codec is None:
        return nll_bpd(diffusion, model, images.to(device), y=None if y is None else y.to(device),
                       progress=progress, generator=torch.Generator().manual_seed(cfg.seed))
    # Latent NLL: the bound on the scaled latents, per latent dimension. Its decoder term treats
    # latents like 8-bit data in [-1, 1], so it is not comparable with pixel NLL: tagged latent.
    with torch.no_grad():
        z = codec.encode(images.to(device).float() / 127.5 - 1)
    bpd = diffusion.bits_per_dim(model, z, None if y is None else y.to(device),
                                 generator=torch.Generator().manual_seed(cfg.seed))
    return float(bpd.mean())


def save_grid(images: torch.Tensor, path: Path, scale: int = 4) -> None:
    """A PNG grid of uint8 images, upscaled (nearest) so 8x8 digits are visible."""
    import torchvision

    x = images.float() / 255.0
    if x.shape[-1] < 32:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    nrow = max(1, int(math.ceil(math.sqrt(len(x)))))
    torchvision.utils.save_image(x, str(path), nrow=nrow, padding=2, pad_value=1.0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
