"""Kernel Inception Distance (Binkowski et al. 2018), mean and spread over subsets, by torch-fidelity."""

from __future__ import annotations

from typing import Any

from bench.metrics.registry import MetricDef, Output, register_metric


def compute(ctx: Any) -> dict[str, float]:
    tf = ctx.torch_fidelity()
    return {"kid_mean": tf["kid_mean"], "kid_std": tf["kid_std"]}


register_metric(MetricDef(
    "kid", (Output("kid_mean", "KID", ".4g", False, spread="kid_std"), Output("kid_std", "KID std", ".4g")),
    compute, higher_is_better=False, needs_reference=True, torch_fidelity_flag="kid", min_samples=lambda dim: 2,
    cite="Binkowski et al. 2018, Demystifying MMD GANs (KID)"))
