"""Backbone size presets by name, and the two entry points the rest of the bench uses.

``MODELS`` maps a preset name to a :class:`~bench.models.unet.UNetConfig` or
:class:`~bench.models.dit.DiTConfig`, with metadata: ``kind`` ("unet" | "dit"), ``divisor`` (what
the image size must be divisible by), ``downsample`` (U-Nets) or ``patch_size`` (DiTs), and a
``description``. :func:`validate_model` reads only the metadata, so a whole study grid is checked
without building a network.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bench.core.errors import BenchError
from bench.core.registry import Registry
from bench.models.dit import DiTConfig
from bench.models.unet import UNetConfig

BackboneConfig = UNetConfig | DiTConfig

MODELS: Registry[BackboneConfig] = Registry("backbone")


def register_preset(name: str, config: BackboneConfig, description: str = "", **extra: Any) -> BackboneConfig:
    """Register ``config`` under ``name`` with the metadata :func:`validate_model` needs."""
    return MODELS.register(
        name,
        config,
        kind=config.kind,
        divisor=config.divisor,
        divisor_reason=config.divisor_reason(),
        description=description,
        **config.size_meta(),
        **extra,
    )


register_preset(
    "unet-micro",
    UNetConfig(ch=8, ch_mult=(1, 1), num_res_blocks=1, attn_ds=()),
    "smoke runs of whole study grids (the shipped-studies test): two levels, no attention",
)
register_preset(
    "unet-tiny",
    UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_ds=(2,)),
    "tests and CPU smoke runs: 2 levels, attention at the lowest resolution",
)
register_preset(
    "unet-small",
    UNetConfig(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_ds=(4,), dropout=0.1),
    "MNIST / small data: 3 levels, attention at 1/4 resolution",
)
register_preset(
    "unet-cifar",
    UNetConfig(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_ds=(2,), dropout=0.1),
    "the DDPM CIFAR-10 network (Ho et al. 2020): 35.7M parameters, attention at 16x16 for 32x32",
)
register_preset(
    "dit-tiny",
    DiTConfig(patch_size=2, depth=4, width=64, num_heads=4),
    "tests and CPU smoke runs",
)
register_preset(
    "dit-s-2",
    DiTConfig(patch_size=2, depth=12, width=384, num_heads=6),
    "DiT-S/2 (Peebles & Xie 2023, table 1)",
)
register_preset(
    "dit-b-2",
    DiTConfig(patch_size=2, depth=12, width=768, num_heads=12),
    "DiT-B/2 (Peebles & Xie 2023, table 1)",
)


def validate_model(backbone: str, in_channels: int, image_size: int, where: str = "model.backbone") -> None:
    """Raise :class:`BenchError` unless ``backbone`` can take ``in_channels`` x ``image_size``^2 inputs.

    Cheap: reads the registry metadata only. An unknown preset gets the registry's own error
    ("did you mean ...? Available: ...").
    """
    meta = MODELS.meta(MODELS.check(backbone, where))
    for name, value in (("in_channels", in_channels), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BenchError(f"{where}: backbone {backbone!r} needs a positive integer {name}, got {value!r}")
    d = meta["divisor"]
    if image_size % d:
        lower, upper = image_size // d * d, (image_size // d + 1) * d
        sizes = f"{lower} or {upper}" if lower else str(upper)
        raise BenchError(
            f"{where}: backbone {backbone!r} needs an image size divisible by {d} "
            f"({meta['divisor_reason']}), but the image size is {image_size}. "
            f"Resize the data (data.image_size: {sizes}) or pick a backbone that divides {image_size}."
        )


def build_model(
    backbone: str,
    in_channels: int,
    image_size: int,
    num_classes: int | None = None,
    learned_variance: bool = False,
    dropout: float | None = None,
    time_scale: float = 1.0,
) -> nn.Module:
    """Build the preset ``backbone`` for ``in_channels`` x ``image_size``^2 images.

    The module's forward is ``model(x_t, t, y=None)``: ``x_t`` [B, C, H, W], ``t`` int64 [B]
    timestep indices, ``y`` int64 [B] labels or None. With ``num_classes`` it has an int attribute
    ``num_classes`` and label ``num_classes`` is the null label (``y=None`` = all null); otherwise
    ``num_classes`` is None. Output [B, C, H, W], or [B, 2C, H, W] with ``learned_variance``.
    ``dropout=None`` keeps the preset's. ``time_scale``: a continuous process's float time ``t`` is
    embedded as ``t * time_scale`` (``Process.time_scale``: 1000 for t in [0, 1]; 1 for timestep indices).
    """
    validate_model(backbone, in_channels, image_size, where="build_model(backbone)")
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
        raise BenchError(f"build_model: num_classes must be a positive int or None, got {num_classes!r}")
    model = MODELS.get(backbone).build(in_channels, image_size, num_classes, learned_variance, dropout)
    model.backbone = backbone
    model.image_size = image_size
    model.learned_variance = learned_variance
    if time_scale != 1.0:
        from bench.models.embeddings import TimestepEmbedder

        for m in model.modules():
            if isinstance(m, TimestepEmbedder):
                m.scale = float(time_scale)
    model.time_scale = float(time_scale)
    return model
