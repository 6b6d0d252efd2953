"""Timing discipline (as nanoGPT's bench.py): warm up, synchronize, take the best of repeats.

Cases to be compared are timed *interleaved* (round-robin), so a burst of load from elsewhere on
the machine hits all of them alike instead of skewing one ratio.
"""

from __future__ import annotations

import torch

from bench.diffusion.batching import best_times, sync  # one timing rule for benchmarks and batching

__all__ = ["best_times", "sync", "cpu_threads", "print_table"]


def cpu_threads(device: str | torch.device) -> None:
    """One intra-op thread on CPU: ratios then do not depend on how busy the other cores are."""
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)


def print_table(rows: list[dict], title: str) -> None:
    import pandas as pd

    print(f"\n{title}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))
