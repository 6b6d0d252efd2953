"""CMMD (Jayasumana et al. 2024): squared MMD with a Gaussian RBF kernel (sigma 10), scaled by 1000,
between CLIP ViT-L/14-336 embeddings of the generated and the reference images, as
google-research/cmmd defines it (the biased V-statistic: every pair, diagonals included). The kernel
matrices are torch-fidelity's ``kernel_rbf``; the images' embeddings come from torch-fidelity's CLIP
network with CMMD's preprocessing (:mod:`bench.metrics.foundation`)."""

from __future__ import annotations

from typing import Any

from bench.metrics.registry import MetricDef, Output, in_feature_space, register_metric

SIGMA, SCALE = 10.0, 1000.0


def cmmd(gen: Any, ref: Any) -> float:
    from torch_fidelity.metric_kid import kernel_rbf

    x, y = gen.double().numpy(), ref.double().numpy()
    k = {"kid_kernel_rbf_sigma": SIGMA}
    k_xx, k_yy, k_xy = (kernel_rbf(a, b, **k).mean() for a, b in ((x, x), (y, y), (x, y)))
    return float(SCALE * (k_xx + k_yy - 2 * k_xy))


def on_features(gen: Any, ref: Any, ctx: Any) -> dict[str, float]:
    return {"cmmd": cmmd(gen, ref)}


register_metric(MetricDef(
    "cmmd", (Output("cmmd", "CMMD", ".3f", False),), in_feature_space("cmmd"), higher_is_better=False,
    needs_reference=True, feature_space="clip", on_features=on_features, min_samples=lambda dim: 2,
    cite="Jayasumana et al. 2024, Rethinking FID: towards a better evaluation metric for image generation (CMMD)"))
