"""Fréchet Inception Distance (Heusel et al. 2017), by torch-fidelity or clean-fid's formula."""

from __future__ import annotations

from typing import Any

from bench.metrics.registry import MetricDef, Output, Setting, register_metric


def compute(ctx: Any) -> dict[str, float]:
    if ctx.fid_backend == "clean-fid":
        ctx.protocol["backend"] = "clean-fid (FID) + torch-fidelity" if len(ctx.flags) > 1 else "clean-fid"
        return {"fid": ctx.clean_fid()}
    return {"fid": ctx.torch_fidelity()["fid"]}


def on_features(gen: Any, ref: Any, ctx: Any) -> dict[str, float]:
    from bench.metrics.features import frechet

    return {"fid": frechet(gen, ref)}


def resampled(gen: Any, ref: Any, ctx: Any, idx: Any) -> Any:
    """FID of each resampled generated set ``gen[idx[b]]`` at once, float64 [B]: the resampled mean
    and covariance from count weights, and tr sqrt(S_g S_r) as the sum of the square roots of the
    eigenvalues of S_r^1/2 S_g S_r^1/2 (the eigenvalues torch-fidelity takes of S_g S_r, from a
    symmetric matrix: batched, and real by construction)."""
    import torch

    g, r = gen.double(), ref.double()
    n = len(g)
    mu_r, cov_r = r.mean(0), torch.cov(r.T)
    lam, vec = torch.linalg.eigh(cov_r)
    half = (vec * lam.clamp_min(0).sqrt()) @ vec.T
    out = []
    chunk = max(1, 2**24 // (n * g.shape[1]))
    for lo in range(0, len(idx), chunk):
        part = idx[lo: lo + chunk]
        w = torch.zeros(len(part), n, dtype=torch.float64).scatter_add_(1, part, torch.ones(part.shape, dtype=torch.float64)) / n
        mu = w @ g
        second = torch.einsum("bn,ni,nj->bij", w, g, g)
        cov = (second - mu[:, :, None] * mu[:, None, :]) * (n / (n - 1))
        tr_sqrt = torch.linalg.eigvalsh(half @ cov @ half).clamp_min(0).sqrt().sum(1)
        diff = mu - mu_r
        out.append((diff * diff).sum(1) + cov.diagonal(dim1=1, dim2=2).sum(1) + cov_r.trace() - 2 * tr_sqrt)
    return torch.cat(out).numpy()


def check_backend(backend: Any, where: str) -> None:
    from bench.metrics.fidelity import FID_BACKENDS

    FID_BACKENDS.check(backend, where)


def check(ev: Any, data: Any, where: str) -> None:
    """clean-fid's Inception is another weights file than torch-fidelity's: found offline?"""
    from bench.metrics.extractors import resolve_name

    if ev.fid_backend == "clean-fid" and resolve_name(ev.extractor, f"{where}.extractor")[0] == "inception":
        from bench.metrics.clean_fid import check_inception

        check_inception(f"{where}.fid_backend")


def protocol(n: int, m: int | None, settings: dict[str, Any]) -> dict[str, Any]:
    import warnings

    from bench.metrics.fidelity import FID_UNBIASED_SAMPLES, FIDSampleSizeWarning

    if min(n, m or n) < FID_UNBIASED_SAMPLES:
        # no run name in the text: Python then shows it once per process, not once per run
        warnings.warn(f"FID from {min(n, m or n)} samples (< {FID_UNBIASED_SAMPLES}) is biased upwards "
                      "by the sample count; compare only numbers with equal counts", FIDSampleSizeWarning,
                      stacklevel=4)  # the caller of compute_metrics
    return {}


register_metric(MetricDef(
    "fid", (Output("fid", "FID", ".1f", False),), compute, higher_is_better=False, needs_reference=True,
    on_features=on_features, resampled=resampled,
    torch_fidelity_flag="fid", min_samples=lambda dim: dim + 1,
    min_samples_why="feature dimension {dim} + 1, for a nonsingular covariance", few_samples_hint="kid",
    settings=(Setting("fid_backend", check_backend),), check=check, protocol=protocol,
    cite="Heusel et al. 2017, GANs trained by a two time-scale update rule (FID)", headline=True))
