"""Every value a registry declares a domain for is refused by ``plan`` outside that domain, before
any work, as one BenchError naming the file and the key: every option of every sampler, guidance
method and timestep density, the noise-level spacings' rho, the guidance weight's declared range,
every metric's declared ``eval`` settings and the estimator sizes, a continuous process's shift.
The cases are generated from the registries, so a new entry is walked the day it is registered. And a table's ``where:`` value that selects no run is refused with the
values that exist."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny import tiny_study

from bench.core.errors import BenchError
from bench.core.sections import EvalSpec
from bench.diffusion import GUIDANCE, SAMPLERS, SPACINGS, TIME_SAMPLING
from bench.metrics import METRICS
from bench.pipeline import load_with_overrides

NAN, INF = float("nan"), float("inf")


def out_of_domain(o: Any) -> dict[str, Any]:
    """Values outside an Option's declaration: wrong type, NaN, +-inf, below low, above high."""
    if o.type is str:
        return {"unknown choice": "no-such-choice", "number": 1.0}
    if o.type is bool:
        return {"number": 1.5, "text": "sometimes"}
    bad: dict[str, Any] = {"NaN": NAN, "-inf": -INF, "text": "abc"}
    if not (isinstance(o.default, float) and math.isinf(o.default)):  # s_tmax's default is inf: in its domain
        bad["inf"] = INF
    if o.low is not None:
        bad["below low"] = o.low - 1.0
        if o.low > 0:
            bad["zero"] = 0
        if o.low >= 0:
            bad["negative"] = -0.5
    if o.high is not None:
        bad["above high"] = o.high + 1.0
    if o.type is int:
        bad["fraction"] = (o.low or 0) + 0.5
    return bad


def _cases() -> list[Any]:
    cases = []
    for name in SAMPLERS.names():
        for o in SAMPLERS.meta(name)["options"].values():
            for what, v in out_of_domain(o).items():
                cases.append(pytest.param({"sample": {"sampler": name, "options": {o.name: v}}},
                                          f"sample.options.{o.name}", id=f"{name}.{o.name}={what}"))
    for name in GUIDANCE.names():
        for o in GUIDANCE.meta(name)["options"].values():
            for what, v in out_of_domain(o).items():
                cases.append(pytest.param({"sample": {"guidance_method": name, "guidance_options": {o.name: v}}},
                                          f"sample.guidance_options.{o.name}", id=f"guidance:{name}.{o.name}={what}"))
        weights = {"NaN": NAN, "inf": INF}
        low, high = GUIDANCE.meta(name).get("weight_range", (None, None))
        if high is not None:
            weights.update({"above high": high + 1.0, "below low": low - 0.5})
        for what, w in weights.items():
            cases.append(pytest.param({"sample": {"guidance_method": name, "guidance": w}}, "sample.guidance",
                                      id=f"guidance:{name}.weight={what}"))
    for name in SPACINGS.names():
        if SPACINGS.meta(name)["kind"] == "sigmas":
            for what, v in {"zero": 0.0, "negative": -7.0, "NaN": NAN, "inf": INF, "text": "abc"}.items():
                cases.append(pytest.param({"sample": {"spacing": name, "rho": v}}, "sample.rho",
                                          id=f"spacing:{name}.rho={what}"))
    for name in TIME_SAMPLING.names():
        for o in TIME_SAMPLING.meta(name)["options"].values():
            for what, v in out_of_domain(o).items():
                cases.append(pytest.param({"train": {"t_sampling": name, "t_sampling_options": {o.name: v}}},
                                          f"train.t_sampling_options.{o.name}", id=f"t_sampling:{name}.{o.name}={what}"))
    for what, v in {"zero": 0.0, "negative": -3.0, "NaN": NAN, "inf": INF, "text": "abc"}.items():
        cases.append(pytest.param({"diffusion": {"process": "rectified-flow", "objective": "velocity", "shift": v}},
                                  "diffusion.shift", id=f"diffusion.shift={what}"))
    settings = {"num_samples": [0, -5, NAN, "abc"], "bootstrap": [-1, 1, NAN],  # estimator sizes
                "nll_samples": [-1, NAN], "nll_timesteps": [1, -3, INF]}
    for _, metric in METRICS.items():  # the settings each metric declares, walked the day it is registered
        for setting in metric.settings:
            default = getattr(EvalSpec(), setting.key)
            settings[setting.key] = ["no-such-choice", 1.5] if isinstance(default, str) else [0, -1, NAN, INF, "abc"]
    for key, values in settings.items():
        for v in values:
            cases.append(pytest.param({"eval": {key: v}}, f"eval.{key}", id=f"eval.{key}={v}"))
    return cases


def refusal(tmp_path: Path, change: dict[str, dict[str, Any]]) -> str:
    """The one BenchError ``plan`` raises for the tiny study with ``change`` (a guided, labelled model)."""
    sections = {"model": {"class_cond": True}, "train": {"p_uncond": 0.1}}
    for section, values in change.items():
        sections[section] = {**sections.get(section, {}), **values}
    path = tmp_path / "domain.yaml"
    path.write_text(yaml.safe_dump(tiny_study("domain", **sections)))
    with pytest.raises(BenchError) as e:
        load_with_overrides(path).plan()  # what `run_ablation.py plan` does before reading MLflow
    message = str(e.value)
    assert str(path) in message and "Traceback" not in message and len(message.splitlines()) == 1, message
    return message


@pytest.mark.parametrize(("change", "key"), _cases())
def test_plan_refuses_every_out_of_domain_value(tmp_path, change, key) -> None:
    message = refusal(tmp_path, change)
    assert key in message or key.rpartition(".")[2] in message and key.split(".")[1] in message, message


def test_the_walk_covers_every_declared_option() -> None:
    ids = {p.id.partition("=")[0] for p in _cases()}
    for name in SAMPLERS.names():
        assert {f"{name}.{o}" for o in SAMPLERS.meta(name)["options"]} <= ids
    for name in GUIDANCE.names():
        assert {f"guidance:{name}.{o}" for o in GUIDANCE.meta(name)["options"]} | {f"guidance:{name}.weight"} <= ids
    for name in TIME_SAMPLING.names():
        assert {f"t_sampling:{name}.{o}" for o in TIME_SAMPLING.meta(name)["options"]} <= ids
    assert {f"eval.{s.key}" for _, m in METRICS.items() for s in m.settings} <= {i.partition("=")[0] for i in ids}


def test_cfgpp_weight_above_its_documented_range_is_refused(tmp_path) -> None:
    """The README gives cfg++'s weight as the paper's lambda in [0, 1]."""
    message = refusal(tmp_path, {"sample": {"guidance_method": "cfg++", "guidance": 2.0}})
    assert "sample.guidance" in message and "[0, 1]" in message


@pytest.mark.parametrize(("where", "bad"), [({"sample.steps": 20}, "20"), ({"sample.eta": [0.5, 1.0]}, "1.0")])
def test_a_where_value_selecting_no_run_is_refused_with_the_values_that_exist(tmp_path, where, bad) -> None:
    study = tiny_study("where", {"sample.steps": [5, 10], "sample.eta": [0.0, 0.5]})
    study["tables"] = [{"rows": "sample.steps", "columns": "sample.eta", "values": "nll_bpd", "where": where}]
    path = tmp_path / "where.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(BenchError) as e:
        load_with_overrides(path)
    key = next(iter(where))
    assert f"tables[0].where.{key}" in str(e.value) and bad in str(e.value), e.value
    assert ("5, 10" if key == "sample.steps" else "0.0, 0.5") in str(e.value)
    study["tables"][0]["where"] = {key: 5 if key == "sample.steps" else 0.5}  # a value of the grid: accepted
    path.write_text(yaml.safe_dump(study))
    load_with_overrides(path)
