"""Benchmark: expand + validate + plan a 100,000-point study grid (target: under 3 s in all).

A study file with five axes of ten values (one training axis, four inference axes) is written to
a temporary folder, then loaded (YAML, every check of bench.study), planned (10 TRAIN + 100,000
EVAL jobs) and summarised. The registries (torch and friends) are imported first, as a warm-up,
so the table shows the bench's own work. Prints wall and CPU seconds per phase and per point.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

TARGET_SECONDS = 3.0


def big_study(values: int = 10) -> dict[str, Any]:
    """``values``^5 points: train.lr x sample.steps x sample.eta x sample.guidance x eval.num_samples."""
    n = range(values)
    return {
        "name": "perf-grid",
        "question": "How fast is a 100,000-point grid expanded, validated and planned?",
        "base": {
            "data": {"dataset": "digits"},
            "model": {"backbone": "unet-tiny", "class_cond": True},
            "diffusion": {"timesteps": 1000},
            "train": {"steps": 500, "p_uncond": 0.1},
            "eval": {"extractor": "domain:digits", "metrics": ["fid", "kid"]},
        },
        "grid": {
            "train.lr": [round(1e-4 * (i + 1), 6) for i in n],
            "sample.steps": [10 * (i + 1) for i in n],
            "sample.eta": [round(i / max(1, values - 1), 4) for i in n],
            "sample.guidance": [0.5 * i for i in n],
            "eval.num_samples": [100 + 10 * i for i in n],
        },
        "tables": [{"rows": "sample.eta", "columns": "sample.steps", "values": "fid"}],
    }


def _timed(fn: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run(values: int = 10) -> list[dict[str, Any]]:
    """Time each phase on a ``values``^5 grid; print a table and return its rows."""
    from bench.plan import plan
    from bench.study import load_study

    _, import_s, _ = _timed(lambda: [__import__(m) for m in ("bench.diffusion", "bench.models", "bench.data",
                                                             "bench.metrics")])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "perf-grid.yaml"
        small = Path(tmp) / "warmup.yaml"
        small.write_text(yaml.safe_dump(big_study(2), sort_keys=False))
        load_study(small)  # warm-up: first registry look-ups, lazy imports
        path.write_text(yaml.safe_dump(big_study(values), sort_keys=False))
        study, load_wall, load_cpu = _timed(lambda: load_study(path))
    p, plan_wall, plan_cpu = _timed(lambda: plan(study.configs, study.axes))
    text, sum_wall, sum_cpu = _timed(lambda: p.summary(set()))
    n = len(study.configs)
    rows = [
        {"phase": "load + expand + validate", "wall_s": load_wall, "cpu_s": load_cpu, "us_per_point": 1e6 * load_wall / n},
        {"phase": "plan (keys, dedup, priorities)", "wall_s": plan_wall, "cpu_s": plan_cpu,
         "us_per_point": 1e6 * plan_wall / n},
        {"phase": "summary (needed, first jobs)", "wall_s": sum_wall, "cpu_s": sum_cpu, "us_per_point": 1e6 * sum_wall / n},
    ]  # fmt: skip
    total_wall = load_wall + plan_wall + sum_wall
    rows.append(
        {
            "phase": "total",
            "wall_s": total_wall,
            "cpu_s": load_cpu + plan_cpu + sum_cpu,
            "us_per_point": 1e6 * total_wall / n,
        }
    )
    print(
        f"grid: {n} points -> {len(p.by_kind('train'))} TRAIN + {len(p.by_kind('eval'))} EVAL jobs "
        f"(registries imported in {import_s:.2f} s, not counted)"
    )
    _print(rows)
    verdict = "OK" if total_wall < TARGET_SECONDS else "SLOW"
    print(f"target < {TARGET_SECONDS:.0f} s: {verdict} ({total_wall:.2f} s wall)")
    print(text.splitlines()[0], "...", sep="\n")
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    print(f"{'phase':<32} {'wall s':>8} {'cpu s':>8} {'us/point':>9}")
    for r in rows:
        print(f"{r['phase']:<32} {r['wall_s']:>8.3f} {r['cpu_s']:>8.3f} {r['us_per_point']:>9.2f}")


def main(device: str = "cpu") -> None:
    """Entry point for ``python -m bench.perf`` (the device does not matter here)."""
    del device
    run()


if __name__ == "__main__":
    run()
