"""What a search optimizes: the ``objectives:`` and the ``budget:`` of a study's ``search:``.

Each names an output the base run measures (``fid``, ``is_mean``, ``seconds_per_image``); an
objective's direction defaults to the output's own (``bench.metrics.higher_is_better``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.core.config import RunConfig
from bench.core.errors import BenchError
from bench.core.registry import did_you_mean


@dataclass(frozen=True)
class Objective:
    metric: str  # an MLflow metric name the evaluation produces (fid, is_mean, ...)
    direction: str  # minimize | maximize


def _produced(base: RunConfig) -> tuple[set[str], dict[str, str]]:
    from bench.study.checks import produced_outputs

    return produced_outputs([base])


def _check_metric(metric: Any, base: RunConfig, where: str) -> str:
    produced, maker = _produced(base)
    produced -= {"train_loss", "train_seconds"}  # not per trial: one number for the checkpoint
    if isinstance(metric, str) and metric in produced:
        return metric
    if isinstance(metric, str) and metric in maker:
        raise BenchError(f"{where}: {metric!r} is not measured by the base run; add {maker[metric]!r} to "
                         f"base.eval.metrics (measured: {', '.join(sorted(produced))})")
    raise BenchError(f"{where}: unknown metric {metric!r}.{did_you_mean(str(metric), sorted(produced))} "
                     f"Measured: {', '.join(sorted(produced))}.")


def default_direction(metric: str) -> str:
    """``minimize`` for FID, KID, NLL and times; ``maximize`` for IS, precision, recall, accuracy."""
    from bench.metrics import higher_is_better

    return "maximize" if higher_is_better(metric) else "minimize"


def read_objectives(value: Any, base: RunConfig, where: str) -> tuple[Objective, ...]:
    """``objectives:``: one metric, or two for a Pareto front, each measured by the base run, with
    its direction (default: the metric's own)."""
    if value is None:
        value = [{"metric": "fid"}]
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list) or not 1 <= len(value) <= 2:
        raise BenchError(f"{where}: give one objective, or two for a Pareto front, e.g. "
                         "[{metric: fid, direction: minimize}, {metric: is_mean, direction: maximize}]")
    out: list[Objective] = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        item = {"metric": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or set(item) - {"metric", "direction"}:
            raise BenchError(f"{at}: must be a metric name or {{metric: NAME, direction: minimize|maximize}}, "
                             f"got {item!r}")
        metric = _check_metric(item.get("metric"), base, f"{at}.metric")
        direction = item.get("direction", default_direction(metric))
        if direction not in ("minimize", "maximize"):
            raise BenchError(f"{at}.direction: must be minimize or maximize, got {direction!r}")
        if any(o.metric == metric for o in out):
            raise BenchError(f"{at}.metric: {metric} is already an objective; list each metric once")
        out.append(Objective(metric, direction))
    return tuple(out)


def read_budget(value: Any, base: RunConfig, where: str) -> dict[str, float]:
    """``budget:``: metric -> the largest value a feasible trial may have."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise BenchError(f"{where}: must map a metric to its largest allowed value, e.g. "
                         f"budget: {{seconds_per_image: 0.05}}; got {value!r}")
    out = {}
    for metric, bound in value.items():
        _check_metric(metric, base, f"{where}.{metric}")
        if not isinstance(bound, (int, float)) or isinstance(bound, bool) or not bound > 0:
            raise BenchError(f"{where}.{metric}: the bound must be a positive number, got {bound!r}")
        out[str(metric)] = float(bound)
    return out



