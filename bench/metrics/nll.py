"""Negative log-likelihood in bits per dimension: through the diffusion's variational bound (the discrete
VP chain) or through the probability-flow ODE (every process; :mod:`bench.diffusion.likelihood_ode`)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from bench.core.errors import BenchError
from bench.metrics.images import check_images


def nll_bpd(diffusion: Any, model: Any, images_uint8: torch.Tensor, y: torch.Tensor | None = None, *,
            batch_size: int = 64, progress: bool = True, generator: torch.Generator | None = None,
            timesteps: int | None = None) -> float:
    """The mean of :func:`nll_bpd_stats`."""
    return nll_bpd_stats(diffusion, model, images_uint8, y, batch_size=batch_size, progress=progress,
                         generator=generator, timesteps=timesteps)[0]


@torch.no_grad()
def nll_bpd_stats(
    diffusion: Any, model: Any, images_uint8: torch.Tensor, y: torch.Tensor | None = None, *,
    batch_size: int = 64, progress: bool = True, generator: torch.Generator | None = None,
    timesteps: int | None = None,
) -> tuple[float, float]:
    """Mean bits per dim of ``images_uint8`` under ``model``: ``diffusion.bits_per_dim(model, x0, y)``
    on ``x0 = images / 127.5 - 1`` in batches (Ho et al. 2020, eq. 5, with the discretized decoder).

    ``generator`` seeds the noise of the bound's terms (passed on when ``bits_per_dim`` takes one,
    else it seeds the global RNG for the duration of the call). ``timesteps``: K stratified
    timesteps per image instead of all T (``Diffusion.stratified_bpd``). Returns (mean, standard
    error of the mean over the images: std / sqrt(N), which includes the estimator's own variance).
    """
    from tqdm.auto import tqdm

    images = check_images(images_uint8, "nll_bpd", "images")
    if y is not None and len(y) != len(images):
        raise BenchError(f"nll_bpd: {len(images)} images but {len(y)} labels")
    device = _device_of(model)
    params = inspect.signature(diffusion.bits_per_dim).parameters
    takes_gen = "generator" in params
    if timesteps is not None and "timesteps" not in params:
        raise BenchError("eval.nll_timesteps: this diffusion's bits_per_dim has no `timesteps` argument; "
                         "leave nll_timesteps unset (the full bound)")
    values, n = [], len(images)
    with torch.random.fork_rng(devices=[]):
        if generator is not None and not takes_gen:
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        extra: dict[str, Any] = {"generator": generator} if takes_gen and generator is not None else {}
        if timesteps is not None:
            extra["timesteps"] = timesteps
        for s in tqdm(range(0, n, batch_size), desc="nll (bits/dim)", disable=not progress, unit="batch"):
            x0 = images[s : s + batch_size].to(device).float() / 127.5 - 1.0
            yb = None if y is None else y[s : s + batch_size].to(device)
            bpd = diffusion.bits_per_dim(model, x0, yb, **extra)
            if bpd.shape != (len(x0),) or not bool(torch.isfinite(bpd).all()):
                raise BenchError(f"nll_bpd: bits_per_dim gave {tuple(bpd.shape)} values "
                                 f"(finite: {bool(torch.isfinite(bpd).all())}) for a batch of {len(x0)}")
            values.append(bpd.double().cpu())
    return mean_and_error(torch.cat(values))


def mean_and_error(per_image: torch.Tensor) -> tuple[float, float]:
    """(mean, std / sqrt(N)) of per-image values; the error is NaN for one image."""
    n = per_image.numel()
    se = float(per_image.std(unbiased=True)) / n**0.5 if n > 1 else float("nan")
    return float(per_image.mean()), se


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
    nll_timesteps: int | None = None  # K stratified timesteps of the bound (None: all T)


def model_nll_bpd(ctx: ModelContext) -> tuple[float, float]:
    """Bits per dim of the test images (of their latents, for latent models).

    Latent NLL is the bound on the scaled latents, per latent dimension; its decoder term treats
    latents like 8-bit data in [-1, 1], so it is not comparable with pixel NLL (tagged latent).
    """
    gen = torch.Generator().manual_seed(ctx.seed)
    y = None if ctx.labels is None else ctx.labels.to(ctx.device)
    if ctx.codec is None:
        return nll_bpd_stats(ctx.diffusion, ctx.model, ctx.images.to(ctx.device), y=y, progress=ctx.progress,
                             generator=gen, timesteps=ctx.nll_timesteps)
    with torch.no_grad():
        z = ctx.codec.encode(ctx.images.to(ctx.device).float() / 127.5 - 1)
        return mean_and_error(ctx.diffusion.bits_per_dim(ctx.model, z, y, generator=gen,
                                                         timesteps=ctx.nll_timesteps).double().cpu())


ODE_TOLERANCE = 1e-5  # rtol = atol of the likelihood's dopri5 (Song et al. 2021 report theirs at 1e-5)


def model_ode_nll_bpd(ctx: ModelContext, batch_size: int = 64) -> tuple[float, float]:
    """Bits per dim of the test images through the probability-flow ODE (one Hutchinson probe per image,
    rtol = atol = 1e-5): pixels uniformly dequantized ((k + u) / 128 - 1, + 7 bits), latents as they are
    (a density on the scaled latents, per latent dimension). Returns (mean, standard error over the images,
    which includes the trace estimate's own variance)."""
    from tqdm.auto import tqdm

    from bench.diffusion.likelihood_ode import ode_bits_per_dim

    gen = torch.Generator().manual_seed(ctx.seed)
    images = check_images(ctx.images, "nll_ode_bpd", "images")
    values = []
    for s in tqdm(range(0, len(images), batch_size), desc="nll (ODE)", disable=not ctx.progress, unit="batch"):
        x = images[s : s + batch_size].to(ctx.device)
        y = None if ctx.labels is None else ctx.labels[s : s + batch_size].to(ctx.device)
        if ctx.codec is not None:
            with torch.no_grad():
                x = ctx.codec.encode(x.float() / 127.5 - 1)
        r = ode_bits_per_dim(ctx.diffusion, ctx.model, x, y, generator=gen, rtol=ODE_TOLERANCE, atol=ODE_TOLERANCE,
                             dequantize_8bit=ctx.codec is None)
        if not bool(torch.isfinite(r.bpd).all()):
            raise BenchError(f"nll_ode_bpd: the probability-flow ODE gave non-finite bits/dim {r.bpd.tolist()}")
        values.append(r.bpd)
    return mean_and_error(torch.cat(values))


def model_likelihood(ctx: ModelContext) -> tuple[float, float]:
    """The model's own NLL: the variational bound of the discrete chain, the probability-flow ODE's
    likelihood for a continuous process (which has no bound)."""
    return model_ode_nll_bpd(ctx) if getattr(ctx.diffusion, "continuous", False) else model_nll_bpd(ctx)
