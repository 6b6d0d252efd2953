"""Rectified flow / conditional OT flow matching: x_t = (1 - t) x0 + t eps, t in [0, 1], t = 1 pure
noise (Liu et al. 2023; Lipman et al. 2023; Esser et al. 2024 (SD3), with its time shift)."""

from __future__ import annotations

from typing import Any

import torch

from bench.diffusion.processes.base import PROCESSES, Process, _t


class RectifiedFlow(Process):
    name = "rectified-flow"
    continuous = True
    t_min, t_max = 0.0, 1.0

    def alpha(self, t: Any) -> torch.Tensor:
        return 1.0 - _t(t)

    def sigma(self, t: Any) -> torch.Tensor:
        return _t(t) * 1.0

    def d_alpha(self, t: Any) -> torch.Tensor:
        return -torch.ones_like(_t(t))

    def d_sigma(self, t: Any) -> torch.Tensor:
        return torch.ones_like(_t(t))

    def t_of_ve(self, ve: Any) -> torch.Tensor:
        ve = _t(ve)
        return torch.where(torch.isinf(ve), torch.ones_like(ve), ve / (1.0 + ve))

    def from_unit(self, u: Any) -> torch.Tensor:
        """SD3's shift in closed form, t = s u / (1 + (s - 1) u) (eq. 23; diffusers' ``shift``)."""
        u = _t(u)
        s = self.shift
        return u if s == 1.0 else s * u / (1.0 + (s - 1.0) * u)


PROCESSES.register("rectified-flow", RectifiedFlow,
                   paper="Liu et al. 2023; Lipman et al. 2023; shift of Esser et al. 2024 (SD3), eq. 23")
