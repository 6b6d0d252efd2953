"""Conformance of every registered executor: the same tiny plan, the same results, the same records.

Runs over ``EXECUTORS`` (local processes, Ray on a local cluster, Slurm through submitit's local
executor), so an executor is tested the day it is registered; ``OPTIONS`` gives the options an
executor needs on a machine without a cluster.
"""

from __future__ import annotations

import os

import pytest
from mlflow import MlflowClient
from tiny import tiny_study

from bench.core.errors import BenchError
from bench.execute import EXECUTORS, make_pool, run_plan
from bench.study import build_study
from bench.tracking import Tracker

OPTIONS = {"slurm": {"executor": "local", "time_limit": 30}}
PACKAGES = {"ray": "ray", "slurm": "submitit"}


@pytest.mark.parametrize("name", EXECUTORS.names())
def test_executor_runs_a_plan_and_records_every_job(name: str, tmp_path, monkeypatch) -> None:
    if name in PACKAGES:
        pytest.importorskip(PACKAGES[name], reason=f"--executor {name} needs an extra")
    monkeypatch.setenv("BENCH_THREADS", "1")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    if name == "ray":
        monkeypatch.setenv("RAY_TMPDIR", "/tmp")
    study = build_study(tiny_study(f"conform-{name}", grid={"sample.steps": [2, 3]}, train_steps=10))
    plan = study.plan()
    tracker = Tracker(study.name, f"sqlite:///{tmp_path / 'mlflow.db'}")
    pool = make_pool(name, "cpu", False, **OPTIONS.get(name, {}))
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
