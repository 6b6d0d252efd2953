"""Training checkpoints: one file per TRAIN job, written atomically, read defensively.

A checkpoint holds everything needed to continue a run bit for bit (the config, model, EMA,
optimizer, lr-scheduler and grad-scaler states, every RNG state, the loss history and the elapsed
time) and everything an evaluation job needs to rebuild the EMA network without the data
(``model_args``). It is read with ``torch.load(weights_only=True)``: plain containers and tensors
only, so a checkpoint can never run code when loaded.

>>> model, diffusion, cfg = load_trained("runs/abc123/checkpoint.pt")
>>> x = diffusion.sample(model, (16, 1, 8, 8), **sample_kwargs)
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.core.config import DiffusionSpec, RunConfig, from_dict
from bench.core.errors import BenchError
from bench.core.paths import atomic_torch_save, load_torch_file

FORMAT = "bench.TrainCheckpoint/1"
FILENAME = "checkpoint.pt"


class CheckpointError(BenchError):
    """A checkpoint file is missing, truncated, corrupt or of another format."""


def build_diffusion(spec: DiffusionSpec) -> Any:
    """The :class:`~bench.diffusion.Diffusion` of a config section."""
    from bench.diffusion import Diffusion

    return Diffusion(spec.schedule, spec.timesteps, spec.objective, spec.variance, spec.loss, spec.hybrid_weight,
                     process=spec.process, shift=spec.shift)


def write_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` (tensors already on the CPU) via temp file + rename: a kill never leaves half a file."""
    atomic_torch_save({"format": FORMAT, **state}, path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`write_checkpoint`; anything else raises :class:`CheckpointError`."""
    return load_torch_file(path, FORMAT, ("config", "step", "model_args", "ema"), "checkpoint",
                           map_location=map_location, error=CheckpointError)


def quarantine(path: str | os.PathLike) -> Path:
    """Move a bad file aside to ``<name>.corrupt`` (``.corrupt.1``, ... if taken); return the new path."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt.{n}")
    os.replace(path, target)
    return target


# --- RNG states ----------------------------------------------------------------------------------


def global_rng_state(device: torch.device) -> dict[str, Any]:
    """torch (CPU, and CUDA when training there), Python ``random`` and NumPy global states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
        "python": random.getstate(),
        # as tensors and ints: weights_only loading refuses NumPy arrays
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }


def set_global_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


# --- evaluation -----------------------------------------------------------------------------------


def model_args(cfg: RunConfig, diffusion: Any, channels: int, size: int, num_classes: int | None) -> dict[str, Any]:
    """What :func:`build_from_args` builds the run's network from (kept in its checkpoint): a continuous
    process's ``time_scale`` only where it is not 1, so a vp run's arguments are what they were."""
    args = {"backbone": cfg.model.backbone, "in_channels": channels, "image_size": size,
            "num_classes": num_classes if cfg.model.class_cond else None,
            "learned_variance": diffusion.learned_variance, "dropout": cfg.model.dropout}
    if diffusion.process.time_scale != 1.0:
        args["time_scale"] = diffusion.process.time_scale
    return args


def build_from_args(model_args: dict[str, Any]) -> nn.Module:
    """The (untrained) network described by a checkpoint's ``model_args``."""
    from bench.models import build_model

    return build_model(**model_args)


def load_trained(
    checkpoint_path: str | os.PathLike, device: str | torch.device = "cpu", allow_unfinished: bool = False
) -> tuple[nn.Module, Any, RunConfig]:
    """``(ema_model in eval mode, Diffusion, RunConfig)`` from a training checkpoint.

    The EMA weights are what sampling uses. A missing, truncated or corrupt file raises
    :class:`CheckpointError` (a BenchError) naming it; so does a run that was cut off before its
    last step, unless ``allow_unfinished`` (then it warns). Latent runs return the model of the
    latents: decode its samples with the run's :class:`~bench.models.LatentCodec`.
    """
    blob = read_checkpoint(checkpoint_path)
    try:
        cfg = from_dict(blob["config"], where=f"checkpoint {str(checkpoint_path)!r}")
        model = build_from_args(blob["model_args"])
        model.load_state_dict(blob["ema"]["weights"])
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {str(checkpoint_path)!r} does not match this version of the bench "
            f"({type(e).__name__}: {e}); delete it and re-run so the model is trained again"
        ) from e
    if blob["step"] < cfg.train.steps:
        msg = (f"checkpoint {str(checkpoint_path)!r} is from step {blob['step']} of {cfg.train.steps}: "
               "the run was cut off; re-run it to finish training")
        if not allow_unfinished:
            raise CheckpointError(msg + " (or pass allow_unfinished=True)")
        warnings.warn(msg, stacklevel=2)
    model = model.to(device).eval().requires_grad_(False)
    return model, build_diffusion(cfg.diffusion), cfg


__all__ = [
    "FORMAT", "FILENAME", "CheckpointError", "build_diffusion", "write_checkpoint", "read_checkpoint",
    "quarantine", "global_rng_state", "set_global_rng_state", "build_from_args", "load_trained", "model_args",
]
