"""A local worker process: takes jobs from its own queue, runs them, sends results back.

This module imports nothing heavy at import time, so the parent can set ``CUDA_VISIBLE_DEVICES``
for the child before torch is loaded there.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from typing import Any


def _watch_parent(driver_pid: int) -> None:
    """Exit at once when the driver is gone (killed with -9), so no orphan keeps writing: when the
    driver's pid is gone, or this process's parent changed (the driver, or for a forked worker the
    fork server, which exits with the driver)."""
    parent = os.getppid()
    while True:
        if os.getppid() != parent or not _alive(driver_pid):
            os._exit(3)
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def worker_main(worker_id: int, device: str, threads: int, tasks: Any, results: Any, driver_pid: int,
                progress: bool) -> None:
    threading.Thread(target=_watch_parent, args=(driver_pid,), daemon=True).start()
    import torch

    torch.set_num_threads(max(1, threads))
    from bench.jobs import run_job

    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            continue
        if task is None:
            return
        kind, config, key = task
        try:
            result = run_job(kind, config, key, device=device, progress=progress)
            results.put((worker_id, key, result, None))
        except Exception:
            results.put((worker_id, key, None, traceback.format_exc()))
