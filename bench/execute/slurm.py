"""Slurm executor on submitit: ``--executor slurm --partition P --gpus-per-node 1 --time-limit MIN``.

Each job is one Slurm job (the jobs that become ready together are submitted as one job array,
at most ``--array-parallelism`` running at once). The job is a :class:`BenchJob`, a submitit
``Checkpointable``: when Slurm preempts it or its time limit nears, Slurm sends the signal
submitit listens for (USR2, ``signal_delay_s`` before the end), submitit calls
:meth:`BenchJob.checkpoint`, which returns a ``DelayedSubmission`` of the same job, and the job
is requeued; the TRAIN job then resumes from ``checkpoint.pt`` in the shared folder. The tags
``bench.requeues`` and ``bench.resumed_from`` say it happened.

A job that raises comes back as ``Outcome(error=...)`` (FAILED at once); one that died without a
result (killed, node failure, out of memory) or ran out of requeues comes back as
``Outcome(crashed=...)`` and the shared scheduler resubmits it, resuming from its checkpoint.

``executor="local"`` runs the same jobs as local processes through ``submitit.LocalExecutor``
(for tests and for trying a setup without a cluster). The submitit folder (pickled jobs,
results, logs) defaults to ``<shared dir>/submitit`` and must be on the shared file system.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.execute.registry import Flag, pool_options, register_executor
from bench.execute.remote import check_shared_dir, require
from bench.execute.scheduler import Outcome
from bench.plan import Job

try:  # submitit is an extra: without it this module still imports and SlurmPool says what to install
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - exercised through a subprocess test
    _Checkpointable = object  # type: ignore[assignment,misc]

DEFAULT_TIME_LIMIT = 240  # minutes per attempt; a timed-out job is requeued and resumes
DEFAULT_SLOTS = {"slurm": 64, "local": 1}


class BenchJob(_Checkpointable):  # type: ignore[misc,valid-type]
    """One bench job as a checkpointable submitit callable (pickled into the submitit folder)."""

    def __init__(self, kind: str, config: dict[str, Any], key: str, shared_dir: str, progress: bool = False
                 ) -> None:
        self.kind, self.config, self.key = kind, config, key
        self.shared_dir, self.progress = shared_dir, progress
        self.requeues = 0  # times this job was preempted or timed out and requeued

    def __call__(self) -> dict[str, Any]:
        from bench.execute.remote import run_remote

        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "")
        # the CPUs Slurm gave this job (its cgroup / affinity), not every core of the node
        threads = int(os.environ.get("BENCH_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK") or 0) or len(
            os.sched_getaffinity(0))
        tags = {"bench.executor": "slurm", "bench.slurm_job_id": job_id, "bench.gpu_ids": visible,
                "bench.requeues": str(self.requeues)}
        return run_remote(self.kind, self.config, self.key, self.shared_dir, gpu=bool(visible.strip()),
                          threads=threads, tags=tags, progress=self.progress)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption / timeout: requeue this job. Training state is already
        on disk (``checkpoint.pt``, written every ``train.checkpoint_every`` steps), so the requeued
        job resumes from it."""
        from submitit.helpers import DelayedSubmission

        self.requeues += 1
        return DelayedSubmission(self, *args, **kwargs)


class SlurmPool:
    """Jobs as Slurm jobs (or local submitit processes); at most ``slots`` submitted at once."""

    def __init__(self, partition: str | None = None, gpus_per_node: int | None = None,
                 time_limit: int | None = None, array_parallelism: int | None = None,
                 folder: str | None = None, executor: str = "slurm", shared_dir: str | None = None,
                 cpus_per_task: int | None = None, max_num_timeout: int = 3, progress: bool = False,
                 slurm_parameters: dict[str, Any] | None = None) -> None:
        submitit = require("submitit", "slurm")
        from bench.core.paths import cache_dir

        if executor not in DEFAULT_SLOTS:
            raise BenchError(f"SlurmPool(executor={executor!r}): use 'slurm' or 'local'")
        self.shared_dir = str(check_shared_dir(shared_dir or cache_dir(), "the driver"))
        self.folder = Path(folder or Path(self.shared_dir) / "submitit").absolute()
        self.progress = progress
        self.local = executor == "local"
        minutes = int(time_limit or DEFAULT_TIME_LIMIT)
        if executor == "slurm":
            if shutil.which("sbatch") is None:
                raise BenchError("--executor slurm: `sbatch` is not on PATH; run the driver on a Slurm login "
                                 "node (or use --executor ray / local)")
            self.executor = submitit.SlurmExecutor(folder=str(self.folder / "%j"), max_num_timeout=max_num_timeout)
            params: dict[str, Any] = {"time": minutes, "nodes": 1, "ntasks_per_node": 1,
                                      "job_name": "bench", "signal_delay_s": 120}
            params.update({k: v for k, v in {"partition": partition, "gpus_per_node": gpus_per_node,
                                             "cpus_per_task": cpus_per_task,
                                             "array_parallelism": array_parallelism}.items() if v is not None})
        else:
            self.executor = submitit.LocalExecutor(folder=str(self.folder / "%j"), max_num_timeout=max_num_timeout)
            params = {"timeout_min": minutes, "gpus_per_node": gpus_per_node or 0}
        params.update(slurm_parameters or {})
        self.executor.update_parameters(**params)
        self.slots = int(array_parallelism or DEFAULT_SLOTS[executor])
        self.pending: list[Job] = []
        self.jobs: dict[str, Any] = {}  # key -> submitit Job

    def submit(self, job: Job) -> None:
        self.pending.append(job)

    def _flush(self) -> None:
        """Submit what is pending: one job, or one job array for several."""
        if not self.pending:
            return
        calls = [BenchJob(j.kind, j.config.to_dict(), j.key, self.shared_dir, self.progress) for j in self.pending]
        try:
            if len(calls) == 1:
                handles = [self.executor.submit(calls[0])]
            else:
                with self.executor.batch():
                    handles = [self.executor.submit(c) for c in calls]
        except Exception as e:  # sbatch refused (bad partition, time limit, ...): a user error
            raise BenchError(f"submitting {len(calls)} job(s) to {type(self.executor).__name__} failed: "
                             f"{str(e).strip()[-2000:]}") from None
        for job, handle in zip(self.pending, handles):
            self.jobs[job.key] = handle
        self.pending = []

    def wait(self, timeout: float) -> list[Outcome]:
        self._flush()
        deadline = time.monotonic() + timeout
        while True:
            done = [k for k, h in self.jobs.items() if h.done()]
            if done or time.monotonic() >= deadline or not self.jobs:
                return [self._outcome(k) for k in done]
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def _outcome(self, key: str) -> Outcome:
        from submitit.core.utils import FailedJobError

        handle = self.jobs.pop(key)
        if self.local and not handle.paths.result_pickle.exists():  # no shared-FS lag to wait for
            return Outcome(key, crashed=f"job {handle.job_id} ended without a result (killed?); "
                                        f"see {handle.paths.stderr}")
        exc = handle.exception()  # waits a little for the result file on slow shared file systems
        if exc is None:
            return Outcome(key, result=handle.result())
        text = str(exc).strip()
        if isinstance(exc, FailedJobError) and "Job not requeued because" not in text:
            return Outcome(key, error=text)  # the job raised
        return Outcome(key, crashed=f"job {handle.job_id} ended without a result: {text[-2000:]}")

    def close(self) -> None:
        for handle in self.jobs.values():  # the driver is stopping: cancel what it no longer waits for
            try:
                handle.cancel(check=False)
            except Exception:
                pass
        self.jobs.clear()
        self.pending = []


def _make_slurm(devices: str, progress: bool, **options: Any) -> SlurmPool:
    return SlurmPool(**options)


register_executor(
    "slurm", _make_slurm, options=pool_options(SlurmPool), package="submitit", extra="slurm",
    flags=(Flag("partition", str, "Slurm partition"), Flag("gpus_per_node", int, "Slurm GPUs per node"),
           Flag("time_limit", int, "Slurm time limit in minutes"),
           Flag("array_parallelism", int, "Slurm jobs running at once")),
    test_options={"executor": "local", "time_limit": 30},  # submitit's local executor: no cluster needed
    help="Slurm jobs through submitit (executor='local' runs them as local processes)")
