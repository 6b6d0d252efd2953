"""A small CNN classifier trained on the dataset itself, used as a domain feature extractor.

Inception-v3 features of 8x8 digits upsampled to 299x299 say little about digits; a classifier
trained on the domain (as in the MNIST FID of many diffusion papers) gives features (FID, KID,
precision/recall) and class probabilities (IS, class accuracy) that do. It is trained once per
(dataset, image size, architecture version, seed), seeded, and cached on disk with its test
accuracy; below :data:`MIN_ACCURACY` it refuses to serve.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.core.config import DataSpec
from bench.core.errors import BenchError
from bench.core.paths import atomic_torch_save, build_lock, built, cache_dir

ARCH_VERSION = 1  # bump when DomainNet or its training changes: old checkpoints are not reused
FEATURE_DIM = 64
MIN_ACCURACY = {"digits": 0.95, "mnist": 0.95}  # test accuracy required to serve as an extractor
TRAIN_IMAGE_PASSES = 15_000  # epochs = passes / train size, clamped to [1, MAX_EPOCHS]
MAX_EPOCHS = 20
BATCH_SIZE = 64


class DomainNet(nn.Module):
    """conv blocks (max-pooled down to ~8 px) -> 4x4 average pool -> 64-d features -> logits.

    The features are the pre-activation of the penultimate layer: a linear map of 1024 pooled
    activations, so no unit is dead and the feature covariance is full rank (FID needs that).
    They are standardised per dimension with the train split's mean and std (fixed buffers set
    after training), so KID's polynomial kernel ``(x.y / d + 1)^3`` sees unit-scale inputs.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int, feature_dim: int = FEATURE_DIM):
        super().__init__()
        pools = max(0, min(4, int(math.log2(max(image_size, 8) / 8))))
        layers: list[nn.Module] = [_block(channels, 32), _block(32, 64)]
        for _ in range(pools):
            layers += [nn.MaxPool2d(2), _block(64, 64)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.features = nn.Linear(64 * 16, feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))
        self.register_buffer("feat_mean", torch.zeros(feature_dim))
        self.register_buffer("feat_std", torch.ones(feature_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` float in [-1, 1] ``[B, C, H, W]`` -> (features ``[B, 64]``, logits ``[B, K]``)."""
        f = self.features(self.body(x))
        return (f - self.feat_mean) / self.feat_std, self.head(f)

    @torch.no_grad()
    def set_feature_scale(self, images: torch.Tensor, batch_size: int = 512) -> None:
        """Fix the standardisation from uint8 ``images`` (the train split), in eval mode."""
        self.eval()
        f = torch.cat([self.features(self.body(to_unit(images[s : s + batch_size])))
                       for s in range(0, len(images), batch_size)])
        self.feat_mean.copy_(f.mean(0))
        self.feat_std.copy_(f.std(0).clamp_min(1e-6))


def _block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1], the scaling the bench uses everywhere (x / 127.5 - 1)."""
    return images.float() / 127.5 - 1.0


def checkpoint_path(dataset: str, image_size: int, seed: int = 0, data: DataSpec | None = None) -> Path:
    """Where the classifier for (dataset, size, architecture version, seed) is cached."""
    from bench.data import data_root, dataset_info

    key = f"domain-{dataset}-{image_size}px-a{ARCH_VERSION}-s{seed}"
    if dataset_info(dataset).num_classes is None:  # the files define the classes: key by folder
        root = str(data_root(data or DataSpec(dataset=dataset)).resolve())
        key += "-" + hashlib.sha256(root.encode()).hexdigest()[:8]
    return cache_dir() / "extractors" / f"{key}.pt"


def get_classifier(
    dataset: str, image_size: int, seed: int = 0, data: DataSpec | None = None, *, check: bool = True,
    progress: bool = True,
) -> Path:
    """The path of a trained classifier checkpoint, training it first when not cached.

    With ``check`` a classifier below :data:`MIN_ACCURACY` raises BenchError.
    """
    path = checkpoint_path(dataset, image_size, seed, data)
    if not path.exists():
        with build_lock(path):  # concurrent workers on a fresh cache train it once
            if not path.exists():
                ckpt = train_classifier(dataset, image_size, seed, data, progress=progress)
                atomic_torch_save(ckpt, path)
                built("domain_classifier")
    if check:
        ckpt = load_checkpoint(path)
        need = MIN_ACCURACY.get(dataset)
        if need is not None and ckpt["test_accuracy"] < need:
            raise BenchError(
                f"the domain classifier for {dataset} at {image_size}px reached "
                f"{ckpt['test_accuracy']:.1%} test accuracy, below the {need:.0%} needed to serve as a "
                f"feature extractor. Delete {path} to retrain (or change the seed), or use extractor "
                "'inception'."
            )
    return path


_LOADED: dict[tuple[str, int, int], dict[str, Any]] = {}


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a classifier checkpoint (memoised per file version)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _LOADED:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("arch_version") != ARCH_VERSION:
            raise BenchError(f"{path} is a domain classifier of another architecture version; delete it")
        _LOADED[key] = ckpt
    return _LOADED[key]


def build_net(ckpt: dict[str, Any]) -> DomainNet:
    """The network of a checkpoint, in eval mode with its weights."""
    net = DomainNet(ckpt["channels"], ckpt["num_classes"], ckpt["image_size"], ckpt["feature_dim"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval().requires_grad_(False)


def train_classifier(
    dataset: str, image_size: int, seed: int = 0, data: DataSpec | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train a :class:`DomainNet` on the train split (Adam, cosine decay, seeded); return a checkpoint."""
    from tqdm.auto import tqdm

    from bench.data import dataset_info, load_images

    info = dataset_info(dataset)
    spec = replace(data or DataSpec(), dataset=dataset, image_size=image_size)
    train = load_images(spec, "train")
    test_split = next(s for s in info.splits if s != "train")
    test = load_images(spec, test_split)
    if train.labels is None or not train.num_classes:
        raise BenchError(f"extractor domain:{dataset}: dataset {dataset!r} has no labels to train on")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DomainNet(train.channels, train.num_classes, train.image_size)
    gen = torch.Generator().manual_seed(seed)
    n = len(train)
    epochs = max(1, min(MAX_EPOCHS, math.ceil(TRAIN_IMAGE_PASSES / n)))
    steps = epochs * math.ceil(n / BATCH_SIZE)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    x_all, y_all = train.images, train.labels
    net.train()
    # enable_grad: the first caller may be a no_grad metric (class_accuracy) on a fresh cache
    with torch.enable_grad(), _few_threads(train.image_size), tqdm(
        total=steps, desc=f"training domain:{dataset} classifier", disable=not progress
    ) as bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, BATCH_SIZE):
                idx = order[start : start + BATCH_SIZE]
                x = _shift(to_unit(x_all[idx]), gen)
                loss = nn.functional.cross_entropy(net(x)[1], y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
    net.set_feature_scale(x_all)
    acc = accuracy(net, test.images, test.labels)
    return {
        "arch_version": ARCH_VERSION, "state_dict": net.state_dict(), "dataset": dataset,
        "image_size": train.image_size, "channels": train.channels, "num_classes": train.num_classes,
        "feature_dim": FEATURE_DIM, "seed": seed, "epochs": epochs, "test_split": test_split,
        "test_accuracy": acc, "train_images": n,
    }


@contextlib.contextmanager
def _few_threads(image_size: int) -> Iterator[None]:
    """One thread for tiny images: the ops are too small to split, and on a shared machine extra
    threads only spin (10 ms vs 300 ms a step measured on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1 if image_size <= 16 else before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Augment by a random translation of up to ``max_shift`` px (one per batch, background-padded)."""
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    if dx == 0 and dy == 0:
        return x
    pad = nn.functional.pad(x, (max_shift,) * 4, value=-1.0)
    h, w = x.shape[-2:]
    return pad[..., max_shift + dy : max_shift + dy + h, max_shift + dx : max_shift + dx + w]


@torch.no_grad()
def accuracy(net: DomainNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of ``images`` (uint8) whose argmax class equals ``labels``."""
    net.eval()
    hits = 0
    for s in range(0, len(images), batch_size):
        logits = net(to_unit(images[s : s + batch_size]))[1]
        hits += int((logits.argmax(1) == labels[s : s + batch_size]).sum())
    return hits / max(1, len(images))
