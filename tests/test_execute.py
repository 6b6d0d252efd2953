"""Reliability of the main job: real driver processes, real workers, a real MLflow SQLite store.

A kill -9 of the driver loses nothing and duplicates nothing; a killed worker's job is retried and
resumes; a NaN loss is FAILED with its reason while the rest of the grid finishes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny import tiny_study

from bench.perf.drill import store_runs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e.update(BENCH_CACHE_DIR=str(tmp_path / "cache"), MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1",
             BENCH_THREADS="1")
    return e


def write(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def start(study: Path, db: Path, env: dict, devices: str = "cpu", *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "run_ablation.py"), "run", str(study), "--devices", devices,
           "--tracking-uri", f"sqlite:///{db}", "--no-report", "--quiet", *extra]
    return subprocess.Popen(cmd, cwd=study.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def wait_for(cond, timeout: float = 400, what: str = "") -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_driver_then_resume_finishes_everything_once(tmp_path, env):
    study = write(tmp_path, tiny_study("resume", {"diffusion.objective": ["eps", "v"],
                                                  "sample.steps": [5, 10, 20]}))
    db = tmp_path / "mlflow.db"
    proc = start(study, db, env)
    wait_for(lambda: sum(r["kind"] == "eval" and r["status"] == "FINISHED" for r in store_runs(db)) >= 2,
             what="two finished evaluations")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = store_runs(db)
    finished_trains = {r["key"] for r in first if r["kind"] == "train" and r["status"] == "FINISHED"}
    assert finished_trains and len(first) < 8  # really cut off mid-grid

    cut_off = {r["run"] for r in first if r["status"] == "RUNNING"}
    out = finish(start(study, db, env))
    final = store_runs(db)
    if cut_off:  # runs in flight when the driver died are KILLED, never FINISHED
        assert "marked KILLED" in out
        assert {r["status"] for r in final if r["run"] in cut_off} == {"KILLED"}
    finished = [r for r in final if r["status"] == "FINISHED"]
    keys = [r["key"] for r in finished]
    assert len(keys) == len(set(keys)), "a job finished twice"
    assert sum(r["kind"] == "eval" for r in finished) == 6 and sum(r["kind"] == "train" for r in finished) == 2
    assert not any(r["status"] == "RUNNING" for r in final)
    # nothing retrained that had finished: the train keys finished in the first run have no new run
    for key in finished_trains:
        assert sum(r["key"] == key for r in final) == 1


def test_killed_worker_job_is_retried_and_resumes(tmp_path, env):
    import psutil

    study = write(tmp_path, tiny_study("worker-kill", {"sample.steps": [5]}, train_steps=100))
    db = tmp_path / "mlflow.db"
    proc = start(study, db, env)
    ckpts = tmp_path / "cache" / "train"
    wait_for(lambda: any(ckpts.glob("*/checkpoint.pt")), what="a first training checkpoint")

    def workers():
        kids = []
        for k in psutil.Process(proc.pid).children(recursive=True):  # the driver's own: no machine-wide scan
            try:
                if "resource_tracker" not in " ".join(k.cmdline()):
                    kids.append(k)
            except psutil.Error:  # exited meanwhile
                pass
        return kids

    victims = workers()
    assert victims, "no worker process found"
    for v in victims:
        try:
            v.kill()
        except psutil.NoSuchProcess:
            pass
    out = finish(proc)
    final = store_runs(db)
    train = [r for r in final if r["kind"] == "train"]
    assert len(train) == 1 and train[0]["status"] == "FINISHED", out
    assert train[0]["attempts"] == "2"
    assert int(train[0]["resumed_from"]) >= 10  # the retry continued from a checkpoint, not step 0
    assert [r["status"] for r in final if r["kind"] == "eval"] == ["FINISHED"]


def test_nan_loss_fails_with_reason_and_the_rest_finishes(tmp_path, env):
    study = write(tmp_path, tiny_study("nan", {"train.lr": [1.0e-3, 1.0e+30], "sample.steps": [5, 10]},
                                       train_steps=20))
    db = tmp_path / "mlflow.db"
    out = finish(start(study, db, env, "cpu*2"))
    final = store_runs(db)
    failed = [r for r in final if r["status"] == "FAILED"]
    ok = [r for r in final if r["status"] == "FINISHED"]
    assert len(ok) == 3, out  # the good model: 1 train + 2 evals
    assert len(failed) == 3  # the diverged model and both of its evaluations
    train_fail = next(r for r in failed if r["kind"] == "train")
    assert "NonFiniteLossError" in train_fail["error"] or "non-finite" in train_fail["error"].lower()
    assert all("dependency" in r["error"] for r in failed if r["kind"] == "eval")


def test_two_workers_on_sqlite_lose_no_run(tmp_path, env):
    study = write(tmp_path, tiny_study("two-workers", {"diffusion.objective": ["eps", "v", "x0"],
                                                       "sample.steps": [5, 10]}, train_steps=15))
    db = tmp_path / "mlflow.db"
    out = finish(start(study, db, env, "cpu*2"))
    final = store_runs(db)
    assert sorted(r["kind"] for r in final) == ["eval"] * 6 + ["train"] * 3, out
    assert all(r["status"] == "FINISHED" for r in final)
    assert len({r["key"] for r in final}) == 9


def test_dry_run_and_plan_run_nothing(tmp_path, env):
    study = write(tmp_path, tiny_study("dry", {"sample.steps": [5, 10]}))
    db = tmp_path / "mlflow.db"
    out = finish(start(study, db, env, "cpu", "--dry-run"))
    assert "train" in out and "eval" in out
    assert not (tmp_path / "cache" / "train").exists()
    assert not [r for r in store_runs(db)]


def test_unknown_device_is_one_clear_error(tmp_path, env):
    study = write(tmp_path, tiny_study("dev", {"sample.steps": [5]}))
    proc = start(study, tmp_path / "mlflow.db", env, "tpu:0")
    out = finish(proc)
    assert proc.returncode == 2
    assert "unknown device 'tpu:0'" in out and "cpu*N" in out
    assert not (tmp_path / "cache" / "train").exists()


def test_auto_devices_without_a_gpu_is_one_cpu_worker_per_core_at_most_four(monkeypatch):
    import torch

    from bench.execute.local import AUTO_CPU_WORKERS, auto_cpu_workers, parse_devices

    assert [auto_cpu_workers(c) for c in (1, 2, 3, 16)] == [1, 2, 3, AUTO_CPU_WORKERS]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the machine has no GPU
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert [(s.device, s.label) for s in parse_devices("auto")] == [("cpu", "cpu")] * 2
    assert parse_devices("auto") == parse_devices("cpu*2")


def test_forked_workers_see_the_driver_as_it_is_when_they_start(tmp_path, monkeypatch):
    """CPU workers fork from a fork server started earlier, under another environment and folder;
    each worker still takes the driver's environment and working folder of the moment it starts:
    a relative $BENCH_CACHE_DIR set afterwards receives the checkpoint. A pool with a GPU spawns."""
    from bench.execute.local import Slot, start_fork_server, start_method
    from bench.pipeline import run_study

    cpu = [Slot("cpu", None, "cpu")] * 2
    assert start_method(cpu) == "forkserver"
    assert start_method([Slot("cpu", None, "cpu"), Slot("cuda", "0", "cuda:0")]) == "spawn"
    start_fork_server(cpu)  # running now, with the environment and folder of this moment
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_CACHE_DIR", "later-cache")  # relative: resolved in the worker's folder
    study = write(tmp_path, tiny_study("fork-view", {"sample.steps": [5]}, train_steps=10))
    summary = run_study(study, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", devices="cpu*2",
                        progress=False, report=False)
    assert summary is not None and not summary.failed
    assert len(list((tmp_path / "later-cache" / "train").glob("*/checkpoint.pt"))) == 1
