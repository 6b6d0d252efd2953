"""The notes under a paper-style table, and the sentence comparing our protocol with a paper's."""

from __future__ import annotations

import pandas as pd

import bench.report.captions as captions
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
                baseline: Baseline | None, split: list[str], once: list[str], untested: list[str],
                cells: list, best: pd.DataFrame) -> list[str]:  # fmt: skip
    """The caption: only what occurs in this table (seeds, missing and failed cells, the meaning of
    ± or of an interval per metric, the marks), rows split by an unshown axis, mixed protocols,
    pooling, values shown once, and the paper's protocol beside ours."""
    notes = [captions.value_note(spec, cells)]
    notes += captions.occurring_notes(spec, cells, best, names)
    for m in spec.values:
        if captions.is_timing(m):
            notes.append(captions.timing_note(m, data.jobs))
    if spec.significance:
        notes.append(captions.significance_note(spec, cells, untested))
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
