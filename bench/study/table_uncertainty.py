"""A table's uncertainty settings: ``interval`` (std | ci), ``aggregate`` (mean | min), ``significance``
(alpha of the paired test against the best cell) and ``resamples``, checked before any work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TABLE_INTERVALS = ("std", "ci")  # mean ± std over seeds | value [lo, hi]: the 95 % bootstrap interval
TABLE_AGGREGATES = ("mean", "min")  # over seeds; min: EDM's report (the best of several seed sets)


def table_uncertainty(spec: dict[str, Any], values: tuple[str, ...], at: str,
                      fail: Callable[[str, str], Exception]) -> dict[str, Any]:
    """``interval``, ``aggregate``, ``significance`` and ``resamples`` of a table, checked."""
    from bench.metrics import METRICS, maker_of

    out: dict[str, Any] = {}
    for key, choices in (("interval", TABLE_INTERVALS), ("aggregate", TABLE_AGGREGATES)):
        if key in spec:
            if spec[key] not in choices:
                raise fail(f"{at}.{key}", f"must be one of {', '.join(choices)}, got {spec[key]!r}")
            out[key] = spec[key]
    resampled = [m for m in values if (name := maker_of(m)) and METRICS.get(name).on_features is not None
                 and METRICS.get(name).outputs[0].key == m]
    if out.get("interval") == "ci" and not resampled:
        which = ", ".join(sorted(n for n in METRICS.names() if METRICS.get(n).on_features))
        raise fail(f"{at}.interval", f"ci needs a metric with a bootstrap interval ({which}) among the values; "
                                     "the runs log it with eval.bootstrap: 200")
    if spec.get("significance") is not None:
        alpha = spec["significance"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 0.5:
            raise fail(f"{at}.significance", f"is the test's level alpha, a number in (0, 0.5) such as "
                                                  f"0.05, got {alpha!r}")
        if not resampled:
            raise fail(f"{at}.significance", "needs a metric of two feature sets (fid, kid, fd_dinov2, "
                                                  "cmmd) among the values, tested on the stored features")
        out["significance"] = float(alpha)
    if "resamples" in spec:
        n = spec["resamples"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 20:
            raise fail(f"{at}.resamples", f"must be an integer >= 20 (200 is typical), got {n!r}")
        out["resamples"] = n
    return out
