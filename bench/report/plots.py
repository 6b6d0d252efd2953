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
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.runs import FINISHED, StudyRuns
from bench.report.tables import _filter as filter_jobs
from bench.report.tables import default_format, direction, metric_label
from bench.study.report_specs import PlotSpec
from bench.tracking import download_artifact, metric_history

__all__ = ["Figure", "render_plot", "PNG_MAGIC"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_FACET_W, _FACET_H, _DPI = 5.0, 3.6, 110


@dataclass
class Figure:
    """One plot spec's output: PNG images with captions, and notes (what could not be drawn)."""

    title: str
    kind: str
    images: list[tuple[str, bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def render_plot(spec: PlotSpec, data: StudyRuns, order: dict[str, list[Any]], names: dict[str, str]) -> Figure:
    """Draw ``spec``; an empty selection gives a Figure with a note instead of images."""
    title = spec.title or _default_title(spec, names)
    fig = Figure(title, spec.kind)
    if spec.kind == "samples":
        _samples(spec, data, order, names, fig)
        return fig
    frame = _loss_frame(spec, data, order) if spec.kind == "loss" else _eval_frame(spec, data, order)
    if frame.empty:
        fig.notes.append("Nothing to plot yet: no finished runs match this plot.")
        return fig
    draw = {"line": _line, "tradeoff": _tradeoff, "heatmap": _heatmap, "bars": _bars, "loss": _loss}[spec.kind]
    if spec.kind == "heatmap":  # one colour scale for every facet
        cells = frame.groupby([spec.row, spec.x, *([spec.col] if spec.col else [])], observed=True)[spec.y].mean()
        draw = functools.partial(_heatmap, vrange=(float(cells.min()), float(cells.max())))
    fig.images.append((title, _draw(spec, frame, order, names, draw)))
    return fig


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


def _eval_frame(spec: PlotSpec, data: StudyRuns, order: dict[str, list[Any]]) -> pd.DataFrame:
    jobs = filter_jobs(data.finished(), spec.where)
    need = [m for m in (spec.y, spec.x if spec.kind == "tradeoff" else None) if m]
    if any(m not in jobs for m in need):
        return jobs.iloc[0:0]
    jobs = jobs.dropna(subset=need).copy()
    return _categorical(jobs, spec, order)


def _loss_frame(spec: PlotSpec, data: StudyRuns, order: dict[str, list[Any]]) -> pd.DataFrame:
    """``train_loss`` history of every TRAIN run of the study, with the axis values of its config."""
    train = data.runs_of_kind("train")
    by_train_key = data.jobs.drop_duplicates("_train_key").set_index("_train_key")
    by_train_key = filter_jobs(by_train_key, spec.where)
    parts = []
    for run in train.to_dict("records"):
        key = run.get("tags.bench.key")
        if key not in by_train_key.index:
            continue
        history = metric_history(data.tracking_uri, run["run_id"], "train_loss")
        if not history:
            continue
        part = pd.DataFrame(history, columns=["step", "train_loss"])
        part = part.sort_values("step")
        window = int(spec.options.get("smooth", 1))
        if window > 1:
            part["train_loss"] = part["train_loss"].rolling(window, min_periods=1).mean()
        config = by_train_key.loc[key]
        for role in ("hue", "style", "col"):
            axis = getattr(spec, role)
            if axis:
                part[axis] = config[axis]
        part["run"] = run["run_id"]
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return _categorical(frame, spec, order) if not frame.empty else frame


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
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=spec.kind not in ("heatmap",))
        for i, (label, sub) in enumerate(facets):
            ax = axes[i // ncols][i % ncols]
            if sub.empty:
                ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
            else:
                draw(ax, sub, spec, order, names)
            ax.set_title(_short_facet(label, names), fontsize=10)
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
        legend.set_title(" / ".join(dict.fromkeys(roles)) or None)


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
    if logx is None:
        logx = bool(xs) and xs[0] > 0 and xs[-1] / xs[0] >= 10
    if logx and xs:
        ax.set_xscale("log")
        ax.minorticks_off()
    if xs and len(xs) <= 12:
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
    if spec.options.get("logy"):
        ax.set_yscale("log")
    ax.set_xlabel(names.get(x, x))
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


def _loss(ax: Any, sub: pd.DataFrame, spec: PlotSpec, order: dict[str, list[Any]], names: dict[str, str]) -> None:
    import seaborn as sns

    sns.lineplot(data=sub, x="step", y="train_loss", hue=spec.hue, style=spec.style, errorbar="sd", ax=ax)
    if spec.options.get("logy", True):
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    _legend_title(ax, spec, names)


# --- sample grids ------------------------------------------------------------------------------


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow draws a tqdm bar per downloaded artifact; a report downloads dozens."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _samples(spec: PlotSpec, data: StudyRuns, order: dict[str, list[Any]], names: dict[str, str],
             fig: Figure) -> None:  # fmt: skip
    """One ``samples.png`` per value combination of ``by`` (default: every non-seed axis)."""
    expected = filter_jobs(data.jobs, spec.where)
    jobs = expected[expected["_status"] == FINISHED]
    by = list(spec.by) or [a for a in names if a != "seed"]
    if by:
        have = {tuple(r) for r in jobs[by].itertuples(index=False, name=None)}
        lost = sorted({tuple(r) for r in expected[by].itertuples(index=False, name=None)} - have, key=str)
        fig.notes += [f"{', '.join(f'{names.get(a, a)} = {v}' for a, v in zip(by, t))}: no finished run, no samples"
                      for t in lost]  # fmt: skip
    seed = spec.options.get("seed")
    if seed is not None:
        jobs = jobs[jobs["seed"] == seed]
    jobs = jobs.sort_values("seed", kind="stable")
    if by:
        rank = {a: {v: i for i, v in enumerate(order.get(a, []))} for a in by}
        jobs = jobs.assign(_rank=[tuple(rank[a].get(r[a], 10**6) for a in by) for r in jobs.to_dict("records")])
        jobs = jobs.sort_values("_rank", kind="stable").drop_duplicates(by)
    else:
        jobs = jobs.head(1)
    limit = int(spec.options.get("max", 16))
    if len(jobs) > limit:
        fig.notes.append(f"Showing the first {limit} of {len(jobs)} sample grids (raise `max:` for more).")
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bars():
        for i, r in enumerate(jobs.head(limit).to_dict("records")):
            caption = ", ".join(f"{names.get(a, a)} = {r[a]}" for a in by) or "samples"
            if spec.y and spec.y in r and r[spec.y] is not None and math.isfinite(float(r[spec.y])):
                caption += f" — {metric_label(spec.y)} {format(float(r[spec.y]), default_format(spec.y, '.3g'))}"
            try:
                png = download_artifact(data.tracking_uri, r["_run_id"], "samples.png", str(Path(tmp) / str(i))).read_bytes()
            except Exception as e:  # noqa: BLE001 (any store error: the report goes on without this grid)
                fig.notes.append(f"{caption}: no samples.png artifact ({type(e).__name__})")
                continue
            if png.startswith(PNG_MAGIC):
                fig.images.append((f"{caption} (seed {r['seed']})", png))
            else:
                fig.notes.append(f"{caption}: samples.png is not a PNG file")
    if not fig.images and not fig.notes:
        fig.notes.append("No finished evaluation runs with sample grids yet.")
