"""The metric names a study may request, what each one outputs, and which way is better.

Output keys are the fixed MLflow metric names of the tracking contract (``fid``, ``is_mean``,
``kid_mean``, ``nll_bpd``, ...); reports read :func:`higher_is_better` to mark the best cell.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.registry import Registry


@dataclass(frozen=True)
class MetricDef:
    """One requestable metric: its output keys and how it is computed."""

    name: str
    outputs: tuple[str, ...]
    higher_is_better: bool
    kind: str  # "fidelity" (compute_metrics), "labels" (class_accuracy), "likelihood" (nll_bpd)
    needs_reference: bool = False
    torch_fidelity_flag: str | None = None  # calculate_metrics(<flag>=True)
    cite: str = ""


METRICS: Registry[MetricDef] = Registry("metric")


def _add(m: MetricDef) -> None:
    METRICS.register(m.name, m, higher_is_better=m.higher_is_better, outputs=m.outputs, kind=m.kind,
                     needs_reference=m.needs_reference)


_add(MetricDef("fid", ("fid",), False, "fidelity", True, "fid",
               "Heusel et al. 2017, GANs trained by a two time-scale update rule (FID)"))
_add(MetricDef("is", ("is_mean", "is_std"), True, "fidelity", False, "isc",
               "Salimans et al. 2016, Improved techniques for training GANs (Inception Score)"))
_add(MetricDef("kid", ("kid_mean", "kid_std"), False, "fidelity", True, "kid",
               "Binkowski et al. 2018, Demystifying MMD GANs (KID)"))
_add(MetricDef("precision", ("precision",), True, "fidelity", True, "prc",
               "Kynkaanniemi et al. 2019, Improved precision and recall metric"))
_add(MetricDef("recall", ("recall",), True, "fidelity", True, "prc",
               "Kynkaanniemi et al. 2019, Improved precision and recall metric"))
_add(MetricDef("class_accuracy", ("class_accuracy",), True, "labels", False, None,
               "agreement of a domain classifier with the requested class labels"))
_add(MetricDef("nll", ("nll_bpd",), False, "likelihood", False, None,
               "Ho et al. 2020 / Nichol & Dhariwal 2021: variational bound in bits per dimension"))

# Direction of every output key that has one (spreads such as is_std have none).
HIGHER_IS_BETTER: dict[str, bool] = {
    key: m.higher_is_better for _, m in METRICS.items() for key in m.outputs if not key.endswith("_std")
}


def higher_is_better(key: str) -> bool | None:
    """True / False for an output key (``fid`` -> False, ``is_mean`` -> True); None when it has no
    direction (``is_std``, ``kid_std``) or is not a metric output (``train_seconds``)."""
    return HIGHER_IS_BETTER.get(key)


def metric_outputs(names: tuple[str, ...] | list[str]) -> list[str]:
    """The output keys produced by requesting ``names`` (unknown names -> did-you-mean error)."""
    return [key for n in names for key in METRICS.get(METRICS.check(n, "eval.metrics")).outputs]
