"""Checks of the uint8 image tensors every metric takes, and of an extractor's input."""

from __future__ import annotations

from typing import Any

import torch

from bench.core.errors import BenchError


def check_images(x: Any, who: str, what: str) -> torch.Tensor:
    """``x`` must be a uint8 ``[N, 1|3, H, W]`` tensor with N > 0; returns it contiguous on the CPU."""
    if not torch.is_tensor(x):
        raise BenchError(f"{who}: {what} must be a uint8 torch.Tensor [N, C, H, W], got {type(x).__name__}")
    if x.is_floating_point() and bool(torch.isnan(x).any()):
        bad = int(torch.isnan(x.flatten(1)).any(1).sum()) if x.dim() > 1 else -1
        raise BenchError(f"{who}: {what} contain NaN ({bad} of {len(x)} images): sampling diverged; "
                         "check the model, the sampler settings and the guidance scale")
    if x.dtype != torch.uint8:
        raise BenchError(f"{who}: {what} must be uint8 (8-bit images), got {x.dtype}; quantize with "
                         "((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)")
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise BenchError(f"{who}: {what} must be [N, C, H, W] with C = 1 or 3 and N > 0, got {tuple(x.shape)}")
    return x.detach().cpu().contiguous()


def check_compatible(ext: Any, x: torch.Tensor, who: str, what: str) -> None:
    """Channels and size that ``ext`` can take (1 -> 3 channels repeated where it takes RGB)."""
    c, h, w = x.shape[1:]
    if c != ext.channels and not (c == 1 and ext.channels == 3):
        raise BenchError(f"{who}: {what} have {c} channels, but extractor {ext.name!r} takes {ext.channels}-"
                         "channel images; use an extractor of a dataset with as many channels, or 'inception'")
    if ext.input_size is not None and (h, w) != (ext.input_size, ext.input_size):
        raise BenchError(
            f"{who}: {what} are {h}x{w}, but extractor {ext.name!r} is a classifier trained on "
            f"{ext.input_size}x{ext.input_size} images and does not resize (its features would not mean the "
            "same at another size); give images and reference at one size (image_size), or use 'inception'"
        )
