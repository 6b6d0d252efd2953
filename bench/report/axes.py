"""One rule for every axis that shows a metric: it spans at least ``LEAST`` of the values' magnitude,
so a change of 0.1 % (IS 8.913 .. 8.922) does not fill the plot and read as an effect. Where the
values span less, the axis (or a heatmap's colour scale) is widened around them and the caption
states their true range."""

from __future__ import annotations

from typing import Any

import pandas as pd

LEAST = 0.05  # of the values' largest magnitude

RULE = (f"Metric axes span at least {100 * LEAST:g} % of the metric's magnitude (centred on its values), so noise "
        "does not fill a plot; where the values span less, the axis is widened and their true range stated.")


def flat_window(values: Any, least: float = LEAST) -> tuple[float, float, float, float] | None:
    """``(lo, hi, axis_lo, axis_hi)`` when ``values`` span less than ``least`` of their largest
    magnitude (the window ``least`` x that magnitude wide, centred on them); None otherwise."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if len(v) < 2:
        return None
    lo, hi, size = float(v.min()), float(v.max()), float(v.abs().max())
    if size == 0 or hi - lo >= least * size:
        return None
    mid = (lo + hi) / 2
    return lo, hi, mid - least * size / 2, mid + least * size / 2


def widen(ax: Any, values: Any, which: str = "y", least: float = LEAST) -> tuple[float, float, float, float] | None:
    """Widen ``ax``'s ``which`` axis (a linear one) to at least the window of ``values``; it never
    narrows it (error bars stay in view). Returns :func:`flat_window`'s answer."""
    window = flat_window(values, least)
    scale = ax.get_yscale() if which == "y" else ax.get_xscale()
    if window is None or scale != "linear":
        return None
    cur = ax.get_ylim() if which == "y" else ax.get_xlim()
    lim = (min(cur[0], window[2]), max(cur[1], window[3]))
    if which == "y":
        ax.set_ylim(*lim)
    else:
        ax.set_xlim(*lim)
    return window


def range_note(name: str, window: tuple[float, float, float, float] | None, least: float = LEAST) -> str:
    """``is_mean spans 8.913..8.922 (axis widened to 5 % of its value)``, or "" for no window."""
    if window is None:
        return ""
    if window[0] == window[1]:
        return f"{name} is {window[0]:.4g} throughout (axis widened to {100 * least:g} % of its value)"
    return f"{name} spans {window[0]:.4g}..{window[1]:.4g} (axis widened to {100 * least:g} % of its value)"


def honest_range(ax: Any, values: Any, name: str, least: float = LEAST) -> str:
    """Widen ``ax``'s y axis by the rule; the note naming the values' true range (or "")."""
    return range_note(name, widen(ax, values, "y", least), least)
