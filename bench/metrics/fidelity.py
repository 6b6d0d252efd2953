"""FID, IS, KID and precision/recall of generated images, computed by torch-fidelity (or clean-fid).

Our code checks and prepares the images and calls the libraries; it does not reimplement any
metric. Reference features are cached on disk by torch-fidelity's own cache
(``cache_root=cache_dir()/reference``, ``input2_cache_name`` = dataset, split, size, extractor and
weights hash), so a study computes them once. Every result carries its protocol (sample counts,
extractor and weights hash, reference split, backend, resizing), as edm's ``fid.py`` does.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from bench.core.config import DataSpec
from bench.core.errors import BenchError
from bench.core.registry import Registry
from bench.metrics.extractors import Extractor, extractor_meta, get_extractor
from bench.metrics.features import (
    FeatureExtractors,
    features_path,
    frechet,
    reference_features_path,
)
from bench.metrics.images import check_compatible, check_images
from bench.metrics.registry import METRICS

FID_BACKENDS: Registry[str] = Registry("FID backend")
FID_BACKENDS.register("torch-fidelity", "torch_fidelity.calculate_metrics")
FID_BACKENDS.register("clean-fid", "bench.metrics.clean_fid.clean_fid")

FID_UNBIASED_SAMPLES = 10_000  # below this FID is visibly biased upwards by the sample count
KID_SUBSETS = 100
PRC_NEIGHBORHOOD = 3
FEATURE_MODELS = {"dinov2": "dinov2-vit-l-14", "clip": "clip-vit-l-14-336px"}  # EDM2's FD_DINOv2; CMMD's CLIP
RNG_SEED = 2020  # torch-fidelity's default seed (IS shuffling, KID subsets)
_TF_KEYS = {
    "frechet_inception_distance": "fid", "inception_score_mean": "is_mean", "inception_score_std": "is_std",
    "kernel_inception_distance_mean": "kid_mean", "kernel_inception_distance_std": "kid_std",
    "precision": "precision", "recall": "recall",
}


class FIDSampleSizeWarning(UserWarning):
    """FID from fewer than 10,000 samples: valid, but biased upwards; compare only equal counts."""


class MetricResult(dict):
    """``{"fid": 3.1, "is_mean": ..., ...}`` plus ``.protocol``: how the numbers were obtained."""

    def __init__(self, values: dict[str, float], protocol: dict[str, Any]) -> None:
        super().__init__(values)
        self.protocol = protocol

    def __repr__(self) -> str:
        return f"MetricResult({dict(self)!r}, protocol={self.protocol!r})"


def compute_metrics(
    images: torch.Tensor,
    reference: str | torch.Tensor = "digits:test",
    extractor: str = "domain:digits",
    metrics: Sequence[str] = ("fid", "is", "kid", "precision", "recall"),
    *,
    fid_backend: str = "torch-fidelity",
    inception_weights: str | None = None,
    kid_subset_size: int = 1000,
    image_size: int | None = None,
    device: str = "cpu",
    run_name: str | None = None,
    data: DataSpec | None = None,
    labels: torch.Tensor | None = None,
    isc_splits: int = 10,
    batch_size: int = 64,
    progress: bool = True,
    store_key: str | None = None,
    feature_weights: dict[str, str] | None = None,
    feature_models: dict[str, str] | None = None,
    bootstrap: int = 0,
) -> MetricResult:
    """Fidelity metrics of ``images`` (uint8 ``[N, C, H, W]``) against ``reference``.

    ``reference`` is a uint8 tensor or ``"dataset:split"``, loaded through :mod:`bench.data` at
    ``image_size`` (default: the generated images' size) using ``data`` (root, download, filter).
    ``extractor`` is ``"inception"`` or ``"domain:<dataset>"``. ``class_accuracy`` may be asked
    for with ``labels`` (the requested classes). Bad input raises one BenchError naming ``run_name``.
    ``progress`` shows a bar while a domain classifier is trained (once per dataset and size).
    ``store_key`` keeps (and reuses) the generated images' features in the feature store under that
    run key; ``feature_weights`` names local weight files of other extractors (``dinov2-vit-l-14``);
    ``feature_models`` the extractors of fd_dinov2 and cmmd (``{"dinov2": "dinov2-vit-s-14"}``);
    ``bootstrap: B`` adds 95 % bootstrap intervals (``fid_ci_lo`` / ``fid_ci_hi``, ...) over the
    generated samples to every metric that has one (:mod:`bench.metrics.uncertainty`).
    """
    who = f"run {run_name!r}" if run_name else "compute_metrics"
    images = check_images(images, who, "images")
    wanted = _check_metric_names(metrics, who, labels)
    FID_BACKENDS.check(fid_backend, f"{who}: fid_backend")
    size = int(image_size or images.shape[-1])
    if not extractor_meta(extractor, f"{who}: extractor").get("resizes", True) and images.shape[-2:] != (size, size):
        raise BenchError(f"{who}: generated images are {images.shape[-2]}x{images.shape[-1]}, but extractor "
                         f"{extractor!r} was asked for {size}x{size} (it is trained on {size}x{size} images and "
                         "does not resize); pass image_size equal to the images' size")
    weights = (feature_weights or {}).get(extractor) or inception_weights
    ext = get_extractor(extractor, image_size=size, weights=weights, data=data,
                        where=f"{who}: extractor", progress=progress)
    check_compatible(ext, images, who, "generated images")
    proto: dict[str, Any] = {
        "num_samples": len(images), "extractor": ext.name, "weights_sha256": ext.weights_sha256,
        "feature_dim": ext.feature_dim, "resize": ext.resize, "image_size": size,
        "backend": "torch-fidelity", "reference": None, "reference_count": None,
    }
    if ext.accuracy is not None:
        proto["extractor_test_accuracy"] = ext.accuracy
    ref = tag = None
    if any(METRICS.get(m).needs_reference for m in wanted):
        ref, proto["reference"], tag = _reference(reference, size, data, who)
        check_compatible(ext, ref, who, "reference images")
        proto["reference_count"] = len(ref)
        if ref.shape[-2:] != images.shape[-2:]:
            warnings.warn(f"{who}: generated {tuple(images.shape[-2:])} and reference {tuple(ref.shape[-2:])} "
                          f"images differ in size; {ext.name} resizes both to 299x299", stacklevel=2)
    _check_counts(wanted, ext, images, ref, who, proto, kid_subset_size, isc_splits)
    ctx = ImageContext(images, ref, tag, ext, labels, reference, data, device, batch_size, fid_backend, who, proto,
                       flags={METRICS.get(m).torch_fidelity_flag for m in wanted} - {None}, store_key=store_key,
                       weights=dict(feature_weights or {}), feature_models={**FEATURE_MODELS, **(feature_models or {})})
    values: dict[str, float] = {}
    for m in wanted:
        values.update(METRICS.get(m).compute(ctx))
    if bootstrap:
        from bench.metrics.uncertainty import bootstrap_intervals

        values.update(bootstrap_intervals(ctx, wanted, bootstrap))
        proto["bootstrap"] = f"{bootstrap} resamples of the generated images, 95 % basic interval"
    return MetricResult(values, proto)


@dataclass
class ImageContext:
    """What a generated-image metric's ``compute`` reads: the images, the reference, the extractor.

    :meth:`torch_fidelity` runs torch-fidelity's feature-to-metric functions once, for the flags of
    every requested metric that torch-fidelity computes, and hands each metric its values;
    :meth:`features` gives any metric the (generated, reference) features of any extractor.
    """

    images: torch.Tensor
    reference_images: torch.Tensor | None
    reference_tag: str | None
    extractor: Extractor
    labels: torch.Tensor | None
    reference: Any
    data: DataSpec | None
    device: str
    batch_size: int
    fid_backend: str
    who: str
    protocol: dict[str, Any]
    flags: set[str] = field(default_factory=set)
    store_key: str | None = None  # the run key under which generated features are stored
    weights: dict[str, str] = field(default_factory=dict)  # extractor name -> local weights file
    extractors: FeatureExtractors | None = None
    feature_models: dict[str, str] = field(default_factory=lambda: dict(FEATURE_MODELS))  # fd_dinov2's, cmmd's
    memo: dict[str, Any] = field(default_factory=dict)  # a metric's values shared by its outputs' entries
    _tf: dict[str, float] | None = None
    _feats: dict[tuple, Any] = field(default_factory=dict)
    _extractors: dict[str, Extractor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.extractors is None:
            self.extractors = FeatureExtractors(self.device, self.batch_size)

    def features(self, ext: Extractor | None = None, layers: Sequence[str] | None = None,
                 reference: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """(generated, reference) features of ``ext`` (default: the run's extractor) at ``layers``; the
        generated ones from the feature store when ``store_key`` has them (and kept there when not)."""
        ext = ext or self.extractor
        layers = sorted(set(layers or (ext.feature_layer,)))
        for (slug, have, ref_too), got in self._feats.items():  # one pass serves every subset of its layers
            if slug == ext.slug and set(layers) <= set(have) and (ref_too or not reference):
                return got
        with _on_device(self.device):
            gen = self.extractors.generated(ext, self.images, layers, self.store_key)
            ref = None
            if reference:
                if self.reference_images is None:
                    raise BenchError(f"{self.who}: {ext.name} features of the reference were asked for, but "
                                     "no metric that needs a reference was requested")
                ref = self.extractors.reference(ext, self.reference_images, self.reference_tag, layers)
        if self.store_key is not None:  # where paired tests and rescoring find them
            self.protocol[f"features.{ext.name}"] = str(features_path(self.store_key, ext.slug))
            if reference and self.reference_tag is not None:
                self.protocol[f"reference_features.{ext.name}"] = str(
                    reference_features_path(self.reference_tag, ext, ext.feature_layer))
        self._feats[(ext.slug, tuple(layers), reference)] = (gen, ref)
        return gen, ref

    def extractor_named(self, name: str) -> Extractor:
        """A second feature space (``dinov2-vit-l-14`` for fd_dinov2, a CLIP model for cmmd)."""
        if name == self.extractor.name:
            return self.extractor
        if name not in self._extractors:
            ext = get_extractor(name, image_size=int(self.images.shape[-1]), weights=self.weights.get(name),
                                data=self.data, where=f"{self.who}: extractor {name}", progress=False)
            self._extractors[name] = ext
            self.protocol[f"extractor_{name}_sha256"] = ext.weights_sha256
        return self._extractors[name]

    def torch_fidelity(self) -> dict[str, float]:
        """Our output keys -> values of torch-fidelity's feature-to-metric functions, for the flags of
        every requested metric that torch-fidelity computes, from one pass of the extractor (cached)."""
        if self._tf is None:
            flags = self.flags - ({"fid"} if self.fid_backend == "clean-fid" else set())
            self._tf = {}
            if flags:
                from torch_fidelity.metric_isc import isc_featuresdict_to_metric
                from torch_fidelity.metric_kid import kid_featuresdict_to_metric
                from torch_fidelity.metric_prc import prc_featuresdict_to_metric

                ext, p = self.extractor, self.protocol
                self.protocol["reference_cache"] = _cache_state(ext, self.reference_tag, flags)
                layers = {ext.logits_layer if f == "isc" else ext.feature_layer for f in flags}
                gen, ref = self.features(ext, sorted(layers), reference=flags != {"isc"})
                kw = {"isc_splits": p.get("isc_splits", 10), "rng_seed": RNG_SEED, "kid_subsets": KID_SUBSETS,
                      "kid_subset_size": p.get("kid_subset_size", 1000), "prc_neighborhood": PRC_NEIGHBORHOOD,
                      "save_cpu_ram": True, "verbose": False}
                out: dict[str, Any] = {}
                fl = ext.feature_layer
                if "isc" in flags:
                    out.update(isc_featuresdict_to_metric(gen, ext.logits_layer, **kw))
                if "fid" in flags:
                    out["frechet_inception_distance"] = frechet(gen[fl], ref[fl])
                if "kid" in flags:
                    out.update(kid_featuresdict_to_metric(gen, ref, fl, **kw))
                if "prc" in flags:
                    out.update(prc_featuresdict_to_metric(gen, ref, fl, **kw))
                self._tf = {_TF_KEYS[k]: float(v) for k, v in out.items() if k in _TF_KEYS}
        return self._tf

    def clean_fid(self) -> float:
        """FID through clean-fid's own pipeline (``fid_backend: clean-fid``, :mod:`bench.metrics.clean_fid`)."""
        from bench.metrics.clean_fid import clean_fid

        return clean_fid(self.extractor, self.images, self.reference_images, self.device, self.batch_size,
                         self.protocol)

    def dataset(self) -> str:
        """The dataset whose classifier judges class accuracy."""
        if self.extractor.name.startswith("domain:"):
            return self.extractor.name.split(":", 1)[1]
        return _dataset_of(self.reference, self.who)


def _check_metric_names(metrics: Sequence[str], who: str, labels: torch.Tensor | None) -> list[str]:
    if isinstance(metrics, str) or not metrics:
        raise BenchError(f"{who}: metrics must be a non-empty list of names, got {metrics!r}")
    out = []
    for m in metrics:
        metric = METRICS.get(METRICS.check(m, f"{who}: metrics"))
        if metric.needs_model:
            raise BenchError(f"{who}: metric {m!r} needs the model; compute it with bench.metrics.nll_bpd")
        if metric.needs_labels and labels is None:
            raise BenchError(f"{who}: metric {m!r} needs labels= (the classes the images were generated for)")
        if m not in out:
            out.append(m)
    return out


def _check_counts(wanted: list[str], ext: Extractor, images: torch.Tensor, ref: torch.Tensor | None, who: str,
                  proto: dict[str, Any], kid_subset_size: int, isc_splits: int) -> None:
    """Each metric's declared floor (``min_samples`` of the feature dimension) on each side it reads,
    its settings' checks, and the protocol tags it declares for these counts."""
    n, m = len(images), (len(ref) if ref is not None else None)
    settings = {"kid_subset_size": kid_subset_size, "isc_splits": isc_splits}
    for name in wanted:
        metric = METRICS.get(name)
        for s in metric.settings:
            if s.key in settings:
                s.check(settings[s.key], f"{who}: {s.key}")
        need = metric.min_samples(ext.feature_dim)
        why = f" ({metric.min_samples_why.format(dim=ext.feature_dim)})" if metric.min_samples_why else ""
        hint = f" or use {metric.few_samples_hint}, which works with few samples" if metric.few_samples_hint else ""
        sides = ((n, "generated images"), (m, "reference images")) if metric.needs_reference else ((n, "generated images"),)
        for count, what in sides:
            if count is not None and count < need:
                raise BenchError(f"{who}: {metric.outputs[0].label} with extractor {ext.name!r} needs at least "
                                 f"{need} {what}{why}, got {count}; raise eval.num_samples{hint}")
        if metric.protocol is not None:
            proto.update(metric.protocol(n, m, settings))


def _reference(reference: Any, size: int, data: DataSpec | None, who: str) -> tuple[torch.Tensor, str, str]:
    """(images, protocol label, cache tag) of a "dataset:split" string or a tensor."""
    if torch.is_tensor(reference):
        ref = check_images(reference, who, "reference images")
        digest = hashlib.sha256(ref.numpy().tobytes()).hexdigest()
        return ref, f"tensor:{digest[:16]}", f"tensor-{digest[:16]}"
    from bench.data import data_root, dataset_info, load_images

    if not isinstance(reference, str) or reference.count(":") != 1:
        raise BenchError(f"{who}: reference must be 'dataset:split' (e.g. 'digits:test') or a uint8 tensor, "
                         f"got {reference!r}")
    name, split = reference.split(":")
    info = dataset_info(name, f"{who}: reference")
    if split not in info.splits:
        raise BenchError(f"{who}: reference {reference!r}: dataset {name!r} has splits {', '.join(info.splits)}")
    spec = replace(data or DataSpec(), dataset=name, image_size=size)
    tag = f"{name}-{split}-{size}px-{spec.resize_filter}"
    if info.needs_root:  # other files, other features
        tag += "-" + hashlib.sha256(str(data_root(spec).resolve()).encode()).hexdigest()[:8]
    return check_images(load_images(spec, split).images, who, "reference images"), reference, tag


def _dataset_of(reference: Any, who: str) -> str:
    if isinstance(reference, str) and ":" in reference:
        return reference.split(":")[0]
    raise BenchError(f"{who}: class_accuracy needs a domain extractor ('domain:<dataset>') or a 'dataset:split' "
                     "reference to know which classifier to ask")


def _cache_state(ext: Extractor, tag: str | None, flags: set[str]) -> str | None:
    """"hit" when torch-fidelity will find the reference features (or FID statistics) cached."""
    if tag is None:
        return None
    layers = {ext.logits_layer if f == "isc" else ext.feature_layer for f in flags}
    return "hit" if all(reference_features_path(tag, ext, layer).exists() for layer in layers) else "miss"


def _on_device(device: str) -> Any:
    """torch-fidelity takes ``cuda=True`` and uses the current CUDA device: select it."""
    import contextlib

    dev = torch.device(device)
    if dev.type == "cpu":
        return contextlib.nullcontext()
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise BenchError(f"metrics run on 'cpu' or an available 'cuda' device, got {device!r}")
    return torch.cuda.device(dev)
