"""The ``loss`` plot kind: the training-loss curves of a study's TRAIN runs (MLflow's metric history),
raw and smoothed by a centred local-linear fit (no lag), one panel per value of a training axis that
changes what the loss regresses (eps vs v targets do not share a scale)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bench.report.runs import StudyRuns
from bench.report.tables import _filter as filter_jobs
from bench.study.report_specs import TRAIN_SECTIONS, PlotSpec
from bench.tracking import metric_history


def loss_caption(spec: PlotSpec, frame: pd.DataFrame, names: dict[str, str]) -> str:
    if frame.empty:
        return ""
    windows = sorted({int(w) for w in frame["_window"]})
    facets = (f" One panel per {names.get(spec.col, spec.col)}, each on its own y axis: the losses regress "
              "different targets, so their scales do not compare." if spec.col else "")  # fmt: skip
    return (f"One line per TRAIN run ({frame['run'].nunique()}), labelled by the training axes that differ "
            "between them. Thin: train_loss as logged (the mean over each log_every window); thick: a centred "
            f"local-linear smoother over windows of {'/'.join(map(str, windows))} logged points (at each point, the "
            "least-squares line through the window around it, evaluated there; at the ends the window is "
            "shifted inwards; fitted to log(loss) on a log axis, so a straight line as drawn comes back "
            "unchanged): it does not lag the raw loss as a moving average does, returns a straight or "
            "flat stretch unchanged, and starts at the curve's own level." + facets)  # fmt: skip


def _window(spec: PlotSpec, points: int) -> int:
    """``smooth:`` as given (logged points per window; 1: none); by default about a tenth of the
    curve, at least 3 points. An even count takes one point more (the window is centred)."""
    return int(spec.options.get("smooth", max(3, points // 10))) // 2 * 2 + 1


def smooth_linear(x: Any, y: Any, window: int) -> np.ndarray:
    """Local-linear smoothing (a Savitzky–Golay filter of order 1 on the logged steps ``x``): at
    point i, the least-squares line through the ``window`` points centred on i (shifted inwards at
    the ends, so every fit has the full window where the curve is that long), evaluated at x_i. A
    line is its own fit, so a linear curve comes back exactly, with no lag at any point (a causal
    moving average trails a falling loss by about half its span)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n, w = len(y), min(len(y), max(1, window))
    out = np.empty(n)
    for i in range(n):
        lo = min(max(0, i - w // 2), n - w)
        xs, ys = x[lo:lo + w], y[lo:lo + w]
        dx = xs - xs.mean()
        var = float(dx @ dx)
        slope = float(dx @ (ys - ys.mean())) / var if var > 0 else 0.0
        out[i] = ys.mean() + slope * (x[i] - xs.mean())
    return out


# Training axes that change what the loss regresses (its target, weighting or process): curves that
# differ in one of them are drawn on separate axes.
_TARGET_AXES = ("diffusion.objective", "diffusion.loss", "diffusion.process", "diffusion.variance")


def loss_facets(spec: PlotSpec, frame: pd.DataFrame) -> PlotSpec:
    """With no ``col:``, one facet per value of the first training axis that changes the loss's target."""
    if spec.col or frame.empty:
        return spec
    import dataclasses

    for axis in _TARGET_AXES:
        if axis in frame and frame[axis].map(str).nunique() > 1:
            return dataclasses.replace(spec, col=axis)
    return spec


def loss_frame(spec: PlotSpec, data: StudyRuns) -> pd.DataFrame:
    """``train_loss`` history of every TRAIN run of the study (one ``run`` each), with the axis values
    of its config, its smoother's window and a ``_label`` naming the training axes that differ between the runs."""
    train = data.runs_of_kind("train")
    by_train_key = data.jobs.drop_duplicates("_train_key").set_index("_train_key")
    by_train_key = filter_jobs(by_train_key, spec.where)
    mine = by_train_key[by_train_key.index.isin(set(train.get("tags.bench.key", [])))]
    differ = [a for a in mine.columns if not a.startswith("_") and (a == "seed" or a.split(".")[0] in TRAIN_SECTIONS)
              and mine[a].map(repr).nunique() > 1]  # fmt: skip
    parts = []
    latest = {r.get("tags.bench.key"): r for r in train.to_dict("records")[::-1]}  # newest run per key
    for key in mine.index:  # study order: the legend reads as the grid does
        run = latest.get(key)
        if run is None:
            continue
        history = metric_history(data.tracking_uri, run["run_id"], "train_loss")
        if not history:
            continue
        part = pd.DataFrame(history, columns=["step", "train_loss"]).sort_values("step")
        part["_window"] = _window(spec, len(part))
        config = mine.loc[key]
        for axis in {*differ, *(a for a in (spec.hue, spec.style, spec.col, *_TARGET_AXES) if a and a in config)}:
            part[axis] = config[axis]
        part["_label"] = ", ".join(f"{a.split('.')[-1]}={config[a]}" for a in differ) or "training"
        part["run"] = run["run_id"]
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def smoothed(part: pd.DataFrame, logy: bool) -> np.ndarray:
    """A run's smoothed loss in the space it is drawn in: on a log axis the fit is to log(loss) (a
    straight line as drawn comes back unchanged there too); in linear space where a value is <= 0."""
    y, w = part["train_loss"].to_numpy(dtype=float), int(part["_window"].iloc[0])
    if logy and (y > 0).all():
        return np.exp(smooth_linear(part["step"], np.log(y), w))
    return smooth_linear(part["step"], y, w)


def plot_loss(ax: Any, sub: pd.DataFrame, spec: PlotSpec, order: dict[str, list[Any]], names: dict[str, str]) -> None:
    """One line per TRAIN run: the logged value thin, its smoothed curve thick, coloured by ``hue`` (else by run)."""
    import seaborn as sns

    hue = spec.hue or "_label"
    colours = list(dict.fromkeys(sub[hue].map(str)))
    palette = dict(zip(colours, sns.color_palette(n_colors=max(1, len(colours)))))
    dashes = dict(zip(dict.fromkeys(sub[spec.style].map(str)), ("-", "--", ":", "-."))) if spec.style else {}
    positive = sub["train_loss"][sub["train_loss"] > 0]
    logy = spec.options.get("logy")
    if logy is None:  # log when the loss falls by 10x or more
        logy = len(positive) > 1 and positive.max() / positive.min() >= 10
    for _, part in sub.groupby("run", sort=False):
        first = part.iloc[0]
        colour = palette[str(first[hue])]
        ax.plot(part["step"], part["train_loss"], color=colour, alpha=0.3, lw=0.8)
        label = str(first[spec.hue]) if spec.hue and not spec.style else str(first["_label"])
        ax.plot(part["step"], smoothed(part, bool(logy)), color=colour, lw=1.8, label=label,
                ls=dashes.get(str(first[spec.style]), "-") if spec.style else "-")  # fmt: skip
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss ↓" + (" (log scale)" if logy else ""))
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if len(unique) > 1 or spec.hue:
        ax.legend(unique.values(), unique.keys(), title=names.get(spec.hue, spec.hue) if spec.hue else None)
