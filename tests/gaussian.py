"""Closed-form helpers for tests: the optimal denoiser of Gaussian data (first principles).

For x0 ~ N(mu, s0^2) per dimension and x_t = a x0 + s eps, the posterior mean is
E[x0 | x_t] = mu + a s0^2 / (a^2 s0^2 + s^2) (x_t - a mu).
"""

from __future__ import annotations

import torch


class GaussianDenoiser(torch.nn.Module):
    def __init__(self, alphas_cumprod: torch.Tensor, objective: str, mu: float, s0: float,
                 num_classes: int | None = None, learned_v: float | None = None) -> None:
        super().__init__()
        self.abar = alphas_cumprod.double()
        self.objective, self.mu, self.s0 = objective, mu, s0
        self.num_classes = num_classes
        self.learned_v = learned_v

    def abar_at(self, t: torch.Tensor) -> torch.Tensor:
        """abar at a trained timestep, or between two: linear in log sigma (sigma^2 = (1 - abar) / abar),
        the interpolation a noise-level schedule's fractional time input stands for."""
        t = t.cpu()
        if not t.is_floating_point():
            return self.abar[t]
        log_s = 0.5 * torch.log((1 - self.abar) / self.abar)
        lo = t.double().floor().long().clamp(0, len(self.abar) - 2)
        w = t.double() - lo
        log_sig = (1 - w) * log_s[lo] + w * log_s[lo + 1]
        return 1.0 / (1.0 + torch.exp(2 * log_sig))

    def forward(self, x, t, y=None):
        abar = self.abar_at(t).to(x.dtype).view(-1, 1, 1, 1)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        x0 = self.mu + a * self.s0**2 / (a**2 * self.s0**2 + s**2) * (x - a * self.mu)
        eps = (x - a * x0) / s
        out = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s}[self.objective]
        if self.learned_v is not None:
            out = torch.cat([out, torch.full_like(out, self.learned_v)], 1)
        return out


class MixtureDenoiser(torch.nn.Module):
    """The exact eps-denoiser of a two-class Gaussian mixture: class c in {0, 1} has x0 ~ N(mu_c, s0^2 I)
    with mu_c = (2c - 1) m (every pixel), the classes equally likely; label 2 is the null label
    (unconditional: the posterior-weighted mixture of the two class denoisers)."""

    num_classes = 2

    def __init__(self, alphas_cumprod: torch.Tensor, m: float = 1.0, s0: float = 0.5) -> None:
        super().__init__()
        self.abar, self.m, self.s0 = alphas_cumprod.double(), m, s0
        self.calls = 0

    def class_x0(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(E[x0 | x_t, c=0], E[x0 | x_t, c=1], p(c=1 | x_t))."""
        var = a**2 * self.s0**2 + s**2
        means = [(2 * c - 1) * self.m for c in (0, 1)]
        x0 = [mu + a * self.s0**2 / var * (x - a * mu) for mu in means]
        # log N(x; a mu_c, var I) summed over pixels; the difference of the two gives p(c=1 | x)
        logit = ((x - a * means[0]) ** 2 - (x - a * means[1]) ** 2).flatten(1).sum(1) / (2 * var.flatten())
        return x0[0], x0[1], torch.sigmoid(logit).view(-1, 1, 1, 1)

    def forward(self, x, t, y=None):
        self.calls += 1
        t = t.cpu()
        abar = (self.abar[t] if not t.is_floating_point() else GaussianDenoiser.abar_at(self, t)).to(x.dtype)
        abar = abar.view(-1, 1, 1, 1)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        x0_0, x0_1, p1 = self.class_x0(x, a, s)
        yy = y.view(-1, 1, 1, 1)
        x0 = torch.where(yy == 0, x0_0, torch.where(yy == 1, x0_1, (1 - p1) * x0_0 + p1 * x0_1))
        return (x - a * x0) / s


class ProcessGaussian(torch.nn.Module):
    """The exact prediction of Gaussian data x0 ~ N(mu, s0^2) for a continuous process: called as the
    samplers call a network, ``model(c_in(t) x_t, time_input(t), y)``, it recovers t from the time
    input (t itself, or sigma = exp(4 c_noise) for edm) and returns the objective's target of the
    posterior means E[x0 | x_t], E[eps | x_t] (every objective is linear in them)."""

    def __init__(self, diffusion, mu: float, s0: float) -> None:
        super().__init__()
        self.d, self.mu, self.s0 = diffusion, mu, s0

    def forward(self, x, t, y=None):
        p = self.d.process
        td = t.double().cpu()
        if (td == td[0]).all():  # one level for the batch (sampling): its coefficients once
            td = td[:1]
        tt = (4 * td).exp() if p.name == "edm" else td
        shape = (-1, *([1] * (x.ndim - 1)))
        x_t = x.double() / p.input_scale(tt).view(shape)
        k = self.d.rates(tt, x_t)
        a, s = k.alpha, k.sigma
        x0 = self.mu + a * self.s0**2 / (a**2 * self.s0**2 + s**2) * (x_t - a * self.mu)
        eps = torch.where(s > 0, (x_t - a * x0) / s.clamp_min(1e-300), torch.zeros_like(x_t))
        return self.d.objective.from_eps_x0(eps, x0, a, s, k).to(x.dtype)
