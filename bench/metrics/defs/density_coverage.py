"""Density and coverage (Naeem et al. 2020) in the run's feature space (``eval.extractor``: Inception,
a domain classifier, DINOv2 or CLIP), by the authors' ``prdc`` package, k = 5 nearest neighbours."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from bench.metrics.registry import MetricDef, Output, register_metric

NEAREST_K = 5  # the paper's default
CITE = "Naeem et al. 2020, Reliable fidelity and diversity metrics for generative models (density, coverage)"


def _prdc(ctx: Any) -> dict[str, float]:
    if "_prdc" not in ctx.memo:
        from prdc import compute_prdc

        gen, ref = ctx.features()
        layer = ctx.extractor.feature_layer
        ctx.protocol["prdc_nearest_k"] = NEAREST_K
        with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the two counts
            out = compute_prdc(real_features=ref[layer].double().numpy(), fake_features=gen[layer].double().numpy(),
                               nearest_k=NEAREST_K)
        ctx.memo["_prdc"] = {k: float(v) for k, v in out.items()}
    return ctx.memo["_prdc"]


for _key, _label in (("density", "Density"), ("coverage", "Coverage")):
    register_metric(MetricDef(
        _key, (Output(_key, _label, ".3f", True),), lambda ctx, k=_key: {k: _prdc(ctx)[k]},
        higher_is_better=True, needs_reference=True, min_samples=lambda dim: NEAREST_K + 1, cite=CITE))
