"""Class accuracy: how often a domain classifier agrees with the class an image was generated for."""

from __future__ import annotations

from typing import Any

from bench.metrics.accuracy import class_accuracy
from bench.metrics.registry import MetricDef, Output, register_metric


def compute(ctx: Any) -> dict[str, float]:
    name = f"domain:{ctx.dataset()}"
    ctx.protocol["class_accuracy_extractor"] = name
    return {"class_accuracy": class_accuracy(ctx.images, ctx.labels, name, data=ctx.data, device=ctx.device)}


register_metric(MetricDef(
    "class_accuracy", (Output("class_accuracy", "Class acc.", ".3f", True),), compute, higher_is_better=True,
    needs_labels=True, needs_classifier=True, cite="agreement of a domain classifier with the requested class labels"))
