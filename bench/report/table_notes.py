"""The notes under a paper-style table, and the sentence comparing our protocol with a paper's."""

from __future__ import annotations

import pandas as pd

from bench.report.outputs import direction, output_name
from bench.report.pooling import pool_caption
from bench.report.runs import StudyRuns
from bench.study.baselines import Baseline, values_equal
from bench.study.report_specs import TableSpec

ALL_TEXT = "all"  # the column of a value that does not vary with the columns' axis
# keys whose values change what a metric means: a table across them compares unlike numbers
PROTOCOL_AXES = ("eval.num_samples", "eval.reference_split", "eval.extractor", "eval.fid_backend",
                 "eval.inception_weights", "data.image_size")


def table_notes(spec: TableSpec, jobs: pd.DataFrame, names: dict[str, str], data: StudyRuns,
                baseline: Baseline | None, split: list[str], once: list[str], untested: list[str]) -> list[str]:  # fmt: skip
    """The notes under a table: how cells aggregate, intervals and ties, rows split by an unshown
    axis, mixed protocols, pooling, values shown once, and the paper's protocol beside ours."""
    value = ("Minimum over seeds (EDM's protocol: the best of the seed sets; maximum for higher-is-better "
             "metrics)" if spec.aggregate == "min" else "Mean ± sample std (ddof=1) over seeds; with one seed "
             "IS / KID show their own spread (over splits / subsets)")
    notes = [f"{value}. (n=k/N): k of N expected runs finished. "
             "'failed': every run of the cell failed; '—': not run (yet). Bold: the best value as printed "
             "(none where a column prints one value)."]  # fmt: skip
    if spec.interval == "ci":
        notes.append("[lo, hi]: the 95 % basic bootstrap interval over the generated images (eval.bootstrap "
                     "resamples of the stored features; mean over seeds of each run's bounds). It estimates the "
                     "population value, so it corrects FID's upward small-sample bias and can lie below the "
                     "number shown.")
    if spec.significance:
        notes.append(f"†: not significantly different from the best cell of its column at alpha = "
                     f"{spec.significance:g} (paired bootstrap, {spec.resamples} resamples of the images, which "
                     "share their per-sample seeds across cells; runs paired by seed)."
                     + (f" Not tested where {'; '.join(untested)}." if untested else ""))
    if split:
        notes.append(f"Rows also split by {', '.join(names.get(a, a) for a in split)}: it varies in these runs "
                     "and the spec does not show it; add `where:` to pick one value or `pool:` to average over it.")
    mixed = [(k, sorted(map(str, jobs[k].dropna().unique()))) for k in PROTOCOL_AXES
             if k in jobs and jobs[k].map(repr).nunique() > 1]  # fmt: skip
    if mixed and any(direction(m) is not None for m in spec.values):
        what = "; ".join(f"{names.get(k, k)} {', '.join(v)}" for k, v in mixed)
        notes.append(f"Warning: these cells were measured under different protocols ({what}); FID, KID and IS "
                     "are comparable only at equal sample counts, references and feature extractors.")
    if spec.pool:
        notes.append(pool_caption(jobs, spec.pool, [*spec.rows, *([spec.columns] if spec.columns else [])], names,
                                  unit="cell"))  # fmt: skip
    for m in once:
        col = names.get(spec.columns or "", spec.columns)
        notes.append(f"{output_name(m)} does not vary with {col} in these runs: shown once (column '{ALL_TEXT}').")
    if baseline:
        notes.append(protocol_note(baseline, data))
    return notes


def protocol_note(baseline: Baseline, data: StudyRuns) -> str:
    """One sentence naming where our protocol differs from the paper's (numbers compare only if none)."""
    p = baseline.protocol
    ours = {k: ", ".join(v) or "?" for k, v in data.protocol.items()}
    pairs = [("dataset", ours["dataset"], p.dataset), ("image size", ours["image_size"], p.image_size),
             ("samples", ours["num_samples"], p.samples), ("reference set", ours["reference"], p.reference),
             ("extractor", ours["extractor"], p.extractor)]  # fmt: skip
    diff = [f"{name}: ours {a} vs paper {b}" for name, a, b in pairs if b is not None and not values_equal(a, b)]
    setting = ", ".join(f"{k}={v}" for k, v in baseline.setting.items())
    head = f"Paper: {baseline.citation()}." + (f" Paper setting: {setting}." if setting else "")
    if not diff:
        return f"{head} Same protocol (dataset, samples, reference set, extractor)."
    extra = f" {p.notes}" if p.notes else ""
    return f"{head} Protocol differs — {'; '.join(diff)}; the numbers are not directly comparable.{extra}"
