"""The smallest real study: digits, unet-tiny, 100 timesteps, a few training steps, NLL only.

Tests of the machinery around the models (executors, tracking, storage) use it so their time
goes to the machinery.
"""

from __future__ import annotations

from typing import Any


def tiny_study(name: str, grid: dict | None = None, train_steps: int = 30, question: str = "machinery test",
               **sections: dict[str, Any]) -> dict[str, Any]:
    """A study mapping; ``sections`` update the base sections (``train={"batch_size": 16}``)."""
    base: dict[str, dict[str, Any]] = {
        "data": {"dataset": "digits"},
        "model": {"backbone": "unet-tiny"},
        "diffusion": {"timesteps": 100},
        "train": {"steps": train_steps, "batch_size": 32, "checkpoint_every": 10, "log_every": 5,
                  "warmup_steps": 5},
        "sample": {"sampler": "ddim", "steps": 5, "batch_size": 50},
        "eval": {"num_samples": 20, "metrics": ["nll"], "nll_samples": 4},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    study: dict[str, Any] = {"name": name, "question": question, "base": base}
    if grid:
        study["grid"] = grid
    return study
