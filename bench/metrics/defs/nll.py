"""Negative log-likelihood in bits per dimension by the variational bound (needs the model)."""

from __future__ import annotations

from typing import Any

from bench.metrics.nll import model_nll_bpd
from bench.metrics.registry import MetricDef, Output, register_metric


def compute(ctx: Any) -> dict[str, float]:
    return {"nll_bpd": model_nll_bpd(ctx)}


def compute_latent(ctx: Any) -> dict[str, float]:
    return {"latent_nll_bpd": model_nll_bpd(ctx)}


BOUND = "Ho et al. 2020 / Nichol & Dhariwal 2021: variational bound in bits per dimension"
register_metric(MetricDef(
    "nll", (Output("nll_bpd", "NLL (bits/dim)", ".2f", False),), compute, higher_is_better=False, needs_model=True,
    needs_space="pixel", cite=BOUND))
# In latent space the bound is on the scaled latents, per latent dimension, with a decoder term
# that treats latents like 8-bit data: another quantity, so another name, never pixel NLL's column.
register_metric(MetricDef(
    "latent_nll", (Output("latent_nll_bpd", "Latent NLL (bits/latent dim)", ".2f", False),), compute_latent,
    higher_is_better=False, needs_model=True, needs_space="latent", cite=BOUND + ", on the VAE's latents"))
