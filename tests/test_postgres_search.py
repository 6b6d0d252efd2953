"""Shared search storage: an Optuna search whose trials live in a PostgreSQL server started on 127.0.0.1
(the ``postgres`` fixture of conftest.py). Skipped, with the reason, only where the PostgreSQL server
binaries or the driver are missing.
"""

from __future__ import annotations

import yaml
from tiny import tiny_study

STUDY = {
    **tiny_study("pg-search", train_steps=10, question="do search trials land in a shared PostgreSQL storage?",
                 train={"batch_size": 16}, sample={"steps": 2}, eval={"num_samples": 10, "nll_samples": 2}),
    "search": {"params": {"sample.steps": {"type": "categorical", "choices": [2, 3]}},
               "objectives": [{"metric": "seconds_per_image", "direction": "minimize"}],
               "n_trials": 2, "sampler": "random", "seed": 0},
}


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
