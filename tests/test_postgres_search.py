"""Shared search storage: an Optuna search whose trials live in a PostgreSQL server this test starts
on 127.0.0.1 (initdb into a temporary folder, as the ``postgres`` user when run as root) and stops.

Skipped, with the reason, only where the PostgreSQL server binaries or the psycopg2 driver are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from tiny import tiny_study

STUDY = {
    **tiny_study("pg-search", train_steps=10, question="do search trials land in a shared PostgreSQL storage?",
                 train={"batch_size": 16}, sample={"steps": 2}, eval={"num_samples": 10, "nll_samples": 2}),
    "search": {"params": {"sample.steps": {"type": "categorical", "choices": [2, 3]}},
               "objectives": [{"metric": "seconds_per_image", "direction": "minimize"}],
               "n_trials": 2, "sampler": "random", "seed": 0},
}


def pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def postgres_driver() -> str:
    """The module SQLAlchemy loads for a plain ``postgresql://`` URL (psycopg from 2.1, psycopg2 before)."""
    try:
        from sqlalchemy.engine import make_url

        return {"psycopg2": "psycopg2", "psycopg": "psycopg", "pg8000": "pg8000"}.get(
            make_url("postgresql://u@h/db").get_dialect().driver, "psycopg2")
    except Exception:
        return "psycopg2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL on 127.0.0.1:<free port>; yields its URL; stopped and deleted after."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    pytest.importorskip(postgres_driver(), reason="the PostgreSQL driver is missing: pip install -e .[postgres]")
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = root / "data"

    def pg(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([*run_as, *cmd], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 or not check, f"{' '.join(cmd)}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        return out

    try:
        pg(initdb, "-D", str(data), "-U", "bench", "--auth=trust", "-E", "UTF8", "--no-sync")
        log = root / "server.log"
        for _ in range(3):  # a free port can be taken by another process before the server binds it
            port = free_port()
            started = pg(pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "180", "-o",
                         f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start", check=False)
            text = log.read_text(errors="replace") if log.exists() else ""
            if started.returncode == 0 or "already in use" not in text:
                break
        assert started.returncode == 0, f"pg_ctl start:\n{started.stdout}{started.stderr}{text[-2000:]}"
        try:
            yield f"postgresql://bench@127.0.0.1:{port}/postgres"
        finally:
            pg(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_search_trials_in_postgres(postgres, tmp_path, monkeypatch):
    import optuna

    from bench.search import run_search
    from bench.study import load_study

    monkeypatch.setenv("BENCH_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = run_search(load_study(path), tracking_uri=uri, storage=postgres, devices="cpu", n_trials=2,
                         progress=False)
    assert summary.n_complete == 2
    ostudy = optuna.load_study(study_name=summary.study_name, storage=postgres)  # what a second worker sees
    done = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and all(t.params["sample.steps"] in (2, 3) for t in done)
    assert not list(tmp_path.rglob("optuna.db"))  # not the default per-study SQLite storage
