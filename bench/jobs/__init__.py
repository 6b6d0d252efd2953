"""What a worker does with one job: train a VAE, train a model, or sample and evaluate.

Each job reads and writes only under ``bench.core.paths.cache_dir()``, by content key, and returns
a plain dict (metrics, histories, tags, artifact paths) that the driver logs to MLflow: workers
never touch the tracking store. ``JOBS`` maps a plan's job kind to the function that runs it.
"""

from __future__ import annotations

from typing import Any

from bench.core.allocator import tune_allocator
from bench.core.config import RunConfig, from_dict
from bench.core.registry import Registry
from bench.jobs.eval import generate, run_eval, sample_seeds, save_grid
from bench.jobs.store import artifact_dir, checkpoint_path, is_done_on_disk, train_dir, vae_path
from bench.jobs.train import run_train
from bench.jobs.vae import load_codec, run_vae

JOBS: Registry[Any] = Registry("job kind")
JOBS.register("vae", run_vae)
JOBS.register("train", run_train)
JOBS.register("eval", run_eval)


def run_job(kind: str, config: dict[str, Any], key: str, device: str = "cpu", progress: bool = True
            ) -> dict[str, Any]:
    """Run the job ``kind`` of ``config`` (a RunConfig's dict) on ``device``; returns its result."""
    tune_allocator()  # once per process, whichever executor started it
    cfg: RunConfig = from_dict(config)
    return JOBS.get(JOBS.check(kind, "job kind"))(cfg, key, device, progress)


__all__ = ["JOBS", "artifact_dir", "checkpoint_path", "generate", "is_done_on_disk", "load_codec", "run_eval",
           "run_job", "run_train", "run_vae", "sample_seeds", "save_grid", "train_dir", "vae_path"]
