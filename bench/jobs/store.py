"""Where jobs keep their files: under ``cache_dir()``, by content key (never by folder name).

``vae/<vae_key>/vae.pt``, ``train/<train_key>/{checkpoint.pt,result.json}``, ``artifacts/<key>/``.
"""

from __future__ import annotations

from pathlib import Path

from bench.core.config import RunConfig
from bench.core.paths import cache_dir


def vae_path(vae_key: str) -> Path:
    return cache_dir() / "vae" / vae_key / "vae.pt"


def train_dir(train_key: str) -> Path:
    return cache_dir() / "train" / train_key


def checkpoint_path(train_key: str) -> Path:
    return train_dir(train_key) / "checkpoint.pt"


def artifact_dir(key: str) -> Path:
    d = cache_dir() / "artifacts" / key
    d.mkdir(parents=True, exist_ok=True)
    return d


def is_done_on_disk(kind: str, cfg: RunConfig) -> bool:
    """A finished VAE / TRAIN job must also have left a file that loads (a wiped cache, a deleted
    or corrupt checkpoint means redo: the job then resumes from its last good checkpoint or
    starts over, see ``bench.training.train_model``)."""
    if kind == "vae":
        return _loads(vae_path(cfg.vae_key())) is not None
    if kind == "train":
        blob = _loads(checkpoint_path(cfg.train_key()))
        finished = blob is not None and blob.get("train_key") == cfg.train_key() and \
            int(blob.get("step", -1)) >= cfg.train.steps
        return finished and (train_dir(cfg.train_key()) / "result.json").exists()
    return True


def _loads(path: Path) -> dict | None:
    """The file's dict if torch can open it (memory-mapped: the header is read, not the weights)."""
    if not path.is_file():
        return None
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated, garbled, not a torch file
        return None
    return blob if isinstance(blob, dict) else None
