"""The dataset registry, the cheap metadata look-up and the cached, resizing loader.

Every dataset yields 8-bit images (uint8 ``[N, C, H, W]``) and, where it has them, int64 labels.
A *source* (registered in :data:`DATASETS`) knows only how to find and read its files at their
native size; this module adds resizing with a named PIL filter and an in-process cache, since a
study loads the same split many times (training, reference statistics, class accuracy, ...).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bench.core.config import DataSpec
from bench.core.errors import BenchError
from bench.core.registry import Registry, did_you_mean

if TYPE_CHECKING:
    import torch

DEFAULT_ROOT = "~/.cache/bench/data"

# PIL filter names a study may give as ``data.resize_filter``.
RESIZE_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class Native:
    """What a source returns: images at their native size, before any resizing."""

    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray | None  # int64 [N]
    num_classes: int | None
    class_names: tuple[str, ...] = ()


class Source(Protocol):
    """How one dataset is found and read. Registered in :data:`DATASETS` with its metadata."""

    def missing(self, spec: DataSpec, where: str) -> str | None:
        """``None`` when the files are there, else the whole "not found" message (file checks only)."""

    def load(self, spec: DataSpec, split: str) -> Native:
        """Read one split at native size (``spec.image_size`` is given for sources without one)."""


DATASETS: Registry[Source] = Registry("dataset")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a registered dataset, known without touching its files."""

    name: str
    num_classes: int | None  # None when it depends on the files (imagefolder)
    channels: int
    image_size: int | None  # native side length; None when the files decide (imagefolder)
    splits: tuple[str, ...]
    has_labels: bool
    needs_root: bool = False  # must be given a folder (or downloaded) before use
    split_sizes: tuple[tuple[str, int], ...] = ()  # known image counts per split (empty: the files decide)

    def num_images(self, split: str) -> int | None:
        """Images in ``split`` when known without reading the files, else None."""
        return dict(self.split_sizes).get(split)


@dataclass
class ImageSet:
    """One split of a dataset, as the bench uses it: uint8 images (shared; do not modify in place)."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor | None  # int64 [N]
    num_classes: int | None
    channels: int
    image_size: int
    name: str
    split: str
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])


def dataset_info(name: str, where: str = "data.dataset") -> DatasetInfo:
    """Metadata of dataset ``name`` without loading anything (unknown name -> did-you-mean error)."""
    DATASETS.check(name, where)
    m = DATASETS.meta(name)
    return DatasetInfo(
        name=name,
        num_classes=m.get("num_classes"),
        channels=int(m["channels"]),
        image_size=m.get("image_size"),
        splits=tuple(m["splits"]),
        has_labels=bool(m.get("has_labels", True)),
        needs_root=bool(m.get("needs_root", False)),
        split_sizes=tuple(sorted(dict(m.get("split_sizes", {})).items())),
    )


def data_root(spec: DataSpec) -> Path:
    """The folder a file-backed dataset lives in: ``spec.root`` or ``~/.cache/bench/data``."""
    return Path(spec.root if spec.root is not None else DEFAULT_ROOT).expanduser()


def check_available(spec: DataSpec, where: str = "data") -> None:
    """Raise one BenchError if the data of ``spec`` cannot be had; file-existence checks only.

    Also checks the dataset name, the resize filter and that a size is given where the dataset
    has no native one, so a study can call this for every grid point before any work starts.
    """
    info = dataset_info(spec.dataset, f"{where}.dataset")
    pil_filter(spec.resize_filter, where)
    if info.image_size is None and spec.image_size is None:
        raise BenchError(
            f"{where}.image_size: dataset {spec.dataset!r} has no native size; set {where}.image_size "
            "(e.g. 64) so every image is resized (shorter side) and centre-cropped to it."
        )
    if spec.image_size is not None and (not isinstance(spec.image_size, int) or spec.image_size < 1):
        raise BenchError(f"{where}.image_size must be a positive integer, got {spec.image_size!r}")
    problem = DATASETS.get(spec.dataset).missing(spec, where)
    if problem:
        raise BenchError(problem)


def load_images(spec: DataSpec, split: str = "train") -> ImageSet:
    """Load ``split`` of ``spec.dataset`` as uint8 ``[N, C, H, W]``, resized to ``spec.image_size``.

    Results are cached in-process (least recently used), keyed by everything that changes them.
    """
    info = dataset_info(spec.dataset)
    if split not in info.splits:
        raise BenchError(
            f"dataset {spec.dataset!r} has no split {split!r}; its splits are: {', '.join(info.splits)}"
        )
    check_available(spec)
    root = str(data_root(spec).resolve()) if info.needs_root else None
    return _load_cached(spec.dataset, split, spec.image_size, spec.resize_filter, root, spec.download)


@functools.lru_cache(maxsize=8)
def _load_cached(
    name: str, split: str, size: int | None, resize_filter: str, root: str | None, download: bool
) -> ImageSet:
    import torch

    # Sources without a native size (imagefolder) read straight to ``size``; the others are read
    # once at native size and resized here, so several sizes share one read.
    sized_source = dataset_info(name).image_size is None
    native = _load_native(
        name, split, size if sized_source else None, resize_filter if sized_source else "", root, download
    )
    images = native.images
    if size is not None and images.shape[-1] != size:
        images = resize_images(images, size, resize_filter)
    labels = None if native.labels is None else torch.from_numpy(native.labels.astype(np.int64))
    return ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=labels,
        num_classes=native.num_classes,
        channels=int(images.shape[1]),
        image_size=int(images.shape[-1]),
        name=name,
        split=split,
        class_names=native.class_names,
    )


@functools.lru_cache(maxsize=4)
def _load_native(
    name: str, split: str, size: int | None, resize_filter: str, root: str | None, download: bool
) -> Native:
    spec = DataSpec(
        dataset=name, image_size=size, resize_filter=resize_filter or "bilinear", root=root, download=download
    )
    native = DATASETS.get(name).load(spec, split)
    if native.images.dtype != np.uint8 or native.images.ndim != 4:
        raise TypeError(f"source {name!r} must return uint8 [N, C, H, W], got {native.images.dtype}")
    return native


def clear_cache() -> None:
    """Forget every split loaded in this process (tests, or after files changed on disk)."""
    _load_cached.cache_clear()
    _load_native.cache_clear()


def pil_filter(name: str, where: str = "data") -> int:
    """The PIL resampling constant for a filter name in :data:`RESIZE_FILTERS` (else BenchError)."""
    from PIL import Image

    filters = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }
    if name not in filters:
        hint = did_you_mean(name, filters, n=1)
        raise BenchError(f"unknown {where}.resize_filter {name!r}.{hint} Available: {', '.join(filters)}.")
    return filters[name]


def resize_images(images: np.ndarray, size: int, resize_filter: str = "bilinear") -> np.ndarray:
    """Resize uint8 ``[N, C, H, W]`` to ``size x size`` with a PIL filter, one image at a time.

    Non-square images are first scaled so the shorter side is ``size``, then centre-cropped.
    """
    from PIL import Image

    resample = pil_filter(resize_filter)
    n, c, h, w = images.shape
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for i in range(n):
        arr = images[i, 0] if c == 1 else images[i].transpose(1, 2, 0)
        out[i] = pil_to_square(Image.fromarray(arr), size, resample, c)
    return out


def pil_to_square(img: Any, size: int, resample: int, channels: int) -> np.ndarray:
    """A PIL image -> uint8 ``[C, size, size]``: shorter side to ``size``, then centre crop."""
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), resample=resample)
        left, top = (nw - size) // 2, (nh - size) // 2
        if (nw, nh) != (size, size):
            img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)
