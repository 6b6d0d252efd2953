"""Metrics speed: feature-extraction throughput per extractor, and one full evaluation with a cold
vs a warm reference cache (the ratio is what the cache buys; measured in one process).

Runs offline: ``domain:digits`` is trained into a temporary cache first (not timed) and
``inception`` uses torch-fidelity's architecture with random weights from a temporary file (same
compute as the real network). ``python -m bench.perf metrics [--device cuda]``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from bench.core.config import DataSpec
from bench.data import load_images
from bench.metrics import FIDSampleSizeWarning, compute_metrics, get_extractor, save_random_inception_weights
from bench.metrics.features import reference_cache_root
from bench.perf.timing import best_times, cpu_threads, print_table

FIDELITY = ("fid", "is", "kid", "precision", "recall")


def _throughput(ext_name: str, images: torch.Tensor, device: str, batch: int, repeats: int,
                weights: str | None = None) -> dict:
    ext = get_extractor(ext_name, image_size=int(images.shape[-1]), weights=weights, progress=False)
    net = ext.build((ext.feature_layer,), device=device)
    x3 = images.expand(-1, 3, -1, -1).contiguous()

    def extract() -> None:
        with torch.no_grad():
            for s in range(0, len(x3), batch):
                net(x3[s : s + batch].to(device))

    seconds = best_times({"extract": extract}, device, rounds=repeats)["extract"]
    return {"benchmark": "feature extraction", "extractor": ext_name, "images": len(images),
            "seconds": seconds, "images_per_s": len(images) / seconds, "cold_over_warm": ""}


def _cold_warm(ext_name: str, gen: torch.Tensor, reference: str | torch.Tensor, metrics: tuple[str, ...],
               device: str, repeats: int, weights: str | None = None) -> list[dict]:
    kw = dict(images=gen, reference=reference, extractor=ext_name, metrics=metrics, device=device,
              inception_weights=weights)
    n_ref = len(reference) if torch.is_tensor(reference) else None

    def cold() -> None:
        shutil.rmtree(reference_cache_root(), ignore_errors=True)
        compute_metrics(**kw)

    def warm() -> None:  # timed right after cold(), which refilled the cache
        compute_metrics(**kw)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleSizeWarning)
        best = best_times({"cold": cold, "warm": warm}, device, rounds=repeats)
    t_cold, t_warm = best["cold"], best["warm"]
    label = f"{len(gen)} generated vs {n_ref or reference} ({', '.join(metrics)})"
    return [
        {"benchmark": f"evaluation, cold cache: {label}", "extractor": ext_name, "images": len(gen),
         "seconds": t_cold, "images_per_s": len(gen) / t_cold, "cold_over_warm": ""},
        {"benchmark": f"evaluation, warm cache: {label}", "extractor": ext_name, "images": len(gen),
         "seconds": t_warm, "images_per_s": len(gen) / t_warm, "cold_over_warm": t_cold / t_warm},
    ]


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Measure and return the rows (also see :func:`main`, which prints them)."""
    old = os.environ.get("BENCH_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="bench-perf-metrics-") as tmp:
        os.environ["BENCH_CACHE_DIR"] = tmp
        cpu_threads(device)
        try:
            weights = str(save_random_inception_weights(Path(tmp) / "random-inception.pth"))
            train = load_images(DataSpec(), "train").images
            n_incep = 16 if quick else 64
            rows = [
                _throughput("domain:digits", train, device, batch=256, repeats=3),
                _throughput("inception", train[:n_incep], device, batch=16, repeats=1, weights=weights),
            ]
            rows += _cold_warm("domain:digits", train, "digits:test", FIDELITY, device, repeats=3)
            rows += _cold_warm("inception", train[:n_incep // 2], train[-n_incep:], ("kid", "is"), device,
                               repeats=1, weights=weights)
        finally:
            if old is None:
                os.environ.pop("BENCH_CACHE_DIR", None)
            else:
                os.environ["BENCH_CACHE_DIR"] = old
    return rows


def main(device: str = "cpu") -> list[dict]:
    """Run the benchmark and print its table."""
    rows = run(device)
    print_table(rows, f"metrics on {device} (inception: random weights, same compute as the real network)")
    return rows


if __name__ == "__main__":
    main()
