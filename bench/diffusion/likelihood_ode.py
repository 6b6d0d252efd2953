"""Likelihood through the probability-flow ODE, for every process (Song et al. 2021, Sec. 4.3 and App. D.2;
Chen et al. 2018, the instantaneous change of variables).

The process's probability-flow ODE dx/dt = v(x, t) (v = alpha' x0_hat + sigma' eps_hat, the model's
velocity) carries the data at t_min to the prior at t_max; along it d log p_t(x(t)) / dt = -div v, so

    log p_{t_min}(x) = log N(x(t_max); 0, (alpha(t_max)^2 + sigma(t_max)^2) I) + int_{t_min}^{t_max} div v(x(t), t) dt,

integrated by adaptive Dormand-Prince (torchdiffeq ``dopri5``, ``rtol`` / ``atol``) on the augmented
state (x, int div v), on the clock of :mod:`bench.diffusion.ode` (lambda = log(sigma / alpha) for vp
and edm). The divergence is the exact trace of dv/dx (D vector-Jacobian products per call:
``exact=True``, for tests and tiny images) or Hutchinson's estimate eps^T (dv/dx) eps with Rademacher
probes held fixed along the path (Grathwohl et al. 2019, FFJORD); ``probes`` = K independent probes per
image (one forward, K backward passes per call) give each image's estimate and its standard error.

8-bit data (``dequantize=True``, images as uint8 or k / 127.5 - 1) are uniformly dequantized, as Song et
al. (2021) and Ho et al. (2020) report: y = (k + u) / 128 - 1, u ~ U(0, 1) per dimension, bins of
width 2 / 256 in [-1, 1], so bits/dim = -log p(y) / (D ln 2) + 7 (log2 of 256 bins over a width of
2), an upper bound on the discrete NLL in expectation over u. Continuous data (``dequantize=False``)
give the density's -log p(x) / (D ln 2) itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.core.errors import BenchError
from bench.diffusion.ode import integrate

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # v(x [B, ...], t [B]) -> [B, ...]


@dataclass(frozen=True)
class ODELikelihood:
    """Per image: ``bpd`` [B] (the mean over its probes) and ``bpd_se`` [B] (the probes' standard
    error; 0 for the exact trace, NaN for one probe), float64 on the CPU; ``nfe``: velocity calls."""

    bpd: torch.Tensor
    bpd_se: torch.Tensor
    nfe: int


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization of 8-bit images (uint8, or k / 127.5 - 1 in [-1, 1]): (k + u) / 128 - 1."""
    k = images.double() if images.dtype == torch.uint8 else torch.round((images.double() + 1.0) * 127.5)
    dev = generator.device if generator is not None else images.device
    u = torch.rand(k.shape, generator=generator, dtype=torch.float64, device=dev).to(images.device)
    return ((k + u) / 128.0 - 1.0).float()


def _rademacher(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return (torch.randint(0, 2, shape, generator=generator, device=dev) * 2 - 1).float().to(device)


def ode_log_likelihood(velocity: Velocity, process: Any, x: torch.Tensor, *, exact: bool = False, probes: int = 1,
                       rtol: float = 1e-5, atol: float = 1e-5, generator: torch.Generator | None = None,
                       dequantized: bool = False) -> ODELikelihood:
    """Bits per dim of ``x`` [B, C, H, W] (already dequantized where 8-bit: ``dequantized`` adds the
    7-bit offset) under the probability-flow ODE of ``velocity`` on ``process``; see the module doc."""
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise BenchError(f"the likelihood's Hutchinson probes = {probes!r} must be a positive int")

    b, dims, dev = x.shape[0], x[0].numel(), x.device
    k = 1 if exact else probes
    eps = None if exact else _rademacher((k, *x.shape), generator, dev)
    calls = [0]

    def div_and_v(t: float, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        calls[0] += 1
        with torch.enable_grad():
            xi = state[0].detach().requires_grad_(True)
            v = velocity(xi, torch.full((b,), t, dtype=x.dtype, device=dev))
            if exact:
                div = torch.zeros(b, 1, dtype=v.dtype, device=dev)
                flat = v.flatten(1)
                for j in range(dims):
                    (g,) = torch.autograd.grad(flat[:, j].sum(), xi, retain_graph=j < dims - 1)
                    div[:, 0] += g.flatten(1)[:, j]
            else:
                div = torch.stack([
                    (torch.autograd.grad(v, xi, e, retain_graph=i < k - 1)[0] * e).flatten(1).sum(1)
                    for i, e in enumerate(eps)], 1)
        return v.detach(), div.detach()

    state0 = (x, torch.zeros(b, k, dtype=x.dtype, device=dev))
    x_end, div_end = integrate(div_and_v, state0, process, process.t_min, process.t_max, rtol=rtol, atol=atol)
    x_top, integral = x_end.double(), div_end.double()  # [B, ...], [B, K]
    t_top = torch.tensor(float(process.t_max), dtype=torch.float64)
    var = float(process.alpha(t_top)) ** 2 + float(process.sigma(t_top)) ** 2
    prior = -0.5 * (x_top.flatten(1) ** 2).sum(1) / var - 0.5 * dims * math.log(2 * math.pi * var)
    logp = prior[:, None] + integral  # [B, K] nats
    bpd = -logp / (dims * math.log(2.0)) + (7.0 if dequantized else 0.0)
    se = torch.zeros(b, dtype=torch.float64) if exact else (
        bpd.std(1, unbiased=True) / k**0.5 if k > 1 else torch.full((b,), float("nan"), dtype=torch.float64))
    return ODELikelihood(bpd.mean(1).cpu(), se.cpu(), calls[0])


def model_velocity(diffusion: Any, model: Any, y: torch.Tensor | None = None) -> Velocity:
    """v(x, t) = alpha'(t) x0_hat + sigma'(t) eps_hat of ``model`` under ``diffusion``'s process and
    objective (:meth:`Diffusion.eps_x0`), with gradients (the trace needs dv/dx)."""
    process = diffusion.process

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps, x0 = diffusion.eps_x0(model, x, t, y=y)
        tt = t.double().view(-1, *([1] * (x.dim() - 1)))
        return (process.d_alpha(tt).to(x.dtype) * x0 + process.d_sigma(tt).to(x.dtype) * eps)

    return v


def ode_bits_per_dim(diffusion: Any, model: Any, x0: torch.Tensor, y: torch.Tensor | None = None, *,
                     generator: torch.Generator | None = None, probes: int = 1, exact: bool = False,
                     rtol: float = 1e-5, atol: float = 1e-5, dequantize_8bit: bool = True) -> ODELikelihood:
    """The probability-flow ODE's bits per dim of images ``x0`` (uint8, or k / 127.5 - 1 in [-1, 1];
    uniformly dequantized unless ``dequantize_8bit`` is False, e.g. for latents) under ``model``."""
    x = dequantize(x0, generator) if dequantize_8bit else x0.float()
    return ode_log_likelihood(model_velocity(diffusion, model, y), diffusion.process, x, exact=exact, probes=probes,
                              rtol=rtol, atol=atol, generator=generator, dequantized=dequantize_8bit)
