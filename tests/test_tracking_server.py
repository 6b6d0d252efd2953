"""Shared tracking: a grid logged to an ``mlflow server`` this test starts (and stops) on 127.0.0.1,
read back with MlflowClient and turned into a report from the server; an unreachable server
fails before any work, in well under 30 s, with one clear message."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from tiny import tiny_study

from bench.core.errors import BenchError

STUDY = {**tiny_study("server-grid", {"sample.sampler": ["ddim", "ddpm"]}, train_steps=10,
                      question="do runs reach a shared tracking server?", train={"batch_size": 16},
                      sample={"steps": 3, "batch_size": 70},
                      eval={"num_samples": 70, "extractor": "domain:digits", "metrics": ["fid"]}),
         "tables": [{"rows": "sample.sampler", "values": "fid"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_ports(proc: subprocess.Popen) -> set[int]:
    """The TCP ports that ``proc`` or one of its descendants listens on: this test's own server, not
    whatever else on the machine answers on a port."""
    import psutil

    ports = set()
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        return ports
    for p in family:
        try:
            ports |= {c.laddr.port for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass
    return ports


def start_server(tmp_path: Path, port: int, log) -> tuple[subprocess.Popen, bool]:
    """(``mlflow server`` on ``port``, whether it came up); it did not when the port was taken
    between :func:`free_port` and the server's bind (another process on the machine got it first)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "art")]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            # without MLflow's job runner: eight consumer processes the bench never uses
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
                                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + 180  # a cold start on a loaded 2-core machine
    try:
        while True:
            if port in listening_ports(proc):  # ours, so the answer below is our server's
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
                    return proc, True
                except OSError:
                    pass
            if proc.poll() is not None:
                text = (tmp_path / "server.log").read_text()
                assert "address already in use" in text.lower(), text[-3000:]
                return proc, False
            assert time.monotonic() < deadline, "mlflow server did not come up in 180 s"
            time.sleep(0.5)
    except BaseException:
        stop_server(proc)
        raise


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker: the group we started
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def server(tmp_path):
    """``mlflow server`` on 127.0.0.1:<free port>, SQLite backend, proxied artifacts; stopped after."""
    log = open(tmp_path / "server.log", "wb")
    try:
        for _ in range(3):  # a port taken by another process meanwhile: another port
            port = free_port()
            proc, up = start_server(tmp_path, port, log)
            if up:
                break
            stop_server(proc)
        assert up, (tmp_path / "server.log").read_text()[-3000:]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_server(proc)
    finally:
        log.close()


def test_grid_on_a_tracking_server(server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from bench.cli import main
    from bench.pipeline import run_study
    from bench.tracking import Tracker

    monkeypatch.setenv("BENCH_THREADS", "1")
    monkeypatch.chdir(tmp_path)  # nothing may land in ./mlflow.db: everything goes to the server
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    summary = run_study(path, tracking_uri=server, devices="cpu", progress=False, report=False)
    assert summary is not None and len(summary.finished) == 3 and not summary.failed

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("server-grid")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["bench.kind"] for r in runs) == ["eval", "eval", "train"]
    assert all(r.info.status == "FINISHED" for r in runs)
    evals = [r for r in runs if r.data.tags["bench.kind"] == "eval"]
    assert sorted(r.data.params["sample.sampler"] for r in evals) == ["ddim", "ddpm"]
    assert all("fid" in r.data.metrics for r in evals)
    names = {a.path for a in client.list_artifacts(evals[0].info.run_id)}
    assert {"config.yaml", "samples.png"} <= names  # uploaded through the server's artifact proxy
    assert any((tmp_path / "art").rglob("samples.png"))
    assert not (tmp_path / "mlflow.db").exists()

    # one report from the server's runs, as a second machine would write it
    assert main(["report", str(path), "--tracking-uri", server, "--out", str(tmp_path / "reports")]) == 0
    assert (tmp_path / "reports" / "server-grid" / "report.md").exists()
    # `run` again: every job is done, nothing reruns, and its report goes where --out says
    assert main(["run", str(path), "--tracking-uri", server, "--devices", "cpu", "--quiet",
                 "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "server-grid" / "report.html").exists()
    assert len(client.search_runs([exp.experiment_id])) == 3
    names = [r.info.run_name for r in runs]
    assert sorted(names) == ["ddim", "ddpm", "train digits unet-tiny seed=0"]
    assert {r.data.tags["bench.label"] for r in runs if r.data.tags["bench.kind"] == "eval"} == {
        "eval sampler=ddim", "eval sampler=ddpm"}  # the full label, as the plan wrote it
    if CHROMIUM:  # the MLflow UI, as a user opens the URL `run` prints, lists the study's runs
        url = Tracker("server-grid", server).runs_view()
        assert "viewStateShareKey=" in url
        dom = _rendered_dom(url, tmp_path, tmp_path / "runs-view.png")
        page = _text(dom)
        assert "Runs" in page and "Traces 0" not in page  # the model-training view, not the GenAI overview
        assert all(name in page for name in names)
        assert exp.tags["mlflow.note.content"] in page  # the study's question as the description
        # the study's metric and axis are columns of the table on first load, sorted by FID ascending
        columns = set(re.findall(r'col-id="([^"]+)"', dom))
        assert {"metrics.`fid`", "params.`sample.sampler`"} <= columns, sorted(columns)
        fids = {r.info.run_name: r.data.metrics["fid"] for r in runs if "fid" in r.data.metrics}
        shown = re.findall(r"\b(dd[ip]m)\b", page)
        assert shown and shown[0] == min(fids, key=fids.get)  # the better run is listed first


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _rendered_dom(url: str, tmp_path: Path, screenshot: Path | None = None) -> str:
    """The DOM of ``url`` after headless Chromium (1600 x 1000, a laptop's screen) ran its scripts;
    with ``screenshot``, a second load saves what the screen shows there."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--window-size=1600,1000",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'ui'}", "--virtual-time-budget=30000"]
    dom = subprocess.run([*flags, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=180).stdout
    if screenshot is not None:
        subprocess.run([*flags, f"--screenshot={screenshot}", url], check=True, capture_output=True, timeout=180)
    return dom


def _text(dom: str) -> str:
    """The visible text of a DOM."""
    import html

    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def test_unreachable_server_fails_fast_before_any_work(tmp_path, monkeypatch):
    from bench.pipeline import run_study

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_CONNECT_TIMEOUT", "2")  # the silent server is given up on after 2 s, not 10
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    import mlflow  # noqa: F401 - imported before the clock starts: a cold import is no server's wait

    closed = socket.socket()  # bound and never listening: refuses connections, and no one else gets the port
    closed.bind(("127.0.0.1", 0))
    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        for sock in (closed, silent):
            uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
            t0 = time.monotonic()
            with pytest.raises(BenchError, match="tracking server .* is unreachable"):
                run_study(path, tracking_uri=uri, devices="cpu", progress=False, report=False)
            assert time.monotonic() - t0 < 8  # the default 10 s wait would fail this
    finally:
        closed.close()
        silent.close()
    assert not Path(tmp_path / "cache" / "train").exists()


def test_run_names_lead_with_the_sampler_and_leave_out_what_it_ignores() -> None:
    """The plan's label -> the MLflow run name: sampler, its knobs, steps, guidance, then training axes;
    DDPM declares no eta, so its name has none (the label in bench.label keeps every axis)."""
    import json

    from bench.tracking import run_name, view_state

    label = "eval steps=10 guidance=2 sampler=ddim eta=0 | objective=eps"
    assert run_name("eval", label) == "ddim eta=0 10 steps w=2 eps"
    assert run_name("eval", label.replace("ddim eta=0", "ddpm eta=1")) == "ddpm 10 steps w=2 eps"
    assert run_name("train", "train objective=v") == "train v"
    assert run_name("eval", "eval ddim steps=10 eta=0 w=0") == "ddim eta=0 10 steps w=0"  # no axes: the fallback
    state = json.loads(json.loads(view_state([("fid", False), ("is_mean", True)], ["sample.eta"], "v", 27))["state"])
    assert state["orderByKey"] == "metrics.`fid`" and state["orderByAsc"] is True  # FID: lower is better
    assert state["selectedColumns"] == ["metrics.`fid`", "metrics.`is_mean`", "params.`sample.eta`"]
    assert state["columnWidths"]["attributes.`Run Name`"] >= 7 * 27  # room for the longest name
