"""Timing discipline (as nanoGPT's bench.py): warm up, synchronize, take the best of repeats.

Cases to be compared are timed *interleaved* (round-robin), so a burst of load from elsewhere on
the machine hits all of them alike instead of skewing one ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_times(cases: dict[str, Callable[[], object]], device: str | torch.device = "cpu",
               rounds: int = 5, warmup: int = 1) -> dict[str, float]:
    """Best wall time of each case over ``rounds`` interleaved rounds, after ``warmup`` calls each."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def cpu_threads(device: str | torch.device) -> None:
    """One intra-op thread on CPU: ratios then do not depend on how busy the other cores are."""
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)


def print_table(rows: list[dict], title: str) -> None:
    import pandas as pd

    print(f"\n{title}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))
