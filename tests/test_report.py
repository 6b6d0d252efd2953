"""bench.report against a real MLflow store (SQLite in a temp folder), no mocks.

A small finished study is written with the mlflow API exactly as bench.tracking lays it out
(issue 6): 2 etas x 2 step counts x 2 seeds with known metric values, one EVAL run FAILED, one
seed never run. The report must show every cell with the right mean ± std (recomputed here from
the MLflow runs), mark the best cell in each column in the metric's direction, say "failed" and
"n=1/2" where due, embed valid PNGs in one self-contained HTML file, and list every run in runs.csv.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html.parser
import io
import os
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from latex import PDFLATEX, compile_latex  # noqa: E402
from mlflow_runs import log_run  # noqa: E402

from bench.core.errors import BenchError  # noqa: E402
from bench.report import build_report, load_baselines, validate_report_specs  # noqa: E402
from bench.study import build_study  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAILED_CELL = {"sample.eta": 1.0, "sample.steps": 10, "seed": 0}  # its EVAL run fails
MISSING = [{"sample.eta": 1.0, "sample.steps": 10, "seed": 1}, {"sample.eta": 0.0, "sample.steps": 20, "seed": 1}]
STUDY = {
    "name": "report-test",
    "question": "Does eta = 0 beat eta = 1 at 10 and 20 steps? (synthetic numbers)",
    "base": {
        "data": {"dataset": "digits"},
        "model": {"backbone": "unet-tiny"},
        "train": {"steps": 10},
        "sample": {"sampler": "ddim"},
        "eval": {"num_samples": 100, "extractor": "domain:digits", "metrics": ["fid", "is"]},
    },
    "grid": {"sample.eta": [0.0, 1.0], "sample.steps": [10, 20]},
    "seeds": [0, 1],
    "tables": [
        {"rows": "sample.eta", "columns": "sample.steps", "values": "fid", "title": "FID by eta x steps"},
        {"rows": ["sample.eta", "sample.steps"], "values": ["fid", "is_mean"], "title": "FID and IS"},
        {"rows": "sample.eta", "columns": "sample.steps", "values": "fid", "baseline": "ddim-cifar10",
         "title": "Ours vs DDIM table 1"},
    ],
    "plots": [
        {"kind": "line", "x": "sample.steps", "y": "fid", "hue": "sample.eta"},
        {"kind": "heatmap", "x": "sample.steps", "row": "sample.eta", "y": "fid"},
        {"kind": "bars", "x": "sample.eta", "y": "is_mean", "hue": "sample.steps"},
        {"kind": "tradeoff", "x": "fid", "y": "is_mean", "hue": "sample.eta", "label": "sample.steps"},
        {"kind": "loss"},
        {"kind": "samples", "by": ["sample.eta"], "y": "fid"},
    ],
}


def fid_of(eta: float, steps: int, seed: int) -> float:
    return 10.0 + 8.0 * eta + 100.0 / steps + 0.7 * seed


def is_of(eta: float, steps: int, seed: int) -> float:
    return 6.0 - eta + steps / 100.0 + 0.3 * seed


def _log_run(mlflow, cfg, kind: str, key: str, **kw):
    return log_run(mlflow, STUDY["name"], cfg, kind, key, **kw)


@pytest.fixture(scope="module")
def study():
    # plots are set after loading: the report validates them itself (validate_report_specs)
    loaded = build_study({**STUDY, "plots": []}, source="test-study")
    return dataclasses.replace(loaded, plots=STUDY["plots"])


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    """Log the study's runs to a fresh SQLite store and build its report once."""
    import mlflow

    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    # artifacts under tmp too (a SQLite store would put them in ./mlruns of the working folder)
    mlflow.create_experiment(STUDY["name"], artifact_location=(tmp / "artifacts").as_uri())
    mlflow.set_experiment(STUDY["name"])
    trained = set()
    for cfg in study.configs:
        point = {"sample.eta": cfg.sample.eta, "sample.steps": cfg.sample.steps, "seed": cfg.seed}
        if cfg.train_key() not in trained:
            trained.add(cfg.train_key())
            rid = _log_run(mlflow, cfg, "train", cfg.train_key(), metrics={"train_seconds": 12.5})
            for step in range(0, 100, 10):
                mlflow.MlflowClient().log_metric(rid, "train_loss", 1.0 / (1 + step + cfg.seed), step=step)
        if point in MISSING:
            continue
        eta, steps, seed = point["sample.eta"], point["sample.steps"], point["seed"]
        metrics = {"fid": fid_of(eta, steps, seed), "is_mean": is_of(eta, steps, seed), "is_std": 0.1,
                   "sample_seconds": 1.0, "seconds_per_image": 0.01, "nfe": float(steps)}
        if point == FAILED_CELL:
            _log_run(mlflow, cfg, "eval", cfg.key(), status="FAILED")
        else:
            _log_run(mlflow, cfg, "eval", cfg.key(), metrics=metrics, tmp=tmp)
    mlflow.set_tracking_uri(previous)
    folder = build_report(study, tracking_uri=uri, out_dir=tmp / "reports", baselines_dir=REPO / "baselines")
    return folder, uri


def _markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """``### title`` -> rows of cells (header first) of the Markdown table under it."""
    out, title = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
        elif line.startswith("|") and title and not set(line) <= set("|-: "):
            out.setdefault(title, []).append([c.strip() for c in line.strip("|").split("|")])
    return out


def _expected(uri: str, metric: str, eta: float, steps: int) -> tuple[float, float | None, int]:
    """Mean, std and n of ``metric`` over the FINISHED eval runs of a cell, read back from MLflow."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(STUDY["name"])
    runs = client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'eval' and attributes.status = 'FINISHED'")
    vals = [r.data.metrics[metric] for r in runs
            if float(r.data.params["sample.eta"]) == eta and int(r.data.params["sample.steps"]) == steps]
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def test_table_cells_match_mlflow_runs(report) -> None:
    folder, uri = report
    tables = _markdown_tables((folder / "report.md").read_text())
    rows = tables["FID by eta x steps"]
    assert rows[0] == ["eta", "FID ↓ · steps=10", "FID ↓ · steps=20"]
    body = {r[0]: r[1:] for r in rows[1:]}
    assert list(body) == ["0.0", "1.0"]  # study order, every row present
    mean, std, n = _expected(uri, "fid", 0.0, 10)
    assert n == 2 and body["0.0"][0].strip("*") == f"{mean:.1f} ± {std:.1f}"
    mean, std, n = _expected(uri, "fid", 0.0, 20)  # seed 1 never ran
    assert n == 1 and std is None and body["0.0"][1].strip("*") == f"{mean:.1f} (n=1/2)"
    assert body["1.0"][0] == "failed"  # seed 0 FAILED, seed 1 missing: never silently dropped
    mean, std, _ = _expected(uri, "fid", 1.0, 20)
    assert body["1.0"][1] == f"{mean:.1f} ± {std:.1f}"


def test_best_cells_follow_metric_direction(report) -> None:
    folder, uri = report
    rows = _markdown_tables((folder / "report.md").read_text())["FID and IS"]
    assert rows[0] == ["eta", "steps", "FID ↓", "IS ↑"]
    cells = {(r[0], r[1]): r[2:] for r in rows[1:]}
    fid = {k: v[0] for k, v in cells.items()}
    is_ = {k: v[1] for k, v in cells.items()}
    means = {k: _expected(uri, m, float(k[0]), int(k[1]))[0] for m in ("fid",) for k in cells if fid[k] != "failed"}
    lowest = min(means, key=means.get)
    assert [k for k, v in fid.items() if v.startswith("**")] == [lowest]
    is_means = {k: _expected(uri, "is_mean", float(k[0]), int(k[1]))[0] for k in cells if is_[k] != "failed"}
    highest = max(is_means, key=is_means.get)
    assert [k for k, v in is_.items() if v.startswith("**")] == [highest]
    # one seed: IS shows its own spread (over splits), and how many seeds it has
    assert is_[("0.0", "20")].strip("*") == f"{is_means[('0.0', '20')]:.2f} ± 0.10 (n=1/2)"
    assert fid[("1.0", "10")] == "failed" and is_[("1.0", "10")] == "failed"


def test_baseline_side_by_side_with_protocol_note(report) -> None:
    folder, _ = report
    text = (folder / "report.md").read_text()
    rows = _markdown_tables(text)["Ours vs DDIM table 1"]
    assert rows[0][1:] == ["FID ↓ · steps=10 · ours", "FID ↓ · steps=10 · paper",
                           "FID ↓ · steps=20 · ours", "FID ↓ · steps=20 · paper"]
    body = {r[0]: r[1:] for r in rows[1:]}
    assert body["0.0"][1] == "13.36" and body["0.0"][3] == "6.84"
    assert body["1.0"][1] == "41.07" and body["1.0"][3] == "18.36"
    note = text.split("### Ours vs DDIM table 1")[1].split("###")[0]
    assert "Protocol differs" in note and "ours digits vs paper cifar10" in note and "50000" in note


def test_failed_runs_are_listed_with_their_reason(report) -> None:
    text = (report[0] / "report.md").read_text()
    failed = text.split("## Failed runs")[1].split("##")[0]
    assert "FAILED" in failed and "NaN loss at step 7" in failed


class _Parser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: dict[str, str] = {}  # id -> text of styled cells
        self.style = ""
        self._cell: str | None = None
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag in ("td", "th") and a.get("id"):
            self._cell = a["id"]
            self.cells[self._cell] = ""
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = None
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.style += data
        if self._cell:
            self.cells[self._cell] += data


def test_html_is_self_contained_with_valid_pngs_and_styled_best(report) -> None:
    from PIL import Image

    page = (report[0] / "report.html").read_text()
    parser = _Parser()
    parser.feed(page)
    parser.close()
    assert "<link" not in page and "<script" not in page and 'src="http' not in page  # nothing external
    assert len(parser.images) >= 5 + 2  # five plots, two sample grids (one per eta)
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        Image.open(io.BytesIO(png)).verify()
    best_ids = {m.group(1) for m in re.finditer(r"#(T_t0\w+)\s*\{[^}]*font-weight: 700", parser.style)}
    best = sorted(parser.cells[i].strip() for i in best_ids)
    # steps=20: the lower FID wins; steps=10 has one finished cell (eta=1 failed): nothing to compare
    mean20, _, _ = _expected(report[1], "fid", 0.0, 20)
    assert best == [f"{mean20:.1f} (n=1/2)"]
    failed_ids = {m.group(1) for m in re.finditer(r"#(T_t0\w+)\s*\{[^}]*color: #b3261e", parser.style)}
    assert [parser.cells[i] for i in failed_ids] == ["failed"]


def test_runs_csv_has_one_row_per_run(report, study) -> None:
    folder, uri = report
    import mlflow

    with open(folder / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    n_runs = len(mlflow.search_runs(experiment_names=[STUDY["name"]]))
    mlflow.set_tracking_uri(previous)
    assert len(rows) == n_runs == len(study.configs) - len(MISSING) + 2  # evals + 2 trainings
    assert {"run_id", "status", "params.sample.eta", "params.train.lr", "metrics.fid", "tags.bench.key"} <= set(rows[0])
    assert sorted(r["status"] for r in rows).count("FAILED") == 1


def test_figures_written_beside_markdown(report) -> None:
    folder, _ = report
    text = (folder / "report.md").read_text()
    linked = re.findall(r"\]\((figures/[^)]+\.png)\)", text)
    assert len(linked) >= 7 and all((folder / p).read_bytes().startswith(b"\x89PNG") for p in linked)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_headless_chromium_screenshot_is_not_blank(report, tmp_path) -> None:
    import numpy as np
    from PIL import Image

    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
           (report[0] / "report.html").resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.var() > 0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, table shading, plots
    keep = os.environ.get("BENCH_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


# --- validate_report_specs ------------------------------------------------------------------

AXES = {"sample.eta", "sample.steps", "diffusion.objective", "seed"}
METRICS = {"fid", "is_mean", "is_std", "kid_mean", "train_loss", "nfe"}


@pytest.mark.parametrize(
    ("tables", "plots", "needles"),
    [
        ([{"rows": "sample.etaa", "values": "fid"}], None,
         ["study.yaml", "tables[0].rows", "'sample.etaa' does not vary", "Did you mean 'sample.eta'", "Axes:"]),
        ([{"rows": "sample.eta", "values": "fdi"}], None,
         ["tables[0].values", "unknown metric 'fdi'", "Did you mean 'fid'", "Measured: fid, is_mean"]),
        ([{"rows": "sample.eta", "columns": "sample.eta", "values": "fid"}], None, ["tables[0].columns", "already in rows"]),
        ([{"rows": "sample.eta", "colums": "sample.steps", "values": "fid"}], None,
         ["tables[0].colums", "Did you mean 'columns'"]),
        ([{"values": "fid"}], None, ["tables[0]", "missing `rows:`"]),
        ([{"rows": "sample.eta", "values": "fid", "baseline": "ddim-cifar"}], None,
         ["tables[0].baseline", "unknown baseline 'ddim-cifar'", "ddim-cifar10"]),
        ([{"rows": "sample.eta", "values": "fid", "format": {"is_mean": 2}}], None, ["tables[0].format.is_mean"]),
        ([{"rows": "sample.eta", "values": "fid", "where": {"model.backbone": "dit"}}], None,
         ["tables[0].where.model.backbone", "does not vary"]),
        (None, [{"kind": "lines", "x": "sample.steps", "y": "fid"}], ["plots[0].kind", "Did you mean 'line'"]),
        (None, [{"kind": "line", "x": "sample.steps", "y": "fid", "hue": "sample.ets"}],
         ["plots[0].hue", "Did you mean 'sample.eta'"]),
        (None, [{"kind": "line", "x": "sample.steps"}], ["plots[0]", "needs `y:`"]),
        (None, [{"kind": "heatmap", "x": "sample.steps", "y": "fid"}], ["plots[0]", "needs `row:`"]),
        (None, [{"kind": "tradeoff", "x": "sample.steps", "y": "fid"}], ["plots[0].x", "unknown metric 'sample.steps'"]),
        (None, [{"kind": "loss", "hue": "sample.eta"}], ["plots[0].hue", "sampling/evaluation axis"]),
        (None, [{"kind": "line", "x": "sample.steps", "y": "fid", "hue": "sample.steps"}], ["plots[0]", "axis twice"]),
        (None, [{"kind": "bars", "x": "sample.eta", "y": "fid", "logy": "yes"}], ["plots[0].logy", "true or false"]),
    ],
)
def test_validate_report_specs_errors(tables, plots, needles) -> None:
    with pytest.raises(BenchError) as e:
        validate_report_specs(tables, plots, AXES, METRICS, "ablations/study.yaml", baselines={"ddim-cifar10"})
    message = str(e.value)
    assert message.startswith("ablations/study.yaml: ")
    for needle in needles:
        assert needle in message, (needle, message)


def test_validate_report_specs_normalises() -> None:
    tables, plots = validate_report_specs(
        [{"rows": "sample.eta", "columns": "sample.steps", "values": ["fid", "is"], "format": 2, "caption": "T1"}],
        [{"x": "sample.steps", "y": "fid", "hue": "sample.eta"}, {"x": "fid", "y": "is_mean"},
         {"kind": "loss", "hue": "diffusion.objective"}, {"kind": "samples"}],
        AXES, METRICS, "s.yaml",
    )  # fmt: skip
    t = tables[0]
    assert t.rows == ("sample.eta",) and t.values == ("fid", "is_mean") and t.title == "T1"
    assert t.format == {"fid": ".2f", "is_mean": ".2f"}
    assert [p.kind for p in plots] == ["line", "tradeoff", "loss", "samples"]
    assert plots[2].y == "train_loss" and plots[2].options["x"] == "step"


# --- baselines --------------------------------------------------------------------------------


def test_repository_baselines_load_with_published_numbers() -> None:
    b = load_baselines(REPO / "baselines")
    assert {"ddpm-cifar10", "ddim-cifar10", "ddim-celeba", "iddpm-cifar10"} <= set(b)
    ddpm = b["ddpm-cifar10"]
    simple = ddpm.lookup({"diffusion.objective": "eps", "diffusion.loss": "simple"}, "fid")
    assert simple is not None and simple.value == 3.17
    assert ddpm.lookup({"diffusion.loss": "simple"}, "is_mean").text() == "9.46 ± 0.11"
    assert ddpm.lookup({"diffusion.loss": "simple"}, "nll_bpd").text() == "≤ 3.75"
    assert ddpm.lookup({"diffusion.loss": "vlb", "diffusion.variance": "fixed_small"}, "nll_bpd").text() == "≤ 3.70"
    ddim = b["ddim-cifar10"]
    assert ddim.lookup({"sample.eta": 0.0, "sample.steps": 1000, "sample.sampler": "ddim"}, "fid").value == 4.04
    sigma_hat = {"sample.sampler": "ddpm", "diffusion.variance": "fixed_large", "sample.steps": "1000"}
    assert ddim.lookup(sigma_hat, "fid").value == 3.17  # MLflow strings match YAML numbers
    assert b["iddpm-cifar10"].protocol.dataset == "cifar10"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("paper: P\nbaselines: {x: {table: T, protocol: {dataset: d}, results: []}}", "baselines.x.results"),
        ("paper: P\nbaselines: {x: {table: T, results: [{where: {}, fid: 1}]}}", "baselines.x.protocol"),
        ("paper: P\nbaselines: {x: {table: T, protocol: {dataset: d, samples: -1}, results: [{where: {}, fid: 1}]}}",
         "protocol.samples"),
        ("paper: P\nbaselines: {x: {table: T, protocol: {dataset: d}, results: [{where: {}, fid: abc}]}}",
         "results[0].fid"),
        ("baselines: {}", "paper"),
        ("paper: [unclosed", "not valid YAML"),
    ],
)
def test_malformed_baseline_file_names_file_and_key(tmp_path, text, needle) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(BenchError) as e:
        load_baselines(tmp_path)
    assert str(tmp_path / "bad.yaml") in str(e.value) and needle in str(e.value)


def test_unknown_experiment_is_a_clear_error(study, report, tmp_path) -> None:
    never_run = dataclasses.replace(study, name="never-run")
    with pytest.raises(BenchError, match="no MLflow experiment named 'never-run'"):
        build_report(never_run, tracking_uri=report[1], out_dir=tmp_path)
    assert not (tmp_path / "never-run").exists()


# --- the study files of this issue ------------------------------------------------------------

STUDY_FILES = ["ddim_steps_eta", "guidance", "models", "objectives", "schedules"]


@pytest.mark.parametrize("name", [*STUDY_FILES, *(f"{n}_full" for n in STUDY_FILES)])
def test_study_files_load_and_their_reports_validate(name, tmp_path, monkeypatch) -> None:
    """Each file expands without error and its tables / plots name real axes, metrics, baselines.

    Full-scale files are checked offline against a stand-in CIFAR-10 folder and Inception file
    (only their existence is checked at load time)."""
    from bench.study import read_study_file
    from bench.study.checks import produced_outputs

    overrides = None
    if name.endswith("_full"):
        root = tmp_path / "cifar-10-batches-py"
        root.mkdir()
        for f in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                  "batches.meta"]:
            (root / f).touch()
        (tmp_path / "inception.pth").touch()
        monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(tmp_path / "inception.pth"))
        overrides = {"data.root": str(tmp_path)}
    path = REPO / "ablations" / f"{name}.yaml"
    assert path.read_text().startswith("# Question:")
    raw = read_study_file(path)
    plots = raw.pop("plots", [])  # checked below by the report's own validator
    study = build_study(raw, source=str(path), overrides=overrides, path=path)
    assert len(study.configs) >= 8 and study.tables
    produced, _ = produced_outputs(study.configs)
    tables, plots = validate_report_specs(study.tables, plots, set(study.axes), produced, str(path),
                                          baselines=set(load_baselines(REPO / "baselines")))  # fmt: skip
    assert tables and plots


def test_latex_tables_have_booktabs_bold_best_and_the_protocol(report, tmp_path) -> None:
    folder, uri = report
    tex = (folder / "tables.tex").read_text()
    assert tex.count("\\begin{table}") == 3 and tex.count("\\toprule") == 3 and "\\bottomrule" in tex
    mean20, _, _ = _expected(uri, "fid", 0.0, 20)
    assert f"\\textbf{{{mean20:.1f} (n=1/2)}}" in tex  # the best FID at 20 steps, as in Markdown
    assert "$\\pm$" in tex and "FID $\\downarrow$" in tex
    assert "Protocol: num samples 100;" in tex and "extractor domain:digits" in tex and "dataset digits" in tex
    if PDFLATEX is None:
        pytest.skip("pdflatex is not installed (make system-deps installs texlive-latex-recommended)")
    pdf = compile_latex(folder / "tables.tex", tmp_path)
    assert pdf.read_bytes().startswith(b"%PDF")


def test_runs_parquet_matches_runs_csv(report) -> None:
    import pandas as pd

    folder, _ = report
    parquet, csv_ = pd.read_parquet(folder / "runs.parquet"), pd.read_csv(folder / "runs.csv")
    assert list(parquet.columns) == list(csv_.columns) and len(parquet) == len(csv_)
    assert parquet["metrics.fid"].equals(csv_["metrics.fid"])
