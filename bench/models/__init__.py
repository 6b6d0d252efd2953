"""Denoising backbones (DDPM U-Net, DiT), their size presets, and the KL autoencoder for latent runs.

>>> from bench.models import MODELS, build_model, validate_model
>>> model = build_model("unet-tiny", in_channels=1, image_size=8, num_classes=10)
>>> out = model(x_t, t, y)          # [B, 1, 8, 8]
"""

from bench.models.dit import DiT, DiTConfig
from bench.models.embeddings import count_parameters
from bench.models.presets import MODELS, build_model, register_preset, validate_model
from bench.models.pretrained import (
    DiffusersModel,
    Pretrained,
    inspect_pretrained,
    load_pretrained,
    load_pretrained_codec,
)
from bench.models.unet import UNet, UNetConfig
from bench.models.vae import (
    AutoencoderKL,
    LatentCodec,
    build_vae,
    fit_vae,
    load_pretrained_vae,
    validate_vae,
)

__all__ = [
    "MODELS",
    "build_model",
    "validate_model",
    "register_preset",
    "count_parameters",
    "UNet",
    "UNetConfig",
    "DiT",
    "DiTConfig",
    "AutoencoderKL",
    "LatentCodec",
    "build_vae",
    "fit_vae",
    "load_pretrained_vae",
    "validate_vae",
    "DiffusersModel",
    "Pretrained",
    "inspect_pretrained",
    "load_pretrained",
    "load_pretrained_codec",
]
