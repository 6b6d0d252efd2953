"""Study-time checks of the ``eval`` section: cheap (no data read, no network but one connect)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bench.core.config import DataSpec, EvalSpec
from bench.core.errors import BenchError
from bench.metrics.extractors import (
    can_download,
    extractor_meta,
    inception_help,
    inception_hub_path,
    local_inception_weights,
    resolve_name,
)
from bench.metrics.registry import METRICS


def validate_eval(eval_spec: EvalSpec, data_spec: DataSpec, where: str = "eval") -> None:
    """Raise one BenchError for an ``eval`` section that cannot work, before any work starts.

    Checks metric names, the extractor (name, dataset, channels, data available), the FID
    backend, sample counts against the feature dimension for FID (generated and reference), the
    reference split, the Inception weights offline, and ``nll_samples`` when ``nll`` is asked for.
    """
    from bench.data import check_available, dataset_info
    from bench.metrics.fidelity import FID_BACKENDS

    metrics = tuple(eval_spec.metrics or ())
    if not metrics:
        raise BenchError(f"{where}.metrics: name at least one metric ({', '.join(METRICS.names())})")
    for m in metrics:
        METRICS.check(m, f"{where}.metrics")
    FID_BACKENDS.check(eval_spec.fid_backend, f"{where}.fid_backend")
    base, arg = resolve_name(eval_spec.extractor, f"{where}.extractor")
    data = dataset_info(data_spec.dataset, "data.dataset")
    feature_dim = int(extractor_meta(eval_spec.extractor)["feature_dim"])
    fidelity = [m for m in metrics if METRICS.get(m).kind == "fidelity"]
    if fidelity and eval_spec.num_samples < 2:
        raise BenchError(f"{where}.num_samples: need at least 2 samples, got {eval_spec.num_samples}")
    for m in metrics:
        need = METRICS.get(m).min_samples(feature_dim)
        if m != "fid" and eval_spec.num_samples < need:
            raise BenchError(f"{where}.num_samples: {m} needs at least {need} samples, got {eval_spec.num_samples}")
    if any(METRICS.get(m).needs_reference for m in metrics):
        if eval_spec.reference_split not in data.splits:
            raise BenchError(f"{where}.reference_split: dataset {data.name!r} has no split "
                             f"{eval_spec.reference_split!r}; its splits are {', '.join(data.splits)}")
        check_available(data_spec, "data")
    if "fid" in metrics:
        need = METRICS.get("fid").min_samples(feature_dim)
        if eval_spec.num_samples < need:
            raise BenchError(
                f"{where}.num_samples: FID with extractor {eval_spec.extractor!r} needs at least {need} samples "
                f"(feature dimension {feature_dim} + 1), got {eval_spec.num_samples}; raise it, or use kid")
        ref_n = data.num_images(eval_spec.reference_split)
        if ref_n is not None and ref_n < need:
            raise BenchError(
                f"{where}.extractor: FID with {eval_spec.extractor!r} needs at least {need} reference images, but "
                f"{data.name}:{eval_spec.reference_split} has {ref_n}; use 'domain:{data.name}' "
                f"({extractor_meta('domain:' + data.name)['feature_dim']}-d features) or kid")
    if eval_spec.kid_subset_size < 2:
        raise BenchError(f"{where}.kid_subset_size must be at least 2, got {eval_spec.kid_subset_size}")
    for m in metrics:
        if METRICS.get(m).needs_model and eval_spec.nll_samples <= 0:
            raise BenchError(f"{where}.nll_samples: metric {m!r} needs test images, set it > 0 (e.g. 1000)")
        if METRICS.get(m).needs_labels and not data.has_labels:
            raise BenchError(f"{where}.metrics: {m} needs a labelled dataset; {data.name!r} has no labels")
    if base == "inception" and fidelity:
        _check_inception(eval_spec, where)
        if "fid" in metrics and eval_spec.fid_backend == "clean-fid":
            from bench.metrics.clean_fid import check_inception

            check_inception(f"{where}.fid_backend")
    if arg is not None:
        _check_domain(arg, data_spec, where)
    _check_feature_spaces(eval_spec, metrics, base, where)
    if "class_accuracy" in metrics and arg is None:
        _check_domain(data_spec.dataset, data_spec, where)


def _check_inception(eval_spec: EvalSpec, where: str) -> None:
    if local_inception_weights(eval_spec.inception_weights, f"{where}.inception_weights") is not None:
        return
    if not can_download():
        raise BenchError(
            f"{where}.extractor: 'inception' needs torch-fidelity's Inception-v3 weights and this machine is "
            f"offline (no {where}.inception_weights, no $BENCH_INCEPTION_WEIGHTS, nothing at "
            f"{inception_hub_path()}). " + inception_help()
        )


def _check_domain(dataset: str, data_spec: DataSpec, where: str) -> None:
    from bench.data import check_available, dataset_info

    info, data = dataset_info(dataset), dataset_info(data_spec.dataset)
    if not info.has_labels:
        raise BenchError(f"{where}.extractor: domain:{dataset} needs class labels; {dataset!r} has none")
    if data.channels != info.channels and not (data.channels == 1 and info.channels == 3):
        raise BenchError(f"{where}.extractor: domain:{dataset} takes {info.channels}-channel images but "
                         f"{data_spec.dataset!r} has {data.channels}; use domain:{data_spec.dataset} or inception")
    spec = data_spec if dataset == data_spec.dataset else DataSpec(dataset=dataset)
    size = data_spec.image_size or data.image_size
    check_available(replace(spec, image_size=size), f"{where}.extractor (training data of domain:{dataset})")


def _check_feature_spaces(eval_spec: EvalSpec, metrics: tuple[str, ...], base: str, where: str) -> None:
    """fd_dinov2's / cmmd's models, ``feature_weights`` and ``bootstrap``; offline weights found."""
    import bench.metrics.foundation as foundation

    if not isinstance(eval_spec.bootstrap, int) or isinstance(eval_spec.bootstrap, bool) or eval_spec.bootstrap < 0:
        raise BenchError(f"{where}.bootstrap: the number of resamples is an integer >= 0 (0: no intervals; "
                         f"200 is typical), got {eval_spec.bootstrap!r}")
    if 0 < eval_spec.bootstrap < 20:
        raise BenchError(f"{where}.bootstrap: {eval_spec.bootstrap} resamples cannot place the 2.5 % and 97.5 % "
                         "quantiles of a 95 % interval; use at least 20 (200 is typical)")
    for field, family, table in (("dinov2_model", "dinov2", foundation.DINOV2), ("clip_model", "clip", foundation.CLIP)):
        name = getattr(eval_spec, field)
        if name not in table:
            raise BenchError(f"{where}.{field}: {name!r} is not a {family} extractor; choose one of {', '.join(table)}")
    weights = eval_spec.feature_weights.as_dict()
    for name, path in weights.items():
        resolve_name(name, f"{where}.feature_weights")
        if name not in foundation.DINOV2 and name not in foundation.CLIP:
            raise BenchError(f"{where}.feature_weights: {name!r} takes no weights file here (inception: "
                             f"{where}.inception_weights; domain classifiers are trained by the bench)")
        if not isinstance(path, str) or not Path(path).expanduser().is_file():
            raise BenchError(f"{where}.feature_weights.{name}: weights file {path!r} does not exist. "
                             + foundation.weights_help(name))
    needed = {eval_spec.dinov2_model for m in metrics if METRICS.get(m).feature_space == "dinov2"}
    needed |= {eval_spec.clip_model for m in metrics if METRICS.get(m).feature_space == "clip"}
    if base in foundation.DINOV2 or base in foundation.CLIP:
        needed.add(base)
    for name in sorted(needed):
        if foundation.local_weights(name, weights.get(name), f"{where}.feature_weights.{name}") is None and \
                not can_download(foundation.official_url(name)):
            raise BenchError(f"{where}.feature_weights: {name} needs its weights and this machine is offline "
                             f"(nothing in {where}.feature_weights, ${foundation.WEIGHTS_DIR_ENV} or "
                             f"{foundation.hub_dir()}). " + foundation.weights_help(name))
