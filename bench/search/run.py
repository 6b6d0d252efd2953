"""Optuna search over inference-time axes on one trained checkpoint (the only module importing optuna).

``run_ablation.py search STUDY`` reads the study's ``search:`` section (format and checks in
:mod:`bench.study.search_spec`), then:

1. trains the base point's model once through the planner (VAE/TRAIN jobs on a LocalPool, or
   found FINISHED in MLflow and on disk: the skip logic of ``run``);
2. runs trials until the Optuna study has ``n_trials`` COMPLETE trials: each trial is an EVAL of
   that checkpoint (:func:`bench.jobs.run_eval` in this process, on the first ``--devices``
   device), one MLflow run of kind ``trial`` (params: the full flattened config; tags
   ``optuna.trial_number``, ``optuna.study_name``) under a parent run of kind ``search``;
3. a trial whose evaluation raises (NaN samples, ...) is FAIL in Optuna and FAILED in MLflow
   with the reason, and the search goes on (it stops after ``max_failures`` failures).

Storage (``--storage``, resolved in :mod:`bench.search.store`): by default an SQLite file
``reports/<study>/optuna.db`` under the working folder; a database URL (``postgresql://``,
``mysql://``) for workers on several machines; a journal file (``PATH.log`` or ``journal:PATH``)
for several processes on one machine. The Optuna study is named ``<study>:search-<hash>`` (base
run, space, objectives, budget: :func:`bench.study.search_spec.optuna_study_name`) and loaded if it
exists, so a killed search resumes: RUNNING trials whose process on this host is dead (or, on a
database server, whose heartbeat stopped) become FAIL, their MLflow runs KILLED, and only the
missing trials run. Workers sharing a storage claim trials by number; one whose trial would
exceed ``n_trials`` marks it FAIL (user attr ``bench.surplus``) and stops.

Budget (``budget: {seconds_per_image: 0.05}``): samplers that handle constraints (tpe, gp,
nsga2, random) get ``trial.set_constraint(metric, value - bound)`` (Optuna 5's successor of
``constraints_func``), so over-budget trials are infeasible and never best; cmaes cannot, so its
objective is penalized instead (``value +/- 1e6 * (1 + relative excess)``, tagged in MLflow).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import bench.execute.stop as stop
from bench.core.errors import BenchError
from bench.plan import Plan
from bench.search.store import open_storage, parent_runs, trial_runs
from bench.study.search_spec import (
    SEARCH_SAMPLERS,
    Param,
    SearchSpec,
    guidance_overrides,
    option_applies,
    optuna_study_name,
    parse_search,
    positive_int,
)
from bench.tracking import pid_alive

OWNER_ATTR = "bench.owner"
PENALTY = 1.0e6


def make_sampler(name: str, seed: int) -> Any:
    """``optuna.samplers.<class>(seed=seed)`` for a name of :data:`SEARCH_SAMPLERS`; a missing
    optional package it needs (``cmaes``) is one BenchError naming it."""
    import optuna

    cls_name = SEARCH_SAMPLERS.get(SEARCH_SAMPLERS.check(name, "search.sampler"))
    package = SEARCH_SAMPLERS.meta(name).get("package")
    if package:
        try:
            __import__(package)
        except ImportError:
            raise BenchError(f"search.sampler: {cls_name} needs the `{package}` package; pip install "
                             f"{package}, or use sampler: tpe or gp") from None
    return getattr(optuna.samplers, cls_name)(seed=seed)


@dataclass
class SearchSummary:
    study_name: str  # the Optuna study
    storage: str  # as shown (passwords hidden)
    parent_run_id: str
    n_complete: int
    failed_here: int = 0
    running: int = 0  # trials still RUNNING (other workers) when this process stopped
    best: list[dict[str, Any]] = field(default_factory=list)  # {"number", "params", "values"}


# --- the search ------------------------------------------------------------------------------


def run_search(study: Any, *, tracking_uri: str | None = None, storage: str | None = None,
               devices: str = "auto", n_trials: int | None = None, progress: bool = True,
               max_failures: int | None = None) -> SearchSummary:
    """Run (or resume, or join) the study's search until ``n_trials`` trials are COMPLETE.

    ``study``: a :class:`bench.study.Study` with a ``search:`` section; the search runs on
    ``study.configs[0]``. ``n_trials`` overrides ``search.n_trials``. Stops with a BenchError
    after ``max_failures`` (default: n_trials) failed trials in this process.
    """
    import optuna

    from bench.execute.local import parse_devices
    from bench.tracking import Tracker

    base = study.configs[0]
    spec = parse_search(study.search, base, f"{study.path or study.name}: search")
    want = spec.n_trials if n_trials is None else positive_int(n_trials, "--n-trials")
    device = parse_devices(devices)[0].label
    if os.environ.get("BENCH_THREADS"):  # trials run in this process (several workers per machine)
        import torch

        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    make_sampler(spec.sampler, spec.seed)  # a missing optional package fails before any work
    store, shown = open_storage(storage, study.name)
    tracker = Tracker(study.name, tracking_uri)
    tracker.mark_orphans_killed()
    train_base(base, tracker, devices, progress)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = optuna_study_name(study.name, base, spec)
    ostudy = optuna.create_study(storage=store, study_name=name, load_if_exists=True,
                                 sampler=make_sampler(spec.sampler, spec.seed),
                                 directions=[o.direction for o in spec.objectives])
    ostudy.set_user_attr("bench.search", json.dumps(study.search, sort_keys=True, default=str))
    existing = len(ostudy.get_trials(deepcopy=False))
    if existing:  # resumed or joined: a fresh random stream, not a replay of the first proposals
        ostudy.sampler = make_sampler(spec.sampler, spec.seed + existing)
    _fail_stale(ostudy, store, tracker, name)
    parent = _parent_run(tracker, name, base, spec, shown, want)
    run = _Runner(ostudy, store, tracker, spec, base, name, parent, device, progress)
    limit = want if max_failures is None else max_failures
    try:
        while run.step(want):
            if run.failed >= limit:
                raise BenchError(f"search {name}: {run.failed} trials failed in this process; stopping. "
                                 f"Last error: {run.last_error}")
    except stop.Stopped as e:  # SIGINT/SIGTERM: the trial in flight is FAIL / KILLED, the parent closed
        n = len(ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        raise e.counted("trial", n, run.cut, want - n - run.cut) from None
    finally:
        summary = _summarize(ostudy, spec, name, shown, parent, run.failed)
        _close_parent(tracker, parent, summary, want)
    if progress:
        print(f"search {name}: {summary.n_complete}/{want} trials complete ({shown}); best: "
              + "; ".join(f"#{b['number']} {b['params']} -> {b['values']}" for b in summary.best))
    return summary


def optuna_counts(storage: str | None, study_name: str, name: str) -> dict[str, Any]:
    """``{"storage": shown, "counts": {"COMPLETE": n, "FAIL": m, ...}}`` of the Optuna study ``name``."""
    import optuna

    store, shown = open_storage(storage, study_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=name, storage=store).get_trials(deepcopy=False)
    states = sorted({t.state.name for t in trials})
    return {"storage": shown, "counts": {s: sum(t.state.name == s for t in trials) for s in states}}


class _TrainPlan(Plan):
    """The VAE/TRAIN jobs of a plan, needed until done (no EVAL asks for them: the trials do)."""

    def needed(self, done: Any = frozenset()) -> set[str]:
        done = set(done)
        return {k for k in self.jobs if k not in done}


def train_base(base: Any, tracker: Any, devices: str, progress: bool = True) -> None:
    """Train the base run's model (and VAE) once, or find it FINISHED in MLflow and on disk."""
    from bench.execute import done_keys, make_pool, run_plan
    from bench.plan import plan

    jobs = _TrainPlan({k: j for k, j in plan([base]).jobs.items() if j.kind != "eval"})
    done = done_keys(jobs, tracker)
    if not jobs.needed(done):
        return
    summary = run_plan(jobs, make_pool("local", devices, progress), tracker, done, progress=progress)
    if summary.failed:
        key, why = next(iter(summary.failed.items()))
        raise BenchError(f"training the searched model ({key}) failed, so there is nothing to search: "
                         f"{why.strip().splitlines()[-1] if why.strip() else why}")


class _Runner:
    """Claims, evaluates and records one trial at a time."""

    def __init__(self, ostudy: Any, store: Any, tracker: Any, spec: SearchSpec, base: Any, name: str,
                 parent: str, device: str, progress: bool) -> None:
        self.ostudy, self.store, self.tracker, self.spec = ostudy, store, tracker, spec
        self.base, self.name, self.parent, self.device, self.progress = base, name, parent, device, progress
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.failed = self.cut = 0  # cut: trials cut off by a stop
        self.last_error = ""

    def step(self, want: int) -> bool:
        """Run one trial; False when ``want`` trials are complete or claimed by live workers."""
        from optuna.trial import TrialState

        _fail_stale(self.ostudy, self.store, self.tracker, self.name)
        active = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        if len(self.ostudy.get_trials(deepcopy=False, states=active)) >= want:
            return False
        trial = self.ostudy.ask()
        trial.set_user_attr(OWNER_ATTR, self.owner)
        claimed = sorted(t.number for t in self.ostudy.get_trials(deepcopy=False, states=active))
        if claimed.index(trial.number) >= want:  # another worker claimed the last one first
            trial.set_user_attr("bench.surplus", True)
            self.ostudy.tell(trial, state=TrialState.FAIL)
            return False
        params: dict[str, Any] = {}
        for p in self.spec.params:  # the method first: an option is drawn only where the method has it
            if option_applies(p.key, params, self.base):
                params[p.key] = _suggest(trial, p)
        self._evaluate(trial, params)
        return True

    def _evaluate(self, trial: Any, params: dict[str, Any]) -> None:
        from optuna.trial import TrialState

        import bench.jobs as jobs
        from bench.core.allocator import tune_allocator

        tune_allocator()  # trials are jobs run in this process: as in every worker (once per process)
        cfg = self.base.override(**guidance_overrides(params, self.base))
        shown = " ".join(f"{k.rpartition('.')[2]}={_fmt(v)}" for k, v in params.items())
        tags = {"bench.train_key": cfg.train_key(), "bench.eval_key": cfg.key(), "bench.seed": str(cfg.seed),
                "optuna.trial_number": str(trial.number), "optuna.study_name": self.name}
        run_id = self.tracker.start("trial", f"{self.name}/{trial.number}", f"#{trial.number} {shown}",
                                    cfg.flat(), tags, parent_run_id=self.parent)
        self.tracker.log_config(run_id, cfg.to_dict())
        try:
            with _Heartbeat(self.store, trial._trial_id), stop.interruptible():  # writes to no store
                result = jobs.run_eval(cfg, cfg.key(), self.device, progress=self.progress)
            raw = [_metric(result, o.metric) for o in self.spec.objectives]
            values, feasible = self._constrain(trial, result, raw)
        except Exception as e:
            self.failed += 1
            self.last_error = f"{type(e).__name__}: {e}"
            self.tracker.fail(run_id, traceback.format_exc())
            trial.set_user_attr("bench.error", self.last_error[:1000])
            self.ostudy.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number} ({shown}) FAILED: {self.last_error}")
            return
        except BaseException as e:  # Ctrl-C, SIGTERM (bench.execute.stop): nothing stays RUNNING
            self.cut += 1
            self.tracker.fail(run_id, f"search stopped: {type(e).__name__}", status="KILLED")
            self.ostudy.tell(trial, state=TrialState.FAIL)
            raise
        result.setdefault("tags", {})["search.feasible"] = str(feasible).lower()
        self.tracker.finish(run_id, result)  # FINISHED before COMPLETE: a kill here is reconciled
        self.ostudy.tell(trial, values)
        if self.progress:
            scores = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(self.spec.objectives, raw))
            print(f"trial {trial.number}: {shown} -> {scores}{'' if feasible else ' (over budget)'}")

    def _constrain(self, trial: Any, result: dict[str, Any], raw: list[float]) -> tuple[list[float], bool]:
        """Budget: Optuna constraints where the sampler uses them, else a penalty on the values."""
        excess = {m: _metric(result, m) - bound for m, bound in self.spec.budget.items()}
        feasible = all(v <= 0 for v in excess.values())
        if SEARCH_SAMPLERS.meta(self.spec.sampler)["constraints"]:
            for m, v in excess.items():
                trial.set_constraint(m, v)
            return raw, feasible
        if feasible:
            return raw, True
        over = sum(max(0.0, v) / self.spec.budget[m] for m, v in excess.items())
        sign = [1.0 if o.direction == "minimize" else -1.0 for o in self.spec.objectives]
        values = [v + s * PENALTY * (1 + over) for v, s in zip(raw, sign)]
        result.setdefault("tags", {})["search.penalized_values"] = json.dumps(values)
        return values, False


def _suggest(trial: Any, p: Param) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(p.key, list(p.choices or ()))
    if p.type == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)


def _metric(result: dict[str, Any], name: str) -> float:
    value = result.get("metrics", {}).get(name)
    if value is None:
        raise FloatingPointError(f"the evaluation returned no finite {name!r} (metrics: "
                                 f"{', '.join(sorted(result.get('metrics', {})))})")
    return float(value)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class _Heartbeat:
    """Records Optuna heartbeats for a trial on a database server (ask/tell does not)."""

    def __init__(self, store: Any, trial_id: int) -> None:
        interval = getattr(store, "get_heartbeat_interval", lambda: None)()
        self.store, self.trial_id, self.interval = store, trial_id, interval
        self.stop = threading.Event()

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self.store.record_heartbeat(self.trial_id)
            threading.Thread(target=self._beat, daemon=True).start()
        return self

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            self.store.record_heartbeat(self.trial_id)

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()


# --- stale trials, MLflow runs ---------------------------------------------------------------


def _is_stale(trial: Any, host: str) -> bool:
    """A RUNNING trial whose process on this host is gone (ownerless ones after two minutes)."""
    owner = trial.user_attrs.get(OWNER_ATTR)
    if not owner:
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        return time.time() - started > 120
    h, _, pid = owner.rpartition(":")
    return h == host and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid))


def _fail_stale(ostudy: Any, store: Any, tracker: Any, name: str) -> int:
    """Mark stale RUNNING trials FAIL (dead process here, stopped heartbeat elsewhere) and their
    MLflow runs KILLED; returns how many this call failed."""
    import optuna
    from optuna.trial import TrialState

    if getattr(store, "get_heartbeat_interval", lambda: None)():  # database servers only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(ostudy)
    host, stale = socket.gethostname(), []
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _is_stale(t, host):
            try:
                ostudy.tell(t.number, state=TrialState.FAIL)
                stale.append(t.number)
            except Exception:  # another worker failed or finished it meanwhile
                continue
    failed = {t.number for t in ostudy.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    for r in trial_runs(tracker, name):
        number = int(r.data.tags.get("optuna.trial_number", -1))
        if number in failed and r.info.status in ("RUNNING", "FINISHED"):
            tracker.fail(r.info.run_id, "cut off: its search process stopped before Optuna recorded the "
                         "trial, which is now FAIL", status="KILLED")
    return len(stale)


def _parent_run(tracker: Any, name: str, base: Any, spec: SearchSpec, storage: str, want: int) -> str:
    """The one parent run of this search: found (set RUNNING again) or created."""
    runs = parent_runs(tracker, name)
    if runs:
        run_id = runs[0].info.run_id
        tracker.client.update_run(run_id, status="RUNNING")
    else:
        label = f"{', '.join(spec.keys)} ({spec.sampler})"
        mine = tracker.start("search", name, label, base.flat(), {"bench.train_key": base.train_key()})
        tracker.log_config(mine, base.to_dict())
        run_id = parent_runs(tracker, name)[0].info.run_id  # two workers racing: keep the first
        if run_id != mine:
            tracker.client.delete_run(mine)
    tags = {"optuna.study_name": name, "optuna.storage": storage, "optuna.sampler": spec.sampler,
            "search.n_trials": str(want), "search.params": ",".join(spec.keys),
            "search.objectives": ",".join(f"{o.metric}:{o.direction}" for o in spec.objectives),
            "search.budget": json.dumps(spec.budget), "bench.driver": tracker.driver}
    for k, v in tags.items():
        tracker.client.set_tag(run_id, k, v)
    return run_id


def _summarize(ostudy: Any, spec: SearchSpec, name: str, storage: str, parent: str, failed: int) -> SearchSummary:
    from optuna.trial import TrialState

    complete = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best: list[Any] = []
    try:
        best = ostudy.best_trials if len(spec.objectives) > 1 else [ostudy.best_trial]
    except (ValueError, RuntimeError):  # nothing complete, or nothing feasible
        pass
    rows = [{"number": t.number, "params": t.params,
             "values": dict(zip((o.metric for o in spec.objectives), t.values))} for t in best]
    running = len(ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return SearchSummary(name, storage, parent, len(complete), failed, running, rows)


def _close_parent(tracker: Any, parent: str, summary: SearchSummary, want: int) -> None:
    if summary.best:
        tracker.client.set_tag(parent, "search.best", json.dumps(summary.best, default=str)[:5000])
    tracker.client.set_tag(parent, "search.complete", str(summary.n_complete))
    if summary.n_complete >= want:
        tracker.client.set_terminated(parent, "FINISHED")
    elif not summary.running:  # else another worker is still at it and will close the run
        tracker.client.set_terminated(parent, "KILLED")
