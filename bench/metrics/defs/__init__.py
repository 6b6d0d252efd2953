"""One module per metric; each registers a :class:`~bench.metrics.registry.MetricDef` on import.

Adding a metric is one file here (plus its test): ``register_metric(MetricDef(...))`` with its
compute function, outputs (label, format, direction) and needs. Every module of this package
is imported by ``bench.metrics``.
"""
