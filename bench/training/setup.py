"""What a training run needs before its first step: the config checked (one BenchError per
problem, before any work), the training set on the device (pixels, or latents encoded once), and
an ``accelerate.Accelerator`` for the device and precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

import bench.rules as rules
from bench.core.config import RunConfig
from bench.core.errors import BenchError

PRECISIONS = ("no", "bf16", "fp16")
ENCODE_BATCH = 256


@dataclass
class TrainData:
    """The training set on the device: uint8 pixels, or float scaled latents (encoded once)."""

    x: torch.Tensor  # uint8 [N, C, H, W] (pixel space) or float [N, c, h, w] (scaled latents)
    y: torch.Tensor | None  # int64 [N] labels, only for class-conditional runs
    num_classes: int | None
    latent_scale: float | None = None  # the codec's scale factor for latent runs

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the network sees."""
        return tuple(int(v) for v in self.x.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images in [-1, 1] (or latents) and labels (None if unconditional) at ``idx``."""
        idx = idx.to(self.x.device)
        x = self.x[idx]
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        return x, None if self.y is None else self.y[idx]


def _positive(cfg: RunConfig, *names: str) -> None:
    for name in names:
        v = getattr(cfg.train, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BenchError(f"train.{name} must be a positive integer, got {v!r}")


def check_config(cfg: RunConfig, device: torch.device, codec: Any = None) -> tuple[int, int, int]:
    """Raise one BenchError for anything in ``cfg`` that cannot train on ``device``; return the
    (C, H, W) the network will see. Reads metadata only (the data and the network are not built)."""
    from bench.data import dataset_info
    from bench.models import MODELS, validate_model
    from bench.training.checkpoint import build_diffusion

    t, m = cfg.train, cfg.model
    MODELS.check(m.backbone, "model.backbone")  # unknown preset: did-you-mean and the choices
    if t.precision not in PRECISIONS:
        raise BenchError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    rules.check_precision(t.precision, device.type, "train.precision")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device {str(device)!r} was asked for but torch sees no CUDA GPU; use device='cpu'")
    _positive(cfg, "steps", "batch_size", "grad_accum", "checkpoint_every", "log_every")
    if t.warmup_steps < 0 or not t.lr > 0 or t.weight_decay < 0:
        raise BenchError(f"train.lr must be > 0 and train.warmup_steps, train.weight_decay >= 0; got "
                         f"{t.lr}, {t.warmup_steps}, {t.weight_decay}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise BenchError(f"train.ema_decay must lie in [0, 1) (0 = no averaging), got {t.ema_decay}")
    if not 0.0 <= t.p_uncond < 1.0:
        raise BenchError(f"train.p_uncond must lie in [0, 1), got {t.p_uncond}")
    rules.check_label_dropout(t.p_uncond, m.class_cond, "train.p_uncond")
    build_diffusion(cfg.diffusion)  # unknown schedule / objective / variance / loss, impossible pairs
    rules.check_t_sampling(t.t_sampling, t.t_sampling_options.as_dict(), cfg.diffusion.loss, "train.t_sampling")
    info = dataset_info(cfg.data.dataset)
    rules.check_class_labels(m.class_cond, cfg.data.dataset, info.has_labels, "model.class_cond")
    size = cfg.data.image_size or info.image_size
    if size is None:
        raise BenchError(f"data.image_size: dataset {cfg.data.dataset!r} has no native size; set data.image_size")
    shape = (info.channels, size, size)
    if m.space not in ("pixel", "latent"):
        raise BenchError(f"model.space must be 'pixel' or 'latent', got {m.space!r}")
    if m.space == "latent":
        shape = _latent_shape(cfg, codec, info.channels, size)
    validate_model(m.backbone, shape[0], shape[1], where="model.backbone")
    return shape


def _latent_shape(cfg: RunConfig, codec: Any, channels: int, size: int) -> tuple[int, int, int]:
    """(C, H, W) of the latents: from the codec, checked against the config's VAE section."""
    from bench.models import validate_model, validate_vae

    v = cfg.vae
    if v is None:
        raise BenchError("model.space is 'latent' but the config has no vae section; add `vae: {}` (the "
                         "defaults) or set model.space: pixel")
    validate_vae(v, size, where="vae")
    if v.pretrained is None:  # the backbone must fit the latents before anyone trains a VAE for it
        validate_model(cfg.model.backbone, v.latent_channels, size // v.factor, where="model.backbone (latent)")
    if codec is None:
        raise BenchError(f"model.space is 'latent': train_model needs the run's trained VAE "
                         f"(codec=LatentCodec, from the VAE job {cfg.vae_key()}); none was given")
    shape = codec.latent_shape(channels, size)
    if v.pretrained is None and (codec.factor, codec.latent_channels) != (v.factor, v.latent_channels):
        raise BenchError(f"the codec given (factor {codec.factor}, {codec.latent_channels} latent channels) "
                         f"is not the config's VAE (vae.factor={v.factor}, vae.latent_channels="
                         f"{v.latent_channels}); pass the codec of VAE job {cfg.vae_key()}")
    return shape


@torch.no_grad()
def load_train_data(cfg: RunConfig, device: torch.device, codec: Any = None) -> TrainData:
    """Load the training split onto ``device``; latent runs encode it once with ``codec`` (moved there)."""
    from bench.data import load_images

    s = load_images(cfg.data, cfg.data.train_split)
    if cfg.model.class_cond and (s.labels is None or not s.num_classes):
        raise BenchError(f"model.class_cond is true but {cfg.data.dataset!r} split "
                         f"{cfg.data.train_split!r} has no labels; set model.class_cond: false")
    y = s.labels.to(device) if cfg.model.class_cond else None
    n_cls = s.num_classes if cfg.model.class_cond else None
    if cfg.model.space != "latent":
        return TrainData(s.images.to(device), y, n_cls)
    codec.to(device)
    z = torch.cat([codec.encode(s.images[i : i + ENCODE_BATCH].to(device).float() / 127.5 - 1.0).float()
                   for i in range(0, len(s.images), ENCODE_BATCH)])
    return TrainData(z, y, n_cls, latent_scale=float(codec.scale_factor))


def make_accelerator(device: torch.device, precision: str) -> Any:
    """An ``accelerate.Accelerator`` on ``device`` with autocast ``precision`` ("no", "bf16", "fp16").

    accelerate keeps its state in process-wide singletons that refuse a second configuration; a
    worker trains many runs one after the other (a grid over train.precision, CPU then GPU), so a
    non-distributed state of another device type or precision is reset first. ``cuda:N`` makes
    GPU N the current device (on workers CUDA_VISIBLE_DEVICES leaves one GPU, and "cuda" is it).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import DistributedType

    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)
    shared = AcceleratorState._shared_state or PartialState._shared_state
    if shared and shared.get("distributed_type", DistributedType.NO) == DistributedType.NO:
        current = shared.get("device")
        stale = current is None or current.type != device.type
        if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
            stale = True
        if stale:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision=precision)
    if acc.device.type != device.type:
        raise BenchError(f"asked to train on {str(device)!r} but accelerate placed the run on "
                         f"{str(acc.device)!r} (ACCELERATE_* environment variables?)")
    return acc
