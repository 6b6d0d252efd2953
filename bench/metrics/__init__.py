"""Metrics: feature extractors, FID / IS / KID / precision-recall through torch-fidelity (and
clean-fid), a reference-statistics cache, class accuracy and NLL in bits per dim.

>>> from bench.metrics import compute_metrics, EXTRACTORS
>>> m = compute_metrics(images, reference="digits:test", extractor="domain:digits",
...                     metrics=("fid", "is", "kid", "precision", "recall"))
>>> m["fid"], m.protocol["weights_sha256"]

torch-fidelity and clean-fid are imported only when a metric is computed.
"""

import importlib
import pkgutil

import bench.metrics.defs as defs
from bench.metrics.accuracy import class_accuracy
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
from bench.metrics.features import reference_cache_root
from bench.metrics.fidelity import (
    FID_BACKENDS,
    FIDSampleSizeWarning,
    MetricResult,
    compute_metrics,
)
from bench.metrics.nll import ModelContext, nll_bpd
from bench.metrics.registry import (
    METRICS,
    OUTPUTS,
    MetricDef,
    Output,
    always_outputs,
    higher_is_better,
    maker_of,
    metric_outputs,
    register_metric,
    register_output,
    value_key,
)
from bench.metrics.validate import validate_eval

for _m in pkgutil.iter_modules(defs.__path__):  # every metric definition registers itself
    importlib.import_module(f"{defs.__name__}.{_m.name}")

# Direction of every output key that has one (spreads such as is_std have none).
HIGHER_IS_BETTER: dict[str, bool] = {k: o.higher_is_better for k, o in OUTPUTS.items() if o.higher_is_better is not None}

__all__ = [
    "EXTRACTORS",
    "FID_BACKENDS",
    "FORWARD_IMAGES",
    "HIGHER_IS_BETTER",
    "INCEPTION_ENV",
    "INCEPTION_URL",
    "METRICS",
    "OUTPUTS",
    "Output",
    "ModelContext",
    "always_outputs",
    "maker_of",
    "register_metric",
    "register_output",
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
    "value_key",
]
