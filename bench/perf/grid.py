"""Grid benchmarks: trainings performed vs unique training configs for the quickstart, wall time of
equal jobs on 1 vs 2 CPU workers, and the time to expand + plan a 100,000-point grid.

What bounds the worker ratio: on C cores one worker runs with C intra-op threads, C workers with
one each. If a training step runs ``s`` times faster on two threads than on one, and two one-thread
workers run side by side without slowing each other, two workers take ``s / 2`` of one worker's
time on equal jobs. ``s`` is measured here too (the real training step of the jobs' network,
interleaved at 1 and 2 threads in this process), so the table shows the ratio beside its bound.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import yaml

QUICKSTART = Path(__file__).resolve().parents[2] / "ablations" / "quickstart.yaml"

EQUAL_JOBS = {
    "name": "perf-equal-jobs",
    "question": "How much faster are 4 equal trainings on 2 CPU workers than on 1?",
    "base": {
        "data": {"dataset": "digits"},
        "model": {"backbone": "unet-tiny"},
        "diffusion": {"timesteps": 100},
        "train": {"steps": 500, "batch_size": 64, "checkpoint_every": 1000, "log_every": 50},
        "sample": {"sampler": "ddim", "steps": 10, "batch_size": 50},
        "eval": {"metrics": ["nll"], "nll_samples": 8, "num_samples": 50},
    },
    "grid": {"diffusion.objective": ["eps", "v", "x0", "score"]},
}


def _run_once(study: dict, devices: str, root: Path) -> tuple[float, int, int]:
    """Wall seconds of the whole run, TRAIN runs performed (FINISHED in MLflow), unique train keys."""
    from bench.pipeline import run_study
    from bench.study import load_study
    from bench.tracking import Tracker

    path = root / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    os.environ["BENCH_CACHE_DIR"] = str(root / f"cache-{devices.replace('*', 'x')}")
    uri = f"sqlite:///{root}/mlflow-{devices.replace('*', 'x')}.db"
    t0 = time.perf_counter()
    run_study(path, tracking_uri=uri, devices=devices, progress=False, report=False)
    seconds = time.perf_counter() - t0
    performed = len(Tracker(study["name"], uri).runs(kind="train", status="FINISHED"))
    unique = len({c.train_key() for c in load_study(path).configs})
    return seconds, performed, unique


def trainings_vs_unique() -> dict:
    from bench.study import load_study

    study = load_study(QUICKSTART)
    unique = len({c.train_key() for c in study.configs})
    plan = study.plan()
    return {"case": "quickstart: TRAIN jobs planned vs unique training configs",
            "value": f"{len(plan.by_kind('train'))} vs {unique}",
            "target": "equal"}


def thread_speedup(rounds: int = 5, steps: int = 10) -> float:
    """How many times faster the equal jobs' training step runs on 2 intra-op threads than on 1."""
    import torch

    from bench.core.config import from_dict
    from bench.perf.timing import best_times
    from bench.training.loop import Trainer

    base = EQUAL_JOBS["base"]
    cfg = from_dict({k: base[k] for k in ("data", "model", "diffusion", "train")})
    trainer = Trainer(cfg, "cpu")
    before = torch.get_num_threads()

    def run(threads: int) -> None:
        torch.set_num_threads(threads)
        for _ in range(steps):
            trainer.step()

    try:
        best = best_times({1: lambda: run(1), 2: lambda: run(2)}, "cpu", rounds=rounds)
    finally:
        torch.set_num_threads(before)
    return best[1] / best[2]


def main(device: str = "cpu") -> list[dict]:
    from bench.perf.plan import run as plan_run
    from bench.perf.timing import print_table

    rows = [trainings_vs_unique()]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one, performed, unique = _run_once(dict(EQUAL_JOBS, name="perf-1-worker"), "cpu", root)
        two, _, _ = _run_once(dict(EQUAL_JOBS, name="perf-2-workers"), "cpu*2", root)
    rows.append({"case": "4-model grid: trainings performed vs unique training configs",
                 "value": f"{performed} vs {unique}", "target": "equal"})
    rows.append({"case": "4 equal jobs (train + eval), 1 CPU worker", "value": f"{one:.1f} s", "target": ""})
    rows.append({"case": "4 equal jobs (train + eval), 2 CPU workers", "value": f"{two:.1f} s",
                 "target": ""})
    rows.append({"case": "2 workers / 1 worker wall time", "value": f"{two / one:.2f}x", "target": "<= 0.62x"})
    s = thread_speedup()
    rows.append({"case": "training step on 2 threads vs 1 (s)", "value": f"{s:.2f}x faster", "target": ""})
    rows.append({"case": "bound on the worker ratio (s / 2)", "value": f"{s / 2:.2f}x", "target": ""})
    total = next(r for r in plan_run() if r["phase"] == "total")
    rows.append({"case": "expand + validate + plan a 100,000-point grid", "value": f"{total['wall_s']:.2f} s",
                 "target": "< 3 s"})
    print_table(rows, "Grid benchmarks")
    return rows


if __name__ == "__main__":
    main()
