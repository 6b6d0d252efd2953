"""Workers starting together on one fresh MLflow store (search workers on one machine) each open it
and the study's experiment: without a lock one of them fails while the other creates MLflow's SQLite
tables ("duplicate column name: step") or the experiment ("Experiment(name=...) already exists")."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import os, sys, time
import mlflow.store.tracking.sqlalchemy_store  # the imports done before the start
from bench.tracking import Tracker
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[1]):  # all start at once
    time.sleep(0.001)
tracker = Tracker("race", sys.argv[3])
print(tracker.experiment_id, tracker.start("trial", sys.argv[2], "w=1", {"w": 1}, {}))
"""


def test_workers_opening_one_fresh_store_at_once_all_get_its_experiment(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), MLFLOW_DISABLE_TELEMETRY="true")
    ready = [tmp_path / f"ready{i}" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-W", "ignore", "-c", CHILD, str(tmp_path / "go"), str(r), uri],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
    try:
        deadline = time.monotonic() + 300
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    experiments = {out.split()[0] for out, _ in outs}
    assert len(experiments) == 1
    con = sqlite3.connect(tmp_path / "mlflow.db")
    try:
        assert con.execute("select count(*) from experiments where name = 'race'").fetchone() == (1,)
        assert con.execute("select count(*) from runs").fetchone() == (3,)
    finally:
        con.close()
