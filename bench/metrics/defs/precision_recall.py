"""Improved precision and recall (Kynkäänniemi et al. 2019), by torch-fidelity (one call for both)."""

from __future__ import annotations

from typing import Any

from bench.metrics.registry import MetricDef, Output, register_metric

CITE = "Kynkaanniemi et al. 2019, Improved precision and recall metric"


def protocol(n: int, m: int | None, settings: dict[str, Any]) -> dict[str, Any]:
    from bench.metrics.fidelity import PRC_NEIGHBORHOOD

    return {"prc_neighborhood": PRC_NEIGHBORHOOD}


for _key, _label in (("precision", "Precision"), ("recall", "Recall")):
    register_metric(MetricDef(
        _key, (Output(_key, _label, ".3f", True),), lambda ctx, k=_key: {k: ctx.torch_fidelity()[k]},
        higher_is_better=True, needs_reference=True, torch_fidelity_flag="prc", min_samples=lambda dim: 4,
        protocol=protocol, cite=CITE))  # 4: more than prc_neighborhood = 3 neighbours
