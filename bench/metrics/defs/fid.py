"""Fréchet Inception Distance (Heusel et al. 2017), by torch-fidelity or clean-fid's formula."""

from __future__ import annotations

from typing import Any

from bench.metrics.registry import MetricDef, Output, register_metric


def compute(ctx: Any) -> dict[str, float]:
    if ctx.fid_backend == "clean-fid":
        ctx.protocol["backend"] = "clean-fid (FID) + torch-fidelity" if len(ctx.flags) > 1 else "clean-fid"
        return {"fid": ctx.clean_fid()}
    return {"fid": ctx.torch_fidelity()["fid"]}


def on_features(gen: Any, ref: Any, ctx: Any) -> dict[str, float]:
    from bench.metrics.features import frechet

    return {"fid": frechet(gen, ref)}


register_metric(MetricDef(
    "fid", (Output("fid", "FID", ".1f", False),), compute, higher_is_better=False, needs_reference=True,
    on_features=on_features,
    torch_fidelity_flag="fid", min_samples=lambda dim: dim + 1,  # a nonsingular covariance
    cite="Heusel et al. 2017, GANs trained by a two time-scale update rule (FID)"))
