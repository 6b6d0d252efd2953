"""The DDPM U-Net (Ho et al. 2020, appendix B), as restructured by improved DDPM (Nichol & Dhariwal 2021).

A PixelCNN++-style backbone: per resolution level ``num_res_blocks`` residual blocks (GroupNorm,
SiLU, 3x3 convs, the time embedding added in between, dropout), self-attention after the blocks of
the chosen resolutions, a strided-conv downsample between levels; a middle ResBlock-Attention-
ResBlock; and a mirrored decoder with ``num_res_blocks + 1`` blocks per level fed by skip
connections, nearest-neighbour upsampling + conv. With ``ch=128, ch_mult=(1, 2, 2, 2),
num_res_blocks=2`` and attention at 16x16 this is the 35.7M-parameter CIFAR-10 network of the
DDPM paper.

Attention resolutions are given as downsampling ratios (``attn_ds=(2,)`` = attention where the
feature map is 1/2 of the input: 16x16 for a 32x32 input), so one preset works at any image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.embeddings import ClassEmbedder, TimestepEmbedder, group_norm, zero_module


class ResBlock(nn.Module):
    """``x + conv(drop(silu(norm(conv(silu(norm(x))) + proj(emb)))))`` (DDPM's ``resnet_block``)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))  # block starts as identity
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Self-attention over the H*W positions with a residual connection (DDPM's ``attn_block``)."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention heads ({num_heads}) must divide the channels ({channels})")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        # [B, heads, HW, d]: softmax(q k^T / sqrt(d)) v  (Vaswani et al. 2017, eq. 1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """3x3 conv with stride 2 (DDPM's ``resamp_with_conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """A sequence of layers where residual blocks also receive the time/class embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """DDPM U-Net: ``model(x_t, t, y=None) -> [B, out_channels, H, W]``.

    ``num_classes``: adds a label embedding (plus the null label ``num_classes``) to the time
    embedding; ``y=None`` then means all-null. ``out_channels`` is ``2 * in_channels`` for a
    learned variance (prediction first, then the interpolation value v, Nichol & Dhariwal eq. 15).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_ds: tuple[int, ...],
        dropout: float = 0.0,
        num_classes: int | None = None,
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.num_classes = in_channels, out_channels, num_classes
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        emb_dim = 4 * ch  # DDPM: sinusoidal(ch) -> dense(4ch) -> dense(4ch)
        self.time_embed = TimestepEmbedder(ch, emb_dim)
        self.class_embed = ClassEmbedder(num_classes, emb_dim) if num_classes is not None else None

        def level_blocks(cin: int, cout: int, ds: int) -> list[nn.Module]:
            layers: list[nn.Module] = [ResBlock(cin, cout, emb_dim, dropout)]
            if ds in attn_ds:
                layers.append(AttnBlock(cout, num_heads))
            return layers

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips, cur, ds = [ch], ch, 1
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(EmbedSequential(*level_blocks(cur, ch * mult, ds)))
                cur = ch * mult
                skips.append(cur)
            if level != len(ch_mult) - 1:
                self.down.append(EmbedSequential(Downsample(cur)))
                skips.append(cur)
                ds *= 2

        self.mid = EmbedSequential(
            ResBlock(cur, cur, emb_dim, dropout),
            AttnBlock(cur, num_heads),
            ResBlock(cur, cur, emb_dim, dropout),
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for i in range(num_res_blocks + 1):
                layers = level_blocks(cur + skips.pop(), ch * mult, ds)
                cur = ch * mult
                if level and i == num_res_blocks:
                    layers.append(Upsample(cur))
                    ds //= 2
                self.up.append(EmbedSequential(*layers))

        self.norm_out = group_norm(cur)
        self.conv_out = zero_module(nn.Conv2d(cur, out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time_embed(t.expand(x.shape[0]) if t.ndim == 0 else t)
        if self.class_embed is not None:
            emb = emb + self.class_embed(y, x.shape[0], x.device)
        elif y is not None:
            raise ValueError("this model is unconditional (num_classes=None) but class labels y were given")
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        h = self.mid(h, emb)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass(frozen=True)
class UNetConfig:
    """A U-Net size preset. ``attn_ds``: downsampling ratios (1 = input resolution) with attention."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_ds: tuple[int, ...]
    dropout: float = 0.0
    num_heads: int = 1

    kind: ClassVar[str] = "unet"

    @property
    def divisor(self) -> int:
        """Total downsampling factor: image sizes must be divisible by it."""
        return 2 ** (len(self.ch_mult) - 1)

    def size_meta(self) -> dict[str, int]:
        return {"downsample": self.divisor}

    def divisor_reason(self) -> str:
        return f"the U-Net downsamples {self.divisor}x over {len(self.ch_mult)} levels"

    def build(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int | None = None,
        learned_variance: bool = False,
        dropout: float | None = None,
    ) -> UNet:
        """The network for ``in_channels`` x ``image_size``^2 inputs (the size is only validated)."""
        del image_size  # convolutional: the size matters only for divisibility, checked upstream
        return UNet(
            in_channels=in_channels,
            out_channels=in_channels * (2 if learned_variance else 1),
            ch=self.ch,
            ch_mult=self.ch_mult,
            num_res_blocks=self.num_res_blocks,
            attn_ds=self.attn_ds,
            dropout=self.dropout if dropout is None else dropout,
            num_classes=num_classes,
            num_heads=self.num_heads,
        )
