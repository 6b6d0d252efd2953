"""Inception Score (Salimans et al. 2016), mean and spread over splits, by torch-fidelity."""

from __future__ import annotations

from typing import Any

from bench.metrics.registry import MetricDef, Output, register_metric


def compute(ctx: Any) -> dict[str, float]:
    tf = ctx.torch_fidelity()
    return {"is_mean": tf["is_mean"], "is_std": tf["is_std"]}


def protocol(n: int, m: int | None, settings: dict[str, Any]) -> dict[str, Any]:
    return {"isc_splits": min(settings["isc_splits"], n)}


register_metric(MetricDef(
    "is", (Output("is_mean", "IS", ".2f", True, spread="is_std"), Output("is_std", "IS std over splits", ".2f")), compute,
    higher_is_better=True, torch_fidelity_flag="isc", min_samples=lambda dim: 2, protocol=protocol,
    cite="Salimans et al. 2016, Improved techniques for training GANs (Inception Score)"))
