"""Gaussian KL and the discretized Gaussian decoder, in nats (Ho et al. 2020, Sec. 3.3)."""

from __future__ import annotations

import math

import torch


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
              ) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        bins: int = 256) -> torch.Tensor:
    """log p(x) for 8-bit data scaled to [-1, 1]: Gaussian mass of the bin around x, elementwise.

    Bins have width 2/(bins-1); the outermost bins extend to -inf / +inf (Ho et al. 2020, eq. 13).
    """
    half = 1.0 / (bins - 1)
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (centered + half))
    cdf_min = _std_normal_cdf(inv_std * (centered - half))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -1.0 + half * 0.5, log_cdf_plus,
        torch.where(x > 1.0 - half * 0.5, log_one_minus_cdf_min,
                    torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs
