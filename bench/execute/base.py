"""The scheduler every executor shares: dispatch ready jobs, log results, retry crashed workers.

An executor provides a :class:`Pool` (local processes, Ray tasks, Slurm jobs); this loop is the
single writer to MLflow. A job that raises is FAILED at once (a NaN loss will not go away on
retry); a job whose worker *died* is retried up to ``retries`` times, resuming from its checkpoint.
Jobs downstream of a failure are recorded FAILED with the reason; the rest of the grid goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.plan import Job, Plan


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


def run_plan(plan: Plan, pool: Pool, tracker: Any, done: set[str], retries: int = 2,
             progress: bool = True) -> RunSummary:
    """Run every needed job of ``plan`` on ``pool``; ``done`` are keys finished earlier."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    done = set(done)
    need = plan.needed(done)
    summary = RunSummary(skipped=len([k for k in plan.jobs if k in done]))
    running: dict[str, str] = {}  # key -> MLflow run id
    failed: set[str] = set()
    attempts: dict[str, int] = {}
    bar = tqdm(total=len(need), desc="grid", unit="job", disable=not progress)
    try:
        changed = True  # ready jobs only change when a job ends: rescan the plan only then
        while True:
            if changed:
                _fail_blocked(plan, need, done, failed, running, tracker, summary, bar)
                for job in plan.ready(done | failed, set(running))[: max(0, pool.slots - len(running))]:
                    if job.key in failed or any(d in failed for d in job.deps):
                        continue
                    running[job.key] = tracker.start(job.kind, job.key, job.label, job.config.flat(),
                                                     _tags(job), None)
                    tracker.log_config(running[job.key], job.config.to_dict())
                    pool.submit(job)
                changed = False
            if not running:
                break
            for out in pool.wait(timeout=1.0):
                changed = True
                job = plan[out.key]
                run_id = running[out.key]
                if out.result is not None:
                    tracker.finish(run_id, out.result)
                    done.add(out.key)
                    summary.finished.append(out.key)
                elif out.crashed is not None and attempts.get(out.key, 0) < retries:
                    attempts[out.key] = attempts.get(out.key, 0) + 1
                    summary.retried[out.key] = attempts[out.key]
                    tracker.client.set_tag(run_id, "bench.attempts", str(attempts[out.key] + 1))
                    pool.submit(job)  # resumes from its checkpoint
                    continue
                else:
                    reason = out.error or f"worker died {attempts.get(out.key, 0) + 1} times: {out.crashed}"
                    tracker.fail(run_id, reason)
                    failed.add(out.key)
                    summary.failed[out.key] = reason
                del running[out.key]
                bar.update(1)
    except BaseException as e:
        for run_id in running.values():  # the driver is stopping: nothing stays RUNNING
            tracker.fail(run_id, f"driver stopped: {type(e).__name__}", status="KILLED")
        raise
    finally:
        bar.close()
        pool.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _fail_blocked(plan: Plan, need: set[str], done: set[str], failed: set[str], running: dict[str, str],
                  tracker: Any, summary: RunSummary, bar: Any) -> None:
    """Record every needed job downstream of a failure as FAILED, with the upstream reason."""
    changed = True
    while changed:
        changed = False
        for key in need - done - failed - set(running):
            job = plan[key]
            bad = [d for d in job.deps if d in failed]
            if bad:
                reason = f"dependency {plan[bad[0]].kind} job {bad[0]} failed: {summary.failed.get(bad[0], '')}"
                run_id = tracker.start(job.kind, job.key, job.label, job.config.flat(), _tags(job), None)
                tracker.fail(run_id, reason[-5000:])
                failed.add(key)
                summary.failed[key] = reason
                bar.update(1)
                changed = True


def _tags(job: Job) -> dict[str, str]:
    cfg = job.config
    tags = {"bench.train_key": cfg.train_key(), "bench.seed": str(cfg.seed)}
    if cfg.vae_key():
        tags["bench.vae_key"] = cfg.vae_key()
    return tags
