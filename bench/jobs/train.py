"""The TRAIN job: train one denoiser (resuming from its checkpoint) and plot its loss curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.core.config import RunConfig
from bench.core.paths import atomic_write_bytes
from bench.jobs.fp32 import strict_fp32
from bench.jobs.store import artifact_dir, train_dir
from bench.jobs.vae import load_codec


def run_train(cfg: RunConfig, key: str, device: str, progress: bool = True) -> dict[str, Any]:
    from bench.training.loop import train_model

    fp32_tag = strict_fp32()
    codec = load_codec(cfg, device) if cfg.model.space == "latent" else None
    res = train_model(cfg, train_dir(key), device=device, progress=progress, codec=codec)
    summary = {"train_seconds": res.train_seconds, "final_loss": res.final_loss, "num_params": res.num_params,
               "steps": res.steps}
    atomic_write_bytes(train_dir(key) / "result.json", json.dumps(summary).encode())
    curve = artifact_dir(key) / "loss_curve.png"
    _plot_loss(res.loss_history, curve, title=f"train {key}")
    return {"metrics": {k: float(v) for k, v in summary.items()},
            "history": {"train_loss": [(int(s), float(v)) for s, v in res.loss_history]},
            "tags": {"bench.checkpoint": str(res.checkpoint), "bench.resumed_from": str(res.resumed_from), **fp32_tag},
            "artifacts": [str(curve)]}


def _plot_loss(history: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    if history:
        steps, losses = zip(*history)
        ax.plot(steps, losses)
    ax.set(xlabel="step", ylabel="loss", title=title, yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
