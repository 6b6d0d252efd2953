"""A guided step's two branches as one 2B call or as two B calls.

Both give the same numbers up to float rounding (tested to 1e-10 in float64) and count the same
NFE (one guided call either way). ``sample.guidance_batch``:

- ``auto`` (default): one 2B call, on every device: a fixed rule, so the run's stored choice
  (``protocol.guidance_batch``) and its images never depend on a timing, which is noisy with several
  workers on one GPU and would round the same config differently from run to run. A GPU that B
  images leave under-filled runs 2B in about the time of B, one they fill gains nothing from two
  calls; on the 2-core build machine two B calls took 1.02-1.44x the joint call's time for
  unet-micro / unet-tiny / dit-tiny at 8x8, and 0.9-1.0x for 64-channel 16x16 and 28x28 networks.
- ``measure``: time both on the first guided call for this (device, model, input shape, dtype), best
  of three interleaved after a warm-up, and keep the faster for the rest of the process (the
  measurement's calls are not counted in the chain's NFE). Faster where the two ways differ, but the
  choice can differ from one run to the next; the run's tag says which ran.
- ``joint`` / ``split``: always one 2B call / always two B calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

GUIDANCE_BATCH = ("auto", "measure", "joint", "split")
AUTO = "joint"  # what auto runs, on every device (see above)
_MEASURED: dict[tuple, bool] = {}  # (device, model, shape, dtype) -> split is faster


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_times(cases: dict[str, Callable[[], object]], device: str | torch.device = "cpu",
               rounds: int = 5, warmup: int = 1) -> dict[str, float]:
    """Best wall time of each case over ``rounds`` interleaved rounds (round-robin, so a burst of load
    hits every case alike), after ``warmup`` calls each, the device synchronized around each call."""
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


def faster_is_split(joint: Callable[[], object], split: Callable[[], object], device: torch.device,
                    rounds: int = 3) -> bool:
    """Whether ``split`` (two B calls) ran faster than ``joint`` (one 2B call): best of ``rounds``
    interleaved timings after one warm-up call each."""
    best = best_times({"joint": joint, "split": split}, device, rounds=rounds)
    return best["split"] < best["joint"]


def model_signature(model: object) -> tuple:
    """What identifies a network's cost: its class and parameter count (two equal architectures share
    one measurement)."""
    params = getattr(model, "parameters", None)
    count = sum(p.numel() for p in params()) if params is not None else 0
    return type(model).__qualname__, count


def split_guided(mode: str, model: object, device: torch.device, shape: tuple[int, ...], dtype: torch.dtype,
                 joint: Callable[[], object], split: Callable[[], object]) -> bool:
    """True where this chain's guided calls should be two B calls (see the module's docstring).

    ``joint`` / ``split`` run one guided call each way; they are called only where ``mode`` is
    ``measure`` and no measurement was made yet for this (device, model, shape, dtype)."""
    mode = AUTO if mode == "auto" else mode
    if mode in ("joint", "split"):
        return mode == "split"
    key = (str(device), model_signature(model), tuple(shape), dtype)
    if key not in _MEASURED:
        with torch.no_grad():
            _MEASURED[key] = faster_is_split(joint, split, device)
    return _MEASURED[key]
