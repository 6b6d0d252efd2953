"""Negative log-likelihood in bits per dimension, through the diffusion's variational bound."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from bench.core.errors import BenchError
from bench.metrics.images import check_images


@torch.no_grad()
def nll_bpd(
    diffusion: Any, model: Any, images_uint8: torch.Tensor, y: torch.Tensor | None = None, *,
    batch_size: int = 64, progress: bool = True, generator: torch.Generator | None = None,
) -> float:
    """Mean bits per dim of ``images_uint8`` under ``model``: ``diffusion.bits_per_dim(model, x0, y)``
    on ``x0 = images / 127.5 - 1`` in batches (Ho et al. 2020, eq. 5, with the discretized decoder).

    ``generator`` seeds the noise of the bound's terms (passed on when ``bits_per_dim`` takes one,
    else it seeds the global RNG for the duration of the call).
    """
    from tqdm.auto import tqdm

    images = check_images(images_uint8, "nll_bpd", "images")
    if y is not None and len(y) != len(images):
        raise BenchError(f"nll_bpd: {len(images)} images but {len(y)} labels")
    device = _device_of(model)
    takes_gen = "generator" in inspect.signature(diffusion.bits_per_dim).parameters
    total, n = 0.0, len(images)
    with torch.random.fork_rng(devices=[]):
        if generator is not None and not takes_gen:
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        extra = {"generator": generator} if takes_gen and generator is not None else {}
        for s in tqdm(range(0, n, batch_size), desc="nll (bits/dim)", disable=not progress, unit="batch"):
            x0 = images[s : s + batch_size].to(device).float() / 127.5 - 1.0
            yb = None if y is None else y[s : s + batch_size].to(device)
            bpd = diffusion.bits_per_dim(model, x0, yb, **extra)
            if bpd.shape != (len(x0),) or not bool(torch.isfinite(bpd).all()):
                raise BenchError(f"nll_bpd: bits_per_dim gave {tuple(bpd.shape)} values "
                                 f"(finite: {bool(torch.isfinite(bpd).all())}) for a batch of {len(x0)}")
            total += float(bpd.double().sum())
    return total / n


def _device_of(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


@dataclass
class ModelContext:
    """What a model metric's ``compute`` reads (built by the eval job): the model, its diffusion,
    its latent codec (None in pixel space) and the test images with their labels."""

    diffusion: Any
    model: Any
    codec: Any
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor | None  # only for class-conditional models
    device: str
    seed: int
    progress: bool = False


def model_nll_bpd(ctx: ModelContext) -> float:
    """Bits per dim of the test images (of their latents, for latent models).

    Latent NLL is the bound on the scaled latents, per latent dimension; its decoder term treats
    latents like 8-bit data in [-1, 1], so it is not comparable with pixel NLL (tagged latent).
    """
    gen = torch.Generator().manual_seed(ctx.seed)
    y = None if ctx.labels is None else ctx.labels.to(ctx.device)
    if ctx.codec is None:
        return nll_bpd(ctx.diffusion, ctx.model, ctx.images.to(ctx.device), y=y, progress=ctx.progress, generator=gen)
    with torch.no_grad():
        z = ctx.codec.encode(ctx.images.to(ctx.device).float() / 127.5 - 1)
    return float(ctx.diffusion.bits_per_dim(ctx.model, z, y, generator=gen).mean())
