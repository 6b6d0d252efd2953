"""Study-time checks of the ``eval`` section: cheap (no data read, no network but one connect)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

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
from bench.metrics.registry import METRICS, MetricDef


def validate_eval(eval_spec: EvalSpec, data_spec: DataSpec, where: str = "eval") -> None:
    """Raise one BenchError for an ``eval`` section that cannot work, before any work starts.

    Checks metric names, every metric's settings (``fid_backend``, ``kid_subset_size``), the
    extractor (name, dataset, channels, data available), sample counts against each metric's
    declared ``min_samples`` of the feature dimension (generated, and reference for metrics that
    read one), the reference split, the Inception weights offline, what metrics need (test images,
    labels, a domain classifier, feature spaces), then each requested metric's own ``check``.
    """
    from bench.data import check_available, dataset_info

    metrics = tuple(eval_spec.metrics or ())
    if not metrics:
        raise BenchError(f"{where}.metrics: name at least one metric ({', '.join(METRICS.names())})")
    defs = [METRICS.get(METRICS.check(m, f"{where}.metrics")) for m in metrics]
    for _, metric in METRICS.items():  # settings are fields of the section: checked requested or not
        for s in metric.settings:
            s.check(getattr(eval_spec, s.key), f"{where}.{s.key}")
    base, arg = resolve_name(eval_spec.extractor, f"{where}.extractor")
    data = dataset_info(data_spec.dataset, "data.dataset")
    feature_dim = int(extractor_meta(eval_spec.extractor)["feature_dim"])
    fidelity = [m for m in defs if m.kind == "fidelity"]
    if fidelity and eval_spec.num_samples < 2:
        raise BenchError(f"{where}.num_samples: need at least 2 samples, got {eval_spec.num_samples}")
    if any(m.needs_reference for m in defs):
        if eval_spec.reference_split not in data.splits:
            raise BenchError(f"{where}.reference_split: dataset {data.name!r} has no split "
                             f"{eval_spec.reference_split!r}; its splits are {', '.join(data.splits)}")
        check_available(data_spec, "data")
    for metric in defs:
        _check_count(metric, eval_spec, data, feature_dim, where)
    for metric in defs:
        if metric.needs_model and eval_spec.nll_samples <= 0:
            raise BenchError(f"{where}.nll_samples: metric {metric.name!r} needs test images, set it > 0 (e.g. 1000)")
        if metric.needs_labels and not data.has_labels:
            raise BenchError(f"{where}.metrics: {metric.name} needs a labelled dataset; {data.name!r} has no labels")
    if base == "inception" and fidelity:
        _check_inception(eval_spec, where)
    for metric in defs:
        if metric.check is not None:
            metric.check(eval_spec, data_spec, where)
    if arg is not None:
        _check_domain(arg, data_spec, where)
    _check_feature_spaces(eval_spec, metrics, base, where)
    if any(m.needs_classifier for m in defs) and arg is None:
        _check_domain(data_spec.dataset, data_spec, where)


def _check_count(metric: MetricDef, eval_spec: EvalSpec, data: Any, feature_dim: int, where: str) -> None:
    """``metric``'s declared floor on the generated images and, when it reads a reference, on the
    reference split; a domain extractor is suggested when its smaller features would do."""
    need = metric.min_samples(feature_dim)
    label, n = metric.outputs[0].label, eval_spec.num_samples
    why = f" ({metric.min_samples_why.format(dim=feature_dim)})" if metric.min_samples_why else ""
    hint = f", or use {metric.few_samples_hint}" if metric.few_samples_hint else ""
    if n < need:
        raise BenchError(f"{where}.num_samples: {label} with extractor {eval_spec.extractor!r} needs at least "
                         f"{need} samples{why}, got {n}; raise it{hint}")
    ref_n = data.num_images(eval_spec.reference_split) if metric.needs_reference else None
    if ref_n is not None and ref_n < need:
        domain = f"domain:{data.name}"
        alt = metric.min_samples(int(extractor_meta(domain)["feature_dim"])) if data.has_labels else None
        use = [f"{domain!r} ({extractor_meta(domain)['feature_dim']}-d features)"] if alt is not None and alt <= ref_n \
            else []
        use += [metric.few_samples_hint] if metric.few_samples_hint else []
        raise BenchError(
            f"{where}.extractor: {label} with {eval_spec.extractor!r} needs at least {need} reference images, but "
            f"{data.name}:{eval_spec.reference_split} has {ref_n}" + (f"; use {' or '.join(use)}" if use else ""))


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
