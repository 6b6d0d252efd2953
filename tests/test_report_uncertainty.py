"""Tables with bootstrap intervals, EDM's min over seed sets, and paired significance marks.

A synthetic study (sample.eta 0 / 0.5 / 1 x 2 seeds) is logged through the mlflow API with feature
files in the layout the feature store writes: seed s draws the same noise z_s in every cell (the
bench's per-sample seeds), eta 0 is z_s itself (FD ~ 0 to a N(0, I) reference), eta 0.5 is z_s
shifted by 0.02 (a real but tiny difference: within the noise), eta 1 is z_s shifted by 1 (FD ~ 4).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow_runs import log_run  # noqa: E402

from bench.core.errors import BenchError  # noqa: E402
from bench.metrics.features import frechet  # noqa: E402
from bench.metrics.uncertainty import bootstrap  # noqa: E402
from bench.report import study_tables  # noqa: E402
from bench.study import build_study  # noqa: E402

NAME = "uncertainty-test"
SHIFT = {0.0: 0.0, 0.5: 0.02, 1.0: 1.0}
STUDY = {
    "name": NAME, "question": "synthetic features",
    "base": {"data": {"dataset": "digits"}, "model": {"backbone": "unet-tiny"}, "train": {"steps": 10},
             "eval": {"num_samples": 300, "extractor": "domain:digits", "metrics": ["fid"], "bootstrap": 50}},
    "grid": {"sample.eta": [0.0, 0.5, 1.0]},
    "seeds": [0, 1],
    "tables": [{"rows": "sample.eta", "values": "fid"}],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    tmp = tmp_path_factory.mktemp("uncertainty")
    uri = f"sqlite:///{tmp}/mlflow.db"
    study = build_study(STUDY, source="uncertainty-test")
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3000, 4, generator=g, dtype=torch.float64)
    ref_path = tmp / "digits-test-8px-domain-digits-bench-domain-features-features.pt"
    torch.save(ref, ref_path)
    noise = {s: torch.randn(300, 4, generator=g, dtype=torch.float64) for s in (0, 1)}
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment(NAME, artifact_location=(tmp / "artifacts").as_uri())
    mlflow.set_experiment(NAME)
    fids = {}
    for cfg in study.configs:
        gen = noise[cfg.seed] + SHIFT[cfg.sample.eta]
        path = tmp / f"{cfg.key()}.pt"
        torch.save({"features": gen}, path)
        fid, lo, hi = bootstrap(lambda idx, x=gen: frechet(x[idx], ref), len(gen), 50)
        fids[(cfg.sample.eta, cfg.seed)] = fid
        rid = log_run(mlflow, NAME, cfg, "eval", cfg.key(), metrics={"fid": fid, "fid_ci_lo": lo, "fid_ci_hi": hi})
        mlflow.MlflowClient().set_tag(rid, "protocol.features.domain:digits", str(path))
        mlflow.MlflowClient().set_tag(rid, "protocol.reference_features.domain:digits", str(ref_path))
    mlflow.set_tracking_uri(previous)
    return study, uri, fids


def _table(store, **spec):
    study, uri, _ = store
    study = dataclasses.replace(study, tables=[{"title": "t", "rows": "sample.eta", "values": "fid", **spec}])
    return study_tables(study, tracking_uri=uri)[0]


def test_paired_significance_marks_the_cell_within_noise_of_the_best(store):
    table = _table(store, significance=0.05, resamples=200)
    text = table.text.iloc[:, 0].tolist()
    assert table.best.iloc[:, 0].tolist() == [True, False, False]
    assert not text[0].endswith("†") and text[1].endswith("†") and not text[2].endswith("†")
    assert any("†: not significantly different from the bold cell of its column (the reference" in n
               for n in table.notes)
    assert not any("Not tested" in n for n in table.notes)
    assert "$^\\dagger$" in table.latex()


def test_significance_says_what_it_could_not_test(store, tmp_path):
    study, uri, _ = store
    import mlflow

    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=[NAME], filter_string="params.`sample.eta` = '0.5'").iloc[0]
    mlflow.MlflowClient().set_tag(run["run_id"], "protocol.features.domain:digits", str(tmp_path / "gone.pt"))
    table = _table(store, significance=0.05)
    assert not table.text.iloc[1, 0].endswith("†")
    assert any("Not tested where some cells' features are not stored" in n for n in table.notes)
    mlflow.MlflowClient().set_tag(run["run_id"], "protocol.features.domain:digits", run["tags.protocol.features.domain:digits"])


def test_interval_ci_shows_the_bootstrap_bounds_averaged_over_seeds(store):
    import mlflow

    study, uri, _ = store
    table = _table(store, interval="ci")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[NAME], filter_string="params.`sample.eta` = '1.0'")
    lo, hi = runs["metrics.fid_ci_lo"].mean(), runs["metrics.fid_ci_hi"].mean()
    cell = table.text.iloc[2, 0]
    assert "[" in cell and "±" not in cell
    shown_lo, shown_hi = (float(x) for x in cell.split("[")[1].rstrip("])").split(","))
    assert shown_lo == pytest.approx(lo, abs=0.01) and shown_hi == pytest.approx(hi, abs=0.01)
    # the printed point beside the interval is its centre, the bias-corrected value: always inside it
    bc = float(cell.split("(bc ")[1].split(" [")[0])
    assert shown_lo <= bc <= shown_hi and bc == pytest.approx((lo + hi) / 2, abs=0.01)
    assert any("basic bootstrap interval" in n and "always contains" in n for n in table.notes)


def test_aggregate_min_reports_the_best_seed_set(store):
    _, _, fids = store
    table = _table(store, aggregate="min")
    stats = table.stats.set_index("sample.eta")["mean"]
    for eta in SHIFT:
        assert stats[eta] == pytest.approx(min(fids[(eta, 0)], fids[(eta, 1)]))
    assert "±" not in "".join(table.text.iloc[:, 0]) and any("Minimum over seeds" in n for n in table.notes)


@pytest.mark.parametrize("spec, message", [
    ({"significance": 0.7}, "alpha"), ({"interval": "iqr"}, "one of std, ci"), ({"aggregate": "median"}, "mean, min"),
    ({"resamples": 5}, ">= 20"), ({"values": "nfe", "significance": 0.05}, "two feature sets"),
    ({"values": "nfe", "interval": "ci"}, "bootstrap interval"),
])
def test_table_uncertainty_settings_are_checked(store, spec, message):
    study, uri, _ = store
    with pytest.raises(BenchError, match=message):
        build_study({**STUDY, "tables": [{"rows": "sample.eta", "values": "fid", **spec}]}, source="t")
