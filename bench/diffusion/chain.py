"""The reverse chain over a subset of timesteps, and the variances registered on it.

Respacing follows Nichol & Dhariwal (2021), App. B / improved-diffusion ``respace.py``: for
visited timesteps S = (s_0 < ... < s_{K-1}) the chain has betas 1 - abar_{s_i} / abar_{s_{i-1}}
(abar_{s_{-1}} = 1), so it is itself a diffusion with K steps and the same marginals at S.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch.utils.weak import WeakIdKeyDictionary

from bench.core.registry import Registry


@dataclass(frozen=True)
class Chain:
    """Per-step coefficients of a (possibly respaced) chain; index i visits timestep ``t[i]``."""

    t: torch.Tensor  # [K] the network's time input, increasing: int64 timesteps, or float64 where a
    # noise-level schedule (karras, ...) falls between trained timesteps
    abar: torch.Tensor  # float64 [K]
    abar_prev: torch.Tensor  # float64 [K]; abar_prev[0] = 1
    betas: torch.Tensor  # float64 [K]
    posterior_variance: torch.Tensor  # beta-tilde, float64 [K] (Ho et al. eq. 7)
    posterior_log_variance: torch.Tensor  # log beta-tilde, with index 0 clipped to index 1
    coef_x0: torch.Tensor  # posterior mean = coef_x0 * x0 + coef_xt * x_t  (eq. 7)
    coef_xt: torch.Tensor

    @classmethod
    def build(cls, alphas_cumprod: torch.Tensor, t: torch.Tensor) -> Chain:
        """The chain visiting trained timesteps ``t`` (int64, increasing)."""
        return cls.from_levels(t, alphas_cumprod[t])

    @classmethod
    def from_levels(cls, t: torch.Tensor, abar: torch.Tensor) -> Chain:
        """The chain through noise levels ``abar`` (float64, decreasing), the network seeing ``t``."""
        abar = abar.double()
        abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        betas = 1.0 - abar / abar_prev
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta-tilde_0 = 0: its log is clipped to the next value, as in improved-diffusion
        post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]) if len(t) > 1
                                else betas.clone())
        return cls(
            t=t, abar=abar, abar_prev=abar_prev, betas=betas,
            posterior_variance=post_var, posterior_log_variance=post_logvar,
            coef_x0=betas * abar_prev.sqrt() / (1.0 - abar),
            coef_xt=(1.0 - abar_prev) * (1.0 - betas).sqrt() / (1.0 - abar),
        )

    def __len__(self) -> int:
        return len(self.t)

    @property
    def sigma(self) -> torch.Tensor:
        """sigma_i = sqrt((1 - abar_i) / abar_i), float64 [K]: the level in the EDM / k-diffusion
        convention x = x0 + sigma eps (the VP state divided by sqrt(abar))."""
        return ((1.0 - self.abar) / self.abar).sqrt()

    @cached_property
    def log_betas(self) -> torch.Tensor:
        """log beta, float64 [K] (computed once per chain: :func:`gather` keeps one device copy per table)."""
        return torch.log(self.betas)

    @cached_property
    def large_log_variance(self) -> torch.Tensor:
        """log beta with index 0 clipped to beta-tilde_1 (fixed_large), float64 [K]."""
        return torch.log(torch.cat([self.posterior_variance[1:2], self.betas[1:]]) if len(self) > 1 else self.betas)


_ON_DEVICE: WeakIdKeyDictionary = WeakIdKeyDictionary()  # a table -> {device: its copy}, while the table lives


def on_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` on ``device``, copied there once per table and device: a per-image gather (a
    training step's timesteps) then makes no host-to-device copy, and no host synchronisation."""
    if values.device == device:
        return values
    copies = _ON_DEVICE.setdefault(values, {})
    if device not in copies:
        copies[device] = values.to(device)
    return copies[device]


def gather(values: torch.Tensor, i: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """values[i] broadcastable against ``like`` [B, C, H, W], in its dtype.

    An int index (every image at the same step, as in sampling) gives a 0-dim CPU tensor, which
    PyTorch treats as a scalar on any device: no per-step gather or host-to-device copy.
    """
    if isinstance(i, int):
        return torch.tensor(float(values[i]), dtype=like.dtype)
    out = on_device(values, like.device)[i.to(like.device)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


# A variance is log sigma^2 of p(x_{t-1} | x_t) at chain index i (broadcastable against x), given the model's extra output
# (the interpolation value v in [-1, 1] for learned_range; None for fixed variances).
VarianceFn = Callable[[Chain, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]  # i: Tensor [B] or int
VARIANCES: Registry[VarianceFn] = Registry("variance")


@VARIANCES.register("fixed_small", learned=False, paper="Ho et al. 2020: sigma^2 = beta-tilde")
def fixed_small(chain: Chain, i: torch.Tensor, like: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    return gather(chain.posterior_log_variance, i, like)


@VARIANCES.register("fixed_large", learned=False, paper="Ho et al. 2020: sigma^2 = beta (DDIM's sigma-hat)")
def fixed_large(chain: Chain, i: torch.Tensor, like: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    # improved-diffusion uses beta-tilde_1 at index 0 so the decoder variance is not beta_0's
    return gather(chain.large_log_variance, i, like)


@VARIANCES.register("learned_range", learned=True, paper="Nichol & Dhariwal 2021, eq. 15")
def learned_range(chain: Chain, i: torch.Tensor, like: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    """Sigma^2 = exp(f log beta + (1 - f) log beta-tilde), f = (v + 1) / 2 for v in [-1, 1]."""
    assert v is not None, "learned_range needs the model's variance output"
    min_log = gather(chain.posterior_log_variance, i, like)
    max_log = gather(chain.log_betas, i, like)
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log
