"""Fréchet distance in DINOv2 ViT-L/14 feature space (Stein et al. 2023; EDM2's FD_DINOv2), by
torch-fidelity's Fréchet distance on our DINOv2 extractor's features (:mod:`bench.metrics.foundation`)."""

from __future__ import annotations

from typing import Any

from bench.metrics.features import frechet
from bench.metrics.registry import MetricDef, Output, in_feature_space, register_metric


def on_features(gen: Any, ref: Any, ctx: Any) -> dict[str, float]:
    return {"fd_dinov2": frechet(gen, ref)}


register_metric(MetricDef(
    "fd_dinov2", (Output("fd_dinov2", "FD_DINOv2", ".1f", False),), in_feature_space("fd_dinov2"),
    higher_is_better=False, needs_reference=True, feature_space="dinov2", on_features=on_features, min_samples=lambda dim: 2,
    cite="Stein et al. 2023, Exposing flaws of generative model evaluation metrics (FD_DINOv2)"))
