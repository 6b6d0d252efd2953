"""The metric registry: each entry says how it is computed, what it outputs and what it needs.

``METRICS`` holds one :class:`MetricDef` per name a study may request (``eval.metrics``);
``OUTPUTS`` holds every number a run logs (``fid``, ``is_mean``, ``nfe``, ``sample_seconds``, ...)
with its label, display format and direction. Validation, the eval job, tables and plots read
these entries and nothing else, so adding a metric is one module in ``bench/metrics/defs/``
(lm-evaluation-harness' ``register_metric`` does the same). Torch-free: the report and the
study checks import it without the metric libraries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.core.registry import Registry


@dataclass(frozen=True)
class Output:
    """One logged number: MLflow name, table label, format, direction (None: neither way is better),
    ``spread``: the output holding its own spread (IS over splits, KID over subsets), and ``how``:
    how it is measured, where a caption must say so (a timing's clock)."""

    key: str
    label: str
    fmt: str = ".4g"
    higher_is_better: bool | None = None
    spread: str | None = None
    unit: str = ""
    how: str = ""


@dataclass(frozen=True)
class Setting:
    """An ``eval.<key>`` field a metric owns (``kid_subset_size``, ``fid_backend``): ``check(value,
    where)`` raises one BenchError for a value that cannot work. Study validation checks every
    registered metric's settings (they are fields of the section, requested or not);
    ``compute_metrics`` checks those of the metrics it computes."""

    key: str
    check: Callable[[Any, str], None]


@dataclass(frozen=True)
class MetricDef:
    """A requestable metric.

    ``compute(ctx) -> {output key: value}``: ``ctx`` is a :class:`bench.metrics.fidelity.ImageContext`
    (images, reference, extractor: what ``compute_metrics`` holds) or, for ``needs_model`` metrics,
    the eval job's model context (model, diffusion, test images). ``min_samples(feature_dim)``:
    the fewest generated (and, with ``needs_reference``, reference) images the metric is defined
    for; ``min_samples_why`` says why (``{dim}``: the feature dimension), ``few_samples_hint`` what
    else to use. ``settings``: the ``eval.*`` fields it owns, with their checks; ``check(eval_spec,
    data_spec, where)``: its own study-time check when requested (after the shared ones);
    ``protocol(n, m, settings)``: the protocol tags it adds for n generated and m reference images
    under ``settings`` (``{"kid_subset_size": 1000, "isc_splits": 10}``), warnings included.
    ``needs_classifier``: it asks the dataset's own domain classifier (trained by the bench).
    """

    name: str
    outputs: tuple[Output, ...]
    compute: Callable[[Any], dict[str, float]]
    higher_is_better: bool
    needs_reference: bool = False
    needs_labels: bool = False  # the classes the images were generated for (a class-conditional model)
    needs_model: bool = False  # computed from the model and test images, not from generated images
    needs_space: str | None = None  # "pixel" | "latent": only models in that space (None: any)
    torch_fidelity_flag: str | None = None  # calculate_metrics(<flag>=True), shared by one call
    min_samples: Callable[[int], int] = field(default=lambda dim: 1)
    min_samples_why: str = ""
    few_samples_hint: str = ""
    needs_classifier: bool = False
    settings: tuple[Setting, ...] = ()
    check: Callable[[Any, Any, str], None] | None = None
    protocol: Callable[[int, int | None, dict[str, Any]], dict[str, Any]] | None = None
    cite: str = ""
    headline: bool = False  # the number a default figure shows when a study has no tables (FID)
    feature_space: str | None = None  # "dinov2" | "clip": its own extractor (eval.dinov2_model / clip_model)
    # (gen features, ref features, ctx) -> {first output: value}: a metric of two feature sets, which
    # bootstrap intervals and paired tests recompute on resampled features (bench.metrics.uncertainty)
    on_features: Callable[[Any, Any, Any], dict[str, float]] | None = None
    # (gen, ref, ctx, idx [B, n]) -> [B]: the first output on B resampled sets at once (vectorised;
    # None: on_features once per resample)
    resampled: Callable[[Any, Any, Any, Any], Any] | None = None

    @property
    def kind(self) -> str:
        """``likelihood`` (needs the model), ``labels`` (needs labels) or ``fidelity``."""
        return "likelihood" if self.needs_model else "labels" if self.needs_labels else "fidelity"

    @property
    def value_key(self) -> str:
        """The output a table's ``values: <name>`` means: the first (``is`` -> ``is_mean``)."""
        return self.outputs[0].key

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(o.key for o in self.outputs)

    @property
    def interval_keys(self) -> tuple[str, ...]:
        """``(fid_ci_lo, fid_ci_hi)``: the bootstrap interval of its first output (``eval.bootstrap``)."""
        k = self.outputs[0].key
        return (f"{k}_ci_lo", f"{k}_ci_hi") if self.on_features is not None else ()


METRICS: Registry[MetricDef] = Registry("metric")
OUTPUTS: Registry[Output] = Registry("metric output")


def register_output(output: Output) -> Output:
    OUTPUTS.register(output.key, output, higher_is_better=output.higher_is_better)
    return output


def register_metric(metric: MetricDef) -> MetricDef:
    """Register ``metric`` and its outputs (their keys are the fixed MLflow metric names)."""
    METRICS.register(metric.name, metric, higher_is_better=metric.higher_is_better, outputs=metric.keys,
                     kind=metric.kind, needs_reference=metric.needs_reference)
    for o in metric.outputs:
        register_output(o)
    first = metric.outputs[0]
    for key, end in zip(metric.interval_keys, ("low", "high")):
        register_output(Output(key, f"{first.label} 95% CI {end}", first.fmt, None, unit=first.unit))
    return metric


def in_feature_space(name: str) -> Callable[[Any], dict[str, float]]:
    """The ``compute`` of metric ``name`` in its own feature space (``feature_space``): its
    ``on_features`` on the (generated, reference) features of that space's extractor, recorded in
    the protocol as ``<name>_extractor``."""

    def compute(ctx: Any) -> dict[str, float]:
        metric = METRICS.get(name)
        ext = ctx.extractor_named(ctx.feature_models[metric.feature_space])
        ctx.protocol[f"{name}_extractor"] = ext.name
        gen, ref = ctx.features(ext)
        return metric.on_features(gen[ext.feature_layer], ref[ext.feature_layer], ctx)

    return compute


def value_key(name: str) -> str:
    """The output a table's ``values: <name>`` shows: a metric's first output (``is`` -> ``is_mean``);
    output keys and unknown names are returned unchanged."""
    return METRICS.get(name).value_key if name in METRICS else name


def higher_is_better(key: str) -> bool | None:
    """True / False for an output key (``fid`` -> False, ``is_mean`` -> True); None when it has no
    direction (``is_std``, ``train_seconds``) or is unknown."""
    return OUTPUTS.get(key).higher_is_better if key in OUTPUTS else None


def metric_outputs(names: Iterable[str]) -> list[str]:
    """The output keys produced by requesting ``names`` (unknown names -> did-you-mean error)."""
    return [key for n in names for key in METRICS.get(METRICS.check(n, "eval.metrics")).keys]


def maker_of(key: str) -> str | None:
    """The metric whose request produces output ``key`` (None for outputs every run logs)."""
    return next((m for m in METRICS.names() if key in (*METRICS.get(m).keys, *METRICS.get(m).interval_keys)), None)


def always_outputs() -> tuple[str, ...]:
    """Outputs no metric makes: logged by every run (timings, NFE, the training loss)."""
    made = {k for m in METRICS.names() for k in (*METRICS.get(m).keys, *METRICS.get(m).interval_keys)}
    return tuple(k for k in OUTPUTS.names() if k not in made)
