"""Training throughput and peak memory per backbone: ``python -m bench.perf train [--device cuda]``.

What is timed is the real training step, :meth:`bench.training.loop.Trainer.step` (batch gather, forward,
loss, backward, gradient clipping, AdamW, lr schedule, EMA update), at batch 64 on the digits
training set (1 channel) at its native 8x8 and resized to 32x32, for ``unet-tiny``, ``dit-tiny``
and ``unet-small``.

- Steps per second: the cases are timed interleaved (round robin, best of ``rounds``, after a
  warm-up; :func:`bench.perf.timing.best_times`), each call running enough steps to take ~0.5 s.
  On the CPU with one intra-op thread, so the figures do not depend on what else runs.
- Peak memory. CPU: each case runs in a fresh subprocess; peak RSS (``VmHWM``, reset just before)
  over building the Trainer and the steps, minus the RSS just before (after imports and data
  loading), so it counts weights, EMA copy, AdamW moments, gradients and activations. CUDA: the
  same span with ``torch.cuda.max_memory_allocated``, in fp32 and in bf16 autocast.
- ``state MB``: the analytic floor, 20 bytes per parameter (fp32 weights, gradients, two Adam
  moments, EMA); the rest of the peak is activations and allocator overhead.
"""

from __future__ import annotations

import gc
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from bench.perf.timing import best_times, cpu_threads, print_table, sync

BACKBONES = ("unet-tiny", "dit-tiny", "unet-small")
SIZES = (8, 32)
BATCH = 64
TARGET_SECONDS = 0.5  # per timed call
MEASURE_STEPS = 2  # steps run for the memory figures


def case_config(backbone: str, size: int, precision: str = "no", batch: int = BATCH):
    from bench.core.config import DataSpec, DiffusionSpec, ModelSpec, RunConfig, TrainSpec

    return RunConfig(
        data=DataSpec(dataset="digits", image_size=size),
        model=ModelSpec(backbone=backbone),
        diffusion=DiffusionSpec(timesteps=1000),
        train=TrainSpec(steps=10**6, batch_size=batch, precision=precision),
    )


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since exec or the last reset) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_peak_mb(backbone: str, size: int, batch: int = BATCH, steps: int = MEASURE_STEPS) -> dict[str, float]:
    """Run in a fresh process: peak RSS growth over building the Trainer and ``steps`` steps.

    Read from ``/proc/self/status`` (VmHWM, reset to the current RSS first), not ``ru_maxrss``: the
    latter carries the parent's size across fork + exec, so a child's figure would be the parent's.
    """
    from bench.data import load_images
    from bench.training.loop import Trainer

    torch.set_num_threads(1)
    cfg = case_config(backbone, size, batch=batch)
    load_images(cfg.data, "train")  # the dataset (and its readers) is not the training's memory
    # one-time costs are not the training's either: imports (accelerate), allocator and kernel set-up
    warm = Trainer(case_config("dit-tiny", 8, batch=1), "cpu")
    warm.step()
    del warm
    gc.collect()
    exact = _reset_peak_rss()
    before = _status_mb("VmRSS")
    tr = Trainer(cfg, "cpu")
    for _ in range(steps):
        tr.step()
    return {"peak_mb": _status_mb("VmHWM") - before, "exact": float(exact)}


def cuda_peak_mb(backbone: str, size: int, precision: str, device: str, steps: int = MEASURE_STEPS) -> float:
    """Peak allocated GPU memory over building the Trainer and ``steps`` steps, in MB."""
    from bench.training.loop import Trainer

    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    tr = Trainer(case_config(backbone, size, precision), device)
    for _ in range(steps):
        tr.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del tr
    return peak / 2**20


def _steps_per_call(trainer, device: str) -> int:
    for _ in range(2):  # warm-up: allocator, oneDNN / cuDNN kernel choice, Adam state
        trainer.step()
    sync(device)
    t0 = time.perf_counter()
    trainer.step()
    sync(device)
    return max(1, min(50, round(TARGET_SECONDS / max(time.perf_counter() - t0, 1e-6))))


def time_cases(precision: str, device: str, rounds: int) -> dict[tuple[str, int], dict]:
    """Steps per second of every (backbone, size), timed interleaved."""
    from bench.training.loop import Trainer

    trainers = {(b, s): Trainer(case_config(b, s, precision), device) for b in BACKBONES for s in SIZES}
    reps = {key: _steps_per_call(tr, device) for key, tr in trainers.items()}

    def run(tr, n):
        for _ in range(n):
            tr.step()

    cases = {key: (lambda tr=tr, n=reps[key]: run(tr, n)) for key, tr in trainers.items()}
    best = best_times(cases, device, rounds=rounds, warmup=0)
    return {key: {"steps_per_s": reps[key] / best[key], "params": trainers[key].num_params} for key in trainers}


def main(device: str = "cpu", rounds: int = 3) -> list[dict]:
    cpu_threads(device)
    dev = torch.device(device)
    precisions = ("no", "bf16") if dev.type == "cuda" else ("no",)
    rows = []
    for precision in precisions:
        speed = time_cases(precision, device, rounds)
        for (backbone, size), r in speed.items():
            if dev.type == "cuda":
                mem, note = cuda_peak_mb(backbone, size, precision, device), "max_memory_allocated"
            else:
                ctx = get_context("spawn")
                with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:  # a fresh process per case
                    m = pool.submit(cpu_peak_mb, backbone, size).result()
                mem = m["peak_mb"]
                note = "peak RSS growth" if m["exact"] else "RSS high-water since start (upper bound)"
            rows.append({
                "backbone": backbone, "input": f"1x{size}x{size}", "precision": precision,
                "params (M)": r["params"] / 1e6, "steps/s": r["steps_per_s"],
                "images/s": r["steps_per_s"] * BATCH, "peak MB": mem, "state MB": 20 * r["params"] / 2**20,
                "memory": note,
            })
    where = f"{device}, 1 thread" if dev.type == "cpu" else device
    print_table(rows, f"Training step ({where}, batch {BATCH}, digits; best of {rounds} interleaved rounds; "
                      f"peak = growth over building the Trainer + {MEASURE_STEPS} steps)")
    return rows


if __name__ == "__main__":
    main()
