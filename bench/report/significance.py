"""Which cells of a table column are not significantly different from its best cell.

Runs of one study draw image i of seed s from the same noise, so two cells are compared **paired**:
their runs are matched by seed, their stored generated features (the feature store, found through
the runs' ``protocol.features.<extractor>`` tags) resampled with one index draw per replicate, and
the metric recomputed against the stored reference features (:func:`bench.metrics.uncertainty.paired_difference`).
A cell is marked when the ``1 - alpha`` interval of its difference from the best includes 0.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd


def _features(run: pd.Series, metric_name: str) -> tuple[Any, Any, Any] | None:
    """(generated, reference, ctx) features of ``run`` for metric ``metric_name``, or None when not stored."""
    import torch

    from bench.metrics import METRICS

    space = METRICS.get(metric_name).feature_space  # its extractor: see bench.metrics.registry.in_feature_space
    ext = run.get(f"tags.protocol.{metric_name}_extractor" if space else "tags.protocol.extractor")
    gen_path, ref_path = (run.get(f"tags.protocol.{kind}.{ext}") for kind in ("features", "reference_features"))
    if not all(isinstance(p, str) and Path(p).is_file() for p in (gen_path, ref_path)):
        return None
    layer = Path(ref_path).stem.rsplit("-features-", 1)[-1]
    gen = torch.load(gen_path, map_location="cpu", weights_only=True).get(layer)
    ref = torch.load(ref_path, map_location="cpu", weights_only=False)
    kid = run.get("tags.protocol.kid_subset_size")
    ctx = SimpleNamespace(protocol={"kid_subset_size": int(kid)} if isinstance(kid, str) and kid.isdigit() else {})
    return (gen, ref, ctx) if gen is not None else None


def not_different(cells: list[Any], best: int, metric: str, runs: pd.DataFrame, alpha: float,
                  resamples: int) -> tuple[list[bool | None], str | None]:
    """Per cell: True (not significantly different from cell ``best``), False (different), None (not
    tested: the best itself, no finished runs, features not stored, or seeds that do not pair); and a
    reason when some cell could not be tested."""
    from bench.metrics import METRICS, maker_of
    from bench.metrics.uncertainty import paired_difference, replicates

    name = maker_of(metric)
    definition = METRICS.get(name)
    fn = definition.on_features
    by_id = {r["run_id"]: r for _, r in runs.iterrows()}

    def sets(cell: Any) -> dict[int, tuple[Any, Any, Any]] | None:
        out = {}
        for seed, run_id in cell.runs:
            got = _features(by_id[run_id], name) if run_id in by_id else None
            if got is None:
                return None
            out[seed] = got
        return out or None

    ref_sets = sets(cells[best])
    marks: list[bool | None] = [None] * len(cells)
    why = None if ref_sets else "the best cell's features are not in the feature store"
    for i, cell in enumerate(cells):
        if i == best or ref_sets is None or not cell.runs:
            continue
        these = sets(cell)
        if these is None or set(these) != set(ref_sets):
            why = why or "some cells' features are not stored or their seeds do not pair with the best cell's"
            continue
        seeds = sorted(these)
        _, ref, ctx = ref_sets[seeds[0]]
        try:
            _, lo, hi = paired_difference([these[s][0] for s in seeds], [ref_sets[s][0] for s in seeds], ref,
                                          lambda g, r, c=ctx: fn(g, r, c)[metric], resamples, level=1 - alpha,
                                          batched=replicates(definition, ctx) if metric == definition.outputs[0].key
                                          else None)
        except ValueError:  # different sample counts: nothing to pair
            why = why or "some cells have other sample counts than the best cell"
            continue
        marks[i] = lo <= 0 <= hi
    return marks, why
