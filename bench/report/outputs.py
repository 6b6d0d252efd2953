"""How an output reads in a report: its label, its direction arrow, its format, its spread, all
as its registry entry (``bench.metrics.OUTPUTS``) declares; unknown keys read as they are."""

from __future__ import annotations

from bench.metrics import OUTPUTS, higher_is_better


def direction(metric: str) -> bool | None:
    """True if higher is better, False if lower is, None if neither (the output's registry entry)."""
    return higher_is_better(metric)


def output_name(key: str) -> str:
    """The display label of an output (``nll_bpd`` -> ``NLL (bits/dim)``); unknown keys as they are."""
    return OUTPUTS.get(key).label if key in OUTPUTS else key


def default_format(key: str, fallback: str = ".4g") -> str:
    """The output's display format (papers print FID with one decimal, IS as 9.46, KID as .4g)."""
    return OUTPUTS.get(key).fmt if key in OUTPUTS else fallback


def spread_of(key: str) -> str | None:
    """The output logged beside ``key`` with its own spread (``is_mean`` -> ``is_std``)."""
    return OUTPUTS.get(key).spread if key in OUTPUTS else None


def metric_label(metric: str) -> str:
    """``fid`` -> ``FID ↓``, ``is_mean`` -> ``IS ↑``."""
    arrow = {True: " ↑", False: " ↓", None: ""}[direction(metric)]
    return output_name(metric) + arrow


def format_value(x: float, spec: str) -> str:
    return format(x, spec)
