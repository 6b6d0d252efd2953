"""A noise process: x_t = alpha(t) x0 + sigma(t) eps, and what follows from it.

Every process states alpha(t), sigma(t), their derivatives, the network's time input and its
trained range [t_min, t_max] (t_max the noisiest); everything else derives from them:

- the VE level ``ve(t) = sigma / alpha`` (Karras et al. 2022's sigma of x / alpha = x0 + ve eps,
  infinite where alpha = 0) and its inverse ``t_of_ve``, the map the samplers already use;
- the velocity d x_t / dt = alpha' x0 + sigma' eps (the probability-flow ODE of the interpolant);
- ``from_unit(u)``: u in [0, 1] -> t, increasing, u = 1 at t_max: the process's natural time grid
  (uniform-in-u sampling levels, uniform-in-u training times). SD3's ``shift`` s multiplies the VE
  level by s (for rectified flow t -> s t / (1 + (s - 1) t), Esser et al. 2024, eq. 23).

A process is a registry entry (:data:`bench.diffusion.processes.PROCESSES`) built as
``PROCESSES.get(name)(shift=..., **options)``; one file per process.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.core.errors import BenchError
from bench.core.registry import Registry

# The unit-time margin of the noise-level schedules (karras, exponential, uniform-logsnr) on a process
# whose VE level is 0 at t_min or infinite at t_max: they place levels between ve(from_unit(U_EDGE))
# and ve(from_unit(1 - U_EDGE)), a finite range (a VP model's trained range is finite by its table).
U_EDGE = 1e-3

Tensor = torch.Tensor


def _t(t: Any) -> Tensor:
    return t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.float64)


class Process:
    """Base class: subclasses set ``name``, ``continuous``, ``t_min``, ``t_max`` and implement
    :meth:`alpha`, :meth:`sigma`, :meth:`d_alpha`, :meth:`d_sigma`, :meth:`t_of_ve` and
    :meth:`base_unit` (u -> t before the shift)."""

    name: str = ""
    continuous: bool = True
    t_min: float = 0.0
    t_max: float = 1.0
    # what the network's time embedding multiplies its input by: the project's U-Net and DiT embed
    # a [0, 1] float time as t x 1000 (the scale of the integer timesteps they were written for),
    # as diffusers' flow schedulers pass t x 1000 to their transformers
    time_scale: float = 1000.0

    def __init__(self, shift: float = 1.0) -> None:
        shift = float(shift)
        if not (math.isfinite(shift) and shift > 0):
            raise BenchError(f"diffusion.shift = {shift!r} must be a positive number (1 = no shift; SD3 uses 3)")
        self.shift = shift

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shift={self.shift})"

    # --- what each process states -------------------------------------------------------------
    def alpha(self, t: Any) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Any) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Any) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Any) -> Tensor:
        raise NotImplementedError

    def t_of_ve(self, ve: Any) -> Tensor:
        """The t whose VE level sigma(t) / alpha(t) is ``ve`` (inverse of :meth:`ve`)."""
        raise NotImplementedError

    def base_unit(self, u: Any) -> Tensor:
        """u in [0, 1] -> t before the shift (uniform in t for rectified flow and GVP)."""
        return self.t_min + _t(u) * (self.t_max - self.t_min)

    # --- derived --------------------------------------------------------------------------------
    def time_input(self, t: Any) -> Tensor:
        """What the network gets as its time: ``model(input_scale(t) * x_t, time_input(t), y)``."""
        return _t(t)

    def input_scale(self, t: Any) -> Tensor:
        """c_in of Karras et al.: the factor on x_t before the network (1 except for edm)."""
        return torch.ones_like(_t(t))

    def ve(self, t: Any) -> Tensor:
        """sigma(t) / alpha(t): the noise level of x_t / alpha = x0 + ve eps (inf where alpha = 0)."""
        t = _t(t)
        return self.sigma(t) / self.alpha(t)

    def abar(self, t: Any) -> Tensor:
        """The equivalent VP level alpha^2 / (alpha^2 + sigma^2) = 1 / (1 + ve^2) (0 at pure noise)."""
        t = _t(t)
        a, s = self.alpha(t), self.sigma(t)
        return a * a / (a * a + s * s)

    def velocity(self, eps: Tensor, x0: Tensor, t: Any) -> Tensor:
        """d x_t / dt = alpha'(t) x0 + sigma'(t) eps."""
        return self.d_alpha(t) * x0 + self.d_sigma(t) * eps

    def from_unit(self, u: Any) -> Tensor:
        """u in [0, 1] -> t in [t_min, t_max], increasing; with the shift s the VE level is s times
        that of the unshifted grid (SD3's resolution shift)."""
        t = self.base_unit(u)
        if self.shift == 1.0:
            return t
        return self.t_of_ve(self.shift * self.ve(t))

    def ve_range(self) -> tuple[float, float]:
        """The finite VE range a noise-level schedule (karras, ...) places its levels in."""
        lo, hi = float(self.ve(self.from_unit(0.0))), float(self.ve(self.from_unit(1.0)))
        if not lo > 0:
            lo = float(self.ve(self.from_unit(U_EDGE)))
        if not math.isfinite(hi):
            hi = float(self.ve(self.from_unit(1.0 - U_EDGE)))
        return lo, hi

    def sample_t(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> Tensor:
        """n training times, uniform in unit time u (the default density; ``Diffusion.t_sampler``
        replaces it), float32 on ``device``."""
        gen_dev = generator.device if generator is not None else device
        u = torch.rand(n, generator=generator, device=gen_dev, dtype=torch.float64)
        return self.from_unit(u).float().to(device)


PROCESSES: Registry[type[Process]] = Registry("process")
