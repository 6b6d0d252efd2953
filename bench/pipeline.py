"""The main job: study file -> plan -> executor -> MLflow -> report (``run_ablation.py run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.execute.scheduler import RunSummary


def load_with_overrides(path: str | Path, overrides: dict[str, Any] | None = None, **dotted: Any) -> Any:
    """``dotted`` accepts ``eval__num_samples=100`` for ``eval.num_samples``."""
    from bench.study import load_study

    merged = dict(overrides or {})
    merged.update({k.replace("__", "."): v for k, v in dotted.items()})
    return load_study(path, merged or None)


def check_devices(study: Any, slots: list[Any], devices: str) -> None:
    """What the devices cannot do, refused before any work (fp16 autocast needs a GPU)."""
    import bench.rules as rules

    if all(s.device == "cpu" for s in slots):
        for train in {c.train for c in study.configs}:
            rules.check_precision(train.precision, "cpu", f"{study.path or study.name}: train.precision "
                                                          f"(--devices {devices} has no GPU)")


def run_study(path: str | Path, *, tracking_uri: str | None = None, devices: str = "auto", retries: int = 2,
              dry_run: bool = False, progress: bool = True, report: bool = True, executor: str = "local",
              overrides: dict[str, Any] | None = None, executor_options: dict[str, Any] | None = None,
              out_dir: str | Path = "reports", **dotted: Any) -> RunSummary | None:
    """Run a study: ``bench.run_study("ablations/quickstart.yaml", **{"eval.num_samples": 200})``.

    Everything a user can get wrong (the study file, devices, the tracking server) is checked
    before any work starts. Finished jobs are skipped; cut-off runs are marked KILLED and redone.
    """
    from bench.execute import EXECUTORS, done_keys, make_pool, run_plan, stop
    from bench.tracking import Tracker, run_name

    EXECUTORS.check(executor, "--executor")
    with stop.interruptible():  # reading and planning write nothing: a stop here is immediate
        study = load_with_overrides(path, overrides, **dotted)
        meta = EXECUTORS.meta(executor)  # an executor of this machine's devices declares how to read them
        if meta.get("devices") is not None:
            slots = meta["devices"](devices)
            check_devices(study, slots, devices)
            if not dry_run and meta.get("warm") is not None:
                meta["warm"](slots)  # its imports overlap the tracking store's opening
        plan = study.plan()
    tracker = Tracker(study.name, tracking_uri)
    killed = tracker.mark_orphans_killed()
    if not dry_run:
        tracker.describe(study.question or study.name, _view_metrics(study), list(study.axes),
                         [run_name(j.kind, j.label) for j in plan.jobs.values()])
    done = done_keys(plan, tracker)
    print(f"study {study.name!r}: {len(study.configs)} configurations")
    if killed:
        print(f"{killed} run(s) cut off by an earlier stop were marked KILLED and will be redone")
    print(plan.summary(done))
    if dry_run:
        return None
    pool = make_pool(executor, devices, progress, **(executor_options or {}))
    summary = run_plan(plan, pool, tracker, done, retries=retries, progress=progress)
    # the grid ended, nothing of this driver is in flight: a run of it still RUNNING is a stray copy
    # (a create_run the MLflow client retried across a tracking-server restart), not a record
    tracker.mark_orphans_killed("left RUNNING by its driver after the grid ended (a write retried across a "
                                "tracking-server outage); the job's FINISHED run is its record")
    print(summary)
    store = tracker.uri or "sqlite:///mlflow.db"
    served = store.startswith(("http://", "https://"))
    print(f"MLflow runs: {tracker.runs_view()}" + ("" if served else f" (after `mlflow ui --backend-store-uri {store}`)"))
    if report:
        from bench.report import build_report

        try:
            with stop.interruptible():  # the report only reads MLflow
                out = build_report(study, tracking_uri=tracker.uri, out_dir=out_dir)
        except stop.Stopped as e:
            e.counts.update(finished=len(summary.finished), cut=0, left=0)
            raise
        print(f"report: {out}")
    return summary


def _view_metrics(study: Any) -> list[tuple[str, bool | None]]:
    """The metrics the study's tables report, the first table's first value column first (what a
    reader sorts runs by), each with its direction (True: higher is better)."""
    from bench.metrics import METRICS, OUTPUTS, higher_is_better, metric_outputs

    out: list[str] = []
    for table in study.tables or []:
        values = table.get("values")
        for name in [values] if isinstance(values, str) else list(values or []):
            key = str(name) if str(name) in OUTPUTS or str(name) not in METRICS else metric_outputs([str(name)])[0]
            out += [key] if key not in out else []
    return [(key, higher_is_better(key)) for key in out]
