"""Conformance of every registered executor: the same tiny plan, the same results, the same records.

Runs over ``EXECUTORS`` (local processes, Ray on a local cluster, Slurm through submitit's local
executor), so an executor is tested the day it is registered; the options and environment an
executor needs on a machine without a cluster, its package and its pip extra are its own
declaration (``register_executor(..., test_options=, test_env=, package=, extra=)``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tiny import tiny_study

from bench.cli import build_parser
from bench.core.errors import BenchError
from bench.execute import EXECUTORS, make_pool, run_plan
from bench.execute.registry import executor_flags
from bench.study import build_study
from bench.tracking import Tracker


@pytest.mark.parametrize("name", EXECUTORS.names())
def test_executor_runs_a_plan_and_records_every_job(name: str, tmp_path, monkeypatch, request) -> None:
    meta = EXECUTORS.meta(name)
    if meta.get("package"):
        pytest.importorskip(meta["package"], reason=f"--executor {name} needs an extra")
    monkeypatch.setenv("BENCH_THREADS", "1")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    for var, value in meta.get("test_env", {}).items():
        if var.endswith("TMPDIR"):  # a folder of this test's own inside the declared one: no other run's files
            value = tempfile.mkdtemp(prefix=f"{name}-", dir=value)
            request.addfinalizer(lambda folder=value: shutil.rmtree(folder, ignore_errors=True))
        monkeypatch.setenv(var, value)
    study = build_study(tiny_study(f"conform-{name}", grid={"sample.steps": [2, 3]}, train_steps=10))
    plan = study.plan()
    tracker = Tracker(study.name, f"sqlite:///{tmp_path / 'mlflow.db'}")
    pool = make_pool(name, "cpu", False, **meta.get("test_options", {}))
    assert pool.slots >= 1
    summary = run_plan(plan, pool, tracker, set(), progress=False)
    assert not summary.failed and sorted(summary.finished) == sorted(plan.jobs)
    runs = MlflowClient(tracker.uri).search_runs([tracker.experiment_id])
    by_kind = {}
    for r in runs:
        assert r.info.status == "FINISHED"
        by_kind.setdefault(r.data.tags["bench.kind"], []).append(r)
    assert {k: len(v) for k, v in by_kind.items()} == {"train": 1, "eval": 2}
    for r in by_kind["eval"]:  # the counted network calls of DDIM: one per step
        assert r.data.metrics["nfe"] == int(r.data.params["sample.steps"]) and r.data.metrics["nll_bpd"] > 0
    assert (tmp_path / "cache" / "train" / plan.by_kind("train")[0].key / "checkpoint.pt").is_file()
    assert os.environ["BENCH_CACHE_DIR"] == str(tmp_path / "cache")


def test_an_option_of_another_executor_is_refused() -> None:
    with pytest.raises(BenchError, match="--address applies to --executor ray only"):
        make_pool("local", "cpu", False, address="auto")
    with pytest.raises(BenchError, match="Did you mean 'local'"):
        make_pool("locl", "cpu", False)


@pytest.mark.parametrize("name", EXECUTORS.names())
def test_an_executors_package_is_installed_by_its_declared_extra(name: str) -> None:
    """The extra an executor names in its "install the extra" message exists in pyproject.toml and
    installs the package it imports."""
    meta = EXECUTORS.meta(name)
    if not meta.get("package"):
        assert not meta.get("extra")  # nothing to install, nothing to name
        return
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert meta["extra"] in extras, f"executor {name!r}: extra {meta['extra']!r} is not in pyproject.toml"
    installs = {req.split("[")[0].split(">")[0].split("=")[0].strip().lower() for req in extras[meta["extra"]]}
    assert meta["package"].lower() in installs


@pytest.mark.parametrize("name", EXECUTORS.names())
def test_every_declared_option_flag_reaches_run_and_its_pool(name: str) -> None:
    """Each flag an executor declares is a ``run`` flag of its type, and names an option its pool takes."""
    flags = {f.name: f for f in executor_flags()}
    for f in EXECUTORS.meta(name).get("flags", ()):
        assert f.name in EXECUTORS.meta(name)["options"]
        value = {int: "3", float: "2.5", str: "x"}[f.type]
        args = build_parser().parse_args(["run", "s.yaml", f.cli, value])
        assert getattr(args, f.name) == flags[f.name].type(value)
