"""Which axes a table cell or a plotted point would average over without saying so.

An axis *pools* in a selection of runs when, inside one group of the shown axes (a table's rows
and columns, a plot's x / hue / style / facets), it takes more than one value. Seeds are meant to
pool (that is the spread a cell reports); every other pooled axis is either split out (a row level,
a facet, one figure per value) or named in the spec's ``pool:`` and then stated in the caption.
An axis that is a function of the shown ones (``sample.steps`` zipped with ``sample.nfe``) does
not pool: it has one value per group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import pandas as pd

from bench.study.report_specs import PlotSpec

__all__ = ["pooled_axes", "pool_caption", "show_every_axis", "figure_caption"]


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


# roles an unshown axis may take, in order, per kind ("x" is never re-assigned)
_FREE_ROLES = {"line": ("hue", "style", "col", "row"), "bars": ("hue", "col"), "tradeoff": ("hue", "style", "col"),
               "heatmap": ("col",)}  # fmt: skip


def _shown(spec: PlotSpec) -> list[str]:
    roles = ("hue", "style", "col", "row", "label") + (("x",) if spec.kind != "tradeoff" else ())
    return [a for a in (getattr(spec, r) for r in roles) if a]


def show_every_axis(spec: PlotSpec, frame: pd.DataFrame, names: dict[str, str]
                     ) -> tuple[PlotSpec, list[str], list[str]]:  # fmt: skip
    """(spec with unshown varying axes in free roles, axes left for one image per value, axes split)."""
    split = [a for a in pooled_axes(frame, _shown(spec), names) if a not in spec.pool]
    rest = list(split)
    free = [r for r in _FREE_ROLES.get(spec.kind, ()) if getattr(spec, r) is None]
    fill = {}
    while rest and free:
        fill[free.pop(0)] = rest.pop(0)
    return dataclasses.replace(spec, **fill), rest, split


def figure_caption(spec: PlotSpec, frame: pd.DataFrame, names: dict[str, str], split: list[str], rest: list[str]) -> str:
    """What a point and an error bar are, and what was split or pooled."""
    if frame.empty:
        return ""
    shown = [*_shown(spec), *rest]
    seeds = frame.groupby([frame[a].map(repr) for a in shown])["seed"].nunique() if shown else \
        pd.Series([frame["seed"].nunique()])  # fmt: skip
    n = int(seeds.max())
    if spec.kind == "heatmap":
        out = f"Each cell: the mean over {n} seed{'s' * (n > 1)}."
    elif n > 1 or spec.pool:
        over = " and ".join([*(["seeds"] if n > 1 else []), *(["the pooled values"] if spec.pool else [])])
        out = f"Each point: the mean of its runs ({n} seed{'s' * (n > 1)}); error bars: sample std (ddof=1) over {over}."
    else:
        out = "One seed: each point is one run, no error bars."
    if split:
        where = "own image" if rest else "own line or facet"
        out += (f" {', '.join(names.get(a, a) for a in split)} varies in these runs and the spec does not name it: "
                f"each value gets its {where} rather than being averaged.")  # fmt: skip
    if spec.pool:
        out += " " + pool_caption(frame, spec.pool, shown, names)
    return out
