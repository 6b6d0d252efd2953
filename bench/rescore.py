"""Rescoring and auditing finished runs from the feature store: no sampling.

``run_ablation.py rescore STUDY --metrics fd_dinov2 cmmd`` computes new metrics of every finished
evaluation of a study from its stored samples and features and logs them into the same MLflow
runs (their keys unchanged; tag ``bench.rescored``). ``run_ablation.py audit STUDY`` recomputes
each run's FID from its stored samples through torch-fidelity and through clean-fid's own
pipeline and prints both beside the logged number, with the protocol of each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError


@dataclass
class RescoreSummary:
    rescored: list[str] = field(default_factory=list)  # run keys
    unfinished: list[str] = field(default_factory=list)  # evaluations without a FINISHED run
    sampled: int = 0  # images generated while rescoring (0: everything came from the store)
    features_loaded: int = 0  # generated images whose features came from the store
    features_extracted: int = 0

    def __str__(self) -> str:
        lines = [f"rescored {len(self.rescored)} run(s); images sampled: {self.sampled}; generated images' "
                 f"features loaded from the store: {self.features_loaded}, extracted: {self.features_extracted}"]
        if self.unfinished:
            lines.append(f"{len(self.unfinished)} evaluation(s) have no finished run yet (run the study first)")
        return "\n".join(lines)


def _finished_evals(study: Any, tracker: Any) -> tuple[list[tuple[Any, Any]], list[str]]:
    """[(config, MLflow run)] of the study's evaluations with a FINISHED run, and the keys without one.

    Runs are matched by sample key (the images they scored), so scoring settings given to
    ``rescore`` (``--set eval.dinov2_model=...``) find the runs that were made without them."""
    by_sample: dict[str, list[Any]] = {}
    for r in tracker.runs(kind="eval", status="FINISHED"):
        by_sample.setdefault(r.data.tags.get("bench.sample_key", ""), []).append(r)
    configs = {c.key(): c for c in study.configs}
    done = {k: [r for r in by_sample.get(c.sample_key(), [])
                if r.data.params.get("eval.num_samples") == str(c.eval.num_samples)] for k, c in configs.items()}
    return [(configs[k], r) for k, rs in done.items() for r in rs], [k for k, rs in done.items() if not rs]


def _stored_samples(cfg: Any, key: str) -> dict[str, Any]:
    from bench.metrics.features import load_samples, samples_path

    n = cfg.eval.num_samples
    blob = load_samples(cfg.sample_key(), n)  # the run's images: the first n of the sequence
    if blob is not None:
        return blob
    raise BenchError(f"run {key}: no stored samples ({n} needed) at {samples_path(cfg.sample_key())} (the run "
                     "finished before the feature store, or on a machine whose cache this one does not share); "
                     "rerun it, or point BENCH_CACHE_DIR at that machine's cache")


def rescore_study(path: str | Path, metrics: list[str], *, tracking_uri: str | None = None, bootstrap: int | None = None,
                  device: str = "cpu", overrides: dict[str, Any] | None = None, report: bool = True,
                  out_dir: str | Path = "reports", progress: bool = True) -> RescoreSummary:
    """Compute ``metrics`` of every finished evaluation of a study from the feature store and log them."""
    from bench.jobs.eval import SAMPLED, image_metrics
    from bench.metrics import METRICS, validate_eval
    from bench.metrics.features import STORE_COUNTS
    from bench.pipeline import load_with_overrides
    from bench.tracking import Tracker

    study = load_with_overrides(path, overrides)
    if not metrics:
        raise BenchError("rescore: name the metrics to compute, e.g. --metrics fd_dinov2 cmmd")
    for m in metrics:
        if METRICS.get(METRICS.check(m, "--metrics")).needs_model:
            raise BenchError(f"--metrics: {m} is computed from the model, not from samples; it cannot be rescored")
    tracker = Tracker(study.name, tracking_uri)
    done, unfinished = _finished_evals(study, tracker)
    todo = []
    for cfg, run in done:  # every mistake before any work: metric names, weights, stored samples
        ev = replace(cfg.eval, metrics=tuple(metrics), bootstrap=cfg.eval.bootstrap if bootstrap is None else bootstrap)
        validate_eval(ev, cfg.data, f"rescore {cfg.key()}: eval")
        todo.append((replace(cfg, eval=ev), cfg.key(), run, _stored_samples(cfg, cfg.key())))
    sampled0, loaded0, extracted0 = SAMPLED["images"], STORE_COUNTS["loaded"], STORE_COUNTS["extracted"]
    summary = RescoreSummary(unfinished=unfinished)
    for cfg, key, run, blob in todo:
        res = image_metrics(cfg, key, blob["images"], blob["labels"], list(metrics), device, progress)
        bad = {k: v for k, v in res.items() if not math.isfinite(float(v))}
        if bad:
            raise FloatingPointError(f"run {key}: rescored metric(s) {bad} are not finite")
        tracker.log_metrics(run.info.run_id, {k: float(v) for k, v in res.items()})
        tags = {f"protocol.{k}": str(v) for k, v in res.protocol.items() if v is not None}
        old = run.data.tags.get("bench.rescored", "")
        tags["bench.rescored"] = ",".join(dict.fromkeys([*filter(None, old.split(",")), *metrics]))
        tracker.set_tags(run.info.run_id, tags)
        summary.rescored.append(key)
    summary.sampled = SAMPLED["images"] - sampled0
    summary.features_loaded = STORE_COUNTS["loaded"] - loaded0
    summary.features_extracted = STORE_COUNTS["extracted"] - extracted0
    print(summary)
    if report:
        from bench.report import build_report

        print(f"report: {build_report(study, tracking_uri=tracker.uri, out_dir=out_dir)}")
    return summary


def audit_study(path: str | Path, *, tracking_uri: str | None = None, device: str = "cpu",
                overrides: dict[str, Any] | None = None, limit: int | None = None) -> Any:
    """Recompute each finished run's FID from its stored samples by torch-fidelity and by clean-fid's
    own pipeline; a table of the logged and the recomputed numbers, their differences and protocols."""
    import warnings

    import pandas as pd

    from bench.metrics import FIDSampleSizeWarning, compute_metrics
    from bench.pipeline import load_with_overrides
    from bench.tracking import Tracker

    study = load_with_overrides(path, overrides)
    tracker = Tracker(study.name, tracking_uri)
    done, _ = _finished_evals(study, tracker)
    done = [(c, r) for c, r in done if "fid" in c.eval.metrics][:limit]
    if not done:
        raise BenchError(f"audit: study {study.name!r} has no finished run that measured fid (run it first)")
    rows = []
    for cfg, run in done:
        blob, ev = _stored_samples(cfg, cfg.key()), cfg.eval
        row: dict[str, Any] = {"run": run.info.run_name or run.data.tags.get("bench.label", cfg.key()),
                               "logged": run.data.metrics.get("fid")}
        for backend in ("torch-fidelity", "clean-fid"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FIDSampleSizeWarning)
                res = compute_metrics(blob["images"], reference=f"{cfg.data.dataset}:{ev.reference_split}",
                                      extractor=ev.extractor, metrics=["fid"], fid_backend=backend,
                                      inception_weights=ev.inception_weights, device=device, run_name=cfg.key(),
                                      data=cfg.data, progress=False)
            row[backend] = res["fid"]
            p = res.protocol
            row[f"{backend} protocol"] = "; ".join(str(x) for x in (
                p["extractor"], p.get("cleanfid_features") or p["resize"], f"{p['num_samples']} vs "
                f"{p['reference_count']} {p['reference']}", f"mode {p['cleanfid_mode']}" if "cleanfid_mode" in p else ""
            ) if x)
        row["torch-fidelity - logged"] = row["torch-fidelity"] - row["logged"] if row["logged"] is not None else None
        row["clean-fid - torch-fidelity"] = row["clean-fid"] - row["torch-fidelity"]
        rows.append(row)
    table = pd.DataFrame(rows)
    print(audit_text(table))
    return table


def audit_text(table: Any) -> str:
    """The audit as a reader wants it: each backend's protocol once above the table when every row
    shares it, short columns, and run names with '|' escaped so the Markdown table stays one."""
    lines, shown = [], table.copy()
    for col in [c for c in table.columns if c.endswith(" protocol")]:
        values = table[col].dropna().unique()
        if len(values) == 1:
            lines.append(f"{col}: {values[0]}")
            shown = shown.drop(columns=col)
    shown = shown.rename(columns={"torch-fidelity - logged": "tf - logged", "clean-fid - torch-fidelity": "clean - tf"})
    for col in shown.columns:
        shown[col] = shown[col].map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)
    return "\n".join([*lines, *([""] if lines else []), shown.to_markdown(index=False, floatfmt=".4g")])
