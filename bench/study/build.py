"""Study files -> a validated list of RunConfigs, before any work starts.

A study file (``ablations/<name>.yaml``, see shared/DESIGN.md "Study files") has::

    name: ddim-steps-eta          # MLflow experiment name (required)
    question: ...                 # what the study answers
    extends: parent.yaml          # optional; path relative to this file
    base: {sample: {steps: 50}}   # a partial RunConfig; omitted keys take the dataclass defaults
    grid: {sample.eta: [0.0, 1.0]}             # cartesian product over dotted keys
    zip: {sample.sampler: [ddpm, ddim], ...}   # keys that vary together (same lengths)
    exclude: [{sample.sampler: ddpm, sample.eta: 0.0}]   # points matching all keys are skipped
    seeds: [0, 1, 2]              # replicates -> RunConfig.seed (default [0])
    tables: [...]  plots: [...]  search: {...}   # kept for the report and the search

``extends``: the child's ``base`` and ``search`` are deep-merged over the parent's, ``grid`` and
``zip`` per axis (an axis set to null removes the parent's), other keys replace the parent's.
A latent run needs a ``vae:`` section (``vae: {}`` for the defaults); pixel runs get ``vae=None``
so their keys do not depend on unused VAE settings. Every problem is one :class:`StudyError`
naming the file, the key (``grid.sample.eta[2]``) and what to do. Checks that involve several
sections run once per distinct combination of section values, so large grids stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench.study.checks as checks
from bench.core.bulk import no_gc
from bench.core.config import SECTIONS, RunConfig, coerce_value, resolve_key
from bench.core.errors import BenchError
from bench.core.registry import did_you_mean
from bench.study.checks import StudyError, load_yaml
from bench.study.expand import Expander
from bench.study.load import TOP_KEYS, read_study_file
from bench.study.report_specs import validate_report_specs

__all__ = ["Study", "StudyError", "load_study", "build_study", "read_study_file", "TOP_KEYS"]



@dataclass
class Study:
    """A loaded study: every grid point x seed as a RunConfig, in a stable order."""

    name: str
    question: str
    path: Path | None
    configs: list[RunConfig]
    axes: tuple[str, ...]  # dotted keys of grid and zip (file order), then "seed" with > 1 seed
    tables: list[dict[str, Any]] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)
    search: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # the merged study file (after extends)

    def __len__(self) -> int:
        return len(self.configs)

    def point(self, cfg: RunConfig) -> dict[str, Any]:
        """The axis values of ``cfg`` (``{"sample.eta": 0.5, "seed": 1}``), e.g. for a table cell."""
        return {a: cfg.value(a) for a in self.axes}

    def plan(self) -> Any:
        """The job DAG of this study (:func:`bench.plan.plan`)."""
        from bench.plan import plan

        return plan(self.configs, self.axes)


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> Study:
    """Read, merge (``extends``), validate and expand a study file. ``overrides`` maps dotted
    config keys to values set in ``base`` (``{"eval.num_samples": 200}``); strings are parsed as
    YAML scalars, as given on a command line."""
    path = Path(path)
    return build_study(read_study_file(path), source=str(path), overrides=overrides, path=path)


def build_study(
    raw: dict[str, Any],
    source: str = "<study>",
    overrides: dict[str, Any] | None = None,
    path: Path | None = None,
) -> Study:
    """Validate and expand an already-read study mapping; errors are prefixed with ``source``."""
    try:
        return _Builder(raw, overrides or {}).build(path)
    except StudyError:
        raise
    except BenchError as e:
        raise StudyError(f"{source}: {e}") from None


def _check_report_specs(raw: dict[str, Any], axes: tuple[str, ...], configs: list[RunConfig],
                        path: Path | None) -> None:
    """Tables and plots may name only axes that vary and metrics the study measures."""
    from bench.study.baselines import baselines_dir_for, load_baselines

    produced, _ = checks.produced_outputs(configs)
    known = set(load_baselines(baselines_dir_for(path)))
    tables, plots = validate_report_specs(raw.get("tables"), raw.get("plots"), set(axes), produced, where="",
                                          baselines=known)
    for kind, specs in (("tables", tables), ("plots", plots)):
        for i, spec in enumerate(specs):
            _check_where_selects(spec.where, configs, f"{kind}[{i}].where")


def _check_where_selects(where: dict[str, tuple[Any, ...]], configs: list[RunConfig], at: str) -> None:
    """A ``where:`` value must select runs of the grid (else the table is silently empty)."""
    from bench.study.baselines import values_equal

    for key, allowed in where.items():
        present: list[Any] = []
        for cfg in configs:
            v = cfg.value(key)
            if not any(values_equal(v, p) for p in present):
                present.append(v)
        for a in allowed:
            if not any(values_equal(a, p) for p in present):
                raise BenchError(f"{at}.{key}: {a!r} selects no run of the grid; {key} takes "
                                 f"{', '.join(repr(p) for p in present)}. Use one of those")
    if where and not any(all(any(values_equal(cfg.value(k), a) for a in allowed) for k, allowed in where.items())
                         for cfg in configs):
        raise BenchError(f"{at}: {where} together select no run of the grid (an excluded combination); "
                         "change a value")


@dataclass
class _Axis:
    """One varying key: its values (type-checked) and where each came from."""

    kind: str  # grid | zip | seeds
    key: str
    section: str
    field: str
    values: tuple[Any, ...]
    origins: tuple[str, ...]


class _Builder:
    """One validation + expansion pass over a merged study mapping."""

    def __init__(self, raw: dict[str, Any], overrides: dict[str, Any]) -> None:
        self.raw = raw
        self.overrides = overrides
        self.base: dict[str, Any] = {}  # dotted -> value given in base / overrides
        self.base_origin: dict[str, str] = {}
        self.vae_mode = "absent"  # absent | null | set
        self.factors: list[list[_Axis]] = []  # grid axes one each, the zip group, then seeds
        self.axis_at: dict[str, tuple[int, _Axis]] = {}
        self.pretrained: Any = None  # the checkpoint's description, for model.pretrained studies

    def build(self, path: Path | None) -> Study:
        raw = self.raw
        for k in raw:
            if k not in TOP_KEYS:
                raise BenchError(
                    f"unknown top-level key {k!r}.{did_you_mean(k, TOP_KEYS)} Keys: {', '.join(TOP_KEYS)}."
                )
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise BenchError(
                "missing `name:` (the MLflow experiment name); add e.g. `name: my-study` at the top"
            )
        question = raw.get("question") or ""
        if not isinstance(question, str):
            raise BenchError(f"question: must be text, got {question!r}")
        self._read_base(checks.mapping(raw.get("base"), "base"))
        self._read_overrides()
        self._read_axes()
        self._read_pretrained()
        seeds = checks.read_seeds(raw.get("seeds", [0]))
        origins = tuple(f"seeds[{i}]" for i in range(len(seeds)))
        seed_axis = _Axis("seeds", "seed", "", "seed", tuple(seeds), origins)
        self.factors.append([seed_axis])
        self.axis_at["seed"] = (len(self.factors) - 1, seed_axis)
        self._check_values()
        exclude = self._read_exclude(raw.get("exclude") or [])
        with no_gc():  # hundreds of thousands of small acyclic objects (bench.core.bulk)
            configs = Expander(self).expand(exclude)
        if not configs:
            raise BenchError(
                "exclude: every point of the grid is excluded; nothing would run. Loosen `exclude:`"
            )
        axes = tuple(a.key for f in self.factors[:-1] for a in f) + (("seed",) if len(seeds) > 1 else ())
        tables, plots = list(raw.get("tables") or []), list(raw.get("plots") or [])
        _check_report_specs(raw, axes, configs, path)
        search = checks.mapping(raw.get("search"), "search")
        if search:  # checked against the base point, where the search runs (bench.study.search_spec)
            from bench.study.search_spec import parse_search

            parse_search(search, configs[0])
        return Study(name, question, path, configs, axes, tables, plots, search, dict(raw))

    # --- base and overrides ------------------------------------------------------------------
    def _read_base(self, base: dict[str, Any]) -> None:
        for sec, body in base.items():
            if isinstance(sec, str) and "." in sec:  # a dotted key directly under base
                self._set(sec, body, f"base.{sec}")
                continue
            if sec == "seed":
                raise BenchError(
                    "base.seed: the seed is set by `seeds: [0, 1, ...]` at the top level; move it there"
                )
            if sec not in SECTIONS:
                raise BenchError(
                    f"base.{sec}: unknown section.{did_you_mean(str(sec), list(SECTIONS))} "
                    f"Sections: {', '.join(SECTIONS)}."
                )
            if body is None and sec == "vae":
                self.vae_mode = "null"
                continue
            if sec == "vae":
                self.vae_mode = "set"
            for k, v in checks.mapping(body, f"base.{sec}").items():
                self._set(f"{sec}.{k}", v, f"base.{sec}.{k}")

    def _set(self, dotted: str, value: Any, origin: str) -> None:
        section, name = resolve_key(dotted, origin)
        self.base[dotted] = coerce_value(section, name, value, origin)
        self.base_origin[dotted] = origin
        if section == "vae" and self.vae_mode != "null":
            self.vae_mode = "set"

    def _read_pretrained(self) -> None:
        """A checkpoint not trained here: its folder sets the model and diffusion keys (and is
        checked to exist, be supported and agree with what the study says) before any work."""
        self.pretrained = None
        if "model.pretrained" in self.axis_at:
            raise BenchError(f"{self.axis_at['model.pretrained'][1].origins[0]}: model.pretrained cannot be an "
                             "axis; write one study per checkpoint (they share the rest through `extends:`)")
        source = self.base.get("model.pretrained")
        if source is None:
            return
        from bench.models import inspect_pretrained

        where = self.base_origin["model.pretrained"]
        info = self.pretrained = inspect_pretrained(source, where)
        d = info.diffusion_settings()
        implied = {"model.space": info.space, "model.class_cond": info.num_classes is not None,
                   "model.pretrained_sha256": info.sha256, **{f"diffusion.{k}": v for k, v in d.items()},
                   "diffusion.loss": "hybrid" if d["variance"] == "learned_range" else "simple"}
        for key, value in implied.items():
            if key in self.axis_at or (key in self.base and self.base[key] != value and key != "diffusion.schedule"):
                at = self.axis_at[key][1].origins[0] if key in self.axis_at else self.base_origin[key]
                raise BenchError(f"{at}: {key} is read from the checkpoint {source!r} ({value!r}); remove it from "
                                 "the study")
            self.base[key], self.base_origin[key] = value, f"{where} (checkpoint)"
        self.vae_mode = "absent"  # a latent checkpoint brings its own VAE

    def _read_overrides(self) -> None:
        for dotted, value in self.overrides.items():
            where = f"overrides.{dotted}"
            if dotted == "vae":
                if value is not None and not isinstance(value, dict):
                    raise BenchError(f"{where}: give null or a mapping of vae settings, got {value!r}")
                self.vae_mode = "set" if value is not None else "null"
                for k, v in (value or {}).items():
                    self._set(f"vae.{k}", v, f"overrides.vae.{k}")
                continue
            section, name = resolve_key(dotted, where)
            if isinstance(value, str) and checks.FIELD_BASE(section, name) is not str:
                value = load_yaml(value, where)
            self._set(dotted, value, where)
            if section == "vae" and self.vae_mode == "null":
                self.vae_mode = "set"

    # --- axes --------------------------------------------------------------------------------
    def _read_axes(self) -> None:
        zipped: list[_Axis] = []
        for kind in ("grid", "zip"):
            for key, values in checks.flat_axes(self.raw.get(kind), kind).items():
                where = f"{kind}.{key}"
                if key == "seed":
                    raise BenchError(
                        f"{where}: replicates are given by `seeds: [0, 1, 2]` at the top level; move them there"
                    )
                if key in self.axis_at:
                    raise BenchError(
                        f"{where}: {key} is already a {self.axis_at[key][1].kind} axis; list each key once"
                    )
                section, name = resolve_key(key, where)
                if not isinstance(values, list) or not values:
                    raise BenchError(
                        f"{where}: an axis needs a non-empty list of values, got {values!r}; e.g. {key}: [a, b]"
                    )
                if key in self.overrides:
                    raise BenchError(
                        f"overrides.{key}: {key} is an axis of this study ({where}); edit the axis instead"
                    )
                origins = tuple(f"{where}[{i}]" for i in range(len(values)))
                vals = tuple(coerce_value(section, name, v, o) for v, o in zip(values, origins))
                axis = _Axis(kind, key, section, name, vals, origins)
                if kind == "grid":
                    checks.no_repeats([(v,) for v in vals], origins)
                    self.factors.append([axis])
                    self.axis_at[key] = (len(self.factors) - 1, axis)
                else:
                    zipped.append(axis)
            if kind == "zip" and zipped:
                lengths = {a.key: len(a.values) for a in zipped}
                if len(set(lengths.values())) > 1:
                    raise BenchError(
                        "zip: every list must have the same length (they vary together), got "
                        + ", ".join(f"{k}: {n}" for k, n in lengths.items())
                        + "; make them equal or move independent keys to `grid:`"
                    )
                checks.no_repeats(list(zip(*(a.values for a in zipped))), zipped[0].origins)
                self.factors.append(zipped)
                for a in zipped:
                    self.axis_at[a.key] = (len(self.factors) - 1, a)
        if any(a.section == "vae" for f in self.factors for a in f) and self.vae_mode != "set":
            self.vae_mode = "set"

    def _check_values(self) -> None:
        """Registry names, choices and ranges: once per distinct (key, value)."""
        for key, value in checks.effective_base(self).items():
            checks.check_value(key, value, self.origin(key, ()))
        for f in self.factors[:-1]:
            for a in f:
                for v, o in zip(a.values, a.origins):
                    checks.check_value(a.key, v, o)

    def _read_exclude(self, entries: Any) -> list[dict[int, set[int]]]:
        if not isinstance(entries, list):
            raise BenchError(
                f"exclude: must be a list of partial configs (dotted key -> value), got {entries!r}"
            )
        out = []
        for i, entry in enumerate(entries):
            where = f"exclude[{i}]"
            flat = checks.flat_axes(checks.mapping(entry, where), where)
            if not flat:
                raise BenchError(f"{where}: empty entry would exclude everything; give axis values to skip")
            allowed: dict[int, set[int]] = {}
            for key, value in flat.items():
                if key not in self.axis_at:
                    axes = [k for k in self.axis_at if k != "seed" or len(self.factors[-1][0].values) > 1]
                    raise BenchError(
                        f"{where}.{key}: not an axis of this study.{did_you_mean(key, axes)} "
                        f"Exclude entries may only name axes: {', '.join(axes)}."
                    )
                j, axis = self.axis_at[key]
                if axis.section:
                    value = coerce_value(axis.section, axis.field, value, f"{where}.{key}")
                hits = {n for n, v in enumerate(axis.values) if v == value and type(v) is type(value)}
                if not hits:
                    raise BenchError(
                        f"{where}.{key}: {value!r} is not one of the axis values {list(axis.values)}; fix the value"
                    )
                allowed[j] = allowed[j] & hits if j in allowed else hits
            out.append(allowed)
        return out

    # --- locations ---------------------------------------------------------------------------
    def origin(self, key: str, idx: tuple[int, ...]) -> str:
        """Where the value of ``key`` at grid point ``idx`` comes from (``grid.sample.eta[2]``)."""
        if key in self.axis_at and idx:
            j, axis = self.axis_at[key]
            return axis.origins[idx[j]]
        return self.base_origin.get(key, f"base.{key} (default)")

    def varying(self, idx: tuple[int, ...], sections: tuple[str, ...]) -> list[str]:
        """Origins of the axes in ``sections`` at point ``idx``."""
        return [a.origins[idx[j]] for j, f in enumerate(self.factors) for a in f if a.section in sections]
