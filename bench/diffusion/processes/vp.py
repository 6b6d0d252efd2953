"""The discrete VP chain of today as a process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps on the
schedule's table, integer t in [0, T - 1] (Ho et al. 2020). Between trained timesteps the level is
linear in log sigma (sigma = sqrt((1 - abar) / abar)), as :func:`bench.diffusion.spacing.sigma_to_t`
interpolates; the derivatives are those of that interpolation (per timestep).

``Diffusion(process="vp")`` keeps its own table code (the numbers of every existing run); this
object states the same process for the parts that are generic over processes (conversions, tests).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.diffusion.processes.base import PROCESSES, Process, _t


class VP(Process):
    name = "vp"
    continuous = False
    time_scale = 1.0  # the network sees the timestep index itself

    def __init__(self, shift: float = 1.0, alphas_cumprod: torch.Tensor | None = None) -> None:
        super().__init__(shift)
        if self.shift != 1.0:
            raise BenchError(f"diffusion.shift = {shift} needs a continuous process (rectified-flow, gvp, edm); "
                             "process 'vp' has integer timesteps: leave diffusion.shift at 1")
        if alphas_cumprod is None:
            from bench.diffusion.schedules import make_schedule
            alphas_cumprod = make_schedule("linear", 1000).alphas_cumprod
        abar = alphas_cumprod.double()
        self.alphas_cumprod = abar
        self.log_ve = ((1.0 - abar) / abar).sqrt().log()
        self.t_min, self.t_max = 0.0, float(len(abar) - 1)

    def __repr__(self) -> str:
        return f"VP(timesteps={len(self.alphas_cumprod)})"

    def _log_ve(self, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(log ve(t), d log ve / dt), piecewise linear between trained timesteps."""
        t = _t(t).double().clamp(self.t_min, self.t_max)
        lo = t.floor().long().clamp(max=len(self.log_ve) - 2) if len(self.log_ve) > 1 else t.long() * 0
        lv = self.log_ve.to(t.device)
        if len(lv) == 1:
            return lv[lo], torch.zeros_like(t)
        g = lv[lo + 1] - lv[lo]
        return lv[lo] + (t - lo) * g, g

    def alpha(self, t: Any) -> torch.Tensor:
        lv, _ = self._log_ve(t)
        return 1.0 / (1.0 + (2 * lv).exp()).sqrt()

    def sigma(self, t: Any) -> torch.Tensor:
        lv, _ = self._log_ve(t)
        ve = lv.exp()
        return ve / (1.0 + ve * ve).sqrt()

    def d_alpha(self, t: Any) -> torch.Tensor:
        lv, g = self._log_ve(t)
        ve2 = (2 * lv).exp()
        return -ve2 * (1.0 + ve2) ** -1.5 * g

    def d_sigma(self, t: Any) -> torch.Tensor:
        lv, g = self._log_ve(t)
        ve = lv.exp()
        return ve * (1.0 + ve * ve) ** -1.5 * g

    def t_of_ve(self, ve: Any) -> torch.Tensor:
        ve = _t(ve).double()
        out = np.interp(ve.log().cpu().numpy(), self.log_ve.numpy(), np.arange(len(self.log_ve), dtype=np.float64))
        return torch.as_tensor(out, dtype=torch.float64)


PROCESSES.register("vp", VP, paper="Ho et al. 2020: the discrete chain of the schedule's table")
