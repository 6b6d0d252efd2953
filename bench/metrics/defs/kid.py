"""Kernel Inception Distance (Binkowski et al. 2018), mean and spread over subsets, by torch-fidelity."""

from __future__ import annotations

from typing import Any

from bench.core.errors import BenchError
from bench.metrics.registry import MetricDef, Output, Setting, register_metric


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


MAX_GRAM = 8192  # generated images up to which the resampled KID holds their n x n kernel matrix


def resampled(gen: Any, ref: Any, ctx: Any, idx: Any) -> Any:
    """KID (torch-fidelity's estimator: the same subsets of the same seed, its polynomial kernel) of
    each resampled generated set ``gen[idx[b]]`` at once, float64 [B].

    A subset of a resampled set is a multiset of the original images: with c its count vector, the
    subset's kernel sums are c^T K_gg c (less c . diag K_gg for the diagonal it drops) and
    c^T K_gr d (d: the reference subset's indicator), so the kernel matrices are computed once and
    every replicate costs a few matrix products instead of 100 subset kernels."""
    import numpy as np
    import torch

    from bench.metrics.fidelity import KID_SUBSETS, RNG_SEED

    n_g, n_r, dim = len(gen), len(ref), gen.shape[1]
    m = min(n_g, n_r, ctx.protocol.get("kid_subset_size", 1000))
    if n_g > MAX_GRAM:
        return np.array([on_features(gen[i], ref, ctx)["kid_mean"] for i in idx])
    rng = np.random.RandomState(RNG_SEED)  # torch-fidelity's draw order: generated, then reference
    picks = [(rng.choice(n_g, m, replace=False), rng.choice(n_r, m, replace=False)) for _ in range(KID_SUBSETS)]
    s_gen = torch.from_numpy(np.stack([g for g, _ in picks]))  # [K, m] positions in the resampled set
    s_ref = torch.from_numpy(np.stack([r for _, r in picks]))
    g, r = gen.double(), ref.double()

    def kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x @ y.transpose(-1, -2) / dim + 1.0) ** 3

    k_gg, k_gr = kernel(g, g), kernel(g, r)
    k_rr = kernel(r[s_ref], r[s_ref])  # [K, m, m]
    rr_off = k_rr.sum((1, 2)) - k_rr.diagonal(dim1=1, dim2=2).sum(1)
    d = torch.zeros(KID_SUBSETS, n_r, dtype=torch.float64).scatter_(1, s_ref, 1.0)
    v = k_gr @ d.T  # [n_g, K]: each generated image's kernel sum over subset k's reference images
    out = []
    chunk = max(1, 2**22 // (KID_SUBSETS * n_g))
    for lo in range(0, len(idx), chunk):
        a = idx[lo: lo + chunk][:, s_gen]  # [b, K, m] original indices of each subset's images
        c = torch.zeros(len(a), KID_SUBSETS, n_g, dtype=torch.float64).scatter_add_(2, a, torch.ones(a.shape, dtype=torch.float64))
        gg_off = ((c @ k_gg) * c).sum(2) - c @ k_gg.diagonal()
        gr = torch.einsum("bki,ik->bk", c, v)
        out.append(((gg_off + rr_off) / (m * (m - 1)) - 2.0 * gr / (m * m)).mean(1))
    return torch.cat(out).numpy()


def check_subset_size(size: Any, where: str) -> None:
    if size < 2:
        raise BenchError(f"{where} must be at least 2, got {size}")


def protocol(n: int, m: int | None, settings: dict[str, Any]) -> dict[str, Any]:
    from bench.metrics.fidelity import KID_SUBSETS

    return {"kid_subset_size": min(settings["kid_subset_size"], n, m or n), "kid_subsets": KID_SUBSETS}


register_metric(MetricDef(
    "kid", (Output("kid_mean", "KID", ".4g", False, spread="kid_std"), Output("kid_std", "KID std over subsets", ".4g")),
    compute, higher_is_better=False, needs_reference=True, torch_fidelity_flag="kid", on_features=on_features, resampled=resampled, min_samples=lambda dim: 2,
    settings=(Setting("kid_subset_size", check_subset_size),), protocol=protocol,
    cite="Binkowski et al. 2018, Demystifying MMD GANs (KID)"))
