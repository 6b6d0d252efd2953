"""Every shipped study runs every cell: each file in ablations/ through plan, execute and report at
smoke scale (overrides shrink training steps and sample counts, never the grid), and every cell of
every table is filled. Every ``*_full.yaml`` plans offline, or stops at one data/weights message.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from latex import PDFLATEX, compile_latex

from bench.core.errors import BenchError
from bench.study import build_study, load_study, read_study_file

ABLATIONS = Path(__file__).resolve().parents[1] / "ablations"
# full scale: the papers' protocol (*_full), or a released checkpoint to download (*_pretrained)
FULL = sorted(p for p in ABLATIONS.glob("*.yaml") if p.stem.endswith(("_full", "_pretrained")))
SMALL = sorted(p for p in ABLATIONS.glob("*.yaml") if p not in FULL)
SMOKE = {  # a study's size, not its grid: fewer steps and samples, a smaller network where it is no axis
    "model.backbone": "unet-micro", "train.steps": 8, "train.checkpoint_every": 8, "train.log_every": 4, "train.warmup_steps": 2,
    "train.batch_size": 32, "eval.num_samples": 65, "eval.nll_samples": 2, "eval.kid_subset_size": 32,
    "vae.steps": 6, "vae.batch_size": 32,
    "eval.nll_timesteps": 16,  # NLL's unbiased 16-term estimate, not all 1000 terms (the full bound: test_metrics)
}


def smoke_overrides(path: Path) -> dict[str, Any]:
    raw = read_study_file(path)
    axes = {k for kind in ("grid", "zip") for k in _flat(raw.get(kind) or {})}
    has_vae = "vae" in (raw.get("base") or {})
    return {k: v for k, v in SMOKE.items() if k not in axes and (has_vae or not k.startswith("vae."))}


def _flat(d: dict[str, Any], prefix: str = "") -> list[str]:
    return [k for key, v in d.items() for k in (_flat(v, f"{prefix}{key}.") if isinstance(v, dict) else
                                                [f"{prefix}{key}"])]


@pytest.mark.parametrize("path", SMALL, ids=[p.stem for p in SMALL])
def test_shipped_study_fills_every_cell(path: Path, tmp_path, monkeypatch) -> None:
    from bench.pipeline import run_study
    from bench.report import study_tables

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_THREADS", "1")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = smoke_overrides(path)
    raw = read_study_file(path)  # one replicate: every cell of the grid, each seen once
    raw["seeds"] = list(raw.get("seeds", [0]))[:1]
    small = tmp_path / path.name
    small.write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "baselines").symlink_to(ABLATIONS.parent / "baselines")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_study(small, tracking_uri=uri, devices="cpu*2", progress=False, overrides=overrides)
    assert summary is not None and not summary.failed, summary
    study = load_study(small, overrides)
    assert (tmp_path / "reports" / study.name / "report.html").is_file()
    if PDFLATEX:  # every table of every shipped study compiles as LaTeX
        assert compile_latex(tmp_path / "reports" / study.name / "tables.tex", tmp_path).is_file()
    for table in study_tables(study, uri):
        ours = [c for c in table.state.columns if not (isinstance(c, tuple) and c[-1] == "paper")]  # the
        states = table.state[ours]  # paper's columns say "missing" where the paper has no number
        bad = {(r, c): v for c in ours for r, v in states[c].items() if v != "ok"}
        assert ours and not bad, f"{path.name}: table {table.title!r} has unfilled cells: {bad}"
        if table.spec.interval == "ci":  # the runs' bootstrap bounds reached the table
            assert any("[" in t for t in table.text.to_numpy().ravel()), table.text
        if table.spec.significance:  # the paired test found every run's stored features
            assert any(n.startswith("†:") for n in table.notes) and not any("Not tested" in n for n in table.notes)
    import mlflow

    exp = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(study.name)
    first = study.tables[0]["values"] if study.tables else None
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens it on its runs
    assert exp.tags["mlflow.note.content"] == (study.question or study.name).strip()
    assert exp.tags.get("mlflow.experiment.primaryMetric.name") == (
        None if first is None else (first if isinstance(first, str) else first[0]))
    budgets = {c.key(): c.sample.nfe for c in study.configs if c.sample.nfe is not None}
    if budgets:  # a budget is met exactly: the network's own count, logged per run
        from bench.tracking import fetch_runs, using_uri

        with using_uri(uri):
            runs = fetch_runs(study.name)
        logged = {r["tags.bench.key"]: r["metrics.nfe"] for _, r in runs.iterrows() if r["tags.bench.key"] in budgets}
        assert len(logged) == len(budgets) and all(logged[k] == budgets[k] for k in budgets), logged
    if study.search:
        from bench.search import run_search

        result = run_search(study, tracking_uri=uri, storage=str(tmp_path / "optuna.db"), devices="cpu",
                            n_trials=2, progress=False)
        assert result.n_complete == 2 and result.best


@pytest.mark.parametrize("path", FULL, ids=[p.stem for p in FULL])
def test_full_study_plans_offline_or_names_what_is_missing(path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without the hub
    try:
        study = load_study(path)
    except BenchError as e:
        message = str(e)
        assert message.startswith(str(path)) and "\n" not in message
        assert any(w in message for w in ("not found", "weights", "offline")), message
        return
    assert study.plan().by_kind("eval")


def test_the_ddim_table_trains_one_model_per_seed() -> None:
    """The sigma-hat row (ddpm, fixed_large) samples the same network as the eta rows."""
    study = load_study(ABLATIONS / "ddim_steps_eta.yaml")
    plan = study.plan()
    assert len(plan.by_kind("train")) == 2 and len(plan.by_kind("eval")) == 50


def test_smoke_overrides_never_touch_the_grid() -> None:
    for path in SMALL:
        small = build_study(read_study_file(path), source=str(path), overrides=smoke_overrides(path), path=path)
        full = load_study(path)
        assert [small.point(c) for c in small.configs] == [full.point(c) for c in full.configs]
        assert len(small.plan().by_kind("train")) == len(full.plan().by_kind("train"))
