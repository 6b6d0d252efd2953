"""Faults and load drill: a grid of short eval jobs on 4 CPU workers, run by a real ``run`` driver,
(a) against the SQLite store, (b) against an ``mlflow server`` on 127.0.0.1 that is killed and
restarted mid-grid, (c) with a worker killed (SIGKILL) every ``kill_every`` finished jobs.

Each scenario then reads the tracking store's database and checks what a user relies on: every job
FINISHED exactly once (``lost``: none; ``duplicated``: none), no run left RUNNING, and no "database
is locked" anywhere in the driver's output or a run's error. ``retries`` counts the extra attempts
the scheduler made (a killed worker's job goes again). ``python -m bench.perf drill`` runs the full
drill (200 jobs); ``--quick`` a few jobs (the suite runs that).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
LOCKED = "database is locked"


def drill_study(n_jobs: int) -> dict[str, Any]:
    """One tiny training and ``n_jobs`` evaluations of it (``sample.eta`` takes n values)."""
    etas = [round(i / max(1, n_jobs - 1), 6) for i in range(n_jobs)]
    base = {
        "data": {"dataset": "digits"},
        "model": {"backbone": "unet-tiny"},
        "diffusion": {"timesteps": 100},
        "train": {"steps": 10, "batch_size": 16, "checkpoint_every": 10, "log_every": 5, "warmup_steps": 2},
        "sample": {"sampler": "ddim", "steps": 2, "batch_size": 4},
        "eval": {"num_samples": 4, "metrics": ["nll"], "nll_samples": 2, "nll_timesteps": 2},
    }
    return {"name": f"drill-{n_jobs}", "question": "faults and load drill", "base": base,
            "grid": {"sample.eta": etas}}


@dataclass
class Row:
    scenario: str
    jobs: int
    faults: int  # workers killed, or server restarts
    retries: int
    lost: int
    duplicated: int
    running: int
    locked: bool
    seconds: float
    exit_status: int

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.running or self.locked or self.exit_status)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``mlflow server`` on 127.0.0.1 with an SQLite backend this drill reads directly."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, _free_port(), None
        self.db = root / "server.db"
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.db}",
               "--artifacts-destination", str(self.root / "art")]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (lives as long as the server)
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not come up: "
                                       + (self.root / "server.log").read_text()[-2000:]) from None
                time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def store_runs(db: Path) -> list[dict[str, Any]]:
    """Every run of an MLflow SQLite store, read straight from its database (read-only; no MLflow
    client, so it can poll a store that workers are writing): ``{"run": id, "status": ...}`` plus the
    run's ``bench.*`` tags without the prefix (``key``, ``kind``, ``error``, ``attempts``,
    ``resumed_from`` always there, None where the run has no such tag)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("select run_uuid, status from runs").fetchall()
        tags = con.execute("select run_uuid, key, value from tags where key like 'bench.%'").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()
    out: dict[str, dict[str, Any]] = {
        r: {"run": r, "status": s, **dict.fromkeys(("key", "kind", "error", "attempts", "resumed_from"))}
        for r, s in rows}
    for r, k, v in tags:
        if r in out:
            out[r][k.removeprefix("bench.")] = v
    return list(out.values())


def _busy_workers(driver: int, cpu: dict[int, float]) -> list[Any]:
    """The driver's CPU workers (the fork server's children) that used CPU since the last look
    (``cpu``: pid -> CPU seconds then, updated): a worker running a job, not one waiting for one."""
    import psutil

    busy = []
    try:
        servers = [k for k in psutil.Process(driver).children() if "forkserver" in " ".join(k.cmdline())]
        for w in (w for s in servers for w in s.children()):
            used = sum(w.cpu_times()[:2])
            if used - cpu.get(w.pid, used) > 0.05:
                busy.append(w)
            cpu[w.pid] = used
    except psutil.Error:
        pass
    return busy


def run_scenario(name: str, n_jobs: int, root: Path, *, server: bool = False, kill_every: int | None = None,
                 devices: str = "cpu*4") -> Row:
    """Run the drill grid once under one fault; returns its row of the table."""
    from bench.study import load_study

    folder = root / name
    folder.mkdir(parents=True)
    study = folder / "drill.yaml"
    study.write_text(yaml.safe_dump(drill_study(n_jobs)))
    keys = set(load_study(study).plan().jobs)
    srv = Server(folder) if server else None
    if srv is not None:
        srv.start()
    db = srv.db if srv is not None else folder / "mlflow.db"
    uri = srv.url if srv is not None else f"sqlite:///{db}"
    env = {**os.environ, "BENCH_CACHE_DIR": str(folder / "cache"), "BENCH_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONWARNINGS": "ignore"}
    log = folder / "driver.log"
    cmd = [sys.executable, str(ROOT / "run_ablation.py"), "run", str(study), "--devices", devices,
           "--tracking-uri", uri, "--no-report", "--quiet", "--retries", "3"]
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        driver = subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
        next_kill, restarted, rng, cpu, faults = kill_every, False, random.Random(0), {}, 0
        try:
            while driver.poll() is None:
                time.sleep(0.25)
                done = sum(r["status"] == "FINISHED" and r["kind"] == "eval" for r in store_runs(db))
                if next_kill is not None and kill_every is not None and done >= next_kill:
                    workers = _busy_workers(driver.pid, cpu)
                    if workers:
                        rng.choice(workers).send_signal(signal.SIGKILL)
                        next_kill += kill_every
                        faults += 1
                if srv is not None and not restarted and done >= n_jobs // 3:
                    srv.kill()  # mid-grid: the driver's writes fail until it is back
                    time.sleep(3.0)
                    srv.start()
                    restarted, faults = True, faults + 1
        finally:
            if driver.poll() is None:
                driver.kill()
            driver.wait()
            if srv is not None:
                srv.kill()
    seconds = time.perf_counter() - t0
    runs = [r for r in store_runs(db) if r["key"] in keys]
    finished: dict[str, int] = {}
    for r in runs:
        if r["status"] == "FINISHED":
            finished[r["key"]] = finished.get(r["key"], 0) + 1
    text = log.read_text(errors="replace")
    return Row(name, len(keys), faults, sum(int(r["attempts"] or 1) - 1 for r in runs), len(keys - set(finished)),
               sum(n > 1 for n in finished.values()), sum(r["status"] == "RUNNING" for r in runs),
               LOCKED in text or any(LOCKED in (r["error"] or "") for r in runs), seconds, driver.returncode)


def run_drill(n_jobs: int = 200, kill_every: int = 20, root: Path | None = None) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-drill-") as tmp:
        base = Path(root or tmp)
        return [run_scenario("sqlite", n_jobs, base),
                run_scenario("server-restart", n_jobs, base, server=True),
                run_scenario(f"kill-worker/{kill_every}", n_jobs, base, kill_every=kill_every)]


def table(rows: list[Row]) -> str:
    head = f"{'scenario':<16} {'jobs':>5} {'faults':>6} {'retries':>7} {'lost':>5} {'duplicated':>10} {'running':>7} " \
           f"{'locked':>6} {'wall s':>7}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.scenario:<16} {r.jobs:>5} {r.faults:>6} {r.retries:>7} {r.lost:>5} {r.duplicated:>10} {r.running:>7} "
                     f"{str(r.locked).lower():>6} {r.seconds:>7.1f}  {'yes' if r.ok else 'NO (exit ' + str(r.exit_status) + ')'}")
    return "\n".join(lines)


def main(device: str = "cpu", quick: bool = False) -> None:
    n, every = (8, 3) if quick else (200, 20)
    print(f"drill: {n} eval jobs (+1 training) on 4 CPU workers per scenario; a worker SIGKILLed every {every} "
          "finished jobs in the last")
    rows = run_drill(n, every)
    print(table(rows))
