"""The Slurm executor through submitit's LocalExecutor (same jobs, local processes).

A job sent the preemption signal submitit listens for (USR2, what Slurm sends before a
preemption or the time limit) is checkpointed, requeued, and resumes training from its
checkpoint instead of restarting. A job that raises is an error, one that dies a crash. Bad
input fails with one BenchError: submitit missing, no sbatch, a shared folder nobody can write.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml
from without_package import make_pool_without

from bench.core.config import from_dict
from bench.core.errors import BenchError
from bench.plan import Job

pytest.importorskip("submitit", reason="submitit is an extra: pip install -e .[slurm]")

from bench.execute.slurm import BenchJob, SlurmPool  # noqa: E402

BASE = {"data": {"dataset": "digits"}, "model": {"backbone": "unet-tiny"}, "diffusion": {"timesteps": 100},
        "train": {"steps": 30, "batch_size": 16, "checkpoint_every": 5, "log_every": 5, "warmup_steps": 5},
        "sample": {"sampler": "ddim", "steps": 3, "batch_size": 50},
        "eval": {"num_samples": 20, "metrics": ["nll"], "nll_samples": 4}}


def job_of(kind: str, seed: int = 0, **train) -> Job:
    cfg = from_dict({**BASE, "train": {**BASE["train"], **train}, "seed": seed})
    return Job(kind, cfg.train_key() if kind == "train" else cfg.key(), cfg, (), 1.0, f"{kind} {seed}")


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def wait_all(pool: SlurmPool, n: int, timeout: float = 300.0) -> dict:
    outs: dict = {}
    deadline = time.monotonic() + timeout
    while len(outs) < n:
        assert time.monotonic() < deadline, f"only {len(outs)} of {n} jobs came back"
        outs.update((o.key, o) for o in pool.wait(timeout=0.5))
    return outs


@pytest.fixture
def pool(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_THREADS", "1")
    p = SlurmPool(executor="local", shared_dir=str(tmp_path / "shared"), time_limit=30)
    yield p
    p.close()


def test_preempted_job_is_requeued_and_resumes(pool, tmp_path):
    job = job_of("train")
    pool.submit(job)
    pool.wait(0)  # submits
    controller = int(pool.jobs[job.key].job_id)  # LocalExecutor: the job id is the controller's pid
    ckpt = tmp_path / "shared" / "train" / job.key / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists():
        assert time.monotonic() < deadline and not pool.jobs[job.key].done(), "no checkpoint before the end"
        time.sleep(0.05)
    tasks = children(controller)
    assert len(tasks) == 1
    os.kill(tasks[0], signal.SIGUSR2)  # Slurm's warning before preemption / time limit
    out = wait_all(pool, 1)[job.key]
    assert out.result is not None, out
    tags = out.result["tags"]
    assert tags["bench.requeues"] == "1" and tags["bench.executor"] == "slurm"
    assert 5 <= int(tags["bench.resumed_from"]) < 30, "the requeued job restarted instead of resuming"
    assert out.result["metrics"]["steps"] == 30
    assert [s for s, _ in out.result["history"]["train_loss"]] == list(range(5, 31, 5))


def test_raise_is_an_error_and_a_killed_job_a_crash(pool, tmp_path):
    evaluation = job_of("eval")  # its model was never trained: run_eval raises
    (tmp_path / "file").write_text("not a folder")
    blind = job_of("train", seed=1)
    victim = job_of("train", seed=2, steps=5000)
    pool.submit(evaluation)
    pool.submit(victim)
    pool.wait(0)  # evaluation + victim go as one job array
    pool.shared_dir = str(tmp_path / "file" / "cache")  # a node that does not see the shared folder
    pool.submit(blind)
    pool.wait(0)
    deadline = time.monotonic() + 180
    while not (tmp_path / "shared" / "train" / victim.key).exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for pid in children(int(pool.jobs[victim.key].job_id)):
        os.kill(pid, signal.SIGKILL)
    outs = wait_all(pool, 3)
    assert outs[evaluation.key].error and "does not exist" in outs[evaluation.key].error
    assert "slurm worker" in outs[blind.key].error and "cannot write to the shared folder" in outs[blind.key].error
    assert outs[victim.key].crashed and outs[victim.key].result is None


def test_checkpoint_requeues_itself():
    job = BenchJob("train", {}, "k", "/shared")
    delayed = job.checkpoint()
    assert delayed.function is job and job.requeues == 1


def test_bad_setups_fail_before_submitting(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(BenchError, match="cannot write to the shared folder"):
        SlurmPool(executor="local", shared_dir=str(tmp_path / "file" / "cache"))
    if shutil.which("sbatch") is None:
        with pytest.raises(BenchError, match="sbatch"):
            SlurmPool(shared_dir=str(tmp_path / "shared"))
    from bench.execute import make_pool

    with pytest.raises(BenchError, match="--address applies to --executor ray only"):
        make_pool("slurm", "auto", False, address="auto")


def test_missing_submitit_names_the_extra(tmp_path):
    out = make_pool_without('submitit', "make_pool('slurm', 'auto', False, partition='gpu')", tmp_path)
    assert "BenchError:" in out and "pip install -e .[slurm]" in out, out


def test_run_study_through_submitit(tmp_path, monkeypatch):
    """The whole grid through run_plan: the driver logs what the submitit jobs return."""
    from mlflow.tracking import MlflowClient

    from bench.pipeline import run_study

    monkeypatch.setenv("BENCH_THREADS", "1")
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts in ./mlruns
    study = {"name": "slurm-e2e", "question": "does the slurm executor run a grid?",
             "base": {**BASE, "train": {**BASE["train"], "steps": 10}}, "grid": {"sample.steps": [2]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = run_study(path, tracking_uri=uri, executor="slurm", progress=False, report=False,
                        executor_options={"executor": "local", "shared_dir": str(tmp_path / "shared"),
                                          "array_parallelism": 2})
    assert summary is not None and not summary.failed and len(summary.finished) == 2
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("slurm-e2e").experiment_id])
    assert sorted(r.data.tags["bench.kind"] for r in runs) == ["eval", "train"]
    assert all(r.info.status == "FINISHED" and r.data.tags["bench.executor"] == "slurm" for r in runs)
