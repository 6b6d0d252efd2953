"""Features of generated and reference images, and the feature store.

Every fidelity metric is computed from features, by torch-fidelity's own feature-to-metric
functions, so the features of a generated set can be kept: the **feature store** holds them under
``cache_dir()/features/<sample key>/<extractor slug>.pt`` (one file per run and extractor, every layer
asked for so far), and the run's uint8 samples beside them (``samples.pt``). The key is the run's
**sample key** (``RunConfig.sample_key``: the run without its scoring settings), so runs that differ
only in how they are scored share one sampling. A new metric, a new
reference or an FID-vs-N curve is then computed from the store without sampling
(``run_ablation.py rescore``); bootstrap intervals and paired tests read it too. Reference
features are cached by torch-fidelity's own cache (``input2_cache_name``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.core.paths import atomic_torch_save, build_lock, built, cache_dir

# Generated images whose features were read from the store instead of extracted, and extracted,
# in this process (tests and the rescore summary read them).
STORE_COUNTS = {"loaded": 0, "extracted": 0}


def reference_cache_root() -> Path:
    """Folder of cached reference features / statistics (torch-fidelity's cache files)."""
    return cache_dir() / "reference"


def reference_cache_name(tag: str, ext: Any) -> str:
    """torch-fidelity's ``input2_cache_name`` of a reference (dataset, split, size tag) and extractor."""
    return f"{tag}-{ext.slug}"


def reference_features_path(tag: str, ext: Any, layer: str) -> Path:
    """The file torch-fidelity's cache keeps one layer of a reference's features in."""
    return reference_cache_root() / f"{reference_cache_name(tag, ext)}-{ext.tf_name}-features-{layer}.pt"


class UInt8Images(torch.utils.data.Dataset):
    """A uint8 ``[N, C, H, W]`` tensor as the Dataset torch-fidelity reads: 3-channel uint8 items."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def store_dir(key: str) -> Path:
    return cache_dir() / "features" / key


def features_path(key: str, slug: str) -> Path:
    return store_dir(key) / f"{slug}.pt"


def samples_path(key: str) -> Path:
    return store_dir(key) / "samples.pt"


def save_samples(key: str, images: torch.Tensor, labels: torch.Tensor | None, seeds: list[int],
                 seconds: float, calls: dict[str, int], batches: list[tuple[int, float]] | None = None) -> Path:
    """Keep a run's uint8 samples, the classes and seeds they were drawn with, and their cost
    (seconds, network calls per image; ``batches``: (images, seconds) of each timed batch) for the
    runs that reuse them."""
    path = samples_path(key)
    blob = {"images": images.contiguous(), "labels": labels, "seeds": torch.tensor(seeds),
            "seconds": float(seconds), "calls": {k: int(v) for k, v in calls.items()}}
    if batches is not None:
        blob["batches"] = torch.tensor(batches, dtype=torch.float64).reshape(-1, 2)
    atomic_torch_save(blob, path)
    return path


def load_samples(key: str, n: int | None = None) -> dict[str, Any] | None:
    """The stored sample sequence of ``key`` (its first ``n`` images and labels: a run of n images),
    or None when nothing (or fewer than ``n``) is stored."""
    path = samples_path(key)
    blob = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    if blob is None or n is None:
        return blob
    if len(blob["images"]) < n:
        return None
    labels = blob["labels"][:n] if blob["labels"] is not None else None
    return {**blob, "images": blob["images"][:n], "labels": labels, "stored": len(blob["images"])}


def frechet(gen: torch.Tensor, ref: torch.Tensor) -> float:
    """torch-fidelity's Fréchet distance of two feature matrices (its Gaussian statistics)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    out = fid_statistics_to_metric(fid_features_to_statistics(gen), fid_features_to_statistics(ref), False)
    return float(out["frechet_inception_distance"])


def load_features(key: str, slug: str, layers: list[str] | None = None) -> dict[str, torch.Tensor] | None:
    """The stored features of run ``key`` by extractor ``slug`` (all of ``layers``), or None."""
    path = features_path(key, slug)
    if not path.is_file():
        return None
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if layers is not None and not set(layers) <= set(blob):
        return None
    return blob


def _store(key: str, slug: str, feats: dict[str, torch.Tensor]) -> None:
    """Merge ``feats`` into the stored ones, keeping for each layer the longer run of images (a
    shorter set is the first rows of a longer one: image i has the same seed in both)."""
    old = load_features(key, slug) or {}
    merged = {**old, **{la: f for la, f in feats.items() if la not in old or len(f) >= len(old[la])}}
    atomic_torch_save(merged, features_path(key, slug))


class FeatureExtractors:
    """torch-fidelity modules built once per (extractor, layers, device) for one metric computation."""

    def __init__(self, device: str, batch_size: int) -> None:
        self.device, self.batch_size = device, batch_size
        self._built: dict[tuple, Any] = {}

    def module(self, ext: Any, layers: list[str]) -> Any:
        from torch_fidelity.utils import create_feature_extractor

        k = (ext.tf_name, ext.weights_path, tuple(sorted(layers)))
        if k not in self._built:
            self._built[k] = create_feature_extractor(ext.tf_name, sorted(layers), cuda=self.cuda, verbose=False,
                                                      **ext.tf_kwargs())
        return self._built[k]

    @property
    def cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    def generated(self, ext: Any, images: torch.Tensor, layers: list[str],
                  store_key: str | None = None) -> dict[str, torch.Tensor]:
        """Features of generated images: from the store when it has them, else extracted (and stored)."""
        if store_key is not None:
            got = load_features(store_key, ext.slug, layers)
            if got is not None and all(len(got[la]) >= len(images) for la in layers):
                STORE_COUNTS["loaded"] += len(images)
                return {la: got[la][:len(images)] for la in layers}
        from torch_fidelity.utils import get_featuresdict_from_dataset

        feats = get_featuresdict_from_dataset(UInt8Images(images), self.module(ext, layers), self.batch_size,
                                              self.cuda, True, False)
        STORE_COUNTS["extracted"] += len(images)
        if store_key is not None:
            _store(store_key, ext.slug, feats)
        return feats

    def reference(self, ext: Any, images: torch.Tensor, tag: str, layers: list[str]) -> dict[str, torch.Tensor]:
        """Features of the reference images, through torch-fidelity's cache (built under a lock, so
        workers on a fresh cache extract them once; torch-fidelity writes its cache file atomically)."""
        from torch_fidelity.utils import extract_featuresdict_from_input_id_cached

        paths = [reference_features_path(tag, ext, la) for la in layers]
        with build_lock(reference_cache_root() / reference_cache_name(tag, ext)):
            if not all(p.exists() for p in paths):
                built("reference_features")
            return extract_featuresdict_from_input_id_cached(
                2, self.module(ext, layers), input2=UInt8Images(images),
                input2_cache_name=reference_cache_name(tag, ext), cache=True, cache_root=str(reference_cache_root()),
                batch_size=self.batch_size, cuda=self.cuda, save_cpu_ram=True, verbose=False)
