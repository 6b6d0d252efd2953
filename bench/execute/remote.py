"""What the Ray and Slurm executors share: optional imports, the shared-folder check, the worker side.

A remote worker (a Ray task, a Slurm job) runs :func:`run_remote`: it points ``BENCH_CACHE_DIR``
at the shared folder the driver chose, checks that it can write there, picks its device, runs
the job with :func:`bench.jobs.run_job` and returns the result dict, tagged with where it ran.
The driver stays the only MLflow writer. Nothing heavy is imported at module import time.
"""

from __future__ import annotations

import importlib
import os
import socket
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.core.errors import BenchError


def require(module: str, executor: str) -> ModuleType:
    """Import an optional dependency, or raise one BenchError naming the extra that installs it (as
    the executor that needs it declares: ``register_executor(..., package=, extra=)``)."""
    from bench.execute.registry import extra_of

    extra = extra_of(module)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BenchError(f"--executor {executor} needs the {module!r} package, which is not installed ({e}). "
                         f"Install the extra: pip install -e .[{extra}]  "
                         f"(or pip install 'diffusion-ablation-bench[{extra}]')") from None


def check_shared_dir(path: str | os.PathLike, who: str) -> Path:
    """Create ``path`` if needed and prove ``who`` can write there (a probe file, written and removed).

    Returns the absolute path. On a cluster this folder must be on a file system every node mounts
    at the same path (checkpoints, trained VAEs, reference statistics and result artifacts live there).
    """
    root = Path(path).expanduser().absolute()
    probe = root / f".bench-probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        if probe.read_bytes() != b"ok":
            raise OSError("the probe file read back differently")
    except OSError as e:
        raise BenchError(f"{who} on {socket.gethostname()} cannot write to the shared folder {str(root)!r} "
                         f"({type(e).__name__}: {e}). Give --shared-dir (BENCH_CACHE_DIR) a folder on a file "
                         "system every node mounts at the same path and can write") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return root


def checkpoint_step(kind: str, config: dict[str, Any]) -> int:
    """For a TRAIN job, the step of the checkpoint this attempt starts from (0: none)."""
    if kind != "train":
        return 0
    import torch

    from bench.core.config import from_dict
    from bench.jobs import checkpoint_path

    path = checkpoint_path(from_dict(config).train_key())
    if not path.exists():
        return 0
    try:  # mmap: only the small header is read, never the weights
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(blob.get("step", 0))
    except Exception:  # a corrupt file: train_model moves it aside and starts over
        return 0


def run_remote(kind: str, config: dict[str, Any], key: str, shared_dir: str, *, gpu: bool, threads: int,
               tags: dict[str, str], progress: bool = False) -> dict[str, Any]:
    """Run one job on a remote worker and return its result dict (see :mod:`bench.jobs`).

    ``gpu``: the scheduler gave this worker a GPU (it set ``CUDA_VISIBLE_DEVICES``); when torch
    sees no CUDA device the job falls back to the CPU and says so in the ``bench.device`` tag.
    Tags added: ``bench.host``, ``bench.device``, ``bench.resumed_from`` (TRAIN jobs: the
    checkpoint step this attempt started from), and ``tags`` from the executor.
    """
    os.environ["BENCH_CACHE_DIR"] = shared_dir
    check_shared_dir(shared_dir, f"{tags.get('bench.executor', 'remote')} worker")
    import torch

    torch.set_num_threads(max(1, threads))
    device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
    start = checkpoint_step(kind, config)
    from bench.jobs import run_job

    result = run_job(kind, config, key, device=device, progress=progress)
    out_tags = result.setdefault("tags", {})
    out_tags.update(tags)
    out_tags.update({"bench.host": socket.gethostname(), "bench.device": device})
    if kind == "train":
        out_tags.setdefault("bench.resumed_from", str(start))
    return result
