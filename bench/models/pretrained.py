"""Models the bench did not train: diffusers pipeline folders (or hub ids), and a user's own code.

>>> model, diffusion = load_pretrained("path/to/ddpm-cifar10-32")     # a diffusers pipeline folder
>>> model, diffusion = load_pretrained("python:my_pkg.nets:load_edm")  # fn() -> (model, Diffusion)

A diffusers folder is read the way ``from_pretrained`` reads it (``model_index.json``, the model's
``config.json``, ``scheduler/scheduler_config.json``, the weights); everything the bench needs
comes from there, never from a guess: the training betas (the scheduler's own, from
``beta_schedule`` / ``trained_betas`` / ``num_train_timesteps``), the objective
(``prediction_type``), the variance (``variance_type``), the image size, channels, class count and
null label. Supported: ``UNet2DModel`` (pixel space; class-conditional through
``num_class_embeds``) and DiT (``DiTTransformer2DModel`` / ``Transformer2DModel``; class-conditional,
learned sigma as 2C outputs) in latent space with the folder's ``AutoencoderKL``.

Conventions that differ from the checkpoint's own pipeline are recorded in :attr:`Pretrained.notes`
and the run's tags: diffusers' DiT pipeline applies guidance to 3 of the 4 latent channels; the
bench guides all of them, as the CFG paper's formula says.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.core.errors import BenchError
from bench.core.paths import file_sha256

PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
VARIANCE = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
            "fixed_large_log": "fixed_large", "learned_range": "learned_range"}
SCHEDULE_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine",
                  "sigmoid": "sigmoid"}
MODEL_FOLDERS = ("unet", "transformer")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass
class Pretrained:
    """What a checkpoint folder says about itself, read without loading any weights."""

    source: str
    folder: Path | None
    model_class: str
    space: str  # pixel | latent
    image_size: int  # of the images the bench generates (pixels)
    channels: int  # of what the network sees (latent channels in latent space)
    num_classes: int | None
    has_null_label: bool
    scheduler: dict[str, Any]
    sha256: str = ""
    notes: list[str] = field(default_factory=list)

    def diffusion_settings(self) -> dict[str, Any]:
        """``diffusion.*`` as the checkpoint was trained (schedule names the nearest registered one)."""
        s = self.scheduler
        return {"timesteps": int(s.get("num_train_timesteps", 1000)),
                "objective": PREDICTION.get(s.get("prediction_type", "epsilon"), "eps"),
                "variance": VARIANCE.get(s.get("variance_type") or "fixed_small", "fixed_small"),
                "schedule": SCHEDULE_NAMES.get(s.get("beta_schedule", "linear"), "linear")}

    def tags(self) -> dict[str, str]:
        return {"pretrained.source": self.source, "pretrained.sha256": self.sha256,
                "pretrained.class": self.model_class, "pretrained.notes": "; ".join(self.notes) or "none"}


def is_python_source(source: str) -> bool:
    return source.startswith("python:")


def inspect_pretrained(source: str, where: str = "model.pretrained") -> Pretrained:
    """The checkpoint's description (class, space, size, classes, scheduler) and weights hash; one
    BenchError for a folder that is missing, not a diffusers pipeline, or of an unsupported class."""
    if is_python_source(source):
        return _inspect_python(source, where)
    folder = _resolve_folder(source, where)
    index = _read_json(folder / "model_index.json", where)
    sub = next((s for s in MODEL_FOLDERS if s in index), None)
    if sub is None:
        raise BenchError(f"{where}: {str(folder)!r} has no 'unet' or 'transformer' in model_index.json; the bench "
                         "loads UNet2DModel (pixel) and DiT (latent) pipelines")
    config = _read_json(folder / sub / "config.json", where)
    cls = config.get("_class_name", index[sub][-1] if isinstance(index[sub], list) else "?")
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json", where)
    if cls == "UNet2DModel":
        n = config.get("num_class_embeds")
        info = Pretrained(source, folder, cls, "pixel", int(config["sample_size"]), int(config["in_channels"]),
                          int(n) if n else None, False, scheduler)
        if n:
            info.notes.append(f"{n} class embeddings and no null label: sampling is class-conditional, without guidance")
    elif cls in ("DiTTransformer2DModel", "Transformer2DModel"):
        if "vae" not in index:
            raise BenchError(f"{where}: {str(folder)!r} is a DiT without a 'vae' folder; latent DiTs need their "
                             "AutoencoderKL beside them (vae/config.json and weights)")
        vae = _read_json(folder / "vae" / "config.json", where)
        factor = 2 ** (len(vae.get("block_out_channels", [1])) - 1)
        n = int(config.get("num_embeds_ada_norm") or 0) or None
        info = Pretrained(source, folder, cls, "latent", int(config["sample_size"]) * factor,
                          int(config["in_channels"]), n, n is not None, scheduler)
        info.notes.append("diffusers' DiT pipeline guides 3 of the 4 latent channels; the bench guides all 4 (sample.guidance_channels: 3 follows the checkpoint)")
        info.notes.append(f"null label: index {n} (the class embedding table's extra row), as the bench's")
    else:
        raise BenchError(f"{where}: {str(folder)!r} holds a {cls}; supported: UNet2DModel (pixel) and "
                         "DiTTransformer2DModel / Transformer2DModel (latent), or python:module:function")
    info.sha256 = weights_sha256(folder, [sub] + (["vae"] if info.space == "latent" else []))
    return info


def weights_sha256(folder: Path, subfolders: list[str]) -> str:
    """One sha256 over every weight file of the model (and its VAE): the checkpoint's identity,
    so a moved folder is the same model and a changed file a new one."""
    h = hashlib.sha256()
    files = sorted(p for s in subfolders for p in (folder / s).rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise BenchError(f"model.pretrained: no weight files ({', '.join(WEIGHT_SUFFIXES)}) under "
                         f"{', '.join(str(folder / s) for s in subfolders)}")
    for p in files:
        h.update(f"{p.relative_to(folder)}:{file_sha256(p)}\n".encode())
    return h.hexdigest()


def load_pretrained(source: str, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """``(model, Diffusion)``: the model follows the bench.diffusion contract ``model(x_t, t, y)``
    (with ``num_classes`` where it has a null label for guidance), the Diffusion is the one it was
    trained with. For a latent DiT, decode samples with :func:`load_pretrained_codec`."""
    from bench.diffusion import Diffusion

    if is_python_source(source):
        model, diffusion = _call_python(source)
        return (model.to(device) if isinstance(model, nn.Module) else model), diffusion
    info = inspect_pretrained(source)
    d = info.diffusion_settings()
    betas = _scheduler_betas(info)
    loss = "hybrid" if d["variance"] == "learned_range" else "simple"
    diffusion = Diffusion(betas, None, objective=d["objective"], variance=d["variance"], loss=loss)
    return DiffusersModel.load(info).to(device).eval(), diffusion


def load_pretrained_codec(source: str, device: str | torch.device = "cpu") -> Any:
    """The latent codec of a pretrained latent model (its folder's AutoencoderKL, scaled by its config)."""
    from bench.models.vae import load_pretrained_vae

    return load_pretrained_vae(_resolve_folder(source, "model.pretrained") / "vae").to(device)


class DiffusersModel(nn.Module):
    """A diffusers UNet2DModel or DiT as a bench model: ``forward(x_t, t, y)`` -> its output tensor."""

    def __init__(self, net: nn.Module, info: Pretrained) -> None:
        super().__init__()
        self.net = net
        self.info = info
        self.class_count = info.num_classes  # classes the labels y may name
        if info.has_null_label:
            self.num_classes = info.num_classes  # label num_classes is the null label

    @classmethod
    def load(cls, info: Pretrained) -> DiffusersModel:
        import diffusers

        sub = "unet" if info.model_class == "UNet2DModel" else "transformer"
        net = getattr(diffusers, info.model_class).from_pretrained(str(info.folder), subfolder=sub)
        return cls(net, info)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.info.model_class == "UNet2DModel":
            return self.net(x, t, class_labels=y).sample
        return self.net(x, timestep=t, class_labels=y).sample


def _scheduler_betas(info: Pretrained) -> torch.Tensor:
    """The training betas exactly as diffusers computes them from the scheduler config."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    sched = DDPMScheduler(**{k: info.scheduler[k] for k in keys if info.scheduler.get(k) is not None})
    return sched.betas.double()


def _resolve_folder(source: str, where: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise BenchError(f"{where}: no checkpoint folder at {source!r}; give a diffusers pipeline folder "
                         "(model_index.json, unet/ or transformer/, scheduler/), a hub id, or python:module:function")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or _offline()
    if offline:
        raise BenchError(f"{where}: {source!r} is a hub id and this machine is offline; on a machine online run "
                         f"`hf download {source} --local-dir DIR` (huggingface_hub's CLI), copy DIR here and set "
                         "model.pretrained: DIR (with HF_HUB_OFFLINE=1 the hub is never asked)")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source))


def _offline() -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return False
    except OSError:
        return True


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{where}: {str(path)!r} is missing; a diffusers pipeline folder has model_index.json, "
                         "<model>/config.json and scheduler/scheduler_config.json") from None
    except json.JSONDecodeError as e:
        raise BenchError(f"{where}: {str(path)!r} is not valid JSON ({e})") from None


def _import_python(source: str) -> Any:
    target = source[len("python:"):]
    module, _, name = target.partition(":")
    if not module or not name:
        raise BenchError(f"model.pretrained: write python:package.module:function, got {source!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise BenchError(f"model.pretrained: cannot import {target!r} ({type(e).__name__}: {e})") from None


def _call_python(source: str) -> tuple[Any, Any]:
    out = _import_python(source)()
    if not (isinstance(out, tuple) and len(out) == 2 and callable(out[0])):
        raise BenchError(f"model.pretrained: {source[7:]}() must return (model, Diffusion), got {type(out).__name__}")
    return out


def _inspect_python(source: str, where: str) -> Pretrained:
    """A user's function: called once to read what it returns (its file's hash is the identity)."""
    import inspect as _inspect

    fn = _import_python(source)
    model, diffusion = _call_python(source)
    size = getattr(model, "image_size", None) or getattr(fn, "image_size", None)
    channels = getattr(model, "in_channels", None) or 3
    n = getattr(model, "num_classes", None)
    sched = {"num_train_timesteps": diffusion.timesteps, "prediction_type": {"eps": "epsilon", "v": "v_prediction",
             "x0": "sample"}.get(diffusion.objective_name, "epsilon"), "variance_type": diffusion.variance_name}
    info = Pretrained(source, None, type(model).__name__, "pixel", int(size or 0), int(channels), n, n is not None,
                      sched)
    code = Path(_inspect.getfile(fn))
    h = hashlib.sha256(file_sha256(code).encode())
    if isinstance(model, nn.Module):
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode() + v.detach().cpu().numpy().tobytes())
    info.sha256 = h.hexdigest()
    return info
