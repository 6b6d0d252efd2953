"""One worker process per device: ``--devices auto | cpu | cpu*2 | cuda:0,cuda:1``.

GPU workers see only their GPU (``CUDA_VISIBLE_DEVICES``); all workers split the cores (torch
threads = cores / workers). A worker that dies is replaced and its job handed back to the
scheduler (bench.execute.scheduler), which retries it.

How workers start: a pool of CPU workers forks them from multiprocessing's fork server, which
imported what every job needs (:data:`PRELOAD`: torch, the jobs, dynamo, torch-fidelity, ...) once, so
a worker, a second worker or a replacement for a killed one starts in milliseconds instead of
importing about 5 s of CPU time again; the fork server lives as long as the driver, so the runs of
a search or of a test session share it. A pool with a GPU starts its workers with ``spawn``
(nothing of CUDA's state is ever copied into a child). Either way the worker takes the driver's
environment, working folder and ``sys.path`` as they are when it starts (:func:`_entry`), not as
they were when the fork server started.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
from dataclasses import dataclass
from typing import Any

from bench.core.errors import BenchError
from bench.execute.registry import EXECUTORS
from bench.execute.scheduler import Outcome
from bench.plan import Job


@dataclass(frozen=True)
class Slot:
    device: str  # what the worker calls its device: "cpu" or "cuda"
    visible: str | None  # CUDA_VISIBLE_DEVICES for the worker
    label: str  # as the user wrote it: "cpu", "cuda:1"


def parse_devices(spec: str = "auto", where: str = "--devices") -> list[Slot]:
    """``auto`` = every visible GPU, else CPU workers (:func:`auto_cpu_workers`); ``cpu*N``; ``cuda:0,cuda:1``."""
    spec = (spec or "auto").strip()
    if spec == "auto":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpus = [Slot("cuda", physical_gpu(i, where), f"cuda:{i}") for i in range(n)]
        return gpus or [Slot("cpu", None, "cpu")] * auto_cpu_workers()
    slots: list[Slot] = []
    for part in (p.strip() for p in spec.split(",")):
        name, _, count = part.partition("*")
        if count and not count.isdigit() or count == "0":
            raise BenchError(f"{where}: bad count in {part!r}; write cpu*2 for two CPU workers")
        n = int(count or 1)
        if name == "cpu":
            slots += [Slot("cpu", None, "cpu")] * n
        elif name.startswith("cuda:") and name[5:].isdigit():
            slots += [Slot("cuda", physical_gpu(int(name[5:]), where), name)] * n
        else:
            raise BenchError(f"{where}: unknown device {part!r}. Use auto, cpu, cpu*N or cuda:0,cuda:1,...")
    for s in slots:
        if s.device == "cuda":
            import torch

            if not torch.cuda.is_available() or int(s.visible) >= torch.cuda.device_count():
                raise BenchError(f"{where}: {s.label} is not a visible GPU "
                                 f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} visible); "
                                 "use --devices auto or cpu")
    return slots


AUTO_CPU_WORKERS = 4  # at most, without a GPU: each holds its own copy of torch (about 1 GB)


def auto_cpu_workers(cores: int | None = None) -> int:
    """CPU workers for ``--devices auto`` without a GPU: one per core, at most
    :data:`AUTO_CPU_WORKERS` (the cores are split between them). The small networks a CPU runs
    gain less from a second intra-op thread than from a second job at once: ``python -m bench.perf
    grid`` times equal jobs on ``cpu*2`` at 0.73 of ``cpu`` (one worker, two threads) on 2 cores."""
    return max(1, min(AUTO_CPU_WORKERS, cores if cores is not None else (os.cpu_count() or 1)))


def worker_threads(slots: list[Slot], cores: int | None = None) -> int:
    """torch intra-op threads per worker: the cores split between every worker on the machine, GPU
    workers included (each does its host-side work on its own threads: three workers sharing one GPU,
    ``cuda:0*3``, would otherwise start three times the cores); ``$BENCH_THREADS`` overrides (on a
    machine shared with other work, 1 avoids OpenMP threads spinning against each other)."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return int(os.environ.get("BENCH_THREADS") or max(1, cores // max(1, len(slots))))


def physical_gpu(index: int, where: str = "--devices") -> str:
    """What a worker's ``CUDA_VISIBLE_DEVICES`` must say for the parent's ``cuda:<index>``.

    ``cuda:i`` means the i-th GPU this process sees: with ``CUDA_VISIBLE_DEVICES=2,3`` (set by the
    user or by Slurm) ``cuda:0`` is GPU 2, so the worker gets ``2``, not ``0``.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return str(index)
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if index >= len(ids):
        raise BenchError(f"{where}: cuda:{index} is not visible: CUDA_VISIBLE_DEVICES={visible!r} shows "
                         f"{len(ids)} GPU(s), cuda:0 to cuda:{len(ids) - 1}")
    return ids[index]


# Imported once by the fork server, so no forked worker imports them again: torch and the jobs,
# what the first optimizer imports (dynamo), the metrics' torch-fidelity, the training loop's
# accelerate and the loss plot's matplotlib. Not SciPy / scikit-learn (their BLAS starts threads at
# import, which a fork does not copy) nor anything that reads the environment at import time (the
# Hugging Face hub): what a job imports beyond this list it imports itself, as with spawn.
PRELOAD = ("bench.jobs", "torch._dynamo", "torch_fidelity", "accelerate", "matplotlib")


def start_method(slots: list[Slot]) -> str:
    """``forkserver`` for CPU workers where the platform has it, else ``spawn`` (a GPU in the pool, Windows)."""
    cpu_only = all(s.device == "cpu" for s in slots)
    return "forkserver" if cpu_only and "forkserver" in mp.get_all_start_methods() else "spawn"


def start_fork_server(slots: list[Slot]) -> None:
    """Start the fork server now, where the pool will use one: it imports :data:`PRELOAD` in its own
    process while the driver goes on (opening the tracking store, planning), instead of after."""
    if start_method(slots) == "forkserver":
        from multiprocessing import forkserver

        mp.get_context("forkserver").set_forkserver_preload(list(PRELOAD))
        forkserver.ensure_running()


class LocalPool:
    """Worker processes, one job at a time each (started as :func:`start_method` says)."""

    def __init__(self, slots: list[Slot], progress: bool = True) -> None:
        self.ctx = mp.get_context(start_method(slots))
        start_fork_server(slots)  # where it is not running yet (or was killed): the preload is read then
        self.slots_spec = slots
        self.slots = len(slots)
        self.progress = progress
        self.results: Any = self.ctx.Queue()
        self.threads = worker_threads(slots)
        self.workers: list[dict[str, Any]] = [self._spawn(i) for i in range(len(slots))]
        self.pending: list[Job] = []

    def _spawn(self, i: int) -> dict[str, Any]:
        slot = self.slots_spec[i]
        tasks = self.ctx.Queue()
        env = dict(os.environ)
        if slot.visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.visible  # set in the child before torch touches CUDA
        where = Where(env, os.getcwd(), list(sys.path))
        p = self.ctx.Process(target=_entry, daemon=True, name=f"bench-worker-{i}",
                             args=(where, i, slot.device, self.threads, tasks, self.results, os.getpid(),
                                   self.progress))
        p.start()
        return {"proc": p, "tasks": tasks, "job": None}

    def submit(self, job: Job) -> None:
        self.pending.append(job)
        self._dispatch()

    def _dispatch(self) -> None:
        for w in self.workers:
            if not self.pending:
                return
            if w["job"] is None:
                job = self.pending.pop(0)
                w["job"] = job.key
                w["tasks"].put((job.kind, job.config.to_dict(), job.key))

    def wait(self, timeout: float) -> list[Outcome]:
        out: list[Outcome] = []
        try:
            item = self.results.get(timeout=timeout)
            while True:
                wid, key, result, error = item
                self.workers[wid]["job"] = None
                out.append(Outcome(key, result=result, error=error))
                item = self.results.get_nowait()
        except queue.Empty:
            pass
        for i, w in enumerate(self.workers):
            if not w["proc"].is_alive():
                if w["job"] is not None:
                    out.append(Outcome(w["job"], crashed=f"worker {i} exited with code {w['proc'].exitcode}"))
                self.workers[i] = self._spawn(i)
        self._dispatch()
        return out

    def worker_pids(self) -> list[int]:
        return [w["proc"].pid for w in self.workers]

    def close(self) -> None:
        """Idle workers exit; busy ones (the driver is stopping mid-job) are terminated at once:
        their runs are marked KILLED and redone from their checkpoints."""
        for w in self.workers:
            if w["proc"].is_alive():
                if w["job"] is None:
                    w["tasks"].put(None)
                else:
                    w["proc"].terminate()
        for w in self.workers:
            w["proc"].join(timeout=5)
            if w["proc"].is_alive():
                w["proc"].kill()


@dataclass(frozen=True)
class Where:
    """The driver's environment, working folder and import path when it started a worker."""

    env: dict[str, str]
    cwd: str
    sys_path: list[str]

    def enter(self) -> None:
        """Make this process see what the driver saw (a forked worker has the fork server's view)."""
        os.environ.clear()
        os.environ.update(self.env)
        os.chdir(self.cwd)
        sys.path[:] = self.sys_path


def _entry(where: Where, *args: Any) -> None:
    from bench.execute.stop import ignore_interrupts

    ignore_interrupts()  # Ctrl-C reaches the whole process group: the driver stops its workers
    where.enter()
    from bench.execute.worker import worker_main

    worker_main(*args)


def _make_local(devices: str, progress: bool) -> LocalPool:
    return LocalPool(parse_devices(devices), progress=progress)


EXECUTORS.register("local", _make_local, options=(), help="one worker process per device on this machine",
                   devices=parse_devices, warm=start_fork_server)  # the driver checks and warms these devices
