"""What a table's caption says, and the marks it explains: rows identical by construction (≡), an axis
a row's sampler ignores ('—'), the meaning of ± per metric, the spread of timings, and one number
format per metric across a report's tables. Cells are :class:`bench.report.tables.Cell` (duck-typed
here: ``mean``, ``n``)."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from bench.metrics import OUTPUTS
from bench.report.runs import FINISHED

IGNORED_TEXT = "—"
SAME = 1e-4  # relative: two float paths of one computation (eps from v, say) differ by rounding only


def _output_name(key: str) -> str:
    return OUTPUTS.get(key).label if key in OUTPUTS else key


def identical_rows(grids: list[list[list[Any]]]) -> list[list[int]]:
    """Groups of rows whose finished values agree in every cell of every metric (at least two
    numbers compared): the same computation, e.g. two names of one sampler."""
    n = len(grids[0]) if grids else 0
    groups: list[list[int]] = []
    seen: set[int] = set()
    for i in range(n):
        if i in seen:
            continue
        group = [i] + [j for j in range(i + 1, n) if j not in seen and _same(grids, i, j)]
        if len(group) > 1:
            groups.append(group)
            seen.update(group)
    return groups


def _same(grids: list[list[list[Any]]], i: int, j: int) -> bool:
    """Rows i and j print the same numbers (means, and intervals or spreads where shown), two or more."""
    compared = 0
    for grid in grids:
        for a, b in zip(grid[i], grid[j]):
            for x, y in ((a.mean, b.mean), (a.lo, b.lo), (a.hi, b.hi), (a.std, b.std)):
                if (x is None) != (y is None):
                    return False
                if x is not None and y is not None:
                    if not math.isclose(x, y, rel_tol=SAME, abs_tol=1e-12):
                        return False
                    compared += 1
    return compared >= 2


def identical_note(rows: list[str]) -> str:
    return (f"≡: rows {' and '.join(rows)} agree in every cell (to {SAME:g} relative, floating-point "
            "rounding): one computation under two names, run on the same per-sample noise (e.g. DDIM with "
            "η = 1 is ancestral DDPM with the posterior variance β̃, Song et al. 2021, eq. 16), so in a plot "
            "one line hides the other.")


def row_label(values: tuple[Any, ...], keys: list[str], labels: dict[str, str]) -> tuple[str, ...]:
    """A row's labels; an axis the row's sampler does not read (DDPM's eta) shows as '—'."""
    out = [labels.get(str(v), str(v)) for v in values]
    sampler = dict(zip(keys, values)).get("sample.sampler")
    if sampler is not None:
        for i, k in enumerate(keys):
            if ignores(str(sampler), k):
                out[i] = IGNORED_TEXT
    return tuple(out)


def ignores(sampler: str, axis: str) -> bool:
    """Whether ``sampler`` ignores ``axis`` (``sample.eta`` or ``sample.options.<name>``): the option
    is not among those it declares (bench.diffusion.samplers.registry)."""
    if axis != "sample.eta" and not axis.startswith("sample.options."):
        return False
    from bench.diffusion.samplers.registry import SAMPLERS, declared_options

    return sampler in SAMPLERS and axis.rpartition(".")[2] not in declared_options(sampler)


def common_formats(tables: list[Any]) -> dict[str, str]:
    """Per metric, the widest format any table chose for it (``.3f`` over ``.1f``), so a number
    prints alike everywhere; metrics whose tables chose formats of different kinds are left out."""
    chosen: dict[str, set[str]] = {}
    for t in tables:
        for m, fmt in t.formats.items():
            chosen.setdefault(m, set()).add(fmt)
    out = {}
    for m, fmts in chosen.items():
        found = [re.fullmatch(r"\.(\d+)([fg])", f) for f in fmts]
        if all(found) and len({f.group(2) for f in found if f}) == 1:
            out[m] = max(fmts, key=lambda f: int(f[1:-1]))
    return out


def value_note(spec: Any, cells: list[Any]) -> str:
    """What a cell's number and its ± are, per metric, as they occur in this table."""
    if spec.aggregate == "min":
        return ("Minimum over seeds (EDM's protocol: the best of the seed sets; maximum for higher-is-better "
                "metrics).")
    seeds = sorted({c.n for c in cells if c.n})
    if seeds and max(seeds) >= 2:
        head = f"Mean ± sample std (ddof=1) over {'/'.join(map(str, seeds))} seeds."
    else:
        head = "One seed per cell."
    spreads = []
    for m in spec.values:
        sp = (OUTPUTS.get(m).spread if m in OUTPUTS else None)
        if sp is not None and (not seeds or min(seeds) < 2):
            spreads.append(f"{_output_name(m)} ± {_spread_meaning(sp)}")
    if spreads:
        head += " Where a cell has one run: " + "; ".join(spreads) + "."
    return head


def _spread_meaning(key: str) -> str:
    """``is_std`` -> 'std over splits' (the spread output's own label, as the registry states it)."""
    label = _output_name(key)
    if " std over " in label:  # the spread output's label says over what (IS: splits, KID: subsets)
        return "its std over " + label.split(" std over ", 1)[1]
    if " IQR over " in label:  # a timing's spread: the interquartile range over batches
        return "its interquartile range over " + label.split(" IQR over ", 1)[1]
    if label.endswith(" std"):
        return "its std over repeats"
    if "standard error" in label:
        return "the standard error of the mean over the test images"
    return label


def is_timing(metric: str) -> bool:
    return metric in OUTPUTS and OUTPUTS.get(metric).unit == "s"


def timing_note(metric: str, jobs: pd.DataFrame) -> str:
    """How far apart runs with the same network and the same network calls per image are (the same
    work): the spread below which a difference in ``metric`` is noise."""
    done = jobs[jobs["_status"] == FINISHED]
    ratios = []
    if metric in done and "nfe" in done:
        work = ["_train_key", "nfe", *(["guided_calls"] if "guided_calls" in done else [])]
        for _, group in done.groupby(work):
            values = pd.to_numeric(group[metric], errors="coerce").dropna()
            values = values[values > 0]
            if len(values) >= 2:
                ratios.append(float(values.max() / values.min()))
    how = OUTPUTS.get(metric).how if metric in OUTPUTS else ""
    what = (f"{_output_name(metric)}: {how or 'one wall-clock measurement per run'}, on a machine that may run other "
            "jobs.")
    if ratios:
        return what + (f" Runs doing the same work (one network, equal network calls per image) differ by up to "
                       f"{max(ratios):.2f}x here: smaller differences are noise.")
    return what


def occurring_notes(spec: Any, cells: list[Any], best: pd.DataFrame, names: dict[str, str]) -> list[str]:
    """The marks and states that occur in a table, each explained once: missing seeds, failures,
    cells not run, bold, '—' for an ignored axis, the interval beside a value."""
    notes: list[str] = []
    states = {c.state() for c in cells}
    legend = []
    if any(c.n < c.expected and c.n for c in cells):
        legend.append("(n=k/N): k of N expected runs finished")
    if any(c.failed and c.n for c in cells):
        legend.append("(k failed): runs of the cell that failed")
    if "failed" in states:
        legend.append("'failed': every run of the cell failed")
    if "missing" in states:
        legend.append("'—' in a cell: not run (yet)")
    if "running" in states:
        legend.append("'running': not finished yet")
    if bool(best.to_numpy().any()):
        legend.append("bold: the best value of its column as printed")
    if legend:
        notes.append("; ".join(legend) + ".")
    ignored = [k for k in spec.rows if k == "sample.eta" or k.startswith("sample.options.")]
    if ignored and "sample.sampler" in spec.rows:
        notes.append(f"'—' as {', '.join(names.get(k, k) for k in ignored)}: the row's sampler has no such option "
                     "(it ignores the value its runs were configured with).")
    if spec.interval == "ci" and any(c.lo is not None for c in cells):
        notes.append("value (bc x [lo, hi]): the value as measured, then the bias-corrected value x = 2·value − "
                     "(q2.5 + q97.5)/2 and the 95 % basic bootstrap interval [2·value − q97.5, 2·value − q2.5] "
                     "over the generated images (eval.bootstrap resamples of the stored features, q the "
                     "replicates' quantiles; mean over seeds). The interval is centred on x, which it always "
                     "contains; the measured value of a metric biased upwards by few images (FID, KID) can "
                     "lie above it.")
    return notes


def significance_note(spec: Any, cells: list[Any], untested: list[str]) -> str:
    """What † means: the test, its level and the reference cell."""
    head = ("†: not significantly different from the bold cell of its column (the reference: the best as printed, "
            "which carries no mark)" + ("" if any(c.tie for c in cells) else "; no cell is marked here: every other "
                                        "cell differs significantly from its reference"))
    return (head + f" at alpha = {spec.significance:g}: a paired bootstrap of the difference ({spec.resamples} "
            "resamples of the images, which share their per-sample seeds across cells; runs paired by seed); a "
            f"cell is marked when the difference's {100 * (1 - spec.significance):g} % interval contains 0. A cell "
            "close to the best can differ significantly while a farther one does not: the test reads the paired "
            "differences image by image, not the printed means."
            + (f" Not tested where {'; '.join(untested)}." if untested else ""))
