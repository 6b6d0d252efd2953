"""Published numbers (``baselines/*.yaml``) to print beside ours, with the protocol they used.

One file per paper::

    paper: Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models (ICLR 2021)
    url: https://arxiv.org/abs/2010.02502
    baselines:
      ddim-cifar10:                       # the id a table's `baseline:` names (unique across files)
        table: Table 1 (CIFAR10 32x32)
        protocol: {dataset: cifar10, image_size: 32, samples: 50000, reference: cifar10:train,
                   extractor: inception-v3 (TF FID)}
        setting: {diffusion.timesteps: 1000}    # what the paper fixed (shown, never matched)
        decimals: 2                             # or {fid: 1, nll_bpd: 2}
        results:
          - {where: {sample.eta: 0.0, sample.steps: 10}, fid: 13.36}
          - {where: {...}, is_mean: 9.46, is_std: 0.11, nll_bpd: {value: 3.75, bound: upper}}

A result's ``where`` names config values (dotted keys); a table cell takes the result whose
``where`` agrees on the most of the table's row / column keys (keys the table does not show are
ignored). Metric names are the fixed MLflow names (``fid``, ``is_mean``, ``nll_bpd``, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.core.errors import BenchError

__all__ = ["Baseline", "BaselineResult", "PaperValue", "Protocol", "load_baselines", "DEFAULT_DIR"]

DEFAULT_DIR = "baselines"
PROTOCOL_FIELDS = ("dataset", "image_size", "samples", "reference", "extractor", "notes")
_BOUNDS = {"upper": "≤ ", "lower": "≥ ", None: ""}


@dataclass(frozen=True)
class Protocol:
    """How a number was measured: comparable only when these agree."""

    dataset: str
    image_size: int | None = None
    samples: int | None = None  # generated samples behind the number (None: not applicable / not stated)
    reference: str | None = None  # reference set of FID / KID / precision-recall
    extractor: str | None = None  # feature network
    notes: str = ""


@dataclass(frozen=True)
class PaperValue:
    """One published number: value, optional spread, and whether it is a bound (NLL <= 3.70)."""

    value: float
    std: float | None = None
    bound: str | None = None  # "upper" (the paper writes <=) | "lower" | None
    decimals: int = 2

    def text(self) -> str:
        d = self.decimals
        spread = f" ± {self.std:.{d}f}" if self.std is not None else ""
        return f"{_BOUNDS[self.bound]}{self.value:.{d}f}{spread}"


@dataclass(frozen=True)
class BaselineResult:
    """One row of a paper's table: the setting (``where``) and its numbers by metric name."""

    where: dict[str, Any]
    values: dict[str, PaperValue]


@dataclass(frozen=True)
class Baseline:
    """One published table (or the part of it for one dataset)."""

    id: str
    paper: str
    table: str
    protocol: Protocol
    results: tuple[BaselineResult, ...]
    url: str = ""
    setting: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def lookup(self, cell: dict[str, Any], metric: str) -> PaperValue | None:
        """The published ``metric`` for a table cell (axis key -> value), or None.

        A result matches when every one of its ``where`` keys that the cell shows has the cell's
        value; among matches, the one agreeing on the most keys wins (the first on a tie).
        """
        best, best_score = None, 0
        for r in self.results:
            if metric not in r.values:
                continue
            shared = [k for k in r.where if k in cell]
            if not shared or not all(values_equal(r.where[k], cell[k]) for k in shared):
                continue
            if len(shared) > best_score:
                best, best_score = r.values[metric], len(shared)
        return best

    def citation(self) -> str:
        return f"{self.paper}, {self.table}"


def values_equal(a: Any, b: Any) -> bool:
    """Config values from YAML, MLflow strings or dataclasses compare alike (10 == 10.0 == "10")."""
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
    return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)


def baselines_dir_for(study_path: str | Path | None) -> Path:
    """``./baselines`` when it exists (or the study has no file), else ``baselines/`` beside the
    study file's folder (``ablations/x.yaml`` -> ``baselines/``)."""
    here = Path(DEFAULT_DIR)
    if here.is_dir() or study_path is None:
        return here
    return Path(study_path).resolve().parent.parent / DEFAULT_DIR


def load_baselines(dir: str | Path = DEFAULT_DIR) -> dict[str, Baseline]:  # noqa: A002 (the documented name)
    """Every baseline in ``dir/*.yaml`` by id; a malformed file raises BenchError naming it."""
    root = Path(dir)
    if not root.is_dir():
        return {}
    out: dict[str, Baseline] = {}
    for path in sorted(root.glob("*.yaml")):
        for b in _read_file(path):
            if b.id in out:
                raise BenchError(
                    f"{path}: baselines.{b.id}: id already defined in {out[b.id].source}; ids must be unique"
                )
            out[b.id] = b
    return out


def _read_file(path: Path) -> list[Baseline]:
    try:
        raw = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except yaml.YAMLError as e:
        raise BenchError(f"{path}: not valid YAML: {e}") from None
    where = str(path)
    if not isinstance(raw, dict):
        raise BenchError(f"{where}: a baseline file is a mapping with paper, url and baselines; got {raw!r}")
    _only(raw, ("paper", "url", "baselines"), where)
    paper = _text(raw.get("paper"), f"{where}: paper", required=True)
    url = _text(raw.get("url"), f"{where}: url")
    tables = raw.get("baselines")
    if not isinstance(tables, dict) or not tables:
        raise BenchError(f"{where}: baselines: must map ids to tables (baselines: {{my-id: {{table: ..., ...}}}})")
    return [_read_table(str(bid), body, paper, url, f"{where}: baselines.{bid}", where)
            for bid, body in tables.items()]  # fmt: skip


def _read_table(bid: str, body: Any, paper: str, url: str, at: str, source: str) -> Baseline:
    if not isinstance(body, dict):
        raise BenchError(f"{at}: must be a mapping with table, protocol and results")
    _only(body, ("table", "protocol", "setting", "decimals", "results"), at)
    table = _text(body.get("table"), f"{at}.table", required=True)
    protocol = _read_protocol(body.get("protocol"), f"{at}.protocol")
    setting = body.get("setting") or {}
    if not isinstance(setting, dict):
        raise BenchError(f"{at}.setting: must map config keys to values, got {setting!r}")
    decimals = body.get("decimals", 2)
    results = body.get("results")
    if not isinstance(results, list) or not results:
        raise BenchError(f"{at}.results: must be a non-empty list of {{where: {{...}}, <metric>: value}}")
    parsed = tuple(_read_result(r, decimals, f"{at}.results[{i}]") for i, r in enumerate(results))
    return Baseline(bid, paper, table, protocol, parsed, url, dict(setting), source)


def _read_protocol(raw: Any, at: str) -> Protocol:
    if not isinstance(raw, dict):
        raise BenchError(f"{at}: must be a mapping of {', '.join(PROTOCOL_FIELDS)} (dataset required)")
    _only(raw, PROTOCOL_FIELDS, at)
    dataset = _text(raw.get("dataset"), f"{at}.dataset", required=True)
    ints = {}
    for k in ("image_size", "samples"):
        v = raw.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise BenchError(f"{at}.{k}: must be a positive integer or null, got {v!r}")
        ints[k] = v
    return Protocol(
        dataset=dataset, image_size=ints["image_size"], samples=ints["samples"],
        reference=_text(raw.get("reference"), f"{at}.reference") or None,
        extractor=_text(raw.get("extractor"), f"{at}.extractor") or None,
        notes=_text(raw.get("notes"), f"{at}.notes"),
    )  # fmt: skip


def _read_result(raw: Any, decimals: Any, at: str) -> BaselineResult:
    if not isinstance(raw, dict) or not isinstance(raw.get("where"), dict):
        raise BenchError(f"{at}: must be a mapping with `where: {{key: value}}` and metric values, got {raw!r}")
    values: dict[str, PaperValue] = {}
    for metric, v in raw.items():
        if metric == "where" or metric.endswith("_std") and f"{metric[:-4]}_mean" in raw:
            continue
        d = _decimals(decimals, metric, f"{at}.{metric}")
        std = raw.get(f"{metric[:-5]}_std") if metric.endswith("_mean") else None
        values[metric] = _read_value(v, std, d, f"{at}.{metric}")
    if not values:
        raise BenchError(f"{at}: no metric values; add e.g. `fid: 3.17` beside `where:`")
    return BaselineResult(dict(raw["where"]), values)


def _read_value(v: Any, std: Any, decimals: int, at: str) -> PaperValue:
    bound = None
    if isinstance(v, dict):
        _only(v, ("value", "std", "bound", "decimals"), at)
        bound = v.get("bound")
        if bound not in _BOUNDS:
            raise BenchError(f"{at}.bound: must be upper (the paper writes <=) or lower, got {bound!r}")
        std = v.get("std", std)
        decimals = _decimals(v.get("decimals", decimals), "", f"{at}.decimals")
        v = v.get("value")
    for name, x in (("value", v), ("std", std)):
        if x is not None and (not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x)):
            raise BenchError(f"{at}: {name} must be a finite number, got {x!r}")
    if v is None:
        raise BenchError(f"{at}: missing value")
    return PaperValue(float(v), None if std is None else float(std), bound, decimals)


def _decimals(decimals: Any, metric: str, at: str) -> int:
    if isinstance(decimals, dict):
        decimals = decimals.get(metric, 2)
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 6:
        raise BenchError(f"{at}: decimals must be an integer 0..6 (or a mapping metric -> decimals), got {decimals!r}")
    return decimals


def _only(raw: dict[str, Any], allowed: tuple[str, ...], at: str) -> None:
    for k in raw:
        if k not in allowed:
            raise BenchError(f"{at}: unknown key {k!r}; keys: {', '.join(allowed)}")


def _text(value: Any, at: str, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise BenchError(f"{at}: must be {'non-empty ' if required else ''}text, got {value!r}")
    return value
