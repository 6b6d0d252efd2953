"""A clean stop: SIGINT (Ctrl-C, to the whole process group) or SIGTERM (to the driver) stops a real
``run``: its workers end, the runs in flight are KILLED, one line says what finished, what will be
redone and how to resume, the exit status is 130 / 143, and nothing prints a traceback. The next
run finishes the grid, each job once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
from test_execute import ROOT, wait_for, write
from tiny import tiny_study

from bench.perf.drill import store_runs


def start(study, db, env) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "run_ablation.py"), "run", str(study), "--devices", "cpu*2",
           "--tracking-uri", f"sqlite:///{db}", "--no-report"]
    return subprocess.Popen(cmd, cwd=study.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own process group, as in a terminal


def stopped(proc: subprocess.Popen, sig: int, group: bool) -> tuple[int, str, str]:
    kids = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    _, alive = psutil.wait_procs(kids, timeout=30)
    assert not alive, f"processes left running after the stop: {alive}"
    return proc.returncode, out, err


def check_stop_output(rc: int, out: str, err: str, expected: int) -> None:
    assert rc == expected, (rc, out, err)
    assert "Traceback" not in out + err and "leaked" not in err, err
    lines = [ln for ln in (out + err).splitlines() if "stopped by" in ln]
    assert len(lines) == 1, lines
    assert "run_ablation.py run" in lines[0] and "marked KILLED" in lines[0], lines[0]


def test_sigint_mid_training_and_sigterm_mid_eval_stop_cleanly_and_resume(tmp_path):
    env = dict(os.environ, BENCH_CACHE_DIR=str(tmp_path / "cache"), MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONUNBUFFERED="1", BENCH_THREADS="1")
    study = write(tmp_path, tiny_study("stop", {"diffusion.objective": ["eps", "v"]}, train_steps=60,
                                       sample={"steps": 40}, eval={"num_samples": 100}))
    db = tmp_path / "mlflow.db"

    # Ctrl-C in a terminal: SIGINT to the whole process group, mid-training
    proc = start(study, db, env)
    ckpts = tmp_path / "cache" / "train"
    wait_for(lambda: any(ckpts.glob("*/checkpoint.pt")), what="a first training checkpoint")
    rc, out, err = stopped(proc, signal.SIGINT, group=True)
    check_stop_output(rc, out, err, 130)
    first = store_runs(db)
    assert {r["status"] for r in first if r["kind"] == "train"} == {"KILLED"}, first
    assert not any(r["status"] == "RUNNING" for r in first)

    # SIGTERM to the driver alone, mid-evaluation
    proc = start(study, db, env)
    wait_for(lambda: any(r["kind"] == "eval" and r["status"] == "RUNNING" for r in store_runs(db)),
             what="an evaluation running")
    rc, out, err = stopped(proc, signal.SIGTERM, group=False)
    check_stop_output(rc, out, err, 143)
    second = store_runs(db)
    cut = {r["run"] for r in second if r["kind"] == "eval" and r["status"] == "KILLED"}
    assert cut and not any(r["status"] == "RUNNING" for r in second), second

    proc = start(study, db, env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    final = store_runs(db)
    assert {r["status"] for r in final if r["run"] in cut} == {"KILLED"}
    keys = [r["key"] for r in final if r["status"] == "FINISHED"]
    assert len(keys) == len(set(keys)) == 4  # 2 trainings + 2 evaluations, each once
    assert not any(r["status"] == "RUNNING" for r in final)
