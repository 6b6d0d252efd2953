"""The GPU benchmark: ``python -m bench.perf gpu [--device cuda] [--quick]``, under 5 minutes on one GPU.

For ``unet-cifar`` (the DDPM CIFAR-10 network, 32x32x3) DDIM-50 sampling at batch 256 and 1024 it
prints images/s in float32, with bf16 autocast, bf16 with ``channels_last``, bf16 with
``torch.compile``, and bf16 with ``torch.compile(mode="reduce-overhead")``, which replays the
network call as a CUDA graph (the step loop's own work is a few elementwise ops on python-float
coefficients, see :class:`bench.diffusion.Denoiser`); then Inception feature extraction (torch-fidelity's
network, random weights: the same compute as the released ones). Each row is also a fraction of
the roofline: images/s x FLOPs per image x network calls per image / the device's matmul peak in
that precision, the FLOPs counted by ``torch.utils.flop_counter`` on one forward and the peak
measured here on a square matmul (both printed).

``--device cpu --quick`` runs the same bookkeeping on a CPU in seconds (``unet-micro`` at 8x8, two
steps, batches 2 and 4, compilation through dynamo's ``eager`` backend, CUDA graphs skipped): the
test suite runs it so the benchmark is ready the day a GPU is lent.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.perf.timing import best_times, cpu_threads, print_table, sync

BUDGET_S = 270.0  # stop starting new cases past this (the whole run stays under 5 minutes)


@dataclass(frozen=True)
class Setup:
    backbone: str
    image_size: int
    steps: int
    batches: tuple[int, ...]
    rounds: int
    matmul_n: int
    compile_backend: str  # "inductor" on a GPU; "eager" (dynamo only) for the CPU bookkeeping run
    extract_images: int


FULL = Setup("unet-cifar", 32, 50, (256, 1024), 2, 8192, "inductor", 4096)
QUICK = Setup("unet-micro", 8, 2, (2, 4), 1, 256, "eager", 4)


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str  # fp32 | bf16
    channels_last: bool = False
    compile_mode: str | None = None  # None: eager; "default"; "reduce-overhead" (CUDA graphs)
    cuda_only: bool = False


VARIANTS = (
    Variant("float32", "fp32"),
    Variant("bf16 autocast", "bf16"),
    Variant("bf16 + channels_last", "bf16", channels_last=True),
    Variant("bf16 + torch.compile", "bf16", compile_mode="default"),
    Variant("bf16 + compile, CUDA graphs", "bf16", compile_mode="reduce-overhead", cuda_only=True),
)


def forward_flops(model: torch.nn.Module, shape: tuple[int, ...], device: str) -> int:
    """FLOPs of one forward of ``model`` on a batch of ``shape`` (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(shape, device=device)
    t = torch.full((shape[0],), 500, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, t, None)
    return int(counter.get_total_flops())


def matmul_peak(device: str, dtype: torch.dtype, n: int, rounds: int = 3) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype`` on ``device`` (best of ``rounds`` after a warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 10 if torch.device(device).type == "cuda" else 2
    seconds = best_times({"mm": lambda: [a @ b for _ in range(reps)]}, device, rounds=rounds)["mm"]
    return 2.0 * n**3 * reps / seconds


def _sampler(model: torch.nn.Module, variant: Variant, setup: Setup, batch: int, device: str
             ) -> Callable[[], object]:
    from bench.diffusion import Diffusion

    d = Diffusion("linear", 1000)
    net = copy.deepcopy(model).to(memory_format=torch.channels_last) if variant.channels_last else model
    if variant.compile_mode is not None:
        net = torch.compile(net, mode=variant.compile_mode, backend=setup.compile_backend, dynamic=False)
    shape = (batch, 3, setup.image_size, setup.image_size)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=variant.precision == "bf16")

    def run() -> object:
        gen = torch.Generator(device).manual_seed(0)
        with autocast:
            return d.sample(net, shape, sampler="ddim", steps=setup.steps, generator=gen, device=device)

    return run


def _inception_row(device: str, setup: Setup, batch: int, peak: float) -> dict:
    """Images/s of torch-fidelity's Inception features (its own resize to 299 included), and its
    FLOPs per image counted on one image."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.metrics import get_extractor, save_random_inception_weights

    with tempfile.TemporaryDirectory() as tmp:
        weights = save_random_inception_weights(Path(tmp) / "inception.pth")
        ext = get_extractor("inception", image_size=setup.image_size, weights=str(weights), progress=False)
        net = ext.build((ext.feature_layer,), device=device)
    images = torch.randint(0, 256, (setup.extract_images, 3, setup.image_size, setup.image_size), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(images[:1].to(device))
    flops = int(counter.get_total_flops())

    def extract() -> None:
        with torch.no_grad():
            for s in range(0, len(images), batch):
                net(images[s: s + batch].to(device))

    rate = len(images) / best_times({"extract": extract}, device, rounds=setup.rounds)["extract"]
    return {"case": "Inception features (torch-fidelity, fp32)", "batch": batch, "images/s": rate,
            "roofline": rate * flops / peak, "note": f"{flops / 1e9:.2f} GFLOP per image"}


def main(device: str = "cuda", quick: bool = False) -> list[dict]:
    from bench.models import build_model

    setup = QUICK if quick else FULL
    cuda = torch.device(device).type == "cuda"
    if not cuda and not quick:
        raise SystemExit("python -m bench.perf gpu measures a GPU: pass --device cuda[:N], or --device cpu --quick "
                         "for the bookkeeping run")
    cpu_threads(device)
    start = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(setup.backbone, 3, setup.image_size).to(device).eval()
    flops = forward_flops(model, (1, 3, setup.image_size, setup.image_size), device)
    peak = {"fp32": matmul_peak(device, torch.float32, setup.matmul_n),
            "bf16": matmul_peak(device, torch.bfloat16, setup.matmul_n)}
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    rows: list[dict] = []
    for batch in setup.batches:
        for v in VARIANTS:
            row = {"case": f"{setup.backbone} DDIM-{setup.steps}, {v.name}", "batch": batch}
            if v.cuda_only and not cuda:
                rows.append({**row, "images/s": float("nan"), "roofline": float("nan"), "note": "CUDA only"})
                continue
            if time.perf_counter() - start > BUDGET_S:
                rows.append({**row, "images/s": float("nan"), "roofline": float("nan"), "note": "time budget"})
                continue
            run = _sampler(model, v, setup, batch, device)
            t0 = time.perf_counter()
            run()  # warm-up: compilation, CUDA graph capture, allocator
            sync(device)
            first = time.perf_counter() - t0
            seconds = best_times({"run": run}, device, rounds=setup.rounds, warmup=0)["run"]
            rate = batch / seconds
            rows.append({**row, "images/s": rate, "roofline": rate * flops * setup.steps / peak[v.precision],
                         "note": f"first call {first:.1f} s"})
    if time.perf_counter() - start <= BUDGET_S:
        rows.append(_inception_row(device, setup, setup.batches[0], peak["fp32"]))
    print_table(rows, f"GPU benchmark on {name} ({device}): {setup.backbone} {flops / 1e9:.3f} GFLOP per image "
                      f"per forward; matmul peak fp32 {peak['fp32'] / 1e12:.3g} TFLOP/s, bf16 "
                      f"{peak['bf16'] / 1e12:.3g} TFLOP/s; {time.perf_counter() - start:.0f} s")
    return rows

