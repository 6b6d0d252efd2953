"""Embeddings and small layers shared by the U-Net, the DiT and the VAE.

- :func:`timestep_embedding`: the sinusoidal embedding of Vaswani et al. (2017, sec. 3.5), used
  for diffusion timesteps by Ho et al. (2020, appendix B) and Peebles & Xie (2023).
- :class:`TimestepEmbedder`: that embedding followed by a two-layer SiLU MLP.
- :class:`ClassEmbedder`: a label table with one extra row, the null label ``num_classes``, for
  classifier-free guidance (Ho & Salimans 2022).
- :func:`sincos_pos_embed_2d`: the fixed 2D sin-cos positional embedding of MAE / DiT, for any grid.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t w_i), sin(t w_i)]``, ``w_i = max_period^(-i / (dim/2))``.

    Vaswani et al. 2017, sec. 3.5; Ho et al. 2020 embed the integer timestep index this way.
    ``t``: [B] (any dtype, timestep indices in [0, T)); returns float32 [B, dim].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:  # odd widths: pad with a zero column
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Timestep index -> sinusoidal features (``freq_dim``) -> Linear -> SiLU -> Linear (``dim``)."""

    def __init__(self, freq_dim: int, dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        # a continuous process's float time in [0, 1] (or EDM's c_noise) is embedded as t x scale, the
        # range of the integer timesteps the embedding was written for (diffusers' flow schedulers
        # pass t x 1000 the same way); 1 for integer timesteps (set by build_model's time_scale)
        self.scale = 1.0

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t if self.scale == 1.0 else t.float() * self.scale, self.freq_dim))


class ClassEmbedder(nn.Module):
    """Class label -> vector, with the null label ``num_classes`` as an extra learned row.

    ``y=None`` means "no class" for the whole batch (all null), as classifier-free guidance's
    unconditional pass (Ho & Salimans 2022) and DiT's ``use_cfg_embedding`` table.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return self.table(y)


def sincos_pos_embed_1d(dim: int, pos: Tensor) -> Tensor:
    """1D sin-cos embedding of positions ``pos`` [N] -> [N, dim] (MAE's ``get_1d_sincos_pos_embed``)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2D sin-cos positional embedding [grid_h * grid_w, dim], row-major over the grid.

    As in MAE (He et al. 2022) and DiT (Peebles & Xie 2023, sec. 3.2): half of the channels encode
    the column, half the row. Computed for the actual grid, so any image size divisible by the
    patch size works. ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos positional embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    emb_w = sincos_pos_embed_1d(dim // 2, cols.reshape(-1))
    emb_h = sincos_pos_embed_1d(dim // 2, rows.reshape(-1))
    return torch.cat([emb_w, emb_h], dim=1).float()


def num_groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= ``max_groups`` dividing ``channels`` (32 for wide layers, as in DDPM)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018) with a group count that divides ``channels``, so tiny widths work."""
    return nn.GroupNorm(num_groups(channels), channels, eps=1e-6)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter (improved-DDPM's ``zero_module``): the layer starts as a no-op."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
