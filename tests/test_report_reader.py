"""A report as a reader meets it (issue 30), on a small synthetic store written through the mlflow API:
rows identical by construction (DDIM eta = 1 and ancestral DDPM) are labelled and explained, the eta
DDPM ignores reads '—', a metric prints with one format in every table, an interval always contains
the point printed beside it, and captions and the legend name only what occurs in them."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow_runs import log_run  # noqa: E402

from bench.report import build_report, study_tables  # noqa: E402
from bench.study import build_study  # noqa: E402

NAME = "reader-test"
STUDY = {
    "name": NAME,
    "question": "Is DDIM eta = 0 better than the stochastic samplers? (synthetic numbers)",
    "base": {"data": {"dataset": "digits"}, "model": {"backbone": "unet-tiny"}, "train": {"steps": 10},
             "eval": {"num_samples": 100, "extractor": "domain:digits", "metrics": ["fid", "nll"],
                      "nll_samples": 8}},
    "grid": {"sample.sampler": ["ddim", "ddpm"], "sample.eta": [0.0, 1.0], "sample.steps": [10, 20]},
    "exclude": [{"sample.sampler": "ddpm", "sample.eta": 0.0}],
    "tables": [
        {"rows": ["sample.sampler", "sample.eta"], "columns": "sample.steps", "values": "fid", "title": "fid"},
        {"rows": "sample.sampler", "values": "fid", "where": {"sample.steps": 20}, "interval": "ci",
         "title": "ci"},
        {"rows": "sample.steps", "values": "nll_bpd", "where": {"sample.sampler": "ddim", "sample.eta": 0.0},
         "title": "nll"},
    ],
    "plots": [{"kind": "line", "x": "sample.steps", "y": "fid", "hue": "sample.eta", "style": "sample.sampler"}],
}


def fid_of(sampler: str, eta: float, steps: int) -> float:
    # DDPM and DDIM eta = 1 are one sampler: the same number to every digit
    return 4.0 + (3.0 if (sampler == "ddpm" or eta == 1.0) else 0.0) + 10.0 / steps + 0.0123


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import mlflow

    study = build_study(STUDY, source="reader-test")
    tmp = tmp_path_factory.mktemp("reader")
    uri = f"sqlite:///{tmp}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment(NAME, artifact_location=(tmp / "artifacts").as_uri())
    mlflow.set_experiment(NAME)
    log_run(mlflow, NAME, study.configs[0], "train", study.configs[0].train_key())
    for cfg in study.configs:
        s = cfg.sample
        fid = fid_of(s.sampler, s.eta, s.steps)
        metrics = {"fid": fid, "fid_ci_lo": fid - 3.0, "fid_ci_hi": fid - 0.5,  # bias-corrected: below fid
                   "nll_bpd": 1.5, "nll_bpd_se": 0.1}
        log_run(mlflow, NAME, cfg, "eval", cfg.key(), metrics=metrics)
    mlflow.set_tracking_uri(previous)
    folder = build_report(study, tracking_uri=uri, out_dir=tmp / "reports")
    return {t.title: t for t in study_tables(study, tracking_uri=uri)}, folder


def test_identical_rows_are_labelled_and_ignored_axes_read_as_dashes(built):
    tables, _ = built
    t = tables["fid"]
    labels = [tuple(r) for r in t.text.index]
    assert labels == [("ddim", "0.0"), ("ddim", "1.0 ≡"), ("ddpm", "— ≡")]
    assert any(n.startswith("≡: rows ddim · 1.0 and ddpm · — agree in every cell") for n in t.notes)
    assert any("'—' as eta: the row's sampler has no such option" in n for n in t.notes)
    # one column, but the value and its interval agree: three numbers, the same rows marked
    assert [tuple(r) for r in tables["ci"].text.index] == [("ddim", "0.0"), ("ddim", "1.0 ≡"), ("ddpm", "— ≡")]
    # NLL reads the model, not the sampler: its rows by steps are one computation too (value and its ±)
    assert [tuple(r) for r in tables["nll"].text.index] == [("10 ≡",), ("20 ≡",)]
    text = (built[1] / "report.md").read_text()  # the plot says which of its lines hide each other
    assert "The lines eta = 1.0, sampler = ddim and eta = 1.0, sampler = ddpm coincide at every steps" in text
    assert text.count("coincide") == 1
    latex = (built[1] / "tables.tex").read_text()  # the marks as LaTeX symbols, not as '?'
    assert "1.0 $\\equiv$" in latex and "--- $\\equiv$" in latex and "$\\tilde\\beta$" in latex


def test_one_format_per_metric_across_tables(built):
    tables, _ = built
    first = tables["fid"].text.loc[("ddim", "0.0")].iloc[-1]  # 20 steps
    second = tables["ci"].text.iloc[0, 0]  # ddim
    assert tables["fid"].formats["fid"] == tables["ci"].formats["fid"]
    assert second.startswith(first.strip("*").split()[0] + " ")  # the same run prints the same number


def test_interval_contains_the_point_printed_beside_it(built):
    tables, _ = built
    for cell in tables["ci"].text.iloc[:, 0]:
        point, bc, lo, hi = (float(x) for x in re.findall(r"-?\d+\.\d+", cell)[:4])
        assert lo <= bc <= hi and bc == pytest.approx((lo + hi) / 2, abs=0.051)  # as printed, to .1f
        assert point > hi  # the measured value lies above: the caption says why


def test_captions_state_only_what_occurs(built):
    tables, folder = built
    for t in tables.values():
        text = " ".join(t.notes)
        assert "One seed per cell." in text and "Mean ± sample std" not in text
        assert "(n=k/N)" not in text and "'failed'" not in text and "not run" not in text
    assert any("NLL (bits/dim) ± the standard error of the mean over the test images" in n for n in tables["nll"].notes)
    assert not any("± the standard error" in n for n in tables["fid"].notes)  # FID has no spread of its own
    html = (folder / "report.html").read_text()
    legend = html.split('class="legend note"')[1].split("</p>")[0]
    assert "best in column" in legend and "failed" not in legend and "published" not in legend


def test_sample_grid_is_laid_out_one_class_per_column(tmp_path):
    """The eval job's own grid (bench.jobs.eval.save_grid) of 64 images, image i a flat grey of level 3i
    for class i mod 10: re-laid out, column c row k holds image 10k + c."""
    import io

    import torch
    from PIL import Image

    from bench.jobs.eval import save_grid
    from bench.report.grids import by_class

    images = (torch.arange(64, dtype=torch.uint8) * 3).view(64, 1, 1, 1).expand(64, 1, 8, 8).contiguous()
    save_grid(images, tmp_path / "samples.png")
    out = by_class((tmp_path / "samples.png").read_bytes(), 64, 10)
    assert out is not None
    grid = Image.open(io.BytesIO(out)).convert("L")
    tile, step, head = 32, 34, 16  # 8 px x scale 4, 2 px padding, the label row (half a tile)
    assert grid.size == (10 * step + 2, head + 7 * step + 2)
    for k in range(7):
        for c in range(10):
            i = 10 * k + c
            pixel = grid.getpixel((2 + c * step + tile // 2, head + 2 + k * step + tile // 2))
            assert pixel == (3 * i if i < 64 else 255), (k, c)  # past the last image: the white background
    assert by_class((tmp_path / "samples.png").read_bytes(), 50, 10) is None  # not the layout of 50 images


def test_a_flat_search_axis_is_widened_and_its_range_stated():
    """IS 8.913..8.922 (0.1 %): the axis spans 5 % of the value, and the note says the true range."""
    import pandas as pd
    from matplotlib.figure import Figure

    from bench.report.search import _honest_range

    ax = Figure().subplots()
    values = [8.913, 8.917, 8.922]
    ax.plot([0, 1, 2], values)
    note = _honest_range(ax, pd.Series(values), "is_mean")
    lo, hi = ax.get_ylim()
    assert hi - lo == pytest.approx(0.05 * 8.922) and lo < 8.913 and hi > 8.922
    assert note == "is_mean spans 8.913..8.922 (axis widened to 5 % of its value)"
    ax2 = Figure().subplots()
    assert _honest_range(ax2, pd.Series([3.0, 6.0]), "fid") == ""  # a real change: untouched


def test_the_axis_rule_widens_a_flat_axis_and_never_narrows_one():
    """bench.report.axes.widen: a flat linear axis grows to 5 % of the value around the values; an
    axis already wider (error bars beyond the values) is kept; a log axis is left alone."""
    from matplotlib.figure import Figure

    from bench.report.axes import widen

    ax = Figure().subplots()
    ax.plot([0, 1], [100.0, 100.5])
    assert widen(ax, [100.0, 100.5]) == pytest.approx((100.0, 100.5, 100.25 - 2.5125, 100.25 + 2.5125))
    assert ax.get_ylim() == pytest.approx((100.25 - 2.5125, 100.25 + 2.5125))  # 5 % of 100.5
    bars = Figure().subplots()
    bars.errorbar([0, 1], [100.0, 100.5], yerr=[10.0, 10.0])
    before = bars.get_ylim()
    widen(bars, [100.0, 100.5])
    assert bars.get_ylim() == before  # the error bars' span is wider than the window: kept
    xs = Figure().subplots()
    xs.plot([8.0, 8.01], [0, 1])
    assert widen(xs, [8.0, 8.01], "x") is not None and xs.get_xlim()[1] - xs.get_xlim()[0] >= 0.05 * 8.01 - 1e-12
    log = Figure().subplots()
    log.plot([0, 1], [100.0, 100.5])
    log.set_yscale("log")
    assert widen(log, [100.0, 100.5]) is None


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_headless_chromium_shows_the_quickstart_like_report(built, tmp_path) -> None:
    """The report as a browser draws it: a page with text, shaded tables and a plot, where the ≡ rows,
    DDPM's '—' and the caption that explains them are on screen; no badge for what does not occur."""
    import numpy as np
    from PIL import Image

    page = (built[1] / "report.html").resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400"]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", page], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1200) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    dom = subprocess.run([*flags, "--dump-dom", page], check=True, capture_output=True, text=True, timeout=120).stdout
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<style\b.*?</style>", " ", dom, flags=re.S))))
    assert "1.0 ≡" in text and "— ≡" in text and "agree in every cell" in text
    assert "best in column" in text and "published" not in text and "not run" not in text
    keep = os.environ.get("BENCH_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
