"""The Optuna search over inference-time axes: real Optuna, real MLflow (SQLite), a tiny trained model.

One model is trained once for the module (through the planner, as ``search`` does); every test
searches guidance on it with its own Optuna storage and its own range, so each is a separate
Optuna study (and MLflow parent run) in the same experiment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.core.errors import BenchError
from bench.study import build_study, load_study

ROOT = Path(__file__).resolve().parents[1]

BASE: dict[str, Any] = {
    "data": {"dataset": "digits"},
    "model": {"backbone": "unet-tiny", "class_cond": True},
    "diffusion": {"timesteps": 100},
    "train": {"steps": 30, "batch_size": 16, "lr": 1.0e-3, "warmup_steps": 5, "ema_decay": 0.9,
              "p_uncond": 0.1, "checkpoint_every": 30, "log_every": 10},
    "sample": {"steps": 2, "batch_size": 65},
    "eval": {"num_samples": 65, "extractor": "domain:digits", "metrics": ["fid", "is"]},  # FID: > 64 features
}


def study_dict(high: float = 4.0, n_trials: int = 6, sample_steps: int = 2, **search: Any) -> dict[str, Any]:
    params = search.pop("params", {"sample.guidance": {"type": "float", "low": 0.0, "high": high}})
    base = {**BASE, "sample": {**BASE["sample"], "steps": sample_steps}}  # inference only: one trained model
    return {"name": "search-test", "question": "which guidance?", "base": base,
            "search": {"params": params, "objectives": ["fid"], "n_trials": n_trials, **search}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A workspace (folder, MLflow store, cache) with the base model trained through the planner."""
    from bench.search import train_base
    from bench.tracking import Tracker

    root = tmp_path_factory.mktemp("search")
    cache = os.environ["BENCH_CACHE_DIR"]  # the session's own (conftest)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", cache)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        uri = f"sqlite:///{root / 'mlflow.db'}"
        study = build_study(study_dict())
        t0 = time.perf_counter()
        train_base(study.configs[0], Tracker(study.name, uri), "cpu", progress=False)
        print(f"trained the base model in {time.perf_counter() - t0:.1f} s")
        yield type("WS", (), {"root": root, "uri": uri, "cache": cache})


def write_study(ws: Any, name: str, **kw: Any) -> Path:
    path = ws.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study_dict(**kw)))
    return path


def trial_runs(uri: str, study: Any) -> list[Any]:
    """The MLflow trial runs of ``study``'s current search."""
    from bench.search.store import trial_runs as runs
    from bench.study.search_spec import optuna_study_name, parse_search
    from bench.tracking import Tracker

    name = optuna_study_name(study.name, study.configs[0], parse_search(study.search, study.configs[0]))
    return runs(Tracker(study.name, uri), name)


def optuna_trials(storage: str, study: Any) -> list[Any]:
    import optuna

    from bench.search import open_storage
    from bench.study.search_spec import optuna_study_name, parse_search

    store, _ = open_storage(storage, study.name)
    name = optuna_study_name(study.name, study.configs[0], parse_search(study.search, study.configs[0]))
    try:
        return optuna.load_study(study_name=name, storage=store).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def states(trials: list[Any]) -> Counter:
    return Counter(t.state.name for t in trials)


def assert_consistent(uri: str, storage: str, study: Any, n: int) -> list[Any]:
    """``n`` COMPLETE trials, unique numbers, one FINISHED MLflow run per COMPLETE trial, none else."""
    trials = optuna_trials(storage, study)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = sorted(t.number for t in trials if t.state.name == "COMPLETE")
    assert len(complete) == n, states(trials)
    finished = [int(r.data.tags["optuna.trial_number"]) for r in trial_runs(uri, study)
                if r.info.status == "FINISHED"]
    assert sorted(finished) == complete  # exactly one FINISHED run per completed trial
    return trials


def cli(ws: Any, path: Path, storage: str, n_trials: int, log: Path, session: bool = False) -> subprocess.Popen:
    """``run_ablation.py search`` in a subprocess (in a process group of its own with ``session``)."""
    env = dict(os.environ, BENCH_CACHE_DIR=ws.cache, MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1",
               BENCH_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "run_ablation.py"), "search", str(path), "--tracking-uri", ws.uri,
           "--storage", storage, "--devices", "cpu", "--n-trials", str(n_trials)]
    return subprocess.Popen(cmd, cwd=ws.root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=session)


def wait_for(cond: Any, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"search exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() - t0 < timeout, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def kill_when(cond: Any, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """SIGKILL ``proc`` at a moment ``cond`` holds. Once it holds, it is checked again with the process
    stopped (SIGSTOP), so the state cannot move on between that check and the kill."""
    def holds() -> bool:
        try:
            return bool(cond())
        except Exception:  # noqa: BLE001 - stopped mid-commit: the store is locked, look again later
            return False

    t0 = time.monotonic()
    while True:
        assert proc.poll() is None, f"search exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() - t0 < timeout, f"timed out:\n{log.read_text()[-3000:]}"
        if holds():
            proc.send_signal(signal.SIGSTOP)
            if holds():
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.1)


# --- end to end --------------------------------------------------------------------------------


def test_guidance_search_end_to_end_with_a_failing_trial(ws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """6 trials; the 2nd evaluation produces NaN images: FAIL / FAILED with the reason, search goes on.
    The reported best is the best FINISHED trial in MLflow and Optuna's best trial."""
    import bench.jobs
    from bench.report.search import search_section
    from bench.search import run_search

    real, calls = bench.jobs.eval.generate, []

    def flaky(cfg: Any, *args: Any, **kw: Any) -> Any:
        calls.append(cfg.sample.guidance)
        if len(calls) == 2:
            raise FloatingPointError(f"3 of {cfg.eval.num_samples} generated images contain NaN or inf")
        return real(cfg, *args, **kw)

    monkeypatch.setattr(bench.jobs.eval, "generate", flaky)
    study = load_study(write_study(ws, "e2e", high=4.0))
    storage = str(ws.root / "e2e.db")
    summary = run_search(study, tracking_uri=ws.uri, storage=storage, devices="cpu", progress=False)
    assert summary.n_complete == 6 and summary.failed_here == 1
    trials = assert_consistent(ws.uri, storage, study, 6)
    assert states(trials) == {"COMPLETE": 6, "FAIL": 1}
    runs = trial_runs(ws.uri, study)
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 1 and "NaN" in failed[0].data.tags["bench.error"]
    assert failed[0].data.tags["optuna.trial_number"] == str(next(t.number for t in trials if t.state.name == "FAIL"))
    ok = [r for r in runs if r.info.status == "FINISHED"]
    r0 = ok[0]
    assert r0.data.params["sample.guidance"] and r0.data.params["train.p_uncond"] == "0.1"  # full config
    assert r0.data.tags["mlflow.parentRunId"] == summary.parent_run_id
    parent = r0.data.tags["mlflow.parentRunId"]
    from mlflow.tracking import MlflowClient

    p = MlflowClient(ws.uri).get_run(parent)
    assert p.data.tags["bench.kind"] == "search" and p.info.status == "FINISHED"
    assert p.data.tags["optuna.study_name"] == summary.study_name and storage in p.data.tags["optuna.storage"]

    best_mlflow = min(ok, key=lambda r: r.data.metrics["fid"])
    sec = search_section(study, tracking_uri=ws.uri, storage=storage)
    assert [b["trial"] for b in sec["best"]] == [int(best_mlflow.data.tags["optuna.trial_number"])]
    assert sec["best"][0]["metrics"]["fid"] == pytest.approx(best_mlflow.data.metrics["fid"])
    assert summary.best[0]["number"] == sec["best"][0]["trial"]
    assert len(sec["trials"]) == 7 and set(sec["trials"]["state"]) == {"FINISHED", "FAILED"}
    assert sec["images"]["search_objective.png"].startswith(b"\x89PNG")
    assert "sample.guidance" in sec["markdown"] and "search_objective.png" in sec["html"]
    assert sec["optuna"]["counts"] == {"COMPLETE": 6, "FAIL": 1}
    assert "7 trials ran: 6 finished, 1 failed or cut off" in sec["markdown"]  # what ran, not "of n_trials"

    from bench.report import build_report  # the study report carries the search section

    folder = build_report(study, tracking_uri=ws.uri, out_dir=ws.root / "reports")
    text = (folder / "report.md").read_text()
    assert sec["markdown"].splitlines()[0] in text
    assert "1 grid evaluation expected: 1 not run;" in text  # the search ran trials, not the grid's base point
    protocol = text.split("## Protocol")[1]  # from the trials' runs: backend and weights, not "—"
    assert "| backend " in protocol and "torch-fidelity" in protocol and "| weights sha256 | —" not in protocol
    assert (folder / "search_objective.png").read_bytes().startswith(b"\x89PNG")
    assert "data:image/png;base64," in (folder / "report.html").read_text().split(sec["title"])[-1]


METHOD_PARAMS = {
    "sample.guidance_method": {"choices": ["cfg", "cfg-interval", "apg"]},
    "sample.guidance": {"type": "float", "low": 0.5, "high": 4.0},
    "sample.guidance_options.sigma_lo": {"type": "float", "low": 0.02, "high": 1.0, "log": True},
    "sample.guidance_options.sigma_hi": {"type": "float", "low": 1.0, "high": 50.0, "log": True},
}


def test_search_over_the_guidance_method_and_its_interval_on_one_checkpoint(ws: Any) -> None:
    """The method as a categorical with w and cfg-interval's (sigma_lo, sigma_hi] searched jointly:
    a trial draws the interval only when its method is cfg-interval, runs with exactly the drawn
    settings, and the report's Pareto front is drawn across methods. No training (the ws model)."""
    from bench.report.search import search_section
    from bench.search import run_search

    study = load_study(write_study(ws, "methods", n_trials=6, params=METHOD_PARAMS,
                                   objectives=[{"metric": "fid", "direction": "minimize"},
                                               {"metric": "is_mean", "direction": "maximize"}],
                                   sampler="random"))  # fmt: skip
    storage = str(ws.root / "methods.db")
    summary = run_search(study, tracking_uri=ws.uri, storage=storage, devices="cpu", progress=False)
    assert summary.n_complete == 6
    trials = {t.number: t for t in assert_consistent(ws.uri, storage, study, 6)}
    methods = set()
    for run in trial_runs(ws.uri, study):
        params, trial = run.data.params, trials[int(run.data.tags["optuna.trial_number"])]
        method = trial.params["sample.guidance_method"]
        methods.add(method)
        assert params.get("sample.guidance_method", "cfg") == method  # the default is not logged (OMIT_DEFAULT)
        assert float(params["sample.guidance"]) == pytest.approx(trial.params["sample.guidance"])
        drawn = {k for k in trial.params if k.startswith("sample.guidance_options.")}
        logged = {k for k in params if k.startswith("sample.guidance_options.")}
        if method == "cfg-interval":
            assert drawn == logged == {"sample.guidance_options.sigma_lo", "sample.guidance_options.sigma_hi"}
            assert float(params["sample.guidance_options.sigma_lo"]) < float(params["sample.guidance_options.sigma_hi"])
        else:
            assert not drawn and not logged
        # cost is honest: every call guided at w > 0, only those inside the interval for cfg-interval
        guided, nfe = run.data.metrics["guided_calls"], run.data.metrics["nfe"]
        assert guided <= nfe if method == "cfg-interval" else guided == nfe
    assert len(methods) >= 2  # random sampling over 3 methods in 6 trials (seed 0)
    sec = search_section(study, tracking_uri=ws.uri, storage=storage)
    assert sec["images"]["search_pareto.png"].startswith(b"\x89PNG")
    frame = sec["trials"]
    assert set(frame["sample.guidance_method"]) == methods  # cfg too, though its default is not logged
    assert frame.loc[frame["sample.guidance_method"] != "cfg-interval", "sample.guidance_options.sigma_lo"].isna().all()


def test_guidance_option_ranges_are_checked_before_work() -> None:
    bad = {**METHOD_PARAMS, "sample.guidance_options.sigma_lo": {"type": "float", "low": 0.02, "high": 2.0}}
    with pytest.raises(BenchError, match="overlaps sigma_hi's"):
        build_study(study_dict(params=bad))
    bad = {**METHOD_PARAMS, "sample.guidance_options.sigma_low": {"type": "float", "low": 0.1, "high": 0.2}}
    with pytest.raises(BenchError, match="no guidance method searched here.*sigma_low.*Did you mean 'sigma_lo'"):
        build_study(study_dict(params=bad))
    bad = {**METHOD_PARAMS, "sample.guidance_options.momentum": {"type": "float", "low": -2.0, "high": 0.0}}
    with pytest.raises(BenchError, match="momentum.low = -2.0 is outside"):
        build_study(study_dict(params=bad))


def trial_in_flight(ws: Any, storage: str, study: Any, complete: int) -> Any:
    """A condition: ``complete`` trials done and one RUNNING in Optuna with its MLflow run started."""
    def holds() -> bool:
        trials = optuna_trials(storage, study)
        running = [t.number for t in trials if t.state.name == "RUNNING"]
        started = {r.data.tags.get("optuna.trial_number") for r in trial_runs(ws.uri, study)
                   if r.info.status == "RUNNING"}
        return states(trials)["COMPLETE"] >= complete and len(running) == 1 and str(running[0]) in started
    return holds


def test_killed_search_resumes_without_duplicates(ws: Any) -> None:
    """kill -9 mid-trial after 3 complete trials; the rerun ends with 6 COMPLETE, no duplicates."""
    from bench.search import run_search

    # trials of 30 guided steps (about a second each), so the kill lands inside one whatever the load
    path = write_study(ws, "kill", high=3.0, sample_steps=30)
    study = load_study(path)
    storage = str(ws.root / "kill.db")
    log = ws.root / "kill.out"
    proc = cli(ws, path, storage, 6, log)
    try:
        kill_when(trial_in_flight(ws, storage, study, complete=3), proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    cut = [t for t in optuna_trials(storage, study) if t.state.name == "RUNNING"]
    assert len(cut) == 1 and 3 <= states(optuna_trials(storage, study))["COMPLETE"] < 6
    summary = run_search(study, tracking_uri=ws.uri, storage=storage, devices="cpu", progress=False)
    assert summary.n_complete == 6
    trials = assert_consistent(ws.uri, storage, study, 6)
    assert {t.number: t.state.name for t in trials}[cut[0].number] == "FAIL"  # the stale trial
    killed = [r for r in trial_runs(ws.uri, study) if r.data.tags["optuna.trial_number"] == str(cut[0].number)]
    assert [r.info.status for r in killed] == ["KILLED"]


@pytest.mark.parametrize(("signum", "group"), [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c", "sigterm"])
def test_signal_stops_a_search_cleanly(ws: Any, signum: int, group: bool) -> None:
    """Ctrl-C (SIGINT to the process group) or SIGTERM mid-trial: exit 128 + signal, no traceback, one
    line saying what finished, what was cut and how to resume; the cut trial FAIL, its run KILLED."""
    name = signal.Signals(signum).name
    path = write_study(ws, f"stop-{name}", high=2.0, sample_steps=30)  # trials of about a second
    study = load_study(path)
    storage = str(ws.root / f"stop-{name}.db")
    log = ws.root / f"stop-{name}.out"
    proc = cli(ws, path, storage, 6, log, session=group)
    try:
        wait_for(trial_in_flight(ws, storage, study, complete=1), proc, log)
        os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 128 + signum, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    trials = optuna_trials(storage, study)
    done = states(trials)["COMPLETE"]
    assert last.startswith(f"stopped by {name}: {done} trial(s) finished and kept; 1 cut off (marked KILLED)"), last
    assert last.endswith(f"run_ablation.py search {path} --tracking-uri {ws.uri} --storage {storage} "
                         f"--devices cpu --n-trials 6"), last
    assert states(trials)["RUNNING"] == 0 and states(trials)["FAIL"] == 1, states(trials)
    cut = next(t.number for t in trials if t.state.name == "FAIL")
    status = {r.data.tags["optuna.trial_number"]: r.info.status for r in trial_runs(ws.uri, study)}
    assert status.pop(str(cut)) == "KILLED" and set(status.values()) == {"FINISHED"}, status


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_workers_share_a_storage(ws: Any, kind: str, request: pytest.FixtureRequest) -> None:
    """A CLI worker and this process on one journal file (one machine) or one PostgreSQL database
    (several machines) complete 6 trials between them, each trial number run once. This process
    completes trial 0 before the CLI starts and joins again once the CLI has claimed a trial, so each
    owns a trial whichever is faster from there on."""
    from bench.search import run_search

    path = write_study(ws, f"workers-{kind}", high={"journal": 5.0, "postgresql": 6.0}[kind])
    study = load_study(path)
    storage = f"journal:{ws.root / 'workers.log'}" if kind == "journal" else request.getfixturevalue("postgres")
    log = ws.root / f"workers-{kind}.out"
    run_search(study, tracking_uri=ws.uri, storage=storage, devices="cpu", n_trials=1, progress=False)
    proc = cli(ws, path, storage, 6, log)
    try:
        wait_for(lambda: len(optuna_trials(storage, study)) >= 2, proc, log)
        run_search(study, tracking_uri=ws.uri, storage=storage, devices="cpu", progress=False)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    trials = assert_consistent(ws.uri, storage, study, 6)
    owners = {t.user_attrs["bench.owner"] for t in trials if t.state.name == "COMPLETE"}
    assert len(owners) == 2  # both processes ran trials
    surplus = [t for t in trials if t.state.name == "FAIL"]
    assert all(t.user_attrs.get("bench.surplus") for t in surplus)


# --- bad input: one clear BenchError each, before any work -------------------------------------


def load_bad(**kw: Any) -> BenchError:
    with pytest.raises(BenchError) as e:
        build_study(study_dict(**kw), source="bad.yaml")
    return e.value


@pytest.mark.parametrize("key", ["diffusion.objective", "model.backbone", "train.lr"])
def test_training_time_axis_needs_a_grid(key: str) -> None:
    spec = {"type": "categorical", "choices": ["eps", "v"]} if key == "diffusion.objective" else {
        "type": "categorical", "choices": ["unet-tiny", "unet-small"]} if key == "model.backbone" else {
        "type": "float", "low": 1e-4, "high": 1e-3, "log": True}
    msg = str(load_bad(params={key: spec}))
    assert msg.startswith("bad.yaml: search.params.") and key in msg and "training-time" in msg and "grid" in msg


@pytest.mark.parametrize(("low", "high", "word"), [(2.0, 2.0, "empty"), (5.0, 1.0, "inverted")])
def test_empty_or_inverted_range(low: float, high: float, word: str) -> None:
    msg = str(load_bad(params={"sample.guidance": {"type": "float", "low": low, "high": high}}))
    assert "search.params.sample.guidance" in msg and word in msg


@pytest.mark.parametrize("change", [{"model": {"class_cond": False}, "train": {"p_uncond": 0.0}},
                                    {"train": {"p_uncond": 0.0}}])
def test_guidance_needs_a_conditional_model_with_label_dropout(change: dict[str, Any]) -> None:
    bad = study_dict()
    bad["base"] = {k: {**v, **change.get(k, {})} for k, v in BASE.items()}
    with pytest.raises(BenchError, match=r"search\.params\.sample\.guidance: guidance needs a class-conditional"):
        build_study(bad)


def test_unknown_sampler_did_you_mean() -> None:
    msg = str(load_bad(sampler="tpee"))
    assert "search.sampler" in msg and "Did you mean 'tpe'" in msg and "gp" in msg and "cmaes" in msg


def test_other_bad_sections() -> None:
    assert "Did you mean 'objectives'" in str(load_bad(objective=["fid"]))
    assert "kid" in str(load_bad(objectives=["kid_mean"]))  # not measured: add kid to eval.metrics
    assert "Pareto" in str(load_bad(objectives=["fid", "is_mean"], sampler="cmaes"))
    assert "eval.num_samples" in str(load_bad(params={"eval.num_samples": {"type": "int", "low": 70, "high": 90}}))
    assert "integer" in str(load_bad(params={"sample.steps": {"type": "float", "low": 2, "high": 5}}))
    assert "diffusion.timesteps" in str(load_bad(params={"sample.steps": {"choices": [5, 500]}}))
    assert "eta" in str(load_bad(params={"sample.eta": {"type": "float", "low": 0.0, "high": 2.0}}))
    assert "log" in str(load_bad(params={"sample.guidance": {"type": "float", "low": 0.0, "high": 4.0, "log": True}}))


def test_two_objectives_and_budget_parse() -> None:
    from bench.study.search_spec import parse_search

    s = build_study(study_dict(objectives=[{"metric": "fid", "direction": "minimize"}, "is_mean"],
                               budget={"seconds_per_image": 0.05}, sampler="nsga2"))
    spec = parse_search(s.search, s.configs[0])
    assert [(o.metric, o.direction) for o in spec.objectives] == [("fid", "minimize"), ("is_mean", "maximize")]
    assert spec.budget == {"seconds_per_image": 0.05} and spec.sampler == "nsga2"


def test_unreachable_storage_fails_fast_before_any_work(tmp_path: Path) -> None:
    import optuna  # noqa: F401 - imported before the clock starts: a cold import is no connection's wait

    from bench.search import run_search

    study = build_study(study_dict())
    t0 = time.perf_counter()
    with pytest.raises(BenchError, match=r"--storage postgresql://user@127\.0\.0\.1:1/db: .*"
                                         r"(the database driver .* is not installed .*; pip install|unreachable)"):
        run_search(study, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", storage="postgresql://user@127.0.0.1:1/db",
                   devices="cpu", progress=False)
    assert time.perf_counter() - t0 < 15
    assert not (tmp_path / "m.db").exists()  # nothing was started


def test_server_port_closed_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the driver present, a closed port answers 'unreachable' within seconds."""
    import bench.search.store
    from bench.search.store import resolve_storage

    monkeypatch.setattr(bench.search.store, "load_driver", lambda url: None)  # as if installed
    for dialect in ("postgresql", "mysql"):
        with pytest.raises(BenchError, match="127.0.0.1:1 is unreachable"):
            resolve_storage(f"{dialect}://user:secret@127.0.0.1:1/db", "s")
    with pytest.raises(BenchError, match="journal file"):
        resolve_storage("nonsense", "s")


def test_missing_database_driver_says_what_to_install() -> None:
    import importlib.util

    from bench.search.store import resolve_storage

    if importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed")
    with pytest.raises(BenchError, match=r"driver 'psycopg2' is not installed .*; pip install psycopg2-binary"):
        resolve_storage("postgresql+psycopg2://user@127.0.0.1:1/db", "s")


def test_cmaes_needs_its_package_or_penalizes_over_budget_trials(tmp_path: Path) -> None:
    """cmaes cannot use Optuna constraints: over-budget values are pushed behind every feasible one."""
    import importlib.util

    from bench.search.run import PENALTY, _Runner, run_search
    from bench.study.search_spec import parse_search

    study = build_study(study_dict(sampler="cmaes", budget={"seconds_per_image": 0.01}))
    if importlib.util.find_spec("cmaes") is None:
        with pytest.raises(BenchError, match="pip install cmaes"):
            run_search(study, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", storage=str(tmp_path / "o.db"),
                       devices="cpu", progress=False)
        assert not (tmp_path / "m.db").exists()
    spec = parse_search(study.search, study.configs[0])
    runner = _Runner(None, None, None, spec, study.configs[0], "n", "p", "cpu", False)
    ok = {"metrics": {"fid": 50.0, "seconds_per_image": 0.005}}
    over = {"metrics": {"fid": 10.0, "seconds_per_image": 0.02}}
    assert runner._constrain(None, ok, [50.0]) == ([50.0], True)
    values, feasible = runner._constrain(None, over, [10.0])
    assert not feasible and values == [10.0 + PENALTY * 2] and values[0] > 50.0
    assert "search.penalized_values" in over["tags"]


def test_pareto_front_of_two_objectives_skips_infeasible_and_failed() -> None:
    import pandas as pd

    from bench.report.search import best_trials
    from bench.study.search_spec import parse_search

    s = build_study(study_dict(objectives=["fid", "is_mean"], budget={"seconds_per_image": 0.1}))
    spec = parse_search(s.search, s.configs[0])
    trials = pd.DataFrame({
        "trial": [0, 1, 2, 3, 4, 5], "state": ["FINISHED"] * 5 + ["FAILED"], "run_id": list("abcdef"),
        "sample.guidance": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        "fid": [10.0, 12.0, 11.0, 5.0, 20.0, 1.0], "is_mean": [2.0, 3.0, 1.5, 9.0, 4.0, 9.0],
        "feasible": [True, True, True, False, True, False]})
    front = best_trials(trials, spec)
    assert [b["trial"] for b in front] == [0, 1, 4]  # 2 is dominated by 0; 3 over budget; 5 failed
    assert front[0]["params"] == {"sample.guidance": 0.0} and front[1]["metrics"]["is_mean"] == 3.0


def _sampler_names() -> list[str]:
    from bench.study.search_spec import SEARCH_SAMPLERS

    return SEARCH_SAMPLERS.names()


@pytest.mark.parametrize("name", _sampler_names())
def test_every_registered_sampler_runs_with_a_budget(name: str) -> None:
    """Each search sampler: built from its seed, asks/tells a few trials (two objectives where it
    can) with a constraint where it reads them; a missing optional package is one BenchError."""
    import optuna

    from bench.search.run import _suggest, make_sampler
    from bench.study.search_spec import SEARCH_SAMPLERS, Param

    meta = SEARCH_SAMPLERS.meta(name)
    try:
        sampler = make_sampler(name, 0)
    except BenchError as e:
        assert "pip install" in str(e)
        pytest.skip(str(e))
    directions = ["minimize", "maximize"] if meta["multi_objective"] else ["minimize"]
    study = optuna.create_study(sampler=sampler, directions=directions)
    for _ in range(4):
        trial = study.ask()
        w = _suggest(trial, Param("sample.guidance", "float", 0.0, 8.0))
        steps = _suggest(trial, Param("sample.steps", "categorical", choices=(10, 20)))
        if meta["constraints"]:
            trial.set_constraint("seconds_per_image", steps / 10 - 1.5)
        study.tell(trial, [(w - 2) ** 2, w][: len(directions)])
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 4
