"""Paper-style tables: the study's jobs -> rows x columns of mean ± std over seeds.

Every cell is computed from the configs the study expects there, never only from the runs that
happened to finish: a cell whose runs all failed reads "failed", one not run yet reads "—", and
one missing some seeds shows how many it has ("(n=2/3)"). The best cell of each column is marked
(bold in Markdown, styled in HTML) in the direction of the metric's ``higher_is_better``, and the
headers carry arrows (FID ↓, IS ↑). Markdown goes through ``DataFrame.to_markdown`` and HTML
through pandas' Styler; no table is assembled by hand. The notes under a table are
:mod:`bench.report.table_notes`; how an output reads (label, arrow, format) is :mod:`bench.report.outputs`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pandas.io.formats.style import Styler

import bench.report.captions as captions
from bench.report.outputs import (
    default_format,
    direction,
    format_value,
    metric_label,
    output_name,
    spread_of,
)
from bench.report.pooling import pooled_axes
from bench.report.runs import FAILED, FINISHED, KILLED, RUNNING, StudyRuns
from bench.report.table_notes import ALL_TEXT, table_notes
from bench.study.baselines import Baseline, values_equal
from bench.study.report_specs import TableSpec

__all__ = ["Table", "make_table", "metric_label", "direction", "format_value", "default_format", "output_name"]

MISSING_TEXT, FAILED_TEXT, RUNNING_TEXT = "—", "failed", "running"
CSS = {
    "best": "font-weight: 700; background-color: #dff3e4;",
    "failed": "color: #b3261e; font-style: italic;",
    "missing": "color: #9e9e9e;",
    "running": "color: #8a6d00; font-style: italic;",
    "paper": "color: #455a64; background-color: #f4f6f8;",
    "ok": "",
}


@dataclass
class Cell:
    """The statistics of one cell: finished values over the configs expected there."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    expected: int = 0
    failed: int = 0
    running: int = 0
    lo: float | None = None  # the 95 % bootstrap interval (table `interval: ci`)
    hi: float | None = None
    aggregate: str = "mean"
    tie: bool = False  # not significantly different from the column's best (table `significance:`)
    runs: list[tuple[int, str]] = field(default_factory=list)  # (seed, MLflow run id) of the finished runs

    def state(self) -> str:
        if self.n:
            return "ok"
        return "failed" if self.failed else "running" if self.running else "missing"

    def text(self, fmt: str) -> str:
        if self.mean is None:
            return {"failed": FAILED_TEXT, "running": RUNNING_TEXT}.get(self.state(), MISSING_TEXT)
        out = format_value(self.mean, fmt)
        if self.lo is not None and self.hi is not None:  # the basic interval is centred on the bias-corrected value
            bc = (self.lo + self.hi) / 2
            out += f" (bc {format_value(bc, fmt)} [{format_value(self.lo, fmt)}, {format_value(self.hi, fmt)}])"
        elif self.std is not None:
            out += " ± " + format_value(self.std, fmt)
        if self.tie:
            out += " †"
        notes = [f"n={self.n}/{self.expected}"] if self.n < self.expected else []
        if self.failed:
            notes.append(f"{self.failed} failed")
        return out + (f" ({', '.join(notes)})" if notes else "")


@dataclass
class Table:
    """A rendered table: display strings, marks, statistics, and its Markdown / HTML."""

    title: str
    spec: TableSpec
    text: pd.DataFrame  # display strings (MultiIndex rows / columns)
    state: pd.DataFrame  # ok | failed | missing | running | paper
    best: pd.DataFrame  # bool
    stats: pd.DataFrame  # long form: row keys, column, metric, source, mean, std, n, expected, failed
    notes: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)  # metric -> the format its cells print with

    def markdown(self) -> str:
        shown = self.text.where(~self.best, "**" + self.text + "**")
        flat = shown.copy()
        levels = shown.columns.names
        flat.columns = [" · ".join(f"{n}={p}" if n else str(p) for n, p in zip(levels, c)) if isinstance(c, tuple)
                        else str(c) for c in shown.columns]  # fmt: skip
        flat = flat.reset_index()
        return flat.to_markdown(index=False, disable_numparse=True)

    def styler(self, uuid: str = "") -> Styler:
        css = self.state.map(CSS.get).where(~self.best, CSS["best"])
        styler = Styler(self.text, uuid=uuid or None, cell_ids=False)
        styler.apply(lambda _: css, axis=None)
        styler.set_table_attributes('class="bench-table"')
        if self.title:
            styler.set_caption(self.title)
        return styler

    def html(self, uuid: str = "") -> str:
        return self.styler(uuid).to_html()

    def latex(self, footnote: str = "") -> str:
        """The table as a LaTeX ``table``: see :func:`bench.report.latex.table_latex`."""
        from bench.report.latex import table_latex

        return table_latex(self, footnote)


def make_table(
    spec: TableSpec,
    data: StudyRuns,
    order: dict[str, list[Any]],
    names: dict[str, str],
    baseline: Baseline | None = None,
    formats: dict[str, str] | None = None,
) -> Table:
    """Build one table of ``spec`` from the study's jobs (see the module docstring). ``formats``
    (metric -> format) overrides the spec's and the registry's, so one metric prints alike in
    every table of a report (:func:`bench.report.captions.common_formats`)."""
    jobs = _filter(data.jobs, spec.where)
    shown = [*spec.rows, *([spec.columns] if spec.columns else [])]
    split = [a for a in pooled_axes(jobs, shown, names) if a not in spec.pool]
    rows = [*spec.rows, *split]  # an axis that varies inside a cell and is not pooled on purpose: a row level
    keys = [*rows, *([spec.columns] if spec.columns else [])]
    row_vals = _combos(jobs, rows, order)
    col_vals = _combos(jobs, [spec.columns], order) if spec.columns else [()]
    sources: tuple[str, ...] = ("ours", "paper") if baseline else ()
    grids = {m: [[_cell(jobs, dict(zip(keys, (*r, *c))), m, spec) for c in col_vals] for r in row_vals]
             for m in spec.values}
    same = captions.identical_rows(list(grids.values()))
    row_labels = [captions.row_label(r, rows, spec.labels) for r in row_vals]
    if len(set(row_labels)) < len(row_labels):  # '—' would merge two rows: show the values
        row_labels = [tuple(_label(v, spec.labels) for v in r) for r in row_vals]
    named = [" · ".join(map(str, label)) for label in row_labels]  # before the marks
    for group in same:
        for i in group:
            row_labels[i] = (*row_labels[i][:-1], f"{row_labels[i][-1]} ≡")
    index = pd.MultiIndex.from_tuples(row_labels, names=[names.get(k, k) for k in rows])
    blocks, stats, once, untested, used = [], [], [], [], {}
    for m in spec.values:
        grid = grids[m]
        cols = list(col_vals)
        if _invariant(grid):  # e.g. NLL under every step count: the same number, shown once
            first = [next((x for x in row if x.n), row[0]) for row in grid]
            grid, cols = [[x] for x in first], [(ALL_TEXT,)]
            once.append(m)
        unique = [row for i, row in enumerate(grid) if not any(i in g[1:] for g in same)]  # a copy needs no digits
        fmt = (formats or {}).get(m) or legible_format(spec.format.get(m, default_format(m)), unique)
        used[m] = fmt
        for j, c in enumerate(cols):
            column = [row[j] for row in grid]
            marks = _best_marks(column, fmt, direction(m))
            if spec.significance and any(marks):
                untested.extend(_mark_ties(column, marks, m, spec, data))
            for r, cell, bold in zip(row_vals, column, marks):
                where = dict(zip(keys, (*r, *(c if c != (ALL_TEXT,) else ()))))
                stats.append({**where, "metric": m, "source": "ours",
                              **{k: v for k, v in vars(cell).items() if k != "runs"}})
                entry = {"ours": (cell.text(fmt), cell.state(), bold)}
                if baseline:
                    paper = baseline.lookup(where, m)
                    entry["paper"] = (paper.text() if paper else MISSING_TEXT, "paper" if paper else "missing", False)
                    stats.append({**where, "metric": m, "source": "paper", "mean": paper and paper.value})
                for source in sources or ("ours",):
                    blocks.append((_col(m, c, source if baseline else None, spec.labels), r, *entry[source]))
    col_tuples = list(dict.fromkeys(b[0] for b in blocks))
    level_names = [None, *([names.get(spec.columns)] if spec.columns else []), *([None] if baseline else [])]
    columns = (pd.MultiIndex.from_tuples(col_tuples, names=level_names) if len(level_names) > 1
               else pd.Index(col_tuples))  # fmt: skip
    text = pd.DataFrame("", index=index, columns=columns)
    state = pd.DataFrame("ok", index=index, columns=columns)
    best = pd.DataFrame(False, index=index, columns=columns)
    position = {r: label for r, label in zip(row_vals, index)}
    for col, r, shown_text, cell_state, bold in blocks:
        text.loc[position[r], col], state.loc[position[r], col], best.loc[position[r], col] = shown_text, cell_state, bold
    title = spec.title or _default_title(spec, names)
    cells = [c for grid in grids.values() for row in grid for c in row]
    notes = table_notes(spec, jobs, names, data, baseline, split, once, sorted(set(untested)), cells, best)
    notes += [captions.identical_note([named[i] for i in g]) for g in same]
    return Table(title, spec, text, state, best, pd.DataFrame(stats), notes, used)


def _invariant(grid: list[list[Cell]]) -> bool:
    """Every row reads the same finished value in every column (and some row has two to compare)."""
    if not grid or len(grid[0]) < 2:
        return False
    compared = False
    for row in grid:
        means = [c.mean for c in row if c.mean is not None]
        if any(not math.isclose(x, means[0], rel_tol=1e-9, abs_tol=1e-12) for x in means):
            return False
        compared |= len(means) >= 2
    return compared


def legible_format(fmt: str, grid: list[list[Cell]]) -> str:
    """``fmt`` with enough digits that every column's distinct means print differently (and each
    value has at least 2 significant digits); formats other than ``.Nf`` / ``.Ng`` are kept."""
    found = re.fullmatch(r"\.(\d+)([fg])", fmt)
    if not found:
        return fmt
    digits, kind = int(found.group(1)), found.group(2)
    means = [c.mean for row in grid for c in row if c.mean is not None and math.isfinite(c.mean)]
    if kind == "f":
        nonzero = [abs(v) for v in means if v != 0]
        if nonzero:
            digits = max(digits, 1 - math.floor(math.log10(min(nonzero))))
    else:
        digits = max(digits, 2)
    columns = [[row[j].mean for row in grid if row[j].mean is not None and math.isfinite(row[j].mean)]
               for j in range(len(grid[0]) if grid else 0)]  # fmt: skip
    limit = digits + 4
    while digits < limit and any(len({format(v, f".{digits}{kind}") for v in col}) < len({f"{v:.12g}" for v in col})
                                 for col in columns):  # fmt: skip
        digits += 1
    return f".{digits}{kind}"


def _best_marks(column: list[Cell], fmt: str, higher: bool | None) -> list[bool]:
    """Bold the cells that print as the best value, and none when every cell prints the same."""
    shown = [format_value(c.mean, fmt) if c.mean is not None and math.isfinite(c.mean) else None for c in column]
    scored = [(c.mean, t) for c, t in zip(column, shown) if t is not None]
    if higher is None or len(scored) < 2 or len({t for _, t in scored}) < 2:
        return [False] * len(column)
    target = (max if higher else min)(scored)[1]
    return [t == target for t in shown]


def _col(metric: str, col: tuple[Any, ...], source: str | None, labels: dict[str, str]) -> Any:
    """A column: (metric label[, column axis value][, ours | paper]); a plain label when alone."""
    parts = (metric_label(metric), *(_label(v, labels) for v in col), *((source,) if source else ()))
    return parts if len(parts) > 1 else parts[0]


def _filter(jobs: pd.DataFrame, where: dict[str, tuple[Any, ...]]) -> pd.DataFrame:
    keep = pd.Series(True, index=jobs.index)
    for k, allowed in where.items():
        col = jobs["seed"] if k == "seed" else jobs[k]
        keep &= col.map(lambda v, a=allowed: any(values_equal(v, x) for x in a))
    return jobs[keep]


def _combos(jobs: pd.DataFrame, keys: list[str], order: dict[str, list[Any]]) -> list[tuple[Any, ...]]:
    """The distinct value tuples of ``keys`` present in ``jobs``, in study order."""
    present = {tuple(r) for r in jobs[keys].itertuples(index=False, name=None)}

    def rank(t: tuple[Any, ...]) -> tuple[int, ...]:
        return tuple(order.get(k, []).index(v) if v in order.get(k, []) else 10**6 for k, v in zip(keys, t))

    return sorted(present, key=rank)


def _label(value: Any, labels: dict[str, str]) -> str:
    return labels.get(str(value), str(value))


def _mark_ties(column: list[Cell], marks: list[bool], metric: str, spec: TableSpec, data: StudyRuns) -> list[str]:
    """Set ``tie`` on the cells not significantly different from the column's best; the reasons
    some could not be tested."""
    from bench.report.significance import not_different

    best = marks.index(True)
    ties, why = not_different(column, best, metric, data.runs, spec.significance, spec.resamples)
    for cell, tie, bold in zip(column, ties, marks):
        cell.tie = bool(tie) and not bold  # a cell printed as the best is bold, not also marked
    return [why] if why else []


def _cell(jobs: pd.DataFrame, where: dict[str, Any], metric: str, spec: TableSpec | None = None) -> Cell:
    mask = pd.Series(True, index=jobs.index)
    for k, v in where.items():
        mask &= jobs[k].map(lambda x, v=v: x == v or values_equal(x, v))
    group = jobs[mask]
    status = group["_status"]
    done = group[status == FINISHED]
    values = pd.to_numeric(done[metric], errors="coerce").dropna() if metric in done else pd.Series([], dtype=float)
    cell = Cell(expected=len(group), failed=int(status.isin([FAILED, KILLED]).sum()),
                running=int((status == RUNNING).sum()), n=len(values))  # fmt: skip
    cell.runs = [(int(s), str(i)) for s, i in zip(done.loc[values.index, "seed"], done.loc[values.index, "_run_id"])]
    if cell.n and spec is not None and spec.aggregate == "min":  # EDM: the best of the seed sets
        cell.mean, cell.aggregate = float(values.max() if direction(metric) is True else values.min()), "min"
    elif cell.n:
        cell.mean = float(values.mean())
        if cell.n >= 2:
            cell.std = float(values.std(ddof=1))
        elif (sp := spread_of(metric)) is not None and sp in done:
            spread = pd.to_numeric(done.loc[values.index, sp], errors="coerce").dropna()
            cell.std = float(spread.iloc[0]) if len(spread) else None
    if cell.n and spec is not None and spec.interval == "ci":
        lo_key, hi_key = f"{metric}_ci_lo", f"{metric}_ci_hi"
        if lo_key in done and hi_key in done:
            lo = pd.to_numeric(done.loc[values.index, lo_key], errors="coerce").dropna()
            hi = pd.to_numeric(done.loc[values.index, hi_key], errors="coerce").dropna()
            if len(lo) == len(hi) == cell.n:
                cell.lo, cell.hi, cell.std = float(lo.mean()), float(hi.mean()), None
    return cell


def _default_title(spec: TableSpec, names: dict[str, str]) -> str:
    what = ", ".join(output_name(m) for m in spec.values)
    by = " × ".join(names.get(k, k) for k in spec.rows)
    return f"{what} by {by}" + (f" (rows) × {names.get(spec.columns, spec.columns)} (columns)" if spec.columns else "")
