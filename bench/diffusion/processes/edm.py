"""EDM (Karras et al. 2022): x = x0 + sigma eps, the process time t = sigma in [sigma_min, sigma_max],
with the network preconditioning of Table 1:

  c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)     c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
  c_in   = 1 / sqrt(sigma^2 + sigma_data^2)             c_noise = ln(sigma) / 4

The network sees c_in x and c_noise (:meth:`input_scale`, :meth:`time_input`); with the ``edm``
objective its output F is the F-target, D = c_skip x + c_out F (bench.diffusion.objectives).
Unit time u maps to sigma through the paper's rho ramp (eq. 5, rho = 7), so a uniform grid in u is
the paper's sampling schedule.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.core.errors import BenchError
from bench.diffusion.processes.base import PROCESSES, Process, _t


class EDM(Process):
    name = "edm"
    continuous = True

    def __init__(self, shift: float = 1.0, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 sigma_data: float = 0.5, rho: float = 7.0) -> None:
        super().__init__(shift)
        if not 0.0 < sigma_min < sigma_max < math.inf or not sigma_data > 0 or not rho > 0:
            raise BenchError(f"edm needs 0 < sigma_min < sigma_max, sigma_data > 0 and rho > 0; got sigma_min="
                             f"{sigma_min}, sigma_max={sigma_max}, sigma_data={sigma_data}, rho={rho}")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)
        self.sigma_data, self.rho = float(sigma_data), float(rho)

    def __repr__(self) -> str:
        return (f"EDM(shift={self.shift}, sigma_min={self.t_min}, sigma_max={self.t_max}, "
                f"sigma_data={self.sigma_data}, rho={self.rho})")

    def alpha(self, t: Any) -> torch.Tensor:
        return torch.ones_like(_t(t))

    def sigma(self, t: Any) -> torch.Tensor:
        return _t(t) * 1.0

    def d_alpha(self, t: Any) -> torch.Tensor:
        return torch.zeros_like(_t(t))

    def d_sigma(self, t: Any) -> torch.Tensor:
        return torch.ones_like(_t(t))

    def t_of_ve(self, ve: Any) -> torch.Tensor:
        return _t(ve) * 1.0

    def base_unit(self, u: Any) -> torch.Tensor:
        """sigma = (sigma_min^(1/rho) + u (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho (eq. 5, reversed)."""
        lo, hi = self.t_min ** (1.0 / self.rho), self.t_max ** (1.0 / self.rho)
        return (lo + _t(u) * (hi - lo)) ** self.rho

    # --- Table 1 preconditioning ----------------------------------------------------------------
    def c_skip(self, sigma: Any) -> torch.Tensor:
        sd2 = self.sigma_data**2
        return sd2 / (_t(sigma) ** 2 + sd2)

    def c_out(self, sigma: Any) -> torch.Tensor:
        s = _t(sigma)
        return s * self.sigma_data / (s**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma: Any) -> torch.Tensor:
        return 1.0 / (_t(sigma) ** 2 + self.sigma_data**2).sqrt()

    def c_noise(self, sigma: Any) -> torch.Tensor:
        return _t(sigma).log() / 4.0

    def input_scale(self, t: Any) -> torch.Tensor:
        return self.c_in(t)

    def time_input(self, t: Any) -> torch.Tensor:
        return self.c_noise(t)

    def loss_weight(self, sigma: Any) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Table 1): weights the
        x0 error so that the F-target's error has unit weight."""
        s = _t(sigma)
        return (s**2 + self.sigma_data**2) / (s * self.sigma_data) ** 2


PROCESSES.register("edm", EDM, paper="Karras et al. 2022 (EDM), Table 1: VE sigma with preconditioning")
