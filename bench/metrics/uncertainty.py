"""Uncertainty from stored features: bootstrap intervals and paired comparisons.

- :func:`bootstrap_intervals` (``eval.bootstrap: B``): the generated images are resampled with
  replacement B times (the reference is the fixed target) and the metric recomputed on their stored
  features. The interval is the **basic** (pivotal) bootstrap interval ``[2m - q_hi, 2m - q_lo]``:
  resampling with replacement duplicates images, which biases FID-like metrics upwards, and the
  basic interval subtracts that bias where the percentile interval would not (tested for coverage
  on Gaussian features whose Fréchet distance is known in closed form).
- :func:`paired_difference`: two configurations of one study draw image i of seed s from the same
  noise (``bench.jobs.eval.sample_seeds``), so their difference is resampled **paired**: one index
  draw per replicate, applied to both, which removes the noise the two sets share. The difference of
  two cells is significant at ``alpha`` when the ``1 - alpha`` basic interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

LEVEL = 0.95
SEED = 2020


def basic_interval(point: float, replicates: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """``[2 point - q_(1+level)/2, 2 point - q_(1-level)/2]`` of the bootstrap replicates."""
    q_lo, q_hi = np.quantile(np.asarray(replicates, dtype=float), [(1 - level) / 2, (1 + level) / 2])
    return float(2 * point - q_hi), float(2 * point - q_lo)


def resamples(n: int, count: int, seed: int = SEED) -> torch.Tensor:
    """``[count, n]`` indices drawn with replacement (a seeded torch generator: the same on every machine)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (count, n), generator=g)


def bootstrap(fn: Callable[[torch.Tensor], float], n: int, count: int, level: float = LEVEL,
              seed: int = SEED) -> tuple[float, float, float]:
    """(point, lo, hi): ``fn(index)`` on the identity and on ``count`` resampled index vectors."""
    return bootstrap_batched(lambda idx: np.array([fn(i) for i in idx]), n, count, level, seed)


def bootstrap_batched(fn: Callable[[torch.Tensor], np.ndarray], n: int, count: int, level: float = LEVEL,
                      seed: int = SEED) -> tuple[float, float, float]:
    """:func:`bootstrap` with ``fn`` taking all index vectors at once ([1 + count, n], the identity first)."""
    values = np.asarray(fn(torch.cat([torch.arange(n)[None], resamples(n, count, seed)])), dtype=float)
    return (float(values[0]), *basic_interval(values[0], values[1:], level))


def replicates(metric: Any, ctx: Any) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], np.ndarray]:
    """``fn(gen, ref, idx [B, n]) -> [B]``: the metric's first output on each resampled generated set,
    by its vectorised ``resampled`` where it has one, else ``on_features`` once per index vector."""
    key = metric.outputs[0].key
    if metric.resampled is not None:
        return lambda g, r, idx: np.asarray(metric.resampled(g, r, ctx, idx), dtype=float)
    return lambda g, r, idx: np.array([metric.on_features(g[i], r, ctx)[key] for i in idx])


def bootstrap_intervals(ctx: Any, wanted: Sequence[str], count: int, level: float = LEVEL) -> dict[str, float]:
    """``{fid_ci_lo, fid_ci_hi, ...}`` for every requested metric that is a function of two feature sets."""
    from bench.metrics.registry import METRICS

    out: dict[str, float] = {}
    for name in wanted:
        metric = METRICS.get(name)
        if metric.on_features is None:
            continue
        ext = ctx.extractor_named(ctx.feature_models[metric.feature_space]) if metric.feature_space else ctx.extractor
        gen, ref = ctx.features(ext)
        g, r = gen[ext.feature_layer], ref[ext.feature_layer]
        fn = replicates(metric, ctx)
        _, lo, hi = bootstrap_batched(lambda idx, g=g, r=r, fn=fn: fn(g, r, idx), len(g), count, level)
        out.update(dict(zip(metric.interval_keys, (lo, hi))))
    return out


def paired_difference(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], ref: torch.Tensor,
                      fn: Callable[[torch.Tensor, torch.Tensor], float], count: int, level: float = LEVEL,
                      seed: int = SEED, batched: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], np.ndarray]
                      | None = None) -> tuple[float, float, float]:
    """(mean_s fn(a_s) - mean_s fn(b_s), lo, hi) resampling the images of a and b together.

    ``a`` and ``b`` hold one feature matrix per seed, image i of a_s and b_s drawn from the same
    noise; every replicate applies one index vector to every matrix. ``batched(x, ref, idx [B, n])``,
    where given, computes fn on all replicates at once (:func:`replicates`).
    """
    n = {len(x) for x in (*a, *b)}
    if len(n) != 1 or len(a) != len(b) or not a:
        raise ValueError(f"paired sets must have one count and the same seeds, got {len(a)} and {len(b)} sets "
                         f"of {sorted(n)} images")
    many = batched or (lambda x, r, idx: np.array([fn(x[i], r) for i in idx]))

    def diff(idx: torch.Tensor) -> np.ndarray:
        return np.mean([many(x, ref, idx) for x in a], axis=0) - np.mean([many(x, ref, idx) for x in b], axis=0)

    return bootstrap_batched(diff, n.pop(), count, level, seed)
