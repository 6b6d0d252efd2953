"""The scheduler every executor shares: dispatch ready jobs, record results, retry crashed workers.

Split by responsibility: :class:`~bench.plan.Frontier` decides what may run next (most downstream
work first), :class:`Retries` decides whether a dead worker's job goes again, and
:class:`Recorder` is the single writer of job runs to MLflow (through the tracker). An executor
provides only a :class:`Pool` (local processes, Ray tasks, Slurm jobs).

A job that raises is FAILED at once (a NaN loss will not go away on retry); a job whose worker
*died* is retried up to ``retries`` times, resuming from its checkpoint. Jobs downstream of a
failure are recorded FAILED with the reason; the rest of the grid goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import bench.execute.stop as stop
from bench.plan import KINDS, Frontier, Job, Plan


@dataclass
class Outcome:
    key: str
    result: dict[str, Any] | None = None  # set when the job returned
    error: str | None = None  # the job raised: traceback text
    crashed: str | None = None  # the worker died: why


class Pool(Protocol):
    slots: int

    def submit(self, job: Job) -> None: ...

    def wait(self, timeout: float) -> list[Outcome]: ...

    def close(self) -> None: ...


@dataclass
class RunSummary:
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    retried: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        s = (f"{len(self.finished)} jobs finished, {len(self.failed)} failed, {self.skipped} already done "
             f"({self.seconds:.1f} s)")
        for key, why in list(self.failed.items())[:5]:
            s += f"\n  FAILED {key}: {why.strip().splitlines()[-1] if why.strip() else why}"
        return s


def done_keys(plan: Plan, tracker: Any) -> set[str]:
    """Keys with a FINISHED run whose files are still on disk (a wiped cache means redo)."""
    from bench.jobs import is_done_on_disk

    return {k for k in tracker.finished_keys() if k in plan and is_done_on_disk(plan[k].kind, plan[k].config)}


class Retries:
    """How often each job's worker died; whether it may go again."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.attempts: dict[str, int] = {}

    def again(self, key: str) -> bool:
        """Count one more death of ``key``'s worker; True if the job may be resubmitted."""
        if self.attempts.get(key, 0) >= self.limit:
            return False
        self.attempts[key] = self.attempts.get(key, 0) + 1
        return True

    def tries(self, key: str) -> int:
        return self.attempts.get(key, 0) + 1


class Recorder:
    """One MLflow run per job, written by the driver only; keeps the :class:`RunSummary`."""

    def __init__(self, tracker: Any, summary: RunSummary) -> None:
        self.tracker = tracker
        self.summary = summary
        self.runs: dict[str, str] = {}  # key of a running job -> its MLflow run id

    def start(self, job: Job) -> None:
        run_id = self.tracker.start(job.kind, job.key, job.label, job.config.flat(), _tags(job), None)
        self.tracker.log_config(run_id, job.config.to_dict())
        self.runs[job.key] = run_id

    def retried(self, key: str, tries: int) -> None:
        self.summary.retried[key] = tries - 1
        self.tracker.client.set_tag(self.runs[key], "bench.attempts", str(tries))

    def finished(self, key: str, result: dict[str, Any]) -> None:
        self.tracker.finish(self.runs.pop(key), result)
        self.summary.finished.append(key)

    def failed(self, key: str, reason: str) -> None:
        self.tracker.fail(self.runs.pop(key), reason)
        self.summary.failed[key] = reason

    def blocked(self, job: Job, reason: str) -> None:
        """A job that will never run because a dependency failed: a FAILED run with the reason."""
        run_id = self.tracker.start(job.kind, job.key, job.label, job.config.flat(), _tags(job), None)
        self.tracker.fail(run_id, reason[-5000:])
        self.summary.failed[job.key] = reason

    def killed(self, why: str) -> None:
        """The driver is stopping: nothing stays RUNNING."""
        for run_id in self.runs.values():
            self.tracker.fail(run_id, why, status="KILLED")
        self.runs.clear()


def run_plan(plan: Plan, pool: Pool, tracker: Any, done: set[str], retries: int = 2,
             progress: bool = True) -> RunSummary:
    """Run every needed job of ``plan`` on ``pool``; ``done`` are keys finished earlier."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    frontier = Frontier(plan, done)
    summary = RunSummary(skipped=len([k for k in plan.jobs if k in done]))
    record, tries = Recorder(tracker, summary), Retries(retries)
    bar = tqdm(total=len(frontier.pending), desc="grid", unit="job", disable=not progress)
    try:
        while True:
            stop.check()  # a SIGINT/SIGTERM seen by the CLI's handler: stop between writes
            while len(frontier.running) < pool.slots and (job := frontier.take()) is not None:
                record.start(job)
                pool.submit(job)
            if not frontier.running:
                break
            outcomes = pool.wait(timeout=1.0)
            if stop.requested():  # keep what finished; a worker the same signal killed is no crash
                for out in (o for o in outcomes if o.result is not None):
                    record.finished(out.key, out.result)
                stop.check()
            for out in outcomes:
                if out.result is None and out.crashed is not None and tries.again(out.key):
                    record.retried(out.key, tries.tries(out.key))
                    pool.submit(plan[out.key])  # resumes from its checkpoint
                    continue
                if out.result is not None:
                    record.finished(out.key, out.result)
                    frontier.finish(out.key)
                else:
                    record.failed(out.key, out.error or f"worker died {tries.tries(out.key)} times: {out.crashed}")
                    dropped = frontier.fail(out.key)
                    _block_downstream(plan, dropped, record)
                    bar.update(len(dropped))
                bar.update(1)
    except BaseException as e:
        cut = len(record.runs)
        record.killed(f"driver stopped: {type(e).__name__}")
        if isinstance(e, stop.Stopped):
            e.counts.update(finished=len(summary.finished), cut=cut, left=len(frontier.pending))
        raise
    finally:
        bar.close()
        pool.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _block_downstream(plan: Plan, dropped: list[str], record: Recorder) -> None:
    """Record each job dropped after a failure as FAILED, naming the failed job it waited on
    (upstream first: a TRAIN before its EVALs, so each reason chains to the root failure)."""
    for key in sorted(dropped, key=lambda k: KINDS.index(plan[k].kind)):
        job = plan[key]
        bad = next(d for d in job.deps if d in record.summary.failed)
        record.blocked(job, f"dependency {plan[bad].kind} job {bad} failed: {record.summary.failed[bad]}")


def _tags(job: Job) -> dict[str, str]:
    cfg = job.config
    tags = {"bench.train_key": cfg.train_key(), "bench.seed": str(cfg.seed)}
    if cfg.vae_key():
        tags["bench.vae_key"] = cfg.vae_key()
    return tags
