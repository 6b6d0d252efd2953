"""Which axes a table cell or a plotted point would average over without saying so.

An axis *pools* in a selection of runs when, inside one group of the shown axes (a table's rows
and columns, a plot's x / hue / style / facets), it takes more than one value. Seeds are meant to
pool (that is the spread a cell reports); every other pooled axis is either split out (a row level,
a facet, one figure per value) or named in the spec's ``pool:`` and then stated in the caption.
An axis that is a function of the shown ones (``sample.steps`` zipped with ``sample.nfe``) does
not pool: it has one value per group.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

__all__ = ["pooled_axes", "pool_caption"]


def pooled_axes(jobs: pd.DataFrame, shown: Iterable[str], axes: Iterable[str]) -> list[str]:
    """The axes of ``axes`` (seed excluded) that vary inside a group of ``shown`` in ``jobs``."""
    shown = [a for a in dict.fromkeys(shown) if a in jobs]
    out = []
    for a in axes:
        if a == "seed" or a in shown or a not in jobs or jobs.empty:
            continue
        values = jobs[a].map(repr)
        spread = values.groupby([jobs[s].map(repr) for s in shown]).nunique() if shown else pd.Series([values.nunique()])
        if int(spread.max()) > 1:
            out.append(a)
    return out


def pool_caption(jobs: pd.DataFrame, pooled: Sequence[str], shown: Iterable[str], names: dict[str, str],
                 unit: str = "point") -> str:
    """'Pooled over objective (2 values: eps, v); each point averages 2-4 runs.' for an explicit ``pool:``."""
    if not pooled:
        return ""
    parts = []
    for a in pooled:
        values = list(dict.fromkeys(jobs[a].map(str)))
        parts.append(f"{names.get(a, a)} ({len(values)} values: {', '.join(values)})")
    shown = [a for a in shown if a in jobs]
    sizes = jobs.groupby([jobs[s].map(repr) for s in shown]).size() if shown else pd.Series([len(jobs)])
    lo, hi = int(sizes.min()), int(sizes.max())
    n = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"Pooled over {'; '.join(parts)}, as the spec's `pool:` asks: each {unit} averages {n} runs."
