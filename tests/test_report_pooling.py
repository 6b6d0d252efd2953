"""Reports never average what the reader cannot see (issue 18), on a real MLflow store.

A synthetic study with two objectives (eps, v) x eta x steps x 2 seeds, whose numbers differ by
objective on purpose (v's FID is 20 higher, its loss 10x larger), is logged through the mlflow API
as bench.tracking lays it out. A table or plot spec that does not name the objective must split by
it (a row level, a facet, an image per value), unless it asks for `pool:`; then it says so.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow_runs import log_run  # noqa: E402

from bench.report import build_report, study_tables  # noqa: E402
from bench.report.plots import default_plots, render_plot  # noqa: E402
from bench.report.runs import axis_order, collect_runs, short_names  # noqa: E402
from bench.report.tables import Cell, legible_format  # noqa: E402
from bench.study import build_study  # noqa: E402
from bench.study.report_specs import validate_report_specs  # noqa: E402
from bench.tracking import fetch_runs, using_uri  # noqa: E402

NAME = "pooling-test"
STUDY = {
    "name": NAME,
    "question": "Does the objective change the eta answer? (synthetic numbers)",
    "base": {
        "data": {"dataset": "digits"},
        "model": {"backbone": "unet-tiny"},
        "train": {"steps": 10},
        "sample": {"sampler": "ddim"},
        "eval": {"num_samples": 100, "extractor": "domain:digits", "metrics": ["fid", "nll"],
                 "nll_samples": 8},
    },
    "grid": {"diffusion.objective": ["eps", "v"], "sample.eta": [0.0, 1.0], "sample.steps": [10, 50]},
    "seeds": [0, 1],
    "tables": [{"rows": "sample.eta", "columns": "sample.steps", "values": "fid", "title": "FID"}],
}
NLL = {"eps": 3.25, "v": 3.75}  # depends on the model only: the same under every step count


def fid_of(objective: str, eta: float, steps: int, seed: int) -> float:
    return 10.0 + 20.0 * (objective == "v") + 8.0 * eta + 100.0 / steps + 0.5 * seed


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    tmp = tmp_path_factory.mktemp("pooling")
    uri = f"sqlite:///{tmp}/mlflow.db"
    study = build_study(STUDY, source="pooling-test")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment(NAME, artifact_location=(tmp / "artifacts").as_uri())
    mlflow.set_experiment(NAME)
    trained = set()
    for cfg in study.configs:
        objective = cfg.diffusion.objective
        if cfg.train_key() not in trained:
            trained.add(cfg.train_key())
            rid = log_run(mlflow, NAME, cfg, "train", cfg.train_key(), metrics={"train_seconds": 1.0})
            scale = 10.0 if objective == "v" else 1.0
            for step in range(0, 200, 10):
                mlflow.MlflowClient().log_metric(rid, "train_loss", scale / (1 + step) + 0.01 * cfg.seed, step=step)
        metrics = {"fid": fid_of(objective, cfg.sample.eta, cfg.sample.steps, cfg.seed),
                   "nll_bpd": NLL[objective] + 0.01 * cfg.seed, "nfe": float(cfg.sample.steps)}  # fmt: skip
        log_run(mlflow, NAME, cfg, "eval", cfg.key(), metrics=metrics, tmp=tmp)
    mlflow.set_tracking_uri(previous)
    return study, uri, tmp


def _data(study, uri):
    with using_uri(uri) as u:
        runs = fetch_runs(study.name)
    return collect_runs(study, runs, u), axis_order(study), short_names(list(study.axes))


def _table(store, **spec):
    study, uri, _ = store
    study = dataclasses.replace(study, tables=[{"title": "t", **spec}])
    return study_tables(study, tracking_uri=uri)[0]


def _plot(store, **spec):
    study, uri, _ = store
    data, order, names = _data(study, uri)
    _, (plot,) = validate_report_specs([], [spec], set(study.axes), set(data.metrics) | {"train_loss"}, "")
    return render_plot(plot, data, order, names)


def test_table_splits_rows_by_an_unshown_varying_axis(store) -> None:
    table = _table(store, rows="sample.eta", columns="sample.steps", values="fid")
    assert list(table.text.index.names) == ["eta", "objective"]
    for (eta, objective), row in table.text.iterrows():
        for steps in (10, 50):
            expect = statistics.mean(fid_of(objective, float(eta), steps, s) for s in (0, 1))
            assert row[("FID ↓", str(steps))].startswith(f"{expect:.1f} ± ")
    assert any("Rows also split by objective" in n for n in table.notes)


def test_table_pools_only_when_asked_and_says_over_what(store) -> None:
    table = _table(store, rows="sample.eta", columns="sample.steps", values="fid", pool=["diffusion.objective"])
    assert list(table.text.index.names) == ["eta"]
    pooled = statistics.mean(fid_of(o, 0.0, 10, s) for o in ("eps", "v") for s in (0, 1))
    assert table.text.index[0] == ("0.0",) and table.text[("FID ↓", "10")].iloc[0].startswith(f"{pooled:.1f} ± ")
    note = next(n for n in table.notes if n.startswith("Pooled"))
    assert "objective (2 values: eps, v)" in note and "each cell averages 4 runs" in note


def test_a_metric_that_does_not_vary_with_the_column_axis_is_shown_once(store) -> None:
    table = _table(store, rows="diffusion.objective", columns="sample.steps", values=["nll_bpd", "fid"],
                   where={"sample.eta": 0.0})  # fmt: skip
    nll_cols = [c for c in table.text.columns if c[0].startswith("NLL")]
    assert nll_cols == [("NLL (bits/dim) ↓", "all")]
    assert [c[1] for c in table.text.columns if c[0].startswith("FID")] == ["10", "50"]
    assert table.text.index[0] == ("eps",)
    assert table.text[nll_cols[0]].iloc[0].startswith(f"{NLL['eps'] + 0.005:.2f} ± ")
    assert any("does not vary with steps" in n for n in table.notes)


def test_line_plot_gives_an_unshown_axis_the_next_free_role(store) -> None:
    fig = _plot(store, kind="line", x="sample.steps", y="fid", hue="sample.eta")
    assert len(fig.images) == 1  # objective took the style role
    assert "objective varies in these runs" in fig.caption and "own line or facet" in fig.caption
    assert "error bars: sample std (ddof=1) over seeds" in fig.caption


def test_plot_with_every_role_taken_draws_one_image_per_value(store) -> None:
    # a heatmap's one free role is col: eta takes it, nothing is averaged
    fig = _plot(store, kind="heatmap", x="sample.steps", row="diffusion.objective", y="fid")
    assert len(fig.images) == 1 and "eta varies" in fig.caption and "own line or facet" in fig.caption
    # bars with hue and col taken: one image per objective
    fig = _plot(store, kind="bars", x="sample.steps", y="fid", hue="sample.eta", col="seed")
    captions = [c for c, _ in fig.images]
    assert [c.split("— ")[1] for c in captions] == ["objective = eps", "objective = v"]
    assert "own image" in fig.caption


def test_plot_pools_only_when_asked_and_says_so(store) -> None:
    fig = _plot(store, kind="bars", x="sample.steps", y="fid", hue="sample.eta", col="seed",
                pool=["diffusion.objective"])  # fmt: skip
    assert len(fig.images) == 1
    assert "Pooled over objective (2 values: eps, v)" in fig.caption and "each point averages 2 runs" in fig.caption
    assert "error bars: sample std (ddof=1) over the pooled values" in fig.caption  # one seed per point


def test_loss_plot_draws_one_line_per_training(store) -> None:
    study, uri, _ = store
    data, order, names = _data(study, uri)
    fig = _plot(store, kind="loss")
    assert len(fig.images) == 1 and "One line per TRAIN run (4)" in fig.caption
    # eps and v losses regress different targets (v's is 10x here): one panel each, its own y axis
    assert "One panel per objective, each on its own y axis" in fig.caption
    from bench.report.loss_plot import loss_frame, smoothed
    from bench.study.report_specs import PlotSpec

    frame = loss_frame(PlotSpec(kind="loss"), data)
    assert "centred local-linear smoother over windows of 3 logged points" in fig.caption  # 20 points: 3
    for _, part in frame.groupby("run"):  # a smoothed value for every logged point, in the curve's range
        raw = part["train_loss"].to_numpy()
        for logy in (False, True):
            smooth = smoothed(part, logy)
            assert len(smooth) == len(raw) == 20 and np.isfinite(smooth).all()
            assert raw.min() - 0.1 * np.ptp(raw) <= smooth.min() and smooth.max() <= raw.max() + 0.1 * np.ptp(raw)
    # on a log axis the fit is to log(loss): an exponential decay (a line as drawn) comes back unchanged
    decay = pd.DataFrame({"step": np.arange(0.0, 100.0, 10.0), "_window": 5})
    decay["train_loss"] = 2.0 * np.exp(-0.03 * decay["step"])
    np.testing.assert_allclose(smoothed(decay, True), decay["train_loss"], rtol=1e-12)
    labels = frame.groupby("run")["_label"].first()
    assert len(labels) == 4 and labels.nunique() == 4  # each training named by what differs
    assert set(labels) == {f"objective={o}, seed={s}" for o in ("eps", "v") for s in (0, 1)}
    # each line is its own training's curve, never a mean of two
    for _, part in frame.groupby("run"):
        scale = 10.0 if part["diffusion.objective"].iloc[0] == "v" else 1.0
        first = part.sort_values("step").iloc[0]
        assert first["train_loss"] == pytest.approx(scale + 0.01 * part["seed"].iloc[0])


def test_a_study_without_plots_gets_the_default_figures(store, tmp_path) -> None:
    study, uri, _ = store
    raw = {k: v for k, v in study.raw.items() if k != "plots"}
    bare = dataclasses.replace(study, plots=[], raw=raw)
    folder = build_report(bare, tracking_uri=uri, out_dir=tmp_path)
    text = (folder / "report.md").read_text()
    assert "### FID ↓ vs steps by eta" in text and "### Samples of the best cell by FID ↓" in text
    data, _, _ = _data(study, uri)
    specs = default_plots(validate_report_specs(study.tables, [], set(study.axes), set(data.metrics), "")[0],
                          data, study.axes)  # fmt: skip
    assert [s.kind for s in specs] == ["line", "samples"]
    assert specs[1].where == {"diffusion.objective": ("eps",), "sample.eta": (0.0,), "sample.steps": (50,)}
    # an explicit empty list asks for no figures
    none = dataclasses.replace(study, plots=[], raw={**raw, "plots": []})
    assert "## Plots" not in (build_report(none, tracking_uri=uri, out_dir=tmp_path / "none") / "report.md").read_text()


def _cells(*means: float) -> list[list[Cell]]:
    return [[Cell(mean=m, n=1, expected=1)] for m in means]


@pytest.mark.parametrize(
    ("fmt", "means", "want"),
    [
        (".1f", (0.643, 0.629, 0.567), ".2f"),  # two significant digits at least
        (".1f", (45.31, 46.12), ".1f"),  # already legible
        (".1f", (12.3401, 12.3449), ".3f"),  # more digits until the column's values differ
        (".4g", (0.01234, 0.01235), ".4g"),
        (".4g", (1.000012, 1.000014), ".7g"),
        (".1f", (5.0, 5.0), ".1f"),  # equal values need no digits
    ],
)
def test_legible_format_tells_a_column_apart(fmt, means, want) -> None:
    assert legible_format(fmt, _cells(*means)) == want


def test_bold_only_where_printed_values_differ(store) -> None:
    from bench.report.tables import _best_marks

    tied = [Cell(mean=m, n=1, expected=1) for m in (0.6, 0.6 + 1e-15)]
    assert _best_marks(tied, ".2f", False) == [False, False]
    close = [Cell(mean=m, n=1, expected=1) for m in (0.643, 0.629, 0.567)]
    fmt = legible_format(".1f", [[c] for c in close])
    assert _best_marks(close, fmt, False) == [False, False, True]
    assert [format(c.mean, fmt) for c in close] == ["0.64", "0.63", "0.57"]


def test_quickstart_tables_and_plots_name_or_pool_every_axis() -> None:
    """The shipped quickstart: every table and plot either shows the objective or fixes it."""
    from bench.study import load_study

    study = load_study(Path(__file__).resolve().parents[1] / "ablations" / "quickstart.yaml")
    jobs = pd.DataFrame([{**{a: c.flat().get(a) for a in study.axes}, "seed": c.seed} for c in study.configs])
    from bench.report.pooling import pooled_axes
    from bench.report.tables import _filter

    for t in study.tables:
        rows = [t["rows"]] if isinstance(t["rows"], str) else t["rows"]
        sel = _filter(jobs, {k: (v,) for k, v in t.get("where", {}).items()})
        assert pooled_axes(sel, [*rows, t.get("columns")], study.axes) == [], t["title"]
    from bench.report.pooling import show_every_axis

    _, plots = validate_report_specs([], study.plots, set(study.axes), {"fid", "train_loss"}, "")
    line = next(p for p in plots if p.kind == "line")
    filled, rest, split = show_every_axis(line, jobs, short_names(list(study.axes)))
    assert split == ["diffusion.objective"] and filled.row == "diffusion.objective" and rest == []


def test_a_table_across_sample_counts_warns_that_its_numbers_are_not_comparable(store, tmp_path) -> None:
    import mlflow

    from bench.report.tables import make_table

    study = build_study({**STUDY, "name": "protocol-test", "grid": {"eval.num_samples": [100, 400]}, "seeds": [0],
                         "tables": [{"rows": "eval.num_samples", "values": "fid"}]}, source="p")  # fmt: skip
    uri = f"sqlite:///{tmp_path}/m.db"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("protocol-test", artifact_location=(tmp_path / "a").as_uri())
    mlflow.set_experiment("protocol-test")
    for cfg in study.configs:
        log_run(mlflow, "protocol-test", cfg, "eval", cfg.key(), metrics={"fid": 10.0 + 1000 / cfg.eval.num_samples})
    mlflow.set_tracking_uri(store[1])
    data, order, names = _data(study, uri)
    table = make_table(validate_report_specs(study.tables, [], set(study.axes), set(data.metrics), "")[0][0],
                       data, order, names)  # fmt: skip
    assert any(n.startswith("Warning: these cells were measured under different protocols (num_samples 100, 400)")
               for n in table.notes)
    plain = _table(store, rows="sample.eta", columns="sample.steps", values="fid")
    assert not any(n.startswith("Warning") for n in plain.notes)


def test_a_flat_metric_axis_is_widened_and_the_caption_states_the_rule_and_the_range(store) -> None:
    """NLL of the eps model: 3.25 and 3.26 (0.3 %) over every step count. The axis rule widens the
    y axis to 5 % of the value and the caption says so with the true range; FID (10.5 .. 30+) is
    left as drawn, but its caption states the rule too."""
    flat = _plot(store, kind="line", x="sample.steps", y="nll_bpd", hue="sample.eta",
                 where={"diffusion.objective": "eps"})
    assert "at least 5 % of the metric's magnitude" in flat.caption
    assert "NLL (bits/dim) ↓ spans 3.25..3.26 (axis widened to 5 % of its value)" in flat.caption
    wide = _plot(store, kind="line", x="sample.steps", y="fid", hue="sample.eta")
    assert "at least 5 % of the metric's magnitude" in wide.caption and "spans" not in wide.caption
    heat = _plot(store, kind="heatmap", x="sample.steps", row="sample.eta", y="nll_bpd",
                 where={"diffusion.objective": "eps"})
    # its colours are cell means over the two seeds: 3.255 in every cell
    assert "NLL (bits/dim) ↓ is 3.255 throughout (colour scale widened to 5 % of its value)" in heat.caption


def test_the_default_figure_shows_the_metric_its_registry_entry_marks_as_the_headline(store) -> None:
    from bench.metrics import METRICS
    from bench.report.plots import headline

    study, uri, _ = store
    data, _, _ = _data(study, uri)
    assert [m for m in METRICS.names() if METRICS.get(m).headline] == ["fid"]
    assert headline("fid") and not headline("nll_bpd") and not headline("nfe")
    specs = default_plots([], data, study.axes)  # no tables: the registry's headline metric
    assert specs[0].y == "fid" and specs[0].x == "diffusion.objective"


@pytest.mark.parametrize("window", [1, 3, 5, 21])
def test_loss_smoother_has_no_lag_on_a_line_and_keeps_a_constant_from_the_first_point(window) -> None:
    """On a noiseless linear curve (unevenly logged steps) the smoother returns the curve itself at
    every point, ends included: no lag (a causal EMA of a falling line reads above it); a constant
    curve comes back as that constant from its first point on (no start-up bias towards 0)."""
    from bench.report.loss_plot import smooth_linear

    steps = np.array([0, 10, 20, 40, 50, 70, 100, 110, 150, 200, 210, 260], dtype=float)
    line = 0.9 - 0.003 * steps
    np.testing.assert_allclose(smooth_linear(steps, line, window), line, rtol=0, atol=1e-12)
    const = np.full(len(steps), 0.25)
    np.testing.assert_allclose(smooth_linear(steps, const, window), const, rtol=0, atol=1e-15)
    ema = pd.Series(line).ewm(span=5, adjust=True).mean().to_numpy()
    assert (ema[1:] > line[1:] + 1e-3).all()  # what it replaces: the EMA trails the falling line


def test_loss_smoother_averages_noise_around_a_line() -> None:
    """Alternating +-0.1 noise on a line: a 5-point window's fit is much closer to the line than the
    raw points are (the smoother smooths; it is not the identity)."""
    from bench.report.loss_plot import smooth_linear

    steps = np.arange(40, dtype=float)
    line = 2.0 - 0.01 * steps
    noisy = line + 0.1 * (-1.0) ** np.arange(40)
    assert np.abs(smooth_linear(steps, noisy, 5) - line).max() < 0.05
