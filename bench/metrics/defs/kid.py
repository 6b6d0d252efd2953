"""Kernel Inception Distance (Binkowski et al. 2018), mean and spread over subsets, by torch-fidelity."""

from __future__ import annotations

from typing import Any

from bench.metrics.registry import MetricDef, Output, register_metric


def compute(ctx: Any) -> dict[str, float]:
    tf = ctx.torch_fidelity()
    return {"kid_mean": tf["kid_mean"], "kid_std": tf["kid_std"]}


def on_features(gen: Any, ref: Any, ctx: Any) -> dict[str, float]:
    from torch_fidelity.metric_kid import kid_features_to_metric

    from bench.metrics.fidelity import KID_SUBSETS, RNG_SEED

    n = min(len(gen), len(ref), ctx.protocol.get("kid_subset_size", 1000))
    out = kid_features_to_metric(gen, ref, kid_subsets=KID_SUBSETS, kid_subset_size=n, rng_seed=RNG_SEED,
                                 verbose=False)
    return {"kid_mean": float(out["kernel_inception_distance_mean"])}


register_metric(MetricDef(
    "kid", (Output("kid_mean", "KID", ".4g", False, spread="kid_std"), Output("kid_std", "KID std", ".4g")),
    compute, higher_is_better=False, needs_reference=True, torch_fidelity_flag="kid", on_features=on_features, min_samples=lambda dim: 2,
    cite="Binkowski et al. 2018, Demystifying MMD GANs (KID)"))
