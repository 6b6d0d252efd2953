"""MLflow runs of a study -> pandas: every run as MLflow has it, and one row per expected job.

The tracking contract (shared/DESIGN.md, issue 6): experiment = study name, one run per job,
tags ``bench.key`` / ``bench.train_key`` / ``bench.kind`` / ``bench.error``, params = the flattened
config, fixed metric names. A table cell is a set of the study's configs; each config's state
comes from its EVAL run (matched by ``bench.key``), else from a failed TRAIN or VAE run it
depends on, else it is missing. Nothing the study asked for is dropped: it is finished, failed,
killed, running or missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from bench.study import Study

__all__ = ["StudyRuns", "collect_runs", "axis_order", "short_names"]

FINISHED, FAILED, KILLED, RUNNING, MISSING = "FINISHED", "FAILED", "KILLED", "RUNNING", "MISSING"
STATE_COLUMNS = ("_key", "_train_key", "_status", "_reason", "_run_id", "_kind")


@dataclass
class StudyRuns:
    """What a report is made from."""

    runs: pd.DataFrame  # mlflow.search_runs: one row per run of the experiment, every column
    jobs: pd.DataFrame  # one row per study config: axes (typed), seed, STATE_COLUMNS, metrics.*
    metrics: list[str]  # metric names present on eval runs
    tracking_uri: str
    protocol: dict[str, list[str]]  # protocol.* tags, data.dataset, data.image_size: distinct values

    def finished(self) -> pd.DataFrame:
        return self.jobs[self.jobs["_status"] == FINISHED]

    def runs_of_kind(self, kind: str) -> pd.DataFrame:
        col = "tags.bench.kind"
        return self.runs[self.runs[col] == kind] if col in self.runs else self.runs.iloc[0:0]


def collect_runs(study: Study, runs: pd.DataFrame, tracking_uri: str) -> StudyRuns:
    """Join the study's configs with their runs (see the module docstring)."""
    by_key = _latest_by(runs, "tags.bench.key")
    metric_cols = sorted(c for c in runs.columns if c.startswith("metrics."))
    rows = []
    for cfg in study.configs:
        row: dict[str, Any] = {a: cfg.value(a) for a in study.axes if a != "seed"}
        row["seed"] = cfg.seed
        key, train_key, vae_key = cfg.key(), cfg.train_key(), cfg.vae_key()
        row.update(_key=key, _train_key=train_key, _status=MISSING, _reason="", _run_id="", _kind="")
        run = by_key.get(key)
        if run is None:  # no EVAL run: did a job it depends on fail?
            for dep, what in ((train_key, "training"), (vae_key, "VAE training")):
                dep_run = by_key.get(dep) if dep else None
                if dep_run is not None and dep_run["status"] in (FAILED, KILLED):
                    run = dep_run
                    row["_reason"] = f"{what} {dep_run['status'].lower()}: "
                    break
        if run is not None:
            row["_status"] = run["status"] if run["status"] in (FINISHED, FAILED, KILLED) else RUNNING
            row["_reason"] += _text(run.get("tags.bench.error")) if row["_status"] != FINISHED else ""
            row["_run_id"], row["_kind"] = run["run_id"], _text(run.get("tags.bench.kind"))
            if run is by_key.get(key):
                row.update({c[len("metrics."):]: run.get(c) for c in metric_cols})
        rows.append(row)
    jobs = pd.DataFrame(rows)
    metrics = [c[len("metrics."):] for c in metric_cols]
    for m in metrics:
        jobs[m] = pd.to_numeric(jobs[m], errors="coerce") if m in jobs else float("nan")
    return StudyRuns(runs, jobs, metrics, tracking_uri, _protocol(study, runs, jobs))


def _text(value: Any) -> str:
    """A tag as text; absent tags are None or NaN in the search_runs frame."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _latest_by(runs: pd.DataFrame, column: str) -> dict[str, Any]:
    """key -> the run that speaks for it: a FINISHED one if any (the latest), else the latest."""
    if column not in runs or runs.empty:
        return {}
    ordered = runs.assign(_finished=runs["status"] == FINISHED).sort_values(["_finished", "start_time"])
    return {k: r for k, r in zip(ordered[column], ordered.to_dict("records")) if isinstance(k, str) and k}


def _protocol(study: Study, runs: pd.DataFrame, jobs: pd.DataFrame) -> dict[str, list[str]]:
    """Distinct protocol values of the study's finished eval runs (tags first, then the configs)."""
    ids = set(jobs.loc[jobs["_status"] == FINISHED, "_run_id"])
    mine = runs[runs["run_id"].isin(ids)] if ids else runs.iloc[0:0]
    if mine.empty and "status" in runs:  # no grid evaluation finished (a search-only study): its trials' runs
        mine = runs[runs["status"] == FINISHED]
    out: dict[str, list[str]] = {}
    for name in ("num_samples", "extractor", "reference", "backend", "weights_sha256"):
        col = f"tags.protocol.{name}"
        out[name] = sorted({str(v) for v in mine[col].dropna()}) if col in mine else []
    flat = [c.flat() for c in study.configs]
    for key, name in (("eval.num_samples", "num_samples"), ("eval.extractor", "extractor"),
                      ("data.dataset", "dataset"), ("data.image_size", "image_size")):  # fmt: skip
        if not out.get(name):
            out[name] = sorted({str(f[key]) for f in flat if f.get(key) is not None})
    if not out["image_size"]:  # native size: ask the dataset registry (it needs no files)
        out["image_size"] = sorted({str(s) for s in (_native_size(d) for d in out["dataset"]) if s})
    if not out["reference"]:
        out["reference"] = sorted({f"{f['data.dataset']}:{f['eval.reference_split']}" for f in flat})
    return out


def _native_size(dataset: str) -> int | None:
    try:
        from bench.data import dataset_info

        return dataset_info(dataset).image_size
    except Exception:  # noqa: BLE001 (unknown or unimportable: the report shows "—")
        return None


def axis_order(study: Study) -> dict[str, list[Any]]:
    """Each axis' values in study order (first appearance in the expanded grid)."""
    order: dict[str, list[Any]] = {a: [] for a in study.axes}
    order.setdefault("seed", [])
    for cfg in study.configs:
        for a in order:
            v = cfg.value(a)
            if v not in order[a]:
                order[a].append(v)
    return order


def short_names(axes: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``sample.steps`` -> ``steps`` where the last part is unambiguous among ``axes``."""
    last = [a.split(".")[-1] for a in axes]
    return {a: (s if last.count(s) == 1 else a) for a, s in zip(axes, last)}
