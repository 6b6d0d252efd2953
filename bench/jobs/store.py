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
    """A finished VAE / TRAIN job must also have left its file (a wiped cache means redo)."""
    if kind == "vae":
        return vae_path(cfg.vae_key()).exists()
    if kind == "train":
        return (train_dir(cfg.train_key()) / "result.json").exists()
    return True
