"""Negative log-likelihood in bits per dimension by the variational bound (needs the model)."""

from __future__ import annotations

from typing import Any

from bench.metrics.nll import model_nll_bpd
from bench.metrics.registry import MetricDef, Output, register_metric


def compute(ctx: Any) -> dict[str, float]:
    return {"nll_bpd": model_nll_bpd(ctx)}


register_metric(MetricDef(
    "nll", (Output("nll_bpd", "NLL (bits/dim)", ".2f", False),), compute, higher_is_better=False, needs_model=True,
    cite="Ho et al. 2020 / Nichol & Dhariwal 2021: variational bound in bits per dimension"))
