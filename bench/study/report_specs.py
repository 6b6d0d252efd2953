"""Table and plot specs of a study file: their schema, normalisation and validation.

A study's ``tables:`` and ``plots:`` name axes (dotted config keys that vary, ``seed`` when there
are several seeds) and metrics (the fixed MLflow metric names: ``fid``, ``is_mean``, ...). A typo
in either would otherwise surface only after hours of training, as an empty report; so
:func:`validate_report_specs` checks them when the study is loaded and raises one
:class:`~bench.core.errors.BenchError` naming the file, the key and the choices.

Table spec (one mapping per table)::

    rows: sample.eta                  # an axis or a list of axes (required)
    columns: sample.steps             # an axis (optional)
    values: fid                       # a metric or a list of metrics (required)
    title: DDIM table 1               # (``caption`` is accepted as a synonym)
    baseline: ddim-cifar10            # a baselines/*.yaml id: "ours | paper" side by side
    format: {fid: 2}                  # decimals or a format spec (".3g") per metric, or one for all
    where: {sample.sampler: ddim}     # keep only these axis values (a value or a list)
    labels: {fixed_large: "σ̂"}        # display names for axis values in rows / columns
    pool: [diffusion.objective]       # average over these axes (said in the legend); an axis that
                                      # varies, is not shown and is not pooled becomes a row level

Plot spec: ``kind`` is one of :data:`PLOT_KINDS` (default ``line``, or ``tradeoff`` when ``x``
is a metric); ``y`` is always the plotted metric; ``x``/``hue``/``style``/``col``/``row`` are
axes (``x`` is a metric for ``tradeoff``). See :data:`PLOT_FIELDS` for what each kind takes::

    {kind: line, x: sample.steps, y: fid, hue: sample.eta, style: sample.sampler}  # log x if x spans 10x
    {kind: tradeoff, x: fid, y: is_mean, hue: train.p_uncond, label: sample.guidance}
    {kind: heatmap, x: sample.steps, row: sample.eta, y: fid}
    {kind: bars, x: model.backbone, y: fid, hue: model.space}         # error bars: sd over seeds
    {kind: loss, hue: diffusion.objective}     # train_loss history of the TRAIN runs, x = step
    {kind: samples, by: [model.space], y: fid, seed: 0, max: 16}     # samples.png of EVAL runs

Every kind takes ``where`` (keep only these axis values), ``title`` and ``pool`` (axes to average
over, stated in the caption; any other axis that varies and is not shown gets a facet or a figure
of its own, see :mod:`bench.report.pooling`). Unlike the study loader's
generic check, ``loss`` and ``samples`` plots need no ``x`` / ``y``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.core.errors import BenchError
from bench.core.registry import did_you_mean
from bench.study.plot_specs import PLOT_FIELDS, PLOT_KINDS, TRAIN_SECTIONS, PlotSpec, check_plot
from bench.study.table_uncertainty import table_uncertainty

__all__ = [
    "PLOT_FIELDS",
    "PLOT_KINDS",
    "TABLE_KEYS",
    "TRAIN_SECTIONS",
    "PlotSpec",
    "TableSpec",
    "canonical_metric",
    "validate_report_specs",
]

TABLE_KEYS = ("rows", "columns", "values", "title", "caption", "baseline", "format", "where", "labels", "pool",
              "interval", "aggregate", "significance", "resamples")


@dataclass(frozen=True)
class TableSpec:
    """A normalised table spec (lists where the file may give one name)."""

    rows: tuple[str, ...]
    values: tuple[str, ...]
    columns: str | None = None
    title: str = ""
    baseline: str | None = None
    format: dict[str, str] = field(default_factory=dict)
    where: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    pool: tuple[str, ...] = ()
    interval: str = "std"
    aggregate: str = "mean"
    significance: float | None = None  # alpha: mark cells not significantly different from the best
    resamples: int = 200  # paired bootstrap resamples for `significance`


def canonical_metric(name: str) -> str:
    """``is`` -> ``is_mean`` (a metric's first output, as its registry entry declares); output keys
    are returned unchanged."""
    from bench.metrics import value_key

    return value_key(name)


def validate_report_specs(
    tables: Any,
    plots: Any,
    axes: set[str] | Iterable[str],
    metrics: set[str] | Iterable[str],
    where: str,
    baselines: set[str] | Iterable[str] | None = None,
) -> tuple[list[TableSpec], list[PlotSpec]]:
    """Check a study's ``tables:`` and ``plots:`` against its axes and measured metrics.

    ``axes`` are the dotted keys that vary (plus ``seed`` with several seeds), ``metrics`` the
    MLflow metric names the study's runs produce, ``where`` the study file (prefix of every
    error; "" for none, e.g. when the caller prefixes errors itself), ``baselines`` the known
    baseline ids (unchecked when None). Returns the normalised specs; raises
    :class:`BenchError` naming the file, the key and the choices otherwise.
    """
    checker = _Checker(set(axes), set(metrics), where, None if baselines is None else set(baselines))
    return (
        [checker.table(t, f"tables[{i}]") for i, t in enumerate(_as_list(tables, "tables", where))],
        [checker.plot(p, f"plots[{i}]") for i, p in enumerate(_as_list(plots, "plots", where))],
    )


def _metric_producing(output: str) -> str | None:
    """The eval.metrics entry whose outputs include ``output`` (``kid_mean`` -> ``kid``)."""
    from bench.metrics import maker_of

    return maker_of(output)


def _as_list(items: Any, kind: str, where: str) -> list[Any]:
    if items is None:
        return []
    if not isinstance(items, list):
        prefix = f"{where}: " if where else ""
        raise BenchError(f"{prefix}{kind}: must be a list of mappings, e.g. {kind}: [{{...}}]; got {items!r}")
    return items


class _Checker:
    def __init__(self, axes: set[str], metrics: set[str], where: str, baselines: set[str] | None) -> None:
        self.axes, self.metrics, self.where, self.baselines = axes, metrics, where, baselines

    def fail(self, at: str, message: str) -> BenchError:
        return BenchError(f"{self.where}: {at}: {message}" if self.where else f"{at}: {message}")

    # --- names ---------------------------------------------------------------------------
    def axis(self, name: Any, at: str) -> str:
        if isinstance(name, str) and name in self.axes:
            return name
        if not isinstance(name, str):
            raise self.fail(at, f"must be an axis name (a dotted key such as sample.eta), got {name!r}")
        choices = ", ".join(sorted(self.axes)) or "(none: the study has a single configuration)"
        extra = " (a metric; it cannot be an axis here)" if canonical_metric(name) in self.metrics else ""
        raise self.fail(
            at, f"{name!r} does not vary in this study{extra}.{did_you_mean(name, self.axes)} "
            f"Axes: {choices}. Add it to grid/zip, or pick an axis",
        )  # fmt: skip

    def metric(self, name: Any, at: str) -> str:
        if isinstance(name, str) and canonical_metric(name) in self.metrics:
            return canonical_metric(name)
        if not isinstance(name, str):
            raise self.fail(at, f"must be a metric name (fid, is_mean, ...), got {name!r}")
        maker = _metric_producing(canonical_metric(name))
        todo = f"add {maker!r} to eval.metrics" if maker else "add its metric to eval.metrics"
        raise self.fail(
            at, f"unknown metric {name!r} (not measured by this study).{did_you_mean(name, self.metrics)} "
            f"Measured: {', '.join(sorted(self.metrics))}. To report it, {todo}; or pick one of these",
        )  # fmt: skip

    def names(self, value: Any, at: str, one: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise self.fail(at, f"must be a name or a non-empty list of names, got {value!r}")
        out = tuple(one(v, f"{at}[{i}]" if isinstance(value, list) else at) for i, v in enumerate(items))
        if len(set(out)) < len(out):
            raise self.fail(at, f"lists a name twice: {value!r}; list each once")
        return out

    def keys(self, spec: Any, at: str, allowed: Iterable[str], what: str) -> dict[str, Any]:
        if not isinstance(spec, dict):
            raise self.fail(at, f"must be a mapping ({what}), got {spec!r}")
        allowed = list(allowed)
        for k in spec:
            if k not in allowed:
                raise self.fail(
                    f"{at}.{k}", f"unknown key for {what}.{did_you_mean(str(k), allowed)} Keys: {', '.join(allowed)}"
                )
        return spec

    def where_filter(self, value: Any, at: str) -> dict[str, tuple[Any, ...]]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not value:
            raise self.fail(at, f"must be a mapping of axis -> value (or list of values), got {value!r}")
        return {
            self.axis(k, f"{at}.{k}"): tuple(v) if isinstance(v, list) else (v,) for k, v in value.items()
        }

    def text(self, value: Any, at: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(at, f"must be text, got {value!r}")
        return value

    # --- tables --------------------------------------------------------------------------
    def table(self, spec: Any, at: str) -> TableSpec:
        spec = self.keys(spec, at, TABLE_KEYS, "a table")
        for req in ("rows", "values"):
            if req not in spec:
                raise self.fail(at, f"missing `{req}:`; a table needs rows (axes) and values (metrics)")
        rows = self.names(spec["rows"], f"{at}.rows", self.axis)
        values = self.names(spec["values"], f"{at}.values", self.metric)
        columns = spec.get("columns")
        if columns is not None:
            if not isinstance(columns, str):
                raise self.fail(f"{at}.columns", f"must be one axis name, got {columns!r}")
            columns = self.axis(columns, f"{at}.columns")
            if columns in rows:
                raise self.fail(f"{at}.columns", f"{columns!r} is already in rows; an axis goes in one of them")
        baseline = spec.get("baseline")
        if baseline is not None:
            if not isinstance(baseline, str):
                raise self.fail(f"{at}.baseline", f"must be a baseline id (text), got {baseline!r}")
            if self.baselines is not None and baseline not in self.baselines:
                raise self.fail(
                    f"{at}.baseline", f"unknown baseline {baseline!r}.{did_you_mean(baseline, self.baselines)} "
                    f"Available (baselines/*.yaml): {', '.join(sorted(self.baselines)) or '(none)'}",
                )  # fmt: skip
        title = self.text(spec.get("title"), f"{at}.title") or self.text(spec.get("caption"), f"{at}.caption")
        labels = spec.get("labels") or {}
        if not isinstance(labels, dict):
            raise self.fail(f"{at}.labels", f"must map axis values to display names, got {labels!r}")
        return TableSpec(
            rows=rows, values=values, columns=columns, title=title, baseline=baseline,
            format=self.formats(spec.get("format"), values, f"{at}.format"),
            where=self.where_filter(spec.get("where"), f"{at}.where"),
            labels={str(k): str(v) for k, v in labels.items()},
            pool=self.pool(spec.get("pool"), {*rows, *([columns] if columns else [])}, f"{at}.pool"),
            **table_uncertainty(spec, values, at, self.fail),
        )  # fmt: skip

    def pool(self, value: Any, shown: set[str], at: str) -> tuple[str, ...]:
        if value is None:
            return ()
        out = self.names(value, at, self.axis)
        for a in out:
            if a in shown:
                raise self.fail(at, f"{a!r} is shown (a row, column or plot role); it cannot also be pooled")
        return out

    def formats(self, value: Any, values: tuple[str, ...], at: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            return {m: self.format_spec(value, at) for m in values}
        out = {}
        for k, v in value.items():
            m = canonical_metric(str(k))
            if m not in values:
                raise self.fail(f"{at}.{k}", f"not one of this table's values ({', '.join(values)})")
            out[m] = self.format_spec(v, f"{at}.{k}")
        return out

    def plot(self, spec: Any, at: str) -> PlotSpec:
        return check_plot(self, spec, at)

    def format_spec(self, value: Any, at: str) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 12:
            return f".{value}f"
        if isinstance(value, str):
            try:
                format(1.5, value)
                return value
            except ValueError:
                pass
        raise self.fail(at, f"must be a number of decimals (e.g. 2) or a format spec (e.g. '.3g'), got {value!r}")
