"""A small KL autoencoder for latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models", sec. 3 and appendix G), trained once per (data, VAE spec) and cached.

The encoder maps x in [-1, 1] to a diagonal Gaussian (mean, logvar) over ``latent_channels`` x
H/f x W/f latents; the decoder maps latents back to pixels. Training minimises reconstruction
(L1 or MSE, summed per image) + ``kl_weight`` * KL(q(z|x) || N(0, I)) as LDM's ``LPIPSWithDiscriminator``
without the perceptual and adversarial terms. The diffusion model then works on latents multiplied
by a scale factor measured on the data as 1 / std of the latent means -- how Stable Diffusion's
0.18215 was obtained -- so they have roughly unit variance.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.config import VAESpec
from bench.core.errors import BenchError
from bench.core.paths import atomic_torch_save, load_torch_file
from bench.models.embeddings import group_norm
from bench.models.unet import AttnBlock, Downsample, Upsample

FACTORS = (2, 4, 8)
CHANNEL_MULT = (1, 2, 4, 4)  # LDM's f=8 KL autoencoder; truncated for f=2, 4
MAX_MEASURE = 10_000  # images used to measure the latent scale factor
FORMAT = "bench.LatentCodec/1"


class VAEResBlock(nn.Module):
    """``skip(x) + conv(silu(norm(conv(silu(norm(x))))))``, LDM's ``ResnetBlock`` without time input."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            group_norm(in_ch),
            nn.SiLU(),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            group_norm(out_ch),
            nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class AutoencoderKL(nn.Module):
    """Conv encoder/decoder with residual blocks, ``log2(factor)`` down/upsamplings, a mid attention."""

    def __init__(self, in_channels: int, factor: int, latent_channels: int, base_channels: int) -> None:
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "factor": factor,
            "latent_channels": latent_channels,
            "base_channels": base_channels,
        }
        widths = [base_channels * m for m in CHANNEL_MULT[: int(math.log2(factor)) + 1]]
        enc: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for i, w in enumerate(widths):
            enc.append(VAEResBlock(widths[max(i - 1, 0)], w))
            if i < len(widths) - 1:
                enc.append(Downsample(w))
        top = widths[-1]
        enc += [VAEResBlock(top, top), AttnBlock(top), VAEResBlock(top, top), group_norm(top), nn.SiLU()]
        enc += [
            nn.Conv2d(top, 2 * latent_channels, 3, padding=1),
            nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1),
        ]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [
            nn.Conv2d(latent_channels, latent_channels, 1),
            nn.Conv2d(latent_channels, top, 3, padding=1),
        ]
        dec += [VAEResBlock(top, top), AttnBlock(top), VAEResBlock(top, top)]
        for i in reversed(range(len(widths))):
            dec.append(VAEResBlock(widths[min(i + 1, len(widths) - 1)], widths[i]))
            if i > 0:
                dec.append(Upsample(widths[i]))
        dec += [group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x in [-1, 1] -> (mean, logvar) of q(z|x); logvar clamped to [-30, 20] as in LDM."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """Latents -> pixels (trained towards [-1, 1]; not clamped here)."""
        return self.decoder(z)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruction through a reparameterised sample z = mean + exp(logvar / 2) * eps (Kingma &
        Welling 2014, sec. 2.4), plus (mean, logvar)."""
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.decode(mean + torch.exp(0.5 * logvar) * eps), mean, logvar


def build_vae(in_channels: int, factor: int, latent_channels: int, base_channels: int) -> AutoencoderKL:
    """A freshly initialised :class:`AutoencoderKL` (``factor`` in 2, 4, 8)."""
    if factor not in FACTORS:
        raise BenchError(f"build_vae: factor must be one of {FACTORS}, got {factor!r}")
    return AutoencoderKL(in_channels, factor, latent_channels, base_channels)


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed per sample: 0.5 sum(mean^2 + var - 1 - logvar)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class LatentCodec:
    """A (trained or pretrained) VAE + its latent scale factor + how well it reconstructs.

    ``encode`` returns *scaled* latents from the posterior mean (deterministic); ``decode`` undoes
    the scaling and returns pixels clamped to [-1, 1].
    """

    def __init__(
        self,
        vae: nn.Module,
        scale_factor: float,
        spec: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        self.vae = vae.eval()
        self.scale_factor = float(scale_factor)
        self.spec = dict(spec) if spec else None
        self.metrics = dict(metrics or {})

    @property
    def factor(self) -> int:
        return int(self.vae.config["factor"])

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config["latent_channels"])

    @property
    def in_channels(self) -> int:
        return int(self.vae.config["in_channels"])

    def to(self, device: str | torch.device) -> LatentCodec:
        self.vae.to(device)
        return self

    def _param(self) -> Tensor:
        return next(self.vae.parameters())

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Pixels in [-1, 1] [B, C, H, W] -> scaled latents [B, latent_channels, H/f, W/f]."""
        p = self._param()
        mean, _ = self.vae.encode(x.to(device=p.device, dtype=p.dtype))
        return mean * self.scale_factor

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents -> pixels in [-1, 1]."""
        p = self._param()
        return self.vae.decode(z.to(device=p.device, dtype=p.dtype) / self.scale_factor).clamp(-1.0, 1.0)

    def latent_shape(self, in_channels: int, image_size: int) -> tuple[int, int, int]:
        """The (C, H, W) of the latents of ``in_channels`` x ``image_size``^2 images."""
        if in_channels != self.in_channels:
            raise BenchError(
                f"the VAE encodes {self.in_channels}-channel images but the data has {in_channels}; "
                "use a VAE trained on this dataset (leave vae.pretrained unset) or matching data"
            )
        if image_size % self.factor:
            raise BenchError(f"image size {image_size} is not divisible by the VAE factor {self.factor}")
        return (self.latent_channels, image_size // self.factor, image_size // self.factor)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: spec (dict), architecture, state dict, scale factor, metrics."""
        atomic_torch_save(
            {
                "format": FORMAT,
                "arch": dict(self.vae.config),
                "spec": self.spec,
                "state_dict": {k: v.detach().cpu() for k, v in self.vae.state_dict().items()},
                "scale_factor": self.scale_factor,
                "metrics": self.metrics,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LatentCodec:
        """Read a file written by :meth:`save`; a missing, truncated or corrupt file raises BenchError."""
        path = Path(path)
        blob = load_torch_file(path, FORMAT, ("arch", "state_dict", "scale_factor", "spec", "metrics"),
                               "VAE file", map_location=map_location)
        try:
            arch = dict(blob["arch"])
            if "pretrained" in arch:
                vae: nn.Module = load_pretrained_vae(arch["pretrained"]).vae
            else:
                vae = build_vae(**arch)
            vae.load_state_dict(blob["state_dict"])
        except BenchError:
            raise
        except Exception as e:  # weights that do not fit the stored architecture
            raise BenchError(
                f"VAE file {str(path)!r} is corrupt ({type(e).__name__}: {e}); "
                "delete it and re-run so the VAE is trained again"
            ) from e
        return cls(vae.to(map_location), blob["scale_factor"], blob["spec"], blob["metrics"])


def validate_vae(spec: VAESpec, image_size: int, where: str = "vae") -> None:
    """Raise BenchError unless ``spec`` can encode ``image_size``^2 images. Cheap: builds nothing."""
    if spec.pretrained is not None:
        if not Path(spec.pretrained).expanduser().is_dir():
            raise BenchError(
                f"{where}.pretrained: folder {spec.pretrained!r} does not exist; point it at a local "
                "diffusers AutoencoderKL folder (config.json + weights), or unset it to train a VAE"
            )
        import importlib.util

        try:
            missing = importlib.util.find_spec("diffusers") is None
        except ImportError:
            missing = True
        if missing:
            raise BenchError(f"{where}.pretrained: loading a diffusers AutoencoderKL needs the `diffusers` package, "
                             "which is not installed; pip install diffusers, or unset it to train a VAE")
        return
    if spec.factor not in FACTORS:
        raise BenchError(
            f"{where}.factor: must be one of {', '.join(map(str, FACTORS))}, got {spec.factor!r}"
        )
    for key in ("latent_channels", "base_channels", "steps", "batch_size"):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BenchError(f"{where}.{key}: must be a positive integer, got {value!r}")
    if image_size % spec.factor:
        raise BenchError(
            f"{where}.factor: the image size {image_size} is not divisible by the VAE factor {spec.factor}; "
            f"choose a factor that divides it, or resize the data (data.image_size)"
        )


def _to_unit(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


@torch.no_grad()
def _measure(codec: LatentCodec, images: Tensor, held: Tensor, batch: int = 256) -> dict[str, float]:
    """Scale factor 1 / std(latent means) on ``images``; recon MSE (in [-1, 1]) and PSNR on ``held``."""
    device = codec._param().device
    means = [
        codec.vae.encode(_to_unit(images[i : i + batch]).to(device))[0].double().cpu()
        for i in range(0, len(images), batch)
    ]
    std = torch.cat(means).std().item()
    sq_err, count = 0.0, 0
    for i in range(0, len(held), batch):
        x = _to_unit(held[i : i + batch]).to(device)
        rec = codec.vae.decode(codec.vae.encode(x)[0]).clamp(-1.0, 1.0)
        sq_err += (rec - x).double().pow(2).sum().item()
        count += x.numel()
    mse = sq_err / count
    # PSNR for a peak-to-peak range of 2 ([-1, 1]): 10 log10(2^2 / MSE), equal to PSNR on [0, 1]
    psnr = 10.0 * math.log10(4.0 / max(mse, 1e-12))
    return {"scale_factor": 1.0 / max(std, 1e-12), "latent_std": std, "recon_mse": mse, "recon_psnr": psnr}


def _split(n: int, seed: int, holdout: float) -> tuple[Tensor, Tensor]:
    """Seeded (train, held-out) index split; with fewer than 2 images both are everything."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held = min(max(1, round(holdout * n)), 1000) if n >= 2 else 0
    return (perm[n_held:], perm[:n_held]) if n_held else (perm, perm)


def fit_vae(
    images: Tensor,
    spec: VAESpec,
    device: str = "cpu",
    progress: bool = True,
    recon_loss: str = "l1",
    holdout: float = 0.1,
) -> LatentCodec:
    """Train a KL autoencoder on uint8 ``images`` [N, C, H, W], then measure its scale and error.

    Loss per image: sum |x - x_hat| (``recon_loss="l1"``, LDM) or sum (x - x_hat)^2 ("mse"), plus
    ``spec.kl_weight`` * KL; AdamW at ``spec.lr`` for ``spec.steps`` steps of ``spec.batch_size``
    images drawn from all but a seeded held-out ``holdout`` fraction (at most 1000 images), on
    which the reconstruction MSE and PSNR are measured; the scale factor 1 / std(latent means) is
    measured on up to 10,000 of the training images. Seeded by ``spec.seed``. With
    ``spec.pretrained`` the diffusers VAE is loaded instead and only measured.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise BenchError(
            f"fit_vae: images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    if recon_loss not in ("l1", "mse"):
        raise BenchError(f"fit_vae: recon_loss must be 'l1' or 'mse', got {recon_loss!r}")
    validate_vae(spec, images.shape[-1], where="vae")
    validate_vae(spec, images.shape[-2], where="vae")
    train_idx, held_idx = _split(len(images), spec.seed, holdout)
    subset = train_idx[
        torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(spec.seed))[:MAX_MEASURE]
    ]
    if spec.pretrained is not None:
        codec = load_pretrained_vae(spec.pretrained).to(device)
        codec.metrics = {
            k: v for k, v in _measure(codec, images[subset], images[held_idx]).items() if k != "scale_factor"
        }
        return codec

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(spec.seed)
        vae = build_vae(images.shape[1], spec.factor, spec.latent_channels, spec.base_channels).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=spec.lr)
    g_idx = torch.Generator().manual_seed(spec.seed)
    g_noise = torch.Generator(device=device).manual_seed(spec.seed + 1)
    rec_fn = F.l1_loss if recon_loss == "l1" else F.mse_loss
    from tqdm.auto import tqdm

    vae.train()
    bar = tqdm(range(spec.steps), desc="vae", disable=not progress)
    loss_value = float("nan")
    for step in bar:
        idx = train_idx[torch.randint(len(train_idx), (spec.batch_size,), generator=g_idx)]
        x = _to_unit(images[idx]).to(device)
        rec, mean, logvar = vae(x, generator=g_noise)
        rec_term = rec_fn(rec, x, reduction="none").flatten(1).sum(1).mean()
        loss = rec_term + spec.kl_weight * kl_divergence(mean, logvar).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == spec.steps - 1:
            loss_value = loss.item()
            bar.set_postfix(loss=f"{loss_value:.4g}")

    codec = LatentCodec(vae, 1.0, asdict(spec))
    metrics = _measure(codec, images[subset], images[held_idx])
    codec.scale_factor = metrics.pop("scale_factor")
    codec.metrics = {**metrics, "train_loss": loss_value, "holdout_images": float(len(held_idx))}
    return codec


class _DiffusersVAE(nn.Module):
    """Adapter: a ``diffusers.AutoencoderKL`` behind this module's ``encode`` / ``decode`` interface."""

    def __init__(self, model: nn.Module, folder: str) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.config = {
            "pretrained": folder,
            "in_channels": int(cfg.in_channels),
            "factor": 2 ** (len(cfg.block_out_channels) - 1),
            "latent_channels": int(cfg.latent_channels),
        }

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dist = self.model.encode(x).latent_dist
        return dist.mean, dist.logvar

    def decode(self, z: Tensor) -> Tensor:
        return self.model.decode(z).sample


def load_pretrained_vae(folder: str | os.PathLike) -> LatentCodec:
    """A local diffusers ``AutoencoderKL`` folder as a codec, scaled by its config's ``scaling_factor``."""
    try:
        from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    except ImportError as e:
        raise BenchError(
            f"vae.pretrained={str(folder)!r} needs the diffusers package, which is not installed: "
            "run `pip install diffusers`, or unset vae.pretrained to train a VAE on the data"
        ) from e
    try:
        model = DiffusersAutoencoderKL.from_pretrained(str(folder))
    except Exception as e:
        raise BenchError(
            f"vae.pretrained: could not load a diffusers AutoencoderKL from {str(folder)!r} "
            f"({type(e).__name__}: {e}); the folder must hold its config.json and weights (offline)"
        ) from e
    scale = float(getattr(model.config, "scaling_factor", 0.18215))
    return LatentCodec(_DiffusersVAE(model, str(folder)), scale, spec={"pretrained": str(folder)})
