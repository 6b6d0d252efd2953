"""The Ray executor on a local Ray cluster this module starts (2 CPUs, 2 *logical* GPUs).

Jobs ask for one GPU each, so two run at once on GPU ids 0 and 1 (torch sees no CUDA here, so
they compute on the CPU and say so). A worker killed mid-training is retried by Ray and resumes
from its checkpoint; a job that raises is an error, a job whose retries are all used up by deaths
a crash. Bad input fails with one BenchError: Ray missing, an unreachable address, a shared
folder nobody can write.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from without_package import make_pool_without

from bench.core.config import from_dict
from bench.core.errors import BenchError
from bench.perf.drill import store_runs
from bench.plan import Job

ray = pytest.importorskip("ray", reason="Ray is an extra: pip install -e .[ray]")

from bench.execute.ray import RayPool, check_address  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = {"data": {"dataset": "digits"}, "model": {"backbone": "unet-tiny"}, "diffusion": {"timesteps": 100},
        "train": {"steps": 20, "batch_size": 16, "checkpoint_every": 10, "log_every": 5, "warmup_steps": 5},
        "sample": {"sampler": "ddim", "steps": 5, "batch_size": 50},
        "eval": {"num_samples": 20, "metrics": ["nll"], "nll_samples": 4}}


def train_job(seed: int = 0, **train) -> Job:
    cfg = from_dict({**BASE, "train": {**BASE["train"], **train}, "seed": seed})
    return Job("train", cfg.train_key(), cfg, (), 1.0, f"train seed={seed}")


def task_pids() -> list[int]:
    """This test process's own Ray cluster's busy workers (Ray titles them ``ray::<function>``).

    Only descendants of this process count: under ``pytest -n 2`` another file's cluster runs beside
    this one, and its workers must neither be counted nor killed here.
    """
    import psutil

    pids = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::bench_job"):
                pids.append(p.pid)
        except psutil.Error:
            pass
    return pids


def kill(pid: int) -> None:
    """SIGKILL one of :func:`task_pids` (gone already if its task ended meanwhile)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_all(pool: RayPool, n: int, timeout: float = 300.0, watch=None) -> dict:
    outs: dict = {}
    deadline = time.monotonic() + timeout
    while len(outs) < n:
        assert time.monotonic() < deadline, f"only {len(outs)} of {n} jobs came back"
        for out in pool.wait(timeout=0.2):
            outs[out.key] = out
        if watch:
            watch()
    return outs


@pytest.fixture(scope="module")
def cluster():
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # address="local": a new cluster of this module's own, never one $RAY_ADDRESS or another test names
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 2**20, _temp_dir=temp)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_two_jobs_at_once_each_on_its_own_gpu(cluster, tmp_path):
    pool = RayPool(devices="auto", shared_dir=str(tmp_path / "shared"))
    assert (pool.use_gpu, pool.slots) == (True, 2)
    jobs = [train_job(seed=s) for s in (0, 1)]
    for j in jobs:
        pool.submit(j)
    seen = []
    outs = wait_all(pool, 2, watch=lambda: seen.append(len(task_pids())))
    pool.close()
    assert max(seen) == 2, "the two jobs never ran at the same time"
    tags = [outs[j.key].result["tags"] for j in jobs]
    assert sorted(t["bench.gpu_ids"] for t in tags) == ["0", "1"]
    assert all(t["bench.device"] == "cpu" and t["bench.executor"] == "ray" for t in tags)  # no CUDA here
    assert all((tmp_path / "shared" / "train" / j.key / "checkpoint.pt").exists() for j in jobs)


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(cluster, tmp_path):
    pool = RayPool(shared_dir=str(tmp_path / "shared"), max_retries=2)
    job = train_job(seed=2, steps=30, checkpoint_every=5)
    pool.submit(job)
    ckpt = tmp_path / "shared" / "train" / job.key / "checkpoint.pt"
    deadline = time.monotonic() + 240  # Ray starts its workers slowly on a loaded machine
    while not (ckpt.exists() and task_pids()):
        assert time.monotonic() < deadline and not pool.wait(0.05), "no checkpoint before the job ended"
    for pid in task_pids():
        kill(pid)
    out = wait_all(pool, 1)[job.key]
    pool.close()
    assert out.result is not None, out
    resumed = int(out.result["tags"]["bench.resumed_from"])
    assert 5 <= resumed < 30, f"the retried task restarted from {resumed}"
    assert out.result["metrics"]["steps"] == 30
    assert [s for s, _ in out.result["history"]["train_loss"]] == list(range(5, 31, 5))  # nothing lost


def test_raise_is_an_error_and_exhausted_deaths_a_crash(cluster, tmp_path):
    pool = RayPool(shared_dir=str(tmp_path / "shared"), max_retries=0)
    cfg = from_dict(BASE)
    evaluation = Job("eval", cfg.key(), cfg, (), 1.0, "eval without its model")
    pool.submit(evaluation)  # its checkpoint does not exist: run_eval raises
    out = wait_all(pool, 1)[evaluation.key]
    assert out.error and "does not exist" in out.error and out.crashed is None

    victim = train_job(seed=3, steps=2000)
    pool.submit(victim)
    deadline = time.monotonic() + 180
    while not task_pids():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for pid in task_pids():
        kill(pid)
    out = wait_all(pool, 1)[victim.key]
    pool.close()
    assert out.crashed and out.result is None and out.error is None


def test_worker_side_shared_folder_check(cluster, tmp_path):
    pool = RayPool(shared_dir=str(tmp_path / "shared"))
    (tmp_path / "file").write_text("not a folder")
    pool.shared_dir = str(tmp_path / "file" / "cache")  # what a node without the mount would see
    job = train_job(seed=4)
    pool.submit(job)
    out = wait_all(pool, 1)[job.key]
    pool.close()
    assert out.error and "ray worker" in out.error and "cannot write to the shared folder" in out.error


def test_driver_side_shared_folder_check(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(BenchError, match="cannot write to the shared folder"):
        RayPool(shared_dir=str(tmp_path / "file" / "cache"))


def test_unreachable_address_fails_fast(cluster, monkeypatch):
    monkeypatch.setenv("BENCH_CONNECT_TIMEOUT", "2")  # the silent port is given up on after 2 s, not 10
    closed = socket.socket()  # bound and never listening: refuses connections, and no one else gets the port
    closed.bind(("127.0.0.1", 0))
    silent = socket.socket()  # accepts connections, never answers: a firewall or a wrong service
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        for sock in (closed, silent):
            address = f"127.0.0.1:{sock.getsockname()[1]}"
            t0 = time.monotonic()
            with pytest.raises(BenchError, match="no Ray cluster reachable") as e:
                RayPool(address=address)
            assert time.monotonic() - t0 < 8
    finally:
        closed.close()
        silent.close()
    assert "no answer within 2 s" in str(e.value)  # the silent port, after the configured wait
    monkeypatch.setenv("BENCH_CONNECT_TIMEOUT", "soon")
    with pytest.raises(BenchError, match=r"BENCH_CONNECT_TIMEOUT='soon'.*positive number"):
        check_address(cluster)
    monkeypatch.delenv("BENCH_CONNECT_TIMEOUT")
    with pytest.raises(BenchError, match="HOST:PORT"):
        check_address("head-node-without-port")
    assert check_address(cluster) == cluster  # the real one answers the handshake


def test_missing_ray_names_the_extra(tmp_path):
    out = make_pool_without('ray', "make_pool('ray', 'auto', False)", tmp_path)
    assert "BenchError:" in out and "pip install -e .[ray]" in out, out


def test_cli_run_on_the_cluster_by_address(cluster, tmp_path):
    """A second driver joins the cluster by address; MLflow gets every run from it, tagged by GPU."""
    study = {"name": "ray-e2e", "question": "does the ray executor run a grid?",
             "base": {**BASE, "train": {**BASE["train"], "steps": 10}}, "grid": {"sample.steps": [2, 3]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("BENCH_CACHE_DIR", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_ablation.py"), "run", str(path), "--executor", "ray", "--address",
         cluster, "--shared-dir", str(tmp_path / "shared"), "--tracking-uri", f"sqlite:///{db}", "--no-report",
         "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = store_runs(db)
    assert sorted(r["kind"] for r in runs) == ["eval", "eval", "train"]
    assert {r["status"] for r in runs} == {"FINISHED"}
    assert all(r["executor"] == "ray" and r["gpu_ids"] in ("0", "1") for r in runs)
