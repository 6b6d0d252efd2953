"""The parts of :class:`bench.diffusion.Diffusion` that a continuous process adds: its rates, the
model's (eps, x0) at any process time, a sampling level of the process, and its training loss.

A mixin of Diffusion (one module each for its concerns, STYLE.md's size rule); the samplers see
only Levels and Predictions, as for vp.
"""

from __future__ import annotations

import math

import torch

from bench.core.errors import BenchError
from bench.diffusion.guidance import guidance_weight
from bench.diffusion.objectives import Rates
from bench.diffusion.prediction import Conditioning, Level, Model, is_conditional, null_label


class ProcessMath:
    """Mixin: needs ``process``, ``continuous``, ``objective``, ``_needs_rates``, ``_call``,
    ``coefs``, ``timesteps``, ``t_sampler``, ``weighting`` of the Diffusion."""

    def rates(self, t: torch.Tensor | float, like: torch.Tensor) -> Rates:
        """The process's (alpha, sigma, alpha', sigma') at t, broadcastable against ``like``."""
        p = self.process
        tt = torch.as_tensor(t, dtype=torch.float64, device=t.device if isinstance(t, torch.Tensor) else None)
        shape = (-1, *([1] * (like.ndim - 1))) if tt.ndim else ()

        def f(v: torch.Tensor) -> torch.Tensor:
            return v.to(device=like.device, dtype=like.dtype).reshape(shape)
        return Rates(f(p.alpha(tt)), f(p.sigma(tt)), f(p.d_alpha(tt)), f(p.d_sigma(tt)),
                     float(getattr(p, "sigma_data", 0.5)))

    def eps_x0(self, model: Model, x_t: torch.Tensor, t: torch.Tensor | float | int,
               y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's (eps, x0) at process time ``t`` ([B] or one number) for the process state
        x_t = alpha x0 + sigma eps, whatever objective it was trained with (no guidance)."""
        b = x_t.shape[0]
        p = self.process
        tt = torch.as_tensor(t, device=x_t.device)
        if tt.ndim == 0:
            tt = tt.expand(b)
        if not self.continuous and not tt.is_floating_point():
            a, s = self.coefs(tt, x_t)
            pred, _ = self._call(model, x_t, tt, y)
            k = self.rates(tt.cpu().double(), x_t) if self._needs_rates else None
            return self.objective.to_eps_x0(pred, x_t, a, s, k)
        td = tt.double().cpu()
        k = self.rates(td, x_t)
        c_in = p.input_scale(td).to(device=x_t.device, dtype=x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        time = p.time_input(td).float().to(x_t.device)
        pred, _ = self._call(model, x_t * c_in, time, y)
        return self.objective.to_eps_x0(pred, x_t, k.alpha, k.sigma, k)

    def _process_level(self, t: float, b: int, dev: torch.device, c: Conditioning, abar: float | None) -> Level:
        """A continuous process's level at time t: the VP coefficients (a, s) = (alpha, sigma) / r of
        the equivalent VP state x = x_t / r, r = sqrt(alpha^2 + sigma^2), and the process's rates."""
        p, tt = self.process, torch.tensor(t, dtype=torch.float64)
        alpha, sigma = float(p.alpha(tt)), float(p.sigma(tt))
        r = math.hypot(alpha, sigma)
        if abar is None:
            abar = float(p.abar(tt))
        a, s = abar**0.5, (1.0 - abar) ** 0.5
        ve = s / a if a > 0 else math.inf
        guided = c.method is not None and c.active(ve, c.options)
        time = torch.full((2 * b if guided else b,), float(p.time_input(tt)), dtype=torch.float32, device=dev)
        u = (t - p.t_min) / (p.t_max - p.t_min)  # the guidance schedule's position, 0 clean .. 1 noisiest
        w = guidance_weight(c.guidance, c.options["schedule"], u, 2) if guided else 0.0
        k = Rates(alpha, sigma, float(p.d_alpha(tt)), float(p.d_sigma(tt)), float(getattr(p, "sigma_data", 0.5)))
        return Level(time[:b], time if guided else None, a, s, ve, guided, w, k=k, r=r,
                     scale=r * float(p.input_scale(tt)))

    def _to_eps_x0(self, out: torch.Tensor, x: torch.Tensor, lv: Level) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) of a network output at level ``lv`` for the VP state ``x``."""
        if lv.k is None:
            return self.objective.to_eps_x0(out, x, lv.a, lv.s)
        if lv.r == 1.0:
            return self.objective.to_eps_x0(out, x, lv.k.alpha, lv.k.sigma, lv.k)
        return self.objective.to_eps_x0(out, x * lv.r, lv.k.alpha, lv.k.sigma, lv.k)

    def _training_draws(self, model: Model, x0: torch.Tensor, y: torch.Tensor | None, p_uncond: float,
                        generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One training batch's t (``train.t_sampling``'s density, else uniform: the process's own
        draw, or integer t on the vp chain), noise and label dropout, drawn in this order."""
        b, dev = x0.shape[0], x0.device
        gen_dev = generator.device if generator is not None else dev
        if self.t_sampler is not None:
            t = self.t_sampler(b, generator, dev)
        elif self.continuous:
            t = self.process.sample_t(b, generator, dev)
        else:
            t = torch.randint(0, self.timesteps, (b,), generator=generator, device=gen_dev).to(dev)
        noise = torch.randn(x0.shape, generator=generator, device=gen_dev, dtype=x0.dtype).to(dev)
        if y is not None and p_uncond > 0.0:
            if not is_conditional(model):
                raise BenchError("p_uncond > 0 needs a class-conditional model (an int `num_classes`)")
            drop = torch.rand(b, generator=generator, device=gen_dev).to(dev) < p_uncond
            y = torch.where(drop, torch.full_like(y, null_label(model)), y)
        return t, noise, y

    def _process_loss(self, model: Model, x0: torch.Tensor, y: torch.Tensor | None, p_uncond: float,
                      generator: torch.Generator | None) -> torch.Tensor:
        """A continuous process's loss: the objective's target at x_t = alpha x0 + sigma eps, t from
        ``t_sampler`` (uniform in unit time by default); for ``velocity`` the flow-matching loss
        E |v_theta(x_t, t) - (alpha' x0 + sigma' eps)|^2 (Lipman et al. 2023, eq. 23)."""
        p = self.process
        t, noise, y = self._training_draws(model, x0, y, p_uncond, generator)
        td = t.double()
        k = self.rates(td, x0)
        x_t = k.alpha * x0 + k.sigma * noise
        if self.continuous:
            c_in = p.input_scale(td).to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
            pred, _ = self._call(model, x_t * c_in, p.time_input(td).float(), y)
        else:
            pred, _ = self._call(model, x_t, t, y)
        target = self.objective.from_eps_x0(noise, x0, k.alpha, k.sigma, k)
        weight = self.objective.loss_weight(k.alpha, k.sigma)
        per_image = (weight * (pred - target) ** 2).flatten(1).mean(1)
        if self.weighting is not None:
            per_image = per_image * self.weighting(t)
        return per_image.mean()
