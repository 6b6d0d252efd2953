"""Negative log-likelihood in bits per dimension through the probability-flow ODE, for every process:
beside the variational bound (``nll``) of a discrete VP model, the same model's exact-likelihood estimate."""

from __future__ import annotations

from typing import Any

from bench.metrics.nll import model_ode_nll_bpd
from bench.metrics.registry import MetricDef, Output, register_metric


def compute(ctx: Any) -> dict[str, float]:
    mean, se = model_ode_nll_bpd(ctx)
    return {"nll_ode_bpd": mean, "nll_ode_bpd_se": se}


register_metric(MetricDef(
    "nll_ode", (Output("nll_ode_bpd", "ODE NLL (bits/dim)", ".2f", False, spread="nll_ode_bpd_se"),
                Output("nll_ode_bpd_se", "ODE NLL standard error (bits/dim)", ".3f")),
    compute, higher_is_better=False, needs_model=True, needs_space="pixel",
    cite=("Song et al. 2021, Sec. 4.3 and App. D.2: the probability-flow ODE's likelihood by the instantaneous "
          "change of variables (Chen et al. 2018), dopri5 at rtol = atol = 1e-5, Hutchinson's trace estimate with "
          "one Rademacher probe per image; 8-bit pixels uniformly dequantized, (k + u) / 128 - 1, + 7 bits; "
          "*_se: the standard error over the test images (it includes the trace estimate's variance)")))
