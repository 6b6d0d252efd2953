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

    def forward(self, x, t, y=None):
        abar = self.abar[t.cpu()].to(x.dtype).view(-1, 1, 1, 1)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        x0 = self.mu + a * self.s0**2 / (a**2 * self.s0**2 + s**2) * (x - a * self.mu)
        eps = (x - a * x0) / s
        out = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s}[self.objective]
        if self.learned_v is not None:
            out = torch.cat([out, torch.full_like(out, self.learned_v)], 1)
        return out
