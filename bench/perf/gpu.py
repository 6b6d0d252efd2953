"""The GPU benchmark: ``python -m bench.perf gpu [--device cuda] [--quick]``, under 5 minutes on one GPU.

For ``unet-cifar`` (the DDPM CIFAR-10 network, 32x32x3) DDIM-50 sampling at batch 256 and 1024 it
prints images/s in float32, with bf16 autocast, bf16 with ``channels_last``, bf16 with
``torch.compile``, and bf16 with ``torch.compile(mode="reduce-overhead")``, which replays the
network call as a CUDA graph (the step loop's own work is a few elementwise ops on python-float
coefficients, see :class:`bench.diffusion.Denoiser`); then Inception feature extraction (torch-fidelity's
network, random weights: the same compute as the released ones), FID's statistics timed on 50,000
feature rows, and from these a 50,000-sample DDIM-50 evaluation (sampling, Inception features,
FID) projected beside its roofline time.

Each row is also a fraction of the roofline: images/s x FLOPs per image x network calls per image
/ the device's matmul peak in that precision, the FLOPs counted by ``torch.utils.flop_counter`` on
one forward and the peak measured here on a square matmul (both printed). float32 is IEEE float32
on both sides: TF32 off for matmuls and cuDNN convolutions, as every job runs it
(:mod:`bench.jobs.fp32`; cuDNN's default would run the convolutions in TF32 and read near or above
100 % of a strict-fp32 peak).

Rows print as they finish, the most wanted first (:func:`_cases`); a case whose estimated time
(from the cases already measured, or an allowance for a first compilation) would end past
:data:`BUDGET_S` is skipped and says so, keeping the rows done.

``--device cpu --quick`` runs the same bookkeeping on a CPU in seconds (``unet-micro`` at 8x8, two
steps, batches 2 and 4, compilation through dynamo's ``eager`` backend, CUDA graphs skipped): the
test suite runs it so the benchmark is ready the day a GPU is lent.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.perf.timing import best_times, cpu_threads, sync

BUDGET_S = 270.0  # no case starts that would end past this (the whole run stays under 5 minutes)
EVAL_IMAGES = 50_000  # the evaluation projected in the last row
COLUMNS = ("case", "batch", "images/s", "roofline", "note")


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
    compile_allowance_s: float  # a first compilation's time, before one was measured
    fid_rows: int  # feature rows of the timed FID statistics (a 50k evaluation's count on a GPU)
    fid_dims: int  # Inception's pool3 features: 2048


FULL = Setup("unet-cifar", 32, 50, (256, 1024), 2, 8192, "inductor", 4096, 90.0, EVAL_IMAGES, 2048)
QUICK = Setup("unet-micro", 8, 2, (2, 4), 1, 256, "eager", 4, 5.0, 256, 64)


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str  # fp32 | bf16
    channels_last: bool = False
    compile_mode: str | None = None  # None: eager; "default"; "reduce-overhead" (CUDA graphs)
    cuda_only: bool = False


VARIANTS = (
    Variant("float32 (IEEE, TF32 off)", "fp32"),
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


def print_row(row: dict) -> None:
    """One Markdown table row, flushed: a run cut off by its caller's time limit keeps what it printed."""
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    print("| " + " | ".join(cell(row.get(c, "")) for c in COLUMNS) + " |", flush=True)


class Budget:
    """What the cases measured so far say about the next one: its estimated seconds, and whether it
    would end past :data:`BUDGET_S`."""

    def __init__(self, setup: Setup, start: float, peak: dict[str, float] | None = None) -> None:
        self.setup, self.start, self.peak = setup, start, peak
        self.done: dict[tuple[str, int], tuple[float, float]] = {}  # (variant, batch) -> (first, steady)

    def record(self, variant: str, batch: int, first: float, steady: float) -> None:
        self.done[(variant, batch)] = (first, steady)

    def estimate(self, v: Variant, batch: int) -> float:
        """First call (compilation included) plus ``rounds`` timed calls: scaled by batch from this
        variant at another batch, else from the eager rows of its precision (of another precision
        scaled by the two matmul peaks) plus, for a compiled variant, the compilations measured so far
        or the allowance."""
        same = [(b, f, s) for (name, b), (f, s) in self.done.items() if name == v.name]
        if same:
            b, first, steady = max(same)
            scaled = steady * batch / b
            return (first - steady) + (1 + self.setup.rounds) * scaled
        eager = [(w, b, s) for (name, b), (_, s) in self.done.items() for w in VARIANTS
                 if w.name == name and w.compile_mode is None]
        like = [s * batch / b for w, b, s in eager if w.precision == v.precision]
        if not like and self.peak:
            like = [s * batch / b * self.peak[w.precision] / self.peak[v.precision] for w, b, s in eager]
        steady = max(like, default=0.0)
        compiled = [f - s for (name, _), (f, s) in self.done.items()
                    if any(w.name == name and w.compile_mode for w in VARIANTS)]
        overhead = (max(compiled) if compiled else self.setup.compile_allowance_s) if v.compile_mode else 0.0
        return overhead + (1 + self.setup.rounds) * steady

    def skip(self, seconds: float) -> str | None:
        """Why a case of ``seconds`` does not start (None: it fits)."""
        left = BUDGET_S - (time.perf_counter() - self.start)
        return None if seconds <= left else f"skipped: needs ~{seconds:.0f} s, {max(left, 0):.0f} s left of {BUDGET_S:.0f}"


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


def _sampling_row(model: torch.nn.Module, v: Variant, setup: Setup, batch: int, device: str, budget: Budget,
                  flops: int, peak: dict[str, float]) -> dict:
    row = {"case": f"{setup.backbone} DDIM-{setup.steps}, {v.name}", "batch": batch}
    if v.cuda_only and torch.device(device).type != "cuda":
        return {**row, "images/s": math.nan, "roofline": math.nan, "note": "CUDA only"}
    why = budget.skip(budget.estimate(v, batch))
    if why:
        return {**row, "images/s": math.nan, "roofline": math.nan, "note": why}
    run = _sampler(model, v, setup, batch, device)
    t0 = time.perf_counter()
    run()  # warm-up: compilation, CUDA graph capture, allocator
    sync(device)
    first = time.perf_counter() - t0
    seconds = best_times({"run": run}, device, rounds=setup.rounds, warmup=0)["run"]
    budget.record(v.name, batch, first, seconds)
    rate = batch / seconds
    return {**row, "images/s": rate, "roofline": rate * flops * setup.steps / peak[v.precision],
            "note": f"first call {first:.1f} s", "precision": v.precision}


def _inception_row(device: str, setup: Setup, batch: int, peak: float) -> dict:
    """Images/s of torch-fidelity's Inception features (its own resize to 299 included), in IEEE
    float32 as the runs compute them, and its FLOPs per image counted on one image."""
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
    return {"case": "Inception features (torch-fidelity, float32 IEEE)", "batch": batch, "images/s": rate,
            "roofline": rate * flops / peak, "note": f"{flops / 1e9:.2f} GFLOP per image", "flops": flops}


def _fid_row(setup: Setup) -> dict:
    """FID's share of an evaluation: the generated set's mean and covariance (float64, torch-fidelity's
    own functions) and the distance to reference statistics (cached in a real run, so not timed here)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(setup.fid_rows, setup.fid_dims, generator=gen)
    ref = fid_features_to_statistics(torch.randn(setup.fid_rows, setup.fid_dims, generator=gen))
    t0 = time.perf_counter()
    fid_statistics_to_metric(fid_features_to_statistics(feats), ref, False)
    seconds = time.perf_counter() - t0
    return {"case": f"FID statistics ({setup.fid_rows} x {setup.fid_dims} features, CPU float64)",
            "batch": setup.fid_rows, "images/s": setup.fid_rows / seconds, "roofline": math.nan,
            "note": f"{seconds:.2f} s", "seconds": seconds}


def eval_projection(rows: list[dict], flops: int, steps: int, peak: dict[str, float]) -> dict:
    """A 50,000-sample DDIM-``steps`` evaluation, from the measured rows: sampling at the fastest
    measured variant, Inception features, FID statistics (scaled to 50,000 rows), against its roofline
    time (every network FLOP at the matmul peak of its precision)."""
    row = {"case": f"{EVAL_IMAGES}-sample DDIM-{steps} evaluation, projected", "batch": EVAL_IMAGES}
    sampled = [r for r in rows if "precision" in r and r["images/s"] > 0]
    inception = next((r for r in rows if "flops" in r), None)
    fid = next((r for r in rows if "seconds" in r), None)
    if not sampled or inception is None or fid is None:
        return {**row, "images/s": math.nan, "roofline": math.nan, "note": "skipped: a part was not measured"}
    best = max(sampled, key=lambda r: r["images/s"])
    parts = {"sampling": EVAL_IMAGES / best["images/s"], "Inception": EVAL_IMAGES / inception["images/s"],
             "FID": fid["seconds"] * EVAL_IMAGES / fid["batch"]}
    seconds = sum(parts.values())
    ideal = EVAL_IMAGES * (flops * steps / peak[best["precision"]] + inception["flops"] / peak["fp32"])
    note = " + ".join(f"{k} {v:.1f} s" for k, v in parts.items())
    return {**row, "images/s": EVAL_IMAGES / seconds, "roofline": ideal / seconds,
            "note": f"{seconds:.0f} s = {note} ({best['case'].split(', ', 1)[1]}, batch {best['batch']}); "
                    f"roofline {ideal:.1f} s, {seconds / ideal:.1f}x"}


def _cases(setup: Setup) -> list[tuple[Variant | str, int]]:
    """Most wanted first, so that what the budget skips is what matters least: bf16 eager at each
    batch (the base of every estimate), Inception and FID (the 50k projection needs them), the
    compiled variants at the largest batch (the throughput target), then the rest, cheap to dear."""
    big = max(setup.batches)

    def rank(case: tuple[Variant, int]) -> tuple[int, int, int]:
        v, b = case
        if v.compile_mode is None and v.precision == "bf16" and not v.channels_last:
            group = 0
        elif v.compile_mode is not None and b == big:
            group = 1
        elif v.compile_mode is None:
            group = 2 if v.precision == "bf16" else 3  # fp32 IEEE: the dearest eager rows
        else:
            group = 4
        return group, VARIANTS.index(v) if group != 2 else b, b

    ranked = sorted(((v, b) for b in setup.batches for v in VARIANTS), key=rank)
    first = [c for c in ranked if rank(c)[0] == 0]
    return [*first, ("inception", setup.batches[0]), ("fid", setup.fid_rows), *ranked[len(first):]]


def main(device: str = "cuda", quick: bool = False) -> list[dict]:
    from bench.jobs.fp32 import strict_fp32
    from bench.models import build_model

    setup = QUICK if quick else FULL
    cuda = torch.device(device).type == "cuda"
    if not cuda and not quick:
        raise SystemExit("python -m bench.perf gpu measures a GPU: pass --device cuda[:N], or --device cpu --quick "
                         "for the bookkeeping run")
    cpu_threads(device)
    strict_fp32()  # float32 as the runs compute it: TF32 off for matmuls and cuDNN convolutions
    start = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(setup.backbone, 3, setup.image_size).to(device).eval()
    flops = forward_flops(model, (1, 3, setup.image_size, setup.image_size), device)
    peak = {"fp32": matmul_peak(device, torch.float32, setup.matmul_n),
            "bf16": matmul_peak(device, torch.bfloat16, setup.matmul_n)}
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"\nGPU benchmark on {name} ({device}), torch {torch.__version__}: {setup.backbone} {flops / 1e9:.3f} GFLOP "
          f"per image per forward; matmul peak fp32 (IEEE, TF32 off) {peak['fp32'] / 1e12:.3g} TFLOP/s, bf16 "
          f"{peak['bf16'] / 1e12:.3g} TFLOP/s; roofline = images/s x FLOPs per image / the peak of the row's "
          f"precision; a case that would end past {BUDGET_S:.0f} s is skipped", flush=True)
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    budget = Budget(setup, start, peak)
    rows: list[dict] = []
    for case, batch in _cases(setup):
        if case == "inception":
            why = budget.skip(10.0)
            row = ({"case": "Inception features", "batch": batch, "images/s": math.nan, "roofline": math.nan,
                    "note": why} if why else _inception_row(device, setup, batch, peak["fp32"]))
        elif case == "fid":
            why = budget.skip(30.0 * setup.fid_rows / EVAL_IMAGES)
            row = ({"case": "FID statistics", "batch": batch, "images/s": math.nan, "roofline": math.nan,
                    "note": why} if why else _fid_row(setup))
        else:
            row = _sampling_row(model, case, setup, batch, device, budget, flops, peak)
        print_row(row)
        rows.append(row)
    rows.append(eval_projection(rows, flops, setup.steps, peak))
    print_row(rows[-1])
    print(f"({time.perf_counter() - start:.0f} s)", flush=True)
    return rows
