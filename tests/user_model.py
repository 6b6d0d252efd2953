"""A user's own model code, loaded by ``model: {pretrained: "python:user_model:load"}`` in tests."""

from __future__ import annotations

import torch

from bench.diffusion import Diffusion


class Shrink(torch.nn.Module):
    """eps(x_t, t) = 0.5 x_t: a fixed network with one parameter, for the python: entry point."""

    image_size = 8
    in_channels = 1

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale * x


def load() -> tuple[torch.nn.Module, Diffusion]:
    return Shrink(), Diffusion("cosine", 40)
