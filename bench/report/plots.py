"""Seaborn plots of a study, rendered off-screen to PNG bytes (the Agg canvas; pyplot is never
imported, so no global backend or figure state is touched).

Kinds (see :mod:`bench.study.report_specs`): ``line`` (a metric against an axis, one line per ``hue``
value, mean ± sd over seeds, log x when the values span a decade or more — the DDIM
steps x eta figure), ``tradeoff`` (two metrics against each other along an axis — FID vs IS over
guidance scales), ``heatmap`` (a metric over two axes), ``bars`` (bars with sd error bars over
seeds), ``loss`` (the training-loss curves of the study's TRAIN runs, from MLflow's metric
history) and ``samples`` (the ``samples.png`` grid each EVAL run logged).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.metrics import METRICS, maker_of
from bench.report.axes import RULE, flat_window, range_note, widen
from bench.report.grids import PNG_MAGIC, sample_grids
from bench.report.loss_plot import loss_caption, loss_facets, loss_frame, plot_loss
from bench.report.pooling import figure_caption, show_every_axis
from bench.report.runs import StudyRuns
from bench.report.tables import _filter as filter_jobs
from bench.report.tables import default_format, direction, metric_label
from bench.study.report_specs import PlotSpec, TableSpec

__all__ = ["Figure", "default_plots", "render_plot", "PNG_MAGIC"]

_FACET_W, _FACET_H, _DPI = 5.0, 3.6, 110


@dataclass
class Figure:
    """One plot spec's output: PNG images with captions, and notes (what could not be drawn)."""

    title: str
    kind: str
    images: list[tuple[str, bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    caption: str = ""  # what a point / bar / line is, and what was split or pooled


def render_plot(spec: PlotSpec, data: StudyRuns, order: dict[str, list[Any]], names: dict[str, str]) -> Figure:
    """Draw ``spec``; an empty selection gives a Figure with a note instead of images.

    No point, line or bar averages over an axis the figure does not show: an axis that varies
    inside one (x, hue, style, facet) group takes the next free role of the kind (hue, style, col,
    row), and beyond those one image per value; only the spec's ``pool:`` averages, and says so.
    """
    title = spec.title or _default_title(spec, names)
    fig = Figure(title, spec.kind)
    if spec.kind == "samples":
        fig.images, fig.notes = sample_grids(spec, data, order, names)
        return fig
    if spec.kind == "loss":
        frame, rest = loss_frame(spec, data), []
        spec = loss_facets(spec, frame)
        fig.caption = loss_caption(spec, frame, names)
    else:
        frame = _eval_frame(spec, data)
        spec, rest, split = show_every_axis(spec, frame, names)
        fig.caption = figure_caption(spec, frame, names, split, rest)
        fig.notes += coinciding(frame, spec, names) if spec.kind == "line" else []
    if frame.empty:
        fig.notes.append("Nothing to plot yet: no finished runs match this plot.")
        return fig
    draw = {"line": _line, "tradeoff": _tradeoff, "heatmap": _heatmap, "bars": _bars, "loss": plot_loss}[spec.kind]
    ranges = []
    if spec.kind == "heatmap":  # one colour scale for every facet and image, widened by the axis rule
        cells = frame.groupby([spec.row, spec.x, *([spec.col] if spec.col else []), *rest])[spec.y].mean()
        window = flat_window(cells)
        vrange = (window[2], window[3]) if window else (float(cells.min()), float(cells.max()))
        draw = functools.partial(_heatmap, vrange=vrange)
        ranges.append(range_note(metric_label(spec.y or ""), window).replace("axis", "colour scale"))
    groups = frame.groupby([frame[a].map(str) for a in rest], sort=False) if rest else [((), frame)]
    parts = sorted(groups, key=lambda g: _rank(rest, g[1].iloc[0], order))
    for values, part in parts:
        values = values if isinstance(values, tuple) else (values,)
        label = ", ".join(f"{names.get(a, a)} = {v}" for a, v in zip(rest, values))
        part = _categorical(part.copy(), spec, order)
        fig.images.append((f"{title} — {label}" if label else title, _draw(spec, part, order, names, draw)))
        ranges += [f"{label}: {n}" if label else n for n in _axis_ranges(spec, part)]
    if spec.kind != "loss":
        widened = "; ".join(r for r in ranges if r)
        fig.caption = " ".join(c for c in (fig.caption, RULE, widened + "." if widened else "") if c)
    return fig


def _metric_axes(spec: PlotSpec) -> list[tuple[str, str]]:
    """(which, output) of each axis showing a metric (a heatmap's colour scale is set by render_plot)."""
    if spec.kind == "tradeoff":
        return [("x", spec.x or ""), ("y", spec.y or "")]
    return [("y", spec.y or "")] if spec.kind == "line" else []  # bars start at 0: wide enough


def _axis_ranges(spec: PlotSpec, frame: pd.DataFrame) -> list[str]:
    """The true range of each metric axis the rule widened in an image (every facet shares it)."""
    linear = not spec.options.get("logy")
    return [range_note(metric_label(m), flat_window(frame[m])) for which, m in _metric_axes(spec)
            if m in frame and (linear or which == "x")]


def coinciding(frame: pd.DataFrame, spec: PlotSpec, names: dict[str, str]) -> list[str]:
    """Lines of one panel that lie on each other at every x (≡ rows of a table): one hides the other."""
    from bench.report.captions import SAME

    series, facets = [a for a in (spec.hue, spec.style) if a], [a for a in (spec.col, spec.row) if a]
    if not series or not spec.x or spec.y not in frame:
        return []
    found: dict[str, None] = {}
    panels = frame.groupby([frame[a].map(str) for a in facets]) if facets else [((), frame)]
    for _, part in panels:
        curves = {k if isinstance(k, tuple) else (k,): g.groupby(g[spec.x].map(str))[spec.y].mean()
                  for k, g in part.groupby([part[a].map(str) for a in series])}  # fmt: skip
        keys = list(curves)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                ca, cb = curves[a], curves[b]
                if len(ca) >= 2 and ca.index.equals(cb.index) and all(
                        abs(u - v) <= SAME * max(abs(u), abs(v)) for u, v in zip(ca, cb)):
                    name = [", ".join(f"{names.get(s, s)} = {v}" for s, v in zip(series, k)) for k in (a, b)]
                    found[f"The lines {name[0]} and {name[1]} coincide at every {names.get(spec.x, spec.x)} "
                          f"(to {SAME:g} relative): one hides the other (≡ in the tables)."] = None
    return list(found)


def _rank(axes: list[str], row: Any, order: dict[str, list[Any]]) -> tuple[int, ...]:
    ranks = {a: {str(v): i for i, v in enumerate(order.get(a, []))} for a in axes}
    return tuple(ranks[a].get(str(row[a]), 10**6) for a in axes)


def default_plots(tables: list[TableSpec], data: StudyRuns, axes: tuple[str, ...] | list[str]) -> list[PlotSpec]:
    """The figures of a study with no ``plots:``: the first table's metric against its column axis
    (one line per value of its first row axis; any other varying axis gets its own facet or
    image), and the samples grid of the best cell by that metric."""
    axes = [a for a in axes if a != "seed"]
    if tables:
        t = tables[0]
        metric, x, where = t.values[0], t.columns or t.rows[-1], dict(t.where)
        hue = next((r for r in t.rows if r != x), None)
    else:
        ranked = sorted((m for m in data.metrics if direction(m) is not None), key=lambda m: not headline(m))
        metric, x, where, hue = (ranked[0] if ranked else None), (axes[0] if axes else None), {}, None
    out = []
    jobs = filter_jobs(data.finished(), where)
    if metric is not None and x is not None and metric in jobs:
        kind = "line" if _numeric(jobs[x]) else "bars"
        out.append(PlotSpec(kind=kind, x=x, y=metric, hue=hue, where=where))
    if metric is not None and metric in jobs and axes and direction(metric) is not None:
        means = jobs.dropna(subset=[metric]).groupby([jobs[a].map(repr) for a in axes], sort=False)[metric].mean()
        if len(means):
            best = means.idxmax() if direction(metric) else means.idxmin()
            best = best if isinstance(best, tuple) else (best,)
            row = next(r for r in jobs.to_dict("records") if tuple(repr(r[a]) for a in axes) == best)
            cell = {a: (row[a],) for a in axes}
            out.append(PlotSpec(kind="samples", y=metric, where=cell,
                                title=f"Samples of the best cell by {metric_label(metric)}"))  # fmt: skip
    return out


def headline(key: str) -> bool:
    """Whether ``key`` is the value of a metric its registry entry marks as the headline number
    (the one a default figure shows when the study's tables name none)."""
    maker = maker_of(key)
    return maker is not None and METRICS.get(maker).headline and METRICS.get(maker).value_key == key


def _default_title(spec: PlotSpec, names: dict[str, str]) -> str:
    n = names.get
    if spec.kind == "loss":
        return "Training loss" + (f" by {n(spec.hue, spec.hue)}" if spec.hue else "")
    if spec.kind == "samples":
        return "Samples" + (f" by {', '.join(n(b, b) for b in spec.by)}" if spec.by else "")
    if spec.kind == "heatmap":
        return f"{metric_label(spec.y or '')} by {n(spec.row, spec.row)} × {n(spec.x, spec.x)}"
    x = metric_label(spec.x) if spec.kind == "tradeoff" else n(spec.x, spec.x)
    return f"{metric_label(spec.y or '')} vs {x}" + (f" by {n(spec.hue, spec.hue)}" if spec.hue else "")


# --- data --------------------------------------------------------------------------------------


def _categorical(frame: pd.DataFrame, spec: PlotSpec, order: dict[str, list[Any]]) -> pd.DataFrame:
    """Grouping axes as ordered strings, so legends are discrete and follow the study's order."""
    for role in ("hue", "style", "col", "row", "label"):
        axis = getattr(spec, role)
        if axis and axis in frame:
            values = [str(v) for v in order.get(axis, [])]
            cats = values + sorted(set(frame[axis].map(str)) - set(values))
            frame[axis] = pd.Categorical(frame[axis].map(str), categories=cats, ordered=True)
            frame[axis] = frame[axis].cat.remove_unused_categories()
    if spec.kind in ("bars", "heatmap") and spec.x in frame:
        vals = [str(v) for v in order.get(spec.x, [])]
        frame[spec.x] = pd.Categorical(frame[spec.x].map(str), categories=vals, ordered=True)
        frame[spec.x] = frame[spec.x].cat.remove_unused_categories()
    return frame


def _eval_frame(spec: PlotSpec, data: StudyRuns) -> pd.DataFrame:
    jobs = filter_jobs(data.finished(), spec.where)
    need = [m for m in (spec.y, spec.x if spec.kind == "tradeoff" else None) if m]
    if any(m not in jobs for m in need):
        return jobs.iloc[0:0]
    return jobs.dropna(subset=need).copy()


# --- drawing -----------------------------------------------------------------------------------


def _facets(frame: pd.DataFrame, spec: PlotSpec) -> list[tuple[str, pd.DataFrame]]:
    col, row = spec.col, (spec.row if spec.kind != "heatmap" else None)  # a heatmap's row is its y axis
    rows = list(frame[row].cat.categories) if row else [None]
    cols = list(frame[col].cat.categories) if col else [None]
    out = []
    for r in rows:
        for c in cols:
            sub = frame
            sub = sub[sub[row] == r] if row else sub
            sub = sub[sub[col] == c] if col else sub
            label = " · ".join(f"{k} = {v}" for k, v in ((row, r), (col, c)) if k)
            out.append((label, sub))
    return out


def _draw(spec: PlotSpec, frame: pd.DataFrame, order: dict[str, list[Any]], names: dict[str, str],
          draw: Any) -> bytes:  # fmt: skip
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    facets = _facets(frame, spec)
    ncols = len(frame[spec.col].cat.categories) if spec.col else 1
    nrows = max(1, len(facets) // ncols)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig = MplFigure(figsize=(_FACET_W * ncols, _FACET_H * nrows), dpi=_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=spec.kind not in ("heatmap", "loss"))
        for i, (label, sub) in enumerate(facets):
            ax = axes[i // ncols][i % ncols]
            if sub.empty:
                ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
            else:
                draw(ax, sub, spec, order, names)
                for which, m in _metric_axes(spec):  # the image's values: facets share the window
                    widen(ax, frame[m], which)
            ax.set_title(_short_facet(label, names), fontsize=10)
        _legend_outside(fig, axes.ravel(), names)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def _short_facet(label: str, names: dict[str, str]) -> str:
    for full, short in names.items():
        label = label.replace(full, short)
    return label


def _legend_title(ax: Any, spec: PlotSpec, names: dict[str, str]) -> None:
    legend = ax.get_legend()
    if legend is not None:
        roles = [names.get(a, a) for a in (spec.hue, spec.style) if a]
        # with hue and style seaborn writes each role's name as an entry: no title then
        legend.set_title(roles[0] if len(roles) == 1 else None)


def _legend_outside(fig: Any, axes: Any, names: dict[str, str]) -> None:
    """One legend for the figure, right of the facets, never on the data (the facets share it)."""
    found = None
    for ax in axes:
        legend = ax.get_legend()
        if legend is not None:
            if found is None:
                found = (ax.get_legend_handles_labels(), legend.get_title().get_text())
            legend.remove()
    if found:
        (handles, labels), title = found
        labels = [names.get(t, t) for t in labels]  # seaborn's role headings are the full axis names
        fig.legend(handles, labels, title=title or None, loc="outside right upper", frameon=False)


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _line(ax: Any, sub: pd.DataFrame, spec: PlotSpec, order: dict[str, list[Any]], names: dict[str, str]) -> None:
    import seaborn as sns

    x = spec.x
    marks = {"markers": True, "dashes": False} if spec.style else {"marker": "o"}
    sns.lineplot(data=sub, x=x, y=spec.y, hue=spec.hue, style=spec.style, errorbar="sd", err_style="bars",
                 ax=ax, **marks)  # fmt: skip
    xs = sorted(v for v in sub[x].unique() if v is not None) if _numeric(sub[x]) else []
    logx = spec.options.get("logx")
    if logx is None:  # step and NFE counts are read on a log axis (the papers' convention)
        counts = x.rsplit(".", 1)[-1] in ("steps", "nfe", "timesteps")
        logx = bool(xs) and xs[0] > 0 and xs[-1] / xs[0] >= (2 if counts else 10)
    if logx and xs:
        ax.set_xscale("log")
        ax.minorticks_off()
    if xs and len(xs) <= 12:
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
    if spec.options.get("logy"):
        ax.set_yscale("log")
    ax.set_xlabel(names.get(x, x) + (" (log scale)" if logx and xs else ""))
    ax.set_ylabel(metric_label(spec.y or ""))
    _legend_title(ax, spec, names)


def _tradeoff(ax: Any, sub: pd.DataFrame, spec: PlotSpec, order: dict[str, list[Any]], names: dict[str, str]) -> None:
    import seaborn as sns

    x, y, label = spec.x, spec.y, spec.label
    groups = [a for a in (spec.hue, spec.style, spec.col, label) if a]
    agg = sub.groupby(groups, observed=True)[[x, y]].agg(["mean", "std"]) if groups else None
    if agg is None:
        points = sub[[x, y]].mean().to_frame().T
        points.columns = pd.MultiIndex.from_tuples([(x, "mean"), (y, "mean")])
    else:
        points = agg
    flat = pd.DataFrame({x: points[(x, "mean")], y: points[(y, "mean")]}).reset_index() if groups else \
        pd.DataFrame({x: points[(x, "mean")], y: points[(y, "mean")]})  # fmt: skip
    marks = {"markers": True, "dashes": False} if spec.style else {"marker": "o"}
    sns.lineplot(data=flat, x=x, y=y, hue=spec.hue, style=spec.style, sort=False, estimator=None, ax=ax,
                 **marks)  # fmt: skip
    if groups and (x, "std") in points:
        ax.errorbar(flat[x], flat[y], xerr=points[(x, "std")].to_numpy(), yerr=points[(y, "std")].to_numpy(),
                    fmt="none", ecolor="0.6", elinewidth=0.8, zorder=0)  # fmt: skip
    if label:
        for _, r in flat.iterrows():
            ax.annotate(f"{r[label]}", (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(metric_label(x or ""))
    ax.set_ylabel(metric_label(y or ""))
    _legend_title(ax, spec, names)
    if label:
        ax.text(0.99, 0.01, f"points: {names.get(label, label)}", ha="right", va="bottom", fontsize=8,
                transform=ax.transAxes, color="0.4")  # fmt: skip


def _heatmap(ax: Any, sub: pd.DataFrame, spec: PlotSpec, order: dict[str, list[Any]], names: dict[str, str],
             vrange: tuple[float, float] | None = None) -> None:  # fmt: skip
    import seaborn as sns

    x, y, row = spec.x, spec.y, spec.row
    sub = sub.copy()
    sub[row] = pd.Categorical(sub[row].map(str), categories=[str(v) for v in order.get(row, [])], ordered=True)
    table = sub.pivot_table(index=row, columns=x, values=y, aggfunc="mean", observed=True)
    higher = direction(y or "")
    cmap = "RdYlGn" if higher else "RdYlGn_r" if higher is False else "viridis"
    fmt = spec.options.get("format", default_format(y or "", ".3g"))
    lo, hi = vrange or (None, None)
    sns.heatmap(table, annot=True, fmt=fmt, cmap=cmap, vmin=lo, vmax=hi, cbar_kws={"label": metric_label(y or "")},
                ax=ax)  # fmt: skip
    ax.grid(False)
    ax.set_xlabel(names.get(x, x))
    ax.set_ylabel(names.get(row, row))


def _bars(ax: Any, sub: pd.DataFrame, spec: PlotSpec, order: dict[str, list[Any]], names: dict[str, str]) -> None:
    import seaborn as sns

    sns.barplot(data=sub, x=spec.x, y=spec.y, hue=spec.hue, errorbar="sd", capsize=0.15, ax=ax)
    if spec.options.get("logy"):
        ax.set_yscale("log")
    ax.set_xlabel(names.get(spec.x, spec.x))
    ax.set_ylabel(metric_label(spec.y or ""))
    _legend_title(ax, spec, names)
