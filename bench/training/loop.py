"""Training on accelerate: AdamW with linear warmup, EMA, gradient accumulation and clipping, mixed
precision, atomic checkpoints holding every RNG state, and resume that is bit-exact on the CPU.

>>> result = train_model(cfg, "runs/<train_key>", device="cpu")      # resumes if cut off
>>> model, diffusion, cfg = load_trained(result.checkpoint)           # EMA weights, eval mode

One step is one optimizer update over ``train.grad_accum`` micro-batches of ``train.batch_size``
images (effective batch ``batch_size * grad_accum``, as ``bench.plan`` costs it). Every random
stream has its own seed derived from ``cfg.seed``: weight init, data order (a dedicated generator,
a fresh permutation per epoch), diffusion noise (a dedicated generator passed to
``Diffusion.training_loss``), and the global torch / Python / NumPy state that dropout uses.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.core.config import RunConfig
from bench.core.errors import BenchError
from bench.training.checkpoint import (
    FILENAME,
    CheckpointError,
    build_diffusion,
    build_from_args,
    global_rng_state,
    load_trained,
    model_args,
    quarantine,
    read_checkpoint,
    set_global_rng_state,
    write_checkpoint,
)
from bench.training.setup import TrainData, check_config, load_train_data, make_accelerator

Tensor = torch.Tensor
RESUME_KEYS = ("train_key", "model", "optimizer", "scheduler", "rng", "loss_history", "loss_window",
               "train_seconds", "num_params", "device")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite. The run stops; its last checkpoint stays good."""


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int  # optimizer steps done (== cfg.train.steps unless stopped by should_stop)
    final_loss: float  # mean loss of the last logged window
    loss_history: list[tuple[int, float]]  # (step, mean loss over the log_every steps ending there)
    train_seconds: float  # wall clock over every session of this run (resumes add up)
    num_params: int
    device: str
    finished: bool = True
    resumed_from: int = 0  # step the run continued from (0: from scratch)


def derive_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed per purpose, so the init, data and noise streams never coincide."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:8], "little") >> 1


def warmup_factor(warmup_steps: int) -> Callable[[int], float]:
    """lr multiplier after ``n`` updates: (n + 1) / warmup_steps up to 1, then constant. The gradual
    warmup of Goyal et al. 2017 ("Accurate, Large Minibatch SGD", sec. 2.2); DDPM warms up over 5000
    steps then keeps the lr constant (Ho et al. 2020, appendix B)."""
    return lambda n: min(1.0, (n + 1) / warmup_steps) if warmup_steps > 0 else 1.0


class EMA:
    """Exponential moving average of the weights, ``ema <- d * ema + (1 - d) * w`` after each update
    (Polyak & Juditsky 1992; DDPM samples with the EMA, decay 0.9999, Ho et al. 2020 app. B).

    The decay warms up as ``d_n = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, as
    ``tf.train.ExponentialMovingAverage(num_updates=...)`` and LDM's ``LitEma`` do, so a short run's
    average is not dominated by the random initialisation (0.999^2000 would still weigh it 13%).
    Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = float(decay)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        n = self.num_updates
        d = min(self.decay, (1.0 + n) / (10.0 + n))
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
        self.num_updates = n + 1


class EpochSampler:
    """Batches of indices from a fresh permutation per epoch, drawn from a dedicated generator, so
    the data order depends on the seed only and is saved with the checkpoint (generator, permutation,
    position). A batch that crosses an epoch end is completed from the next permutation.

    The permutation is drawn on the CPU (the same order on every device) and moved to ``device``
    once per epoch, so a step's batch of indices is a slice already there: no copy per step."""

    def __init__(self, n: int, seed: int, device: torch.device | str = "cpu") -> None:
        self.n = n
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = self._draw()
        self.pos = 0

    def _draw(self) -> Tensor:
        return torch.randperm(self.n, generator=self.generator).to(self.device)

    def next(self, batch: int) -> Tensor:
        parts = []
        while batch:
            if self.pos == self.n:
                self.perm, self.pos = self._draw(), 0
            take = min(batch, self.n - self.pos)
            parts.append(self.perm[self.pos : self.pos + take])
            self.pos, batch = self.pos + take, batch - take
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm.cpu().clone(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"].to(self.device).clone(), int(state["pos"])


def seed_everything(seed: int) -> None:
    """Seed the global torch (CPU and CUDA), Python and NumPy generators, as ``accelerate.utils.set_seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One run's live state and its optimisation step; :func:`train_model` adds checkpoints, logging
    and resume. ``bench.perf.train`` times :meth:`step` directly."""

    def __init__(self, cfg: RunConfig, device: str | torch.device = "cpu", codec: Any = None,
                 data: TrainData | None = None) -> None:
        dev = torch.device(device)
        check_config(cfg, dev, codec)
        self.cfg = cfg
        t = cfg.train
        self.accelerator = make_accelerator(dev, t.precision)
        self.device = self.accelerator.device
        self.data = data if data is not None else load_train_data(cfg, self.device, codec)
        self.diffusion = build_diffusion(cfg.diffusion)
        from bench.diffusion import TimeSampler  # train.t_sampling: where the loss looks, and its weighting

        TimeSampler(t.t_sampling, t.t_sampling_options.as_dict()).install(self.diffusion)
        c, h, _ = self.data.shape
        self.model_args = model_args(cfg, self.diffusion, c, h, self.data.num_classes)
        seed_everything(derive_seed(cfg.seed, "global"))  # dropout draws from the global stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            model = build_from_args(self.model_args)
        self.num_params = sum(p.numel() for p in model.parameters())
        self.ema = EMA(model, t.ema_decay)
        self.ema.model.to(self.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_factor(t.warmup_steps))
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.model.train()
        self.sampler = EpochSampler(len(self.data), derive_seed(cfg.seed, "data"), self.data.x.device)
        self.noise = torch.Generator(device=self.device).manual_seed(derive_seed(cfg.seed, "noise"))
        self.step_count = 0

    @property
    def raw_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def step(self) -> Tensor:
        """One optimizer update; returns the mean loss of its micro-batches (a 0-d tensor, not synced)."""
        acc, t = self.accelerator, self.cfg.train
        total = torch.zeros((), device=self.device)
        for micro in range(t.grad_accum):
            x, y = self.data.batch(self.sampler.next(t.batch_size))
            last = micro == t.grad_accum - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):  # DDP: reduce once
                loss = self.diffusion.training_loss(self.model, x, y, t.p_uncond, generator=self.noise)
                acc.backward(loss / t.grad_accum)
            total += loss.detach().float()
        if t.grad_clip > 0:
            acc.clip_grad_norm_(self.model.parameters(), t.grad_clip)  # unscales first under fp16
        self.optimizer.step()
        if not self.optimizer.step_was_skipped:  # fp16: the GradScaler skipped it (inf / NaN gradients)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.raw_model)
        self.step_count += 1
        return total / t.grad_accum

    def state_dict(self) -> dict[str, Any]:
        scaler = self.accelerator.scaler
        return {
            "step": self.step_count, "model_args": self.model_args, "num_params": self.num_params,
            "model": self.raw_model.state_dict(),
            "ema": {"weights": self.ema.model.state_dict(), "num_updates": self.ema.num_updates},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {**global_rng_state(self.device), "data": self.sampler.state_dict(),
                    "noise": self.noise.get_state()},
            "device": self.device.type, "latent_scale": self.data.latent_scale,
        }

    def load_state_dict(self, blob: dict[str, Any], path: Path) -> None:
        if blob["model_args"] != self.model_args:
            raise BenchError(f"checkpoint {str(path)!r} holds a network {blob['model_args']} but this run "
                             f"builds {self.model_args}; delete the checkpoint or use another out_dir")
        if blob.get("latent_scale") != self.data.latent_scale:
            warnings.warn(f"{path}: the VAE's latent scale changed ({blob.get('latent_scale')} -> "
                          f"{self.data.latent_scale}) since the checkpoint; the resumed run will differ "
                          "from an uninterrupted one", stacklevel=3)
        self.raw_model.load_state_dict(blob["model"])
        self.ema.model.load_state_dict(blob["ema"]["weights"])
        self.ema.num_updates = int(blob["ema"]["num_updates"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        if self.accelerator.scaler is not None and blob.get("scaler") is not None:
            self.accelerator.scaler.load_state_dict(blob["scaler"])
        rng = blob["rng"]
        self.sampler.load_state_dict(rng["data"])
        if blob["device"] == self.device.type:
            self.noise.set_state(rng["noise"])
            set_global_rng_state(rng, self.device)
        else:  # generator states do not carry across device types: continue, reproducibly
            warnings.warn(f"{path} was written on {blob['device']}, resuming on {self.device.type}: the "
                          "noise stream is re-seeded, so the result differs from an uninterrupted run",
                          stacklevel=3)
            step_seed = derive_seed(self.cfg.seed, f"resume@{blob['step']}")
            self.noise.manual_seed(step_seed)
            seed_everything(step_seed)
        self.step_count = int(blob["step"])


class LossLog:
    """Per-step losses stay on the device and are read in bulk: once per log window (one sync, not
    one per step) and before every checkpoint, so no checkpoint ever holds weights updated from a
    non-finite loss. ``history`` gets (step, mean loss of the window ending at step)."""

    def __init__(self, cfg: RunConfig, path: Path, history: list, window: list) -> None:
        self.cfg, self.path = cfg, path
        self.history = [(int(s), float(v)) for s, v in history]
        self.window: list[tuple[int, Any]] = [(int(s), float(v)) for s, v in window]

    def add(self, step: int, loss: Tensor, close: bool) -> float | None:
        self.window.append((step, loss))
        if not close:
            return None
        values = self.read()
        self.history.append((step, sum(values) / len(values)))
        self.window = []
        return self.history[-1][1]

    def read(self) -> list[float]:
        """The window's losses as floats; raises :class:`NonFiniteLossError` at the first bad one."""
        if not self.window:
            return []
        steps = [s for s, _ in self.window]
        live = [v for _, v in self.window if isinstance(v, Tensor)]
        read = iter(torch.stack(live).float().cpu().tolist() if live else [])  # one device sync
        values = [next(read) if isinstance(v, Tensor) else float(v) for _, v in self.window]
        for s, v in zip(steps, values):
            if not math.isfinite(v):
                t = self.cfg.train
                last = f"the last good checkpoint is {str(self.path)!r}" if self.path.exists() else (
                    "no checkpoint was written")
                raise NonFiniteLossError(
                    f"run {self.cfg.train_key()} (config key; {self.cfg.data.dataset} "
                    f"{self.cfg.model.backbone} seed={self.cfg.seed}): the training loss is {v} at step {s}; "
                    f"training stopped and {last}. Settings: train.lr={t.lr}, train.warmup_steps="
                    f"{t.warmup_steps}, train.grad_clip={t.grad_clip}, train.precision={t.precision!r}. "
                    "Lower train.lr, lengthen the warmup, keep train.grad_clip > 0, or avoid fp16."
                )
        self.window = list(zip(steps, values))
        return values


def _existing(path: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The checkpoint to resume from: None if absent; a corrupt file is moved aside with a warning."""
    if not path.exists():
        return None
    try:
        blob = read_checkpoint(path)
        missing = [k for k in RESUME_KEYS if k not in blob]
        if missing:
            raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt (keys {missing} are missing)")
    except CheckpointError as e:
        moved = quarantine(path)
        warnings.warn(f"{e}. Moved it to {str(moved)!r}; training from scratch instead.", stacklevel=3)
        return None
    if blob.get("train_key") != cfg.train_key():
        raise BenchError(
            f"{str(path)!r} is the checkpoint of run {blob.get('train_key')}, not of this run "
            f"{cfg.train_key()} (the training settings differ); give each run its own out_dir "
            "(e.g. runs/<train_key>) or delete the old checkpoint"
        )
    return blob


def train_model(
    cfg: RunConfig,
    out_dir: str | Path,
    device: str = "cpu",
    progress: bool = True,
    codec: Any = None,
    should_stop: Callable[[int], bool] | None = None,
) -> TrainResult:
    """Train (or finish, or just report) the model of ``cfg``; checkpoint to ``out_dir/checkpoint.pt``.

    Resumes from an existing checkpoint of the same ``cfg.train_key()`` (another key: BenchError; a
    truncated or corrupt file: warning, moved to ``checkpoint.pt.corrupt``, trained from scratch).
    Checkpoints every ``train.checkpoint_every`` steps and at the end, atomically. Latent runs
    (``model.space: latent``) need the run's trained ``codec`` (a :class:`~bench.models.LatentCodec`);
    the training set is encoded once. ``should_stop(step)`` is asked after every step but the last: True
    checkpoints and returns early (``finished=False``); an exception it raises propagates, as a crash.
    A NaN or infinite loss raises :class:`NonFiniteLossError`.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    check_config(cfg, torch.device(device), codec)  # every user error before any work
    path = Path(out_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = _existing(path, cfg)
    steps = cfg.train.steps
    if blob is not None and blob["step"] >= steps:  # finished earlier: nothing to do
        return _result(path, blob, blob["step"])
    trainer = Trainer(cfg, device, codec)
    start, seconds = 0, 0.0
    log = LossLog(cfg, path, [], [])
    if blob is not None:
        trainer.load_state_dict(blob, path)
        start, seconds = int(blob["step"]), float(blob["train_seconds"])
        log = LossLog(cfg, path, blob["loss_history"], blob["loss_window"])
    del blob

    def save(step: int) -> dict[str, Any]:
        log.read()  # a non-finite loss raises here, before anything is written
        state = {**trainer.state_dict(), "config": cfg.to_dict(), "train_key": cfg.train_key(),
                 "loss_history": log.history, "loss_window": log.window,
                 "train_seconds": seconds + time.perf_counter() - t_start}
        write_checkpoint(state, path)
        return state

    state: dict[str, Any] | None = None
    bar = tqdm(total=steps, initial=start, desc=f"train {cfg.model.backbone}", disable=not progress)
    try:
        for step in range(start + 1, steps + 1):
            mean = log.add(step, trainer.step(), close=step % cfg.train.log_every == 0 or step == steps)
            if mean is not None:
                bar.set_postfix(loss=f"{mean:.4g}", lr=f"{trainer.scheduler.get_last_lr()[0]:.3g}")
            saved = step % cfg.train.checkpoint_every == 0 or step == steps
            state = save(step) if saved else None
            bar.update(1)
            if step < steps and should_stop is not None and should_stop(step):
                state = state or save(step)
                break
    finally:
        bar.close()
    assert state is not None
    return _result(path, state, start)


def _result(path: Path, state: dict[str, Any], resumed_from: int) -> TrainResult:
    history = [(int(s), float(v)) for s, v in state["loss_history"]]
    steps = int(state["step"])
    return TrainResult(
        checkpoint=path, steps=steps, final_loss=history[-1][1] if history else float("nan"),
        loss_history=history, train_seconds=float(state["train_seconds"]), num_params=int(state["num_params"]),
        device=str(state["device"]), finished=steps >= int(state["config"]["train"]["steps"]),
        resumed_from=resumed_from,
    )


__all__ = [
    "train_model", "load_trained", "TrainResult", "NonFiniteLossError", "Trainer", "EMA", "EpochSampler",
    "LossLog", "derive_seed", "warmup_factor", "check_config", "CheckpointError",
]
