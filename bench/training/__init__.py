"""Training a denoiser: the loop (EMA, warmup, clipping, accumulation, autocast), its setup
(config checks, data on the device, the accelerator) and atomic, resumable checkpoints.

>>> from bench.training import train_model, load_trained
"""

from bench.training.checkpoint import CheckpointError, build_diffusion, load_trained, read_checkpoint
from bench.training.loop import EMA, NonFiniteLossError, Trainer, TrainResult, train_model

__all__ = ["CheckpointError", "EMA", "NonFiniteLossError", "TrainResult", "Trainer", "build_diffusion",
           "load_trained", "read_checkpoint", "train_model"]
