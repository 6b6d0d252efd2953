"""Negative log-likelihood in bits per dimension by the variational bound (needs the model)."""

from __future__ import annotations

from typing import Any

from bench.metrics.nll import model_likelihood
from bench.metrics.registry import MetricDef, Output, register_metric


def compute(ctx: Any) -> dict[str, float]:
    mean, se = model_likelihood(ctx)
    return {"nll_bpd": mean, "nll_bpd_se": se}


def compute_latent(ctx: Any) -> dict[str, float]:
    mean, se = model_likelihood(ctx)
    return {"latent_nll_bpd": mean, "latent_nll_bpd_se": se}


BOUND = ("Ho et al. 2020 / Nichol & Dhariwal 2021: variational bound in bits per dimension, over all T terms "
         "or, with eval.nll_timesteps = K, its unbiased stratified estimate from K terms per image; a continuous "
         "process (no bound): the probability-flow ODE's NLL, uniformly dequantized (Song et al. 2021, see nll_ode); "
         "*_se: the standard error over the test images")
register_metric(MetricDef(
    "nll", (Output("nll_bpd", "NLL (bits/dim)", ".2f", False, spread="nll_bpd_se"),
            Output("nll_bpd_se", "NLL standard error (bits/dim)", ".3f")), compute, higher_is_better=False, needs_model=True,
    needs_space="pixel", cite=BOUND))
# In latent space the bound is on the scaled latents, per latent dimension, with a decoder term
# that treats latents like 8-bit data: another quantity, so another name, never pixel NLL's column.
register_metric(MetricDef(
    "latent_nll", (Output("latent_nll_bpd", "Latent NLL (bits/latent dim)", ".2f", False, spread="latent_nll_bpd_se"),
                   Output("latent_nll_bpd_se", "Latent NLL standard error", ".3f")), compute_latent,
    higher_is_better=False, needs_model=True, needs_space="latent", cite=BOUND + ", on the VAE's latents"))
