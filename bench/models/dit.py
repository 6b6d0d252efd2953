"""Diffusion Transformer with adaLN-Zero conditioning (Peebles & Xie 2023, "Scalable Diffusion
Models with Transformers", sec. 3.2 and fig. 3).

The image is cut into ``patch x patch`` patches, linearly embedded, given a fixed 2D sin-cos
positional embedding (computed for the actual grid, so any image size divisible by the patch
works), and passed through ``depth`` transformer blocks whose LayerNorms are modulated by the sum
of the timestep and class embeddings (adaLN: shift, scale; adaLN-Zero: a gate on each residual
branch, zero-initialised so every block starts as the identity). A final adaLN layer maps tokens
back to ``patch x patch x out_channels`` values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.embeddings import ClassEmbedder, TimestepEmbedder, sincos_pos_embed_2d

FREQ_DIM = 256  # DiT's frequency_embedding_size


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift``, per sample (DiT, sec. 3.2)."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class Attention(nn.Module):
    """Multi-head self-attention over tokens [B, N, D]."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: ``x + gate * f(modulate(norm(x), shift, scale))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a[:, None, :] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None, :] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a linear map to ``patch^2 * out_channels`` per token."""

    def __init__(self, dim: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """``model(x_t, t, y=None) -> [B, out_channels, H, W]`` for H, W divisible by ``patch_size``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.num_classes = in_channels, out_channels, num_classes
        self.patch_size, self.width = patch_size, width
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.time_embed = TimestepEmbedder(FREQ_DIM, width)
        self.class_embed = ClassEmbedder(num_classes, width) if num_classes is not None else None
        grid = image_size // patch_size
        # fixed, not learned, and not saved: recomputed from the grid (DiT stores it frozen)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(width, grid, grid)[None], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(width, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.final = FinalLayer(width, patch_size, out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: Xavier linears, N(0, 0.02) embeddings, adaLN-Zero and the output layer at 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for lin in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.table.weight, std=0.02)
        for layer in [*(b.adaLN_modulation[-1] for b in self.blocks), self.final.adaLN_modulation[-1]]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def _pos_embed(self, gh: int, gw: int, ref: Tensor) -> Tensor:
        if self.pos_embed.shape[1] == gh * gw and gh == gw:
            return self.pos_embed
        return sincos_pos_embed_2d(self.width, gh, gw)[None].to(device=ref.device, dtype=ref.dtype)

    def unpatchify(self, x: Tensor, gh: int, gw: int) -> Tensor:
        """[B, gh*gw, p*p*C] -> [B, C, gh*p, gw*p]."""
        p, c = self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, gh * p, gw * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {self.patch_size}")
        gh, gw = h // self.patch_size, w // self.patch_size
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D], row-major like pos_embed
        tokens = tokens + self._pos_embed(gh, gw, tokens)
        c = self.time_embed(t.expand(x.shape[0]) if t.ndim == 0 else t)
        if self.class_embed is not None:
            c = c + self.class_embed(y, x.shape[0], x.device)
        elif y is not None:
            raise ValueError("this model is unconditional (num_classes=None) but class labels y were given")
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.unpatchify(self.final(tokens, c), gh, gw)


@dataclass(frozen=True)
class DiTConfig:
    """A DiT size preset (DiT paper, table 1: S = 384 wide, 6 heads; B = 768, 12 heads; depth 12)."""

    patch_size: int
    depth: int
    width: int
    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    kind: ClassVar[str] = "dit"

    def __post_init__(self) -> None:
        if self.width % self.num_heads or self.width % 4:
            raise ValueError(f"DiT width {self.width} must be divisible by 4 and by heads {self.num_heads}")

    @property
    def divisor(self) -> int:
        """Image sizes must be divisible by the patch size."""
        return self.patch_size

    def size_meta(self) -> dict[str, int]:
        return {"patch_size": self.patch_size}

    def divisor_reason(self) -> str:
        return f"the DiT cuts the image into {self.patch_size}x{self.patch_size} patches"

    def build(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int | None = None,
        learned_variance: bool = False,
        dropout: float | None = None,
    ) -> DiT:
        """The network for ``in_channels`` x ``image_size``^2 inputs."""
        return DiT(
            in_channels=in_channels,
            out_channels=in_channels * (2 if learned_variance else 1),
            image_size=image_size,
            patch_size=self.patch_size,
            width=self.width,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dropout=self.dropout if dropout is None else dropout,
            num_classes=num_classes,
        )
