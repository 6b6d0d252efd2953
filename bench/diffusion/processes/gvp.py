"""SiT's generalized variance-preserving path: alpha = cos(pi t / 2), sigma = sin(pi t / 2), t in
[0, 1], t = 1 pure noise (Ma et al. 2024, Sec. 3; the cosine schedule in continuous time)."""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.diffusion.processes.base import PROCESSES, Process, _t

HALF_PI = math.pi / 2


class GVP(Process):
    name = "gvp"
    continuous = True
    t_min, t_max = 0.0, 1.0

    def alpha(self, t: Any) -> torch.Tensor:
        return torch.cos(HALF_PI * _t(t))

    def sigma(self, t: Any) -> torch.Tensor:
        return torch.sin(HALF_PI * _t(t))

    def d_alpha(self, t: Any) -> torch.Tensor:
        return -HALF_PI * torch.sin(HALF_PI * _t(t))

    def d_sigma(self, t: Any) -> torch.Tensor:
        return HALF_PI * torch.cos(HALF_PI * _t(t))

    def ve(self, t: Any) -> torch.Tensor:
        t = _t(t)
        return torch.where(t >= 1.0, torch.full_like(t, float("inf")), torch.tan(HALF_PI * t))

    def abar(self, t: Any) -> torch.Tensor:
        t = _t(t)  # exactly 0 at t = 1 (cos(pi / 2) is 6e-17 in floats)
        return torch.where(t >= 1.0, torch.zeros_like(t), torch.cos(HALF_PI * t) ** 2)

    def t_of_ve(self, ve: Any) -> torch.Tensor:
        return torch.atan(_t(ve)) / HALF_PI


PROCESSES.register("gvp", GVP, paper="Ma et al. 2024 (SiT), GVP interpolant alpha = cos(pi t/2), sigma = sin(pi t/2)")
