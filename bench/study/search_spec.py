"""The ``search:`` section of a study file, read and validated without importing Optuna.

::

    search:
      params:                               # inference-time keys only (sample.*)
        sample.guidance: {type: float, low: 0.0, high: 8.0}          # log: true needs low > 0
        sample.steps: {type: categorical, choices: [10, 20, 50]}     # or {type: int, low:, high:}
        sample.sampler: {choices: [ddim, ddpm]}                      # type defaults from the field
      objectives: [{metric: fid, direction: minimize}]   # one, or two for a Pareto front;
                                                         # "fid" alone takes the metric's direction
      budget: {seconds_per_image: 0.05}     # optional: trials above a bound are infeasible
      n_trials: 20                          # COMPLETED trials wanted (default 20)
      sampler: tpe                          # tpe (default) | gp | cmaes | nsga2 | random
      seed: 0

The search runs on the study's base point, ``study.configs[0]`` (the first grid point, seed
included): its model is trained once and every trial is an evaluation of that checkpoint with
the searched keys overridden. Training-time keys (data, model, vae, diffusion, train, seed) each
need their own model: they belong in ``grid:``. :func:`parse_search` is run when the study is
loaded and again when the search starts; every problem is one BenchError naming the key.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import bench.rules as rules
from bench.core.config import FIELD_TYPES, RunConfig, coerce_value, resolve_key
from bench.core.errors import BenchError
from bench.core.registry import Registry, did_you_mean
from bench.study.search_objectives import Objective, read_budget, read_objectives

SEARCH_KEYS = ("params", "objectives", "budget", "n_trials", "sampler", "seed")
PARAM_TYPES = ("float", "int", "categorical")
DEFAULT_N_TRIALS = 20
DEFAULT_SAMPLER = "tpe"
_TRAINING = ("data", "model", "vae", "diffusion", "train")

# Optuna's samplers by name -> their class in ``optuna.samplers`` (built by bench.search.make_sampler).
# constraints: the sampler reads trial.set_constraint (else a budget penalizes the objective).
SEARCH_SAMPLERS: Registry[str] = Registry("search sampler")
SEARCH_SAMPLERS.register("tpe", "TPESampler", multi_objective=True, constraints=True)
SEARCH_SAMPLERS.register("gp", "GPSampler", multi_objective=True, constraints=True)
SEARCH_SAMPLERS.register("cmaes", "CmaEsSampler", package="cmaes", multi_objective=False, constraints=False)
SEARCH_SAMPLERS.register("nsga2", "NSGAIISampler", multi_objective=True, constraints=True)
SEARCH_SAMPLERS.register("random", "RandomSampler", multi_objective=True, constraints=True)


@dataclass(frozen=True)
class Param:
    """One searched key: a float / int range (``log`` scale, optional ``step``) or choices."""

    key: str
    type: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class SearchSpec:
    params: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    budget: dict[str, float] = field(default_factory=dict)  # metric -> largest feasible value
    n_trials: int = DEFAULT_N_TRIALS
    sampler: str = DEFAULT_SAMPLER
    seed: int = 0

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def identity(self, base: RunConfig) -> str:
        """Hash of what makes two searches the same Optuna study: the base run, the space, the
        objectives and the budget (not n_trials, sampler or seed: those may change on resume)."""
        what = {"base": base.key(), "params": [asdict(p) for p in self.params],
                "objectives": [asdict(o) for o in self.objectives], "budget": self.budget}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]


def optuna_study_name(study_name: str, base: RunConfig, spec: SearchSpec) -> str:
    """The Optuna study (and the parent MLflow run's ``bench.key``) of a search."""
    return f"{study_name}:search-{spec.identity(base)}"


def parse_search(section: Any, base: RunConfig, where: str = "search") -> SearchSpec:
    """Validate a ``search:`` mapping against the base config; one BenchError per problem."""
    if not isinstance(section, dict) or not section:
        raise BenchError(f"{where}: the study has no `search:` section; add one with `params:` and "
                         "`objectives:` (see ablations/guidance_search.yaml)")
    for k in section:
        if k not in SEARCH_KEYS:
            raise BenchError(f"{where}.{k}: unknown key.{did_you_mean(str(k), SEARCH_KEYS)} "
                             f"Keys: {', '.join(SEARCH_KEYS)}.")
    params = _read_params(section.get("params"), base, f"{where}.params")
    objectives = read_objectives(section.get("objectives"), base, f"{where}.objectives")
    budget = read_budget(section.get("budget"), base, f"{where}.budget")
    n_trials = positive_int(section.get("n_trials", DEFAULT_N_TRIALS), f"{where}.n_trials")
    seed = section.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise BenchError(f"{where}.seed: must be an integer, got {seed!r}")
    sampler = section.get("sampler", DEFAULT_SAMPLER)
    SEARCH_SAMPLERS.check(sampler, f"{where}.sampler")
    if len(objectives) > 1 and not SEARCH_SAMPLERS.meta(sampler)["multi_objective"]:
        multi = [n for n in SEARCH_SAMPLERS.names() if SEARCH_SAMPLERS.meta(n)["multi_objective"]]
        raise BenchError(f"{where}.sampler: {sampler!r} optimizes one objective, but {len(objectives)} are "
                         f"given; use one of {', '.join(multi)} for a Pareto front")
    return SearchSpec(params, objectives, budget, n_trials, sampler, seed)


def positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BenchError(f"{where}: must be a positive integer, got {value!r}")
    return value


# --- params ----------------------------------------------------------------------------------


def _read_params(value: Any, base: RunConfig, where: str) -> tuple[Param, ...]:
    if not isinstance(value, dict) or not value:
        raise BenchError(f"{where}: give at least one key to search, e.g. "
                         "params: {sample.guidance: {type: float, low: 0.0, high: 8.0}}")
    plain = tuple(_read_param(str(k), v, base, f"{where}.{k}") for k, v in value.items()
                  if not str(k).startswith(GUIDANCE_OPTION))
    methods = next((p.choices for p in plain if p.key == "sample.guidance_method"), (base.sample.guidance_method,))
    options = tuple(_read_guidance_option(str(k), v, methods, f"{where}.{k}") for k, v in value.items()
                    if str(k).startswith(GUIDANCE_OPTION))
    _check_option_constraints(options, methods, where)
    params = (*plain, *options)
    _check_guidance(params, base, where)
    return params


GUIDANCE_OPTION = "sample.guidance_options."


def _read_guidance_option(key: str, spec: Any, methods: tuple[Any, ...], where: str) -> Param:
    """``sample.guidance_options.<name>``: a float / int range of an option that one of the
    searched (or the base) guidance methods declares; a trial whose method lacks it does not draw it."""
    from bench.diffusion import GUIDANCE

    name = key[len(GUIDANCE_OPTION):]
    declared = {m: GUIDANCE.meta(m)["options"] for m in methods}
    owners = [m for m, opts in declared.items() if name in opts]
    if not owners:
        known = sorted({o for opts in declared.values() for o in opts})
        raise BenchError(f"{where}: no guidance method searched here ({', '.join(map(str, methods))}) has an "
                         f"option {name!r}.{did_you_mean(name, known)} Their options: {', '.join(known)}")
    option = declared[owners[0]][name]
    if option.type not in (int, float) or not isinstance(spec, dict):
        raise BenchError(f"{where}: only number options are searched here, as {{type: float, low:, high:}}; "
                         f"{name} is {option.type.__name__}: put its values in the study's grid instead")
    kind = spec.get("type", option.type.__name__)
    if kind not in ("float", "int") or set(spec) - {"type", "low", "high", "log", "step"}:
        raise BenchError(f"{where}: give {{type: float|int, low:, high:, log:, step:}}, got {spec!r}")
    for b in ("low", "high"):
        v = spec.get(b)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise BenchError(f"{where}.{b}: a range needs `{b}:` as a number, got {v!r}")
        option.check(v, f"{where}.{b}")
    if spec["low"] >= spec["high"]:
        raise BenchError(f"{where}: the range [{spec['low']}, {spec['high']}] is empty or inverted; `low` must be "
                         "below `high`")
    if spec.get("log") and spec["low"] <= 0:
        raise BenchError(f"{where}: a log-scale range needs low > 0, got low = {spec['low']}")
    return Param(key, kind, low=spec["low"], high=spec["high"], log=bool(spec.get("log", False)), step=spec.get("step"))


def _check_option_constraints(options: tuple[Param, ...], methods: tuple[Any, ...], where: str) -> None:
    """Each searched method's joint option constraints hold in every trial (cfg-interval's sigma_lo
    <= sigma_hi: their ranges may not overlap), as the method declares them."""
    from bench.diffusion import GUIDANCE

    ranges = {p.key[len(GUIDANCE_OPTION):]: (p.low, p.high) for p in options}
    for method in methods:
        for rule in GUIDANCE.meta(method)["constraints"]:
            rule.check_ranges(ranges, where, GUIDANCE_OPTION)


def guidance_overrides(params: dict[str, Any], base: RunConfig) -> dict[str, Any]:
    """A trial's drawn values as config overrides: the option keys merged into ``sample.guidance_options``."""
    out = {k: v for k, v in params.items() if not k.startswith(GUIDANCE_OPTION)}
    opts = {k[len(GUIDANCE_OPTION):]: v for k, v in params.items() if k.startswith(GUIDANCE_OPTION)}
    if opts:
        method = out.get("sample.guidance_method", base.sample.guidance_method)
        kept = base.sample.guidance_options.as_dict() if method == base.sample.guidance_method else {}
        out["sample.guidance_options"] = {**kept, **opts}
    return out


def option_applies(key: str, params: dict[str, Any], base: RunConfig) -> bool:
    """Whether a trial draws ``key``: a guidance option only when the trial's method declares it."""
    if not key.startswith(GUIDANCE_OPTION):
        return True
    from bench.diffusion import GUIDANCE

    method = params.get("sample.guidance_method", base.sample.guidance_method)
    return key[len(GUIDANCE_OPTION):] in GUIDANCE.meta(method)["options"]


def _read_param(key: str, spec: Any, base: RunConfig, where: str) -> Param:
    section, name = resolve_key(key, where)
    if section in _TRAINING:
        raise BenchError(f"{where}: {key} is a training-time key: every value needs its own trained model, "
                         "which a search on one checkpoint cannot give. Put it in `grid:` (e.g. grid: "
                         f"{{{key}: [...]}}) and search the inference-time keys (sample.*) instead")
    if section == "eval" or key == "sample.batch_size":
        what = "sets the measurement protocol" if section == "eval" else "does not change the images"
        raise BenchError(f"{where}: {key} {what}; keep it fixed in `base:` and search sample.guidance, "
                         "sample.eta, sample.steps, sample.sampler or sample.spacing")
    if not isinstance(spec, dict):
        raise BenchError(f"{where}: must be a mapping, e.g. {{type: float, low: 0.0, high: 8.0}} or "
                         f"{{type: categorical, choices: [...]}}; got {spec!r}")
    ftype = FIELD_TYPES[section][name]
    kind = spec.get("type") or ("categorical" if "choices" in spec or ftype.base not in (int, float)
                                else ftype.base.__name__)
    if kind not in PARAM_TYPES:
        raise BenchError(f"{where}.type: unknown type {kind!r}.{did_you_mean(str(kind), PARAM_TYPES)} "
                         f"Types: {', '.join(PARAM_TYPES)}.")
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}[kind]
    for k in spec:
        if k not in allowed:
            raise BenchError(f"{where}.{k}: not a setting of a {kind} parameter; give {', '.join(sorted(allowed))}")
    if kind == "categorical":
        return _read_choices(key, section, name, spec.get("choices"), base, where)
    if ftype.base not in (int, float) or (kind == "float" and ftype.base is int):
        hint = "type: int or type: categorical" if ftype.base is int else "type: categorical with choices"
        raise BenchError(f"{where}: {key} is {ftype.describe()}, not a {kind} range; use {hint}")
    return _read_range(key, section, name, kind, spec, base, where)


def _read_range(key: str, section: str, name: str, kind: str, spec: dict[str, Any], base: RunConfig,
                where: str) -> Param:
    number = (int,) if kind == "int" else (int, float)
    bounds = {}
    for b in ("low", "high"):
        v = spec.get(b)
        if not isinstance(v, number) or isinstance(v, bool) or not math.isfinite(v):
            raise BenchError(f"{where}.{b}: a {kind} range needs `{b}:` as {'an integer' if kind == 'int' else 'a number'}"
                             f", got {v!r}")
        bounds[b] = v
    low, high = bounds["low"], bounds["high"]
    if low >= high:
        what = "empty" if low == high else "inverted"
        raise BenchError(f"{where}: the range [{low}, {high}] is {what}; `low` must be below `high` "
                         f"(to fix {key} at one value, set it in `base:` instead)")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise BenchError(f"{where}.log: must be true or false, got {log!r}")
    if log and low <= 0:
        raise BenchError(f"{where}: a log-scale range needs low > 0, got low = {low}; raise `low` or set log: false")
    step = spec.get("step")
    if step is not None:
        if not isinstance(step, number) or isinstance(step, bool) or step <= 0:
            raise BenchError(f"{where}.step: must be a positive {kind}, got {step!r}")
        if log:
            raise BenchError(f"{where}: `step` and `log: true` cannot be combined (Optuna); drop one")
    for b, v in bounds.items():
        _check_point(key, section, name, v, base, f"{where}.{b}")
    if key == "sample.steps":  # every step count Optuna may draw must suit the spacing
        for v in range(int(low), int(high) + 1, int(step or 1)):
            rules.check_steps(v, base.diffusion.timesteps, f"{where} (at {v})", spacing=base.sample.spacing)
    if kind == "float":
        low, high = float(low), float(high)
    return Param(key, kind, low, high, log, step)


def _read_choices(key: str, section: str, name: str, choices: Any, base: RunConfig, where: str) -> Param:
    if not isinstance(choices, list) or not choices:
        raise BenchError(f"{where}.choices: give a non-empty list of values, e.g. choices: [a, b]; got {choices!r}")
    values = []
    for i, c in enumerate(choices):
        v = coerce_value(section, name, c, f"{where}.choices[{i}]")
        _check_point(key, section, name, v, base, f"{where}.choices[{i}]")
        if v in values:
            raise BenchError(f"{where}.choices[{i}]: {c!r} is listed twice; list each value once")
        values.append(v)
    if len(values) == 1:
        raise BenchError(f"{where}.choices: a single choice is not a search; set {key}: {choices[0]!r} in `base:`")
    return Param(key, "categorical", choices=tuple(values))


def _check_point(key: str, section: str, name: str, value: Any, base: RunConfig, where: str) -> None:
    """One value of a searched key must be valid on its own and with the base config."""
    from bench.study.checks import check_value

    value = coerce_value(section, name, value, where)
    check_value(key, value, where)
    if key == "sample.steps":
        rules.check_steps(value, base.diffusion.timesteps, where, spacing=base.sample.spacing)
    if key == "sample.spacing":
        rules.check_steps(base.sample.steps, base.diffusion.timesteps, where, spacing=value)


def _check_guidance(params: tuple[Param, ...], base: RunConfig, where: str) -> None:
    """A searched guidance scale needs what every guidance needs (:func:`bench.rules.check_guidance`)."""
    for p in params:
        if p.key == "sample.guidance" and not (p.choices is not None and all(c == 0 for c in p.choices)):
            rules.check_guidance(None, base.model.class_cond, base.train.p_uncond, f"{where}.sample.guidance",
                                 lambda k: f"base.{k}")
