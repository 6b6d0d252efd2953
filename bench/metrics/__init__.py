"""Metrics: feature extractors, FID / IS / KID / precision-recall through torch-fidelity (and
clean-fid), a reference-statistics cache, class accuracy and NLL in bits per dim.

>>> from bench.metrics import compute_metrics, EXTRACTORS
>>> m = compute_metrics(images, reference="digits:test", extractor="domain:digits",
...                     metrics=("fid", "is", "kid", "precision", "recall"))
>>> m["fid"], m.protocol["weights_sha256"]

torch-fidelity and clean-fid are imported only when a metric is computed.
"""

from bench.metrics.accuracy import class_accuracy
from bench.metrics.catalog import HIGHER_IS_BETTER, METRICS, MetricDef, higher_is_better, metric_outputs
from bench.metrics.extractors import (
    EXTRACTORS,
    FORWARD_IMAGES,
    INCEPTION_ENV,
    INCEPTION_URL,
    Extractor,
    get_extractor,
    resolve_name,
    save_random_inception_weights,
)
from bench.metrics.fidelity import (
    FID_BACKENDS,
    FIDSampleSizeWarning,
    MetricResult,
    compute_metrics,
    reference_cache_root,
)
from bench.metrics.nll import nll_bpd
from bench.metrics.validate import validate_eval

__all__ = [
    "EXTRACTORS",
    "FID_BACKENDS",
    "FORWARD_IMAGES",
    "HIGHER_IS_BETTER",
    "INCEPTION_ENV",
    "INCEPTION_URL",
    "METRICS",
    "Extractor",
    "FIDSampleSizeWarning",
    "MetricDef",
    "MetricResult",
    "class_accuracy",
    "compute_metrics",
    "get_extractor",
    "higher_is_better",
    "metric_outputs",
    "nll_bpd",
    "reference_cache_root",
    "resolve_name",
    "save_random_inception_weights",
    "validate_eval",
]
