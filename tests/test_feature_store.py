"""The feature store, rescoring and auditing finished runs, bootstrap intervals and paired tests.

Truths used: a statistic of resampled features is the bootstrap's definition, so its interval must
cover the closed-form Fréchet distance of two Gaussians at the nominal rate; two configurations
that share per-sample noise differ by less noise than two unpaired ones; rescoring samples nothing
(counted) and gives the number a fresh evaluation gives.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import yaml
from conftest import FOUNDATION_MODELS
from tiny import tiny_study

from bench.core.errors import BenchError
from bench.metrics import FIDSampleSizeWarning, compute_metrics
from bench.metrics.features import STORE_COUNTS, frechet, load_features, samples_path
from bench.metrics.uncertainty import bootstrap, paired_difference


def _gaussian_fd(mu1, cov1, mu2, cov2) -> float:
    """Closed form for commuting (here diagonal) covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2."""
    return float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(np.diag(cov1)) - np.sqrt(np.diag(cov2))) ** 2).sum())


def test_bootstrap_interval_covers_the_true_frechet_distance():
    """Gaussian features in 4 dimensions, 400 generated and a large reference: the 95 % basic
    interval over generated images covers the population FD in most of 40 draws (the reference's
    own error is small at 20,000 images)."""
    rng = np.random.default_rng(0)
    d, n = 4, 400
    mu_g, sd_g = np.full(d, 0.3), np.full(d, 1.2)
    truth = _gaussian_fd(mu_g, np.diag(sd_g**2), np.zeros(d), np.eye(d))
    ref = torch.from_numpy(rng.standard_normal((20_000, d)))
    hits, widths = 0, []
    for seed in range(40):
        g = torch.from_numpy(mu_g + sd_g * rng.standard_normal((n, d)))
        point, lo, hi = bootstrap(lambda idx, g=g: frechet(g[idx], ref), n, 100, seed=seed)
        assert lo < point < hi
        hits += lo <= truth <= hi
        widths.append(hi - lo)
    assert hits >= 32, f"coverage {hits}/40 of a 95% interval"
    assert 0.01 < np.mean(widths) < 0.5


def test_paired_difference_is_tighter_than_unpaired_and_finds_real_differences():
    """Two configurations drawn from the same noise (b = a shifted a little): the paired interval of
    their FD difference excludes 0 and is narrower than the one from independent resampling."""
    rng = np.random.default_rng(1)
    ref = torch.from_numpy(rng.standard_normal((5000, 3)))
    noise = [torch.from_numpy(rng.standard_normal((300, 3))) for _ in range(2)]  # two seeds
    a = [z * 1.0 + 0.05 for z in noise]
    b = [z * 1.0 + 0.25 for z in noise]
    diff, lo, hi = paired_difference(a, b, ref, frechet, 200)
    assert diff < 0 and hi < 0, "a is nearer the reference than b, and the paired test says so"
    unpaired = paired_difference(a, [x[torch.randperm(300)] for x in b[::-1]], ref, frechet, 200, seed=5)
    assert (hi - lo) < (unpaired[2] - unpaired[1])
    same = paired_difference(a, a, ref, frechet, 50)
    assert same == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(a, b[:1], ref, frechet, 10)


def test_metrics_from_the_store_equal_a_fresh_extraction(digits_images):
    """A store key keeps the generated features; a second computation reads them (no forward pass)
    and gives the same numbers, for every layer the first one needed."""
    images, ref = digits_images
    kw = dict(reference=ref, extractor="domain:digits", metrics=["fid", "kid", "is", "density", "coverage"],
              kid_subset_size=50, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleSizeWarning)
        counts = dict(STORE_COUNTS)
        first = compute_metrics(images, store_key="k-store", **kw)
        assert STORE_COUNTS == {"loaded": counts["loaded"], "extracted": counts["extracted"] + len(images)}
        again = compute_metrics(images, store_key="k-store", **kw)
        assert STORE_COUNTS == {"loaded": counts["loaded"] + len(images), "extracted": counts["extracted"] + len(images)}
        fresh = compute_metrics(images, **kw)
    assert dict(first) == dict(again) == dict(fresh)
    ext = first.protocol["extractor"]
    assert set(load_features("k-store", f"domain-digits-{first.protocol['weights_sha256'][:12]}")) == \
        {"features", "logits"} and ext == "domain:digits"
    assert 0 < first["coverage"] <= 1 and first["density"] > 0


def test_density_and_coverage_of_a_set_with_itself_and_a_collapsed_set(digits_images):
    """prdc's truths: a set against itself has coverage 1; one image repeated covers almost nothing."""
    images, _ = digits_images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleSizeWarning)
        same = compute_metrics(images, reference=images, extractor="domain:digits", metrics=["coverage", "density"],
                               progress=False)
        collapsed = compute_metrics(images[:1].repeat(len(images), 1, 1, 1), reference=images,
                                    extractor="domain:digits", metrics=["coverage"], progress=False)
    assert same["coverage"] == 1.0 and same["density"] == pytest.approx(1.0, abs=0.3)
    assert collapsed["coverage"] < 0.1


def test_fd_dinov2_and_cmmd_are_zero_on_a_set_with_itself_and_grow_with_a_shift(foundation_weights, digits_images):
    images, _ = digits_images
    x, other = images[:6], images[6:12]
    kw = dict(extractor="domain:digits", metrics=["fd_dinov2", "cmmd"], progress=False,
              feature_models=FOUNDATION_MODELS, feature_weights=foundation_weights)
    same = compute_metrics(x, reference=x, **kw)
    diff = compute_metrics(x, reference=other, **kw)
    assert abs(same["fd_dinov2"]) < 1e-3 and abs(same["cmmd"]) < 1e-9
    assert diff["fd_dinov2"] > 1e-3 and diff["cmmd"] > 0
    assert diff.protocol["fd_dinov2_extractor"] == "dinov2-vit-s-14"
    assert diff.protocol["cmmd_extractor"] == "clip-vit-b-32"


def test_cmmd_formula_matches_its_definition():
    """CMMD = 1000 (mean k(x,x') + mean k(y,y') - 2 mean k(x,y)), k = exp(-|a-b|^2 / 200), all pairs."""
    from bench.metrics.defs.cmmd import cmmd

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=g) * 4, torch.randn(9, 5, generator=g) * 4 + 1

    def k(a, b):
        return torch.exp(-torch.cdist(a.double(), b.double()) ** 2 / 200).mean()

    assert cmmd(x, y) == pytest.approx(float(1000 * (k(x, x) + k(y, y) - 2 * k(x, y))), rel=1e-9)


def test_bootstrap_intervals_logged_beside_the_metric(digits_images):
    images, ref = digits_images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleSizeWarning)
        res = compute_metrics(images, reference=ref, extractor="domain:digits", metrics=["fid", "kid"],
                              kid_subset_size=50, bootstrap=30, progress=False)
    # the basic interval estimates the population value: FID at 150 images is biased upwards, so the
    # interval sits below the number (resampling shows the bias), by less than the number itself
    assert 0 < res["fid_ci_lo"] < res["fid_ci_hi"] < res["fid"] + (res["fid_ci_hi"] - res["fid_ci_lo"])
    assert res["kid_mean_ci_lo"] < res["kid_mean_ci_hi"]
    assert "30 resamples" in res.protocol["bootstrap"]


@pytest.fixture(scope="module")
def digits_images():
    from bench.core.config import DataSpec
    from bench.data import load_images

    test = load_images(DataSpec(dataset="digits"), "test").images
    return test[:150], test[150:]


# --- studies: the store between runs, rescore, audit ------------------------------------------------

def _study(tmp_path, metrics, **eval_kw):
    study = tiny_study("store", grid={"sample.steps": [2, 4]}, train_steps=10,
                       eval={"num_samples": 80, "metrics": metrics, "extractor": "domain:digits", "nll_samples": 0,
                             "kid_subset_size": 40, **eval_kw})
    study["tables"] = [{"rows": "sample.steps", "values": metrics[0]}]
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_rescore_samples_nothing_and_equals_a_fresh_evaluation(tmp_path, monkeypatch, foundation_weights):
    """Rescoring finished runs with new metrics (and scoring settings given as overrides, which do
    not change which images were scored) samples nothing and extracts nothing it has; a study that
    asks for the metric from the start reuses the stored samples and logs the same numbers; the
    audit recomputes every run's FID by both backends from the stored samples."""
    from bench.jobs.eval import SAMPLED
    from bench.pipeline import run_study
    from bench.rescore import audit_study, rescore_study
    from bench.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = _study(tmp_path, ["fid"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleSizeWarning)
        run_study(path, tracking_uri=uri, devices="cpu", progress=False, report=False)
        sampled = SAMPLED["images"]  # this process's count (the study's jobs ran in worker processes)
        files = [samples_path(r.data.tags["bench.sample_key"]) for r in Tracker("store", uri).runs(kind="eval")]
        stored = {p: p.stat().st_mtime_ns for p in files}
        assert len(stored) == 2
        overrides = {"eval.feature_weights": foundation_weights,
                     **{f"eval.{k}_model": v for k, v in FOUNDATION_MODELS.items()}}
        with pytest.raises(BenchError, match="unknown metric"):
            rescore_study(path, ["fd_dinov3"], tracking_uri=uri, overrides=overrides, report=False)
        summary = rescore_study(path, ["kid", "density"], tracking_uri=uri, overrides=overrides,
                                bootstrap=20, report=False, progress=False)
        assert SAMPLED["images"] == sampled and summary.sampled == 0
        # both runs' domain features from the store: no image sampled, none pushed through a network
        assert len(summary.rescored) == 2 and (summary.features_loaded, summary.features_extracted) == (160, 0)
        runs = Tracker("store", uri).runs(kind="eval", status="FINISHED")
        assert all({"fid", "kid_mean", "density", "kid_mean_ci_hi"} <= set(r.data.metrics) for r in runs)
        assert all(r.data.tags["bench.rescored"] == "kid,density" for r in runs)
        assert all(r.data.metrics["kid_mean_ci_lo"] < r.data.metrics["kid_mean"] for r in runs)
        # the same study asking for kid from the start: new keys, the stored samples reused, same numbers
        path2 = _study(tmp_path, ["fid", "kid"])
        run_study(path2, tracking_uri=uri, devices="cpu", progress=False, report=False)
        assert {p: p.stat().st_mtime_ns for p in stored} == stored  # no sample file was written again
        fresh = {r.data.tags["bench.label"]: r.data.metrics for r in Tracker("store", uri).runs(kind="eval")
                 if r.data.tags.get("bench.samples_reused") == "80"}
        assert len(fresh) == 2
        for r in runs:
            assert fresh[r.data.tags["bench.label"]]["kid_mean"] == pytest.approx(r.data.metrics["kid_mean"])
            assert fresh[r.data.tags["bench.label"]]["fid"] == pytest.approx(r.data.metrics["fid"])
        table = audit_study(path, tracking_uri=uri)
    assert len(table) == 4  # both studies' runs: they scored the same stored samples
    # the same features up to float32 rounding: the logged number came from a worker with its own
    # thread count, the audit's from this process (convolutions sum in another order)
    assert (table["torch-fidelity - logged"].abs() <= 1e-6 * table["logged"].abs()).all()
    assert table["clean-fid"].notna().all() and (table["clean-fid"] > 0).all()
    assert table["clean-fid protocol"].str.contains("mode clean").all()


@pytest.mark.parametrize("eval_kw, message", [
    ({"bootstrap": -1}, "integer >= 0"), ({"bootstrap": 5}, "at least 20"),
    ({"dinov2_model": "clip-vit-b-32"}, "not a dinov2 extractor"),
    ({"clip_model": "dinov2-vit-s-14"}, "not a clip extractor"),
    ({"feature_weights": {"dinov2-vit-s-14": "/nowhere/dinov2_vits14_pretrain.pth"}}, "does not exist"),
    ({"feature_weights": {"inception": "/x.pth"}}, "takes no weights file here"),
    ({"feature_weights": {"dinov3": "/x.pth"}}, "unknown feature extractor"),
    ({"metrics": ["fd_dinov2"]}, "needs its weights and this machine is offline"),
    ({"metrics": ["cmmd"], "extractor": "domain:digits"}, "clip-vit-l-14-336px needs its weights"),
])
def test_feature_settings_are_refused_before_work(eval_kw, message, monkeypatch, tmp_path):
    from bench.study import build_study

    monkeypatch.setenv("BENCH_OFFLINE", "1")
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(tmp_path))  # empty: nothing to find
    study = tiny_study("refuse", eval={"metrics": ["fid"], "extractor": "domain:digits", "num_samples": 80,
                                       "nll_samples": 0, **eval_kw})
    with pytest.raises(BenchError, match=message):
        build_study(study, source="t")


def test_offline_weights_are_found_in_the_weights_folder(monkeypatch, foundation_weights):
    """The official file name in $BENCH_WEIGHTS_DIR is enough: no eval.feature_weights needed."""
    from pathlib import Path

    from bench.study import build_study

    monkeypatch.setenv("BENCH_OFFLINE", "1")
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(Path(foundation_weights["dinov2-vit-s-14"]).parent))
    study = tiny_study("found", eval={"metrics": ["fd_dinov2", "cmmd"], "num_samples": 20, "nll_samples": 0,
                                      "extractor": "domain:digits", "dinov2_model": "dinov2-vit-s-14",
                                      "clip_model": "clip-vit-b-32"})
    assert len(build_study(study, source="t").configs) == 1


def test_fid_vs_n_draws_each_image_once(tmp_path, monkeypatch):
    """A grid over eval.num_samples: image i has the same seed in every run, so the 70-image run is
    the first 70 images of the 140-image one; together they sample 140 images, not 210, and the
    smaller run's FID is the FID of the first 70 stored images."""
    from bench.data import load_images
    from bench.metrics.features import load_samples
    from bench.pipeline import run_study
    from bench.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = tiny_study("fid-vs-n", grid={"eval.num_samples": [140, 70]}, train_steps=10,
                       eval={"metrics": ["fid"], "extractor": "domain:digits", "nll_samples": 0})
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump(study))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleSizeWarning)
        run_study(path, tracking_uri=uri, devices="cpu", progress=False, report=False)
        runs = {int(r.data.params["eval.num_samples"]): r for r in Tracker("fid-vs-n", uri).runs(kind="eval")}
        assert runs[70].data.tags["bench.sample_key"] == runs[140].data.tags["bench.sample_key"]
        assert [r.data.tags.get("bench.samples_reused") for r in runs.values()].count("70") == 1
        blob = load_samples(runs[70].data.tags["bench.sample_key"])
        assert len(blob["images"]) == 140
        from bench.core.config import DataSpec

        ref = load_images(DataSpec(dataset="digits"), "test").images
        again = compute_metrics(blob["images"][:70], reference=ref, extractor="domain:digits", metrics=["fid"],
                                progress=False)
    assert runs[70].data.metrics["fid"] == pytest.approx(again["fid"], rel=1e-6)


@pytest.mark.parametrize("name", ["fid", "kid"])
def test_vectorised_resamples_equal_the_metric_recomputed_on_each_resampled_set(name):
    """The bootstrap's batched FID / KID (count weights, kernels computed once) give, replicate by
    replicate, what torch-fidelity computes on the resampled features themselves."""
    from bench.metrics import METRICS
    from bench.metrics.uncertainty import resamples

    class Ctx:
        protocol = {"kid_subset_size": 50}

    g = torch.randn(120, 16, generator=torch.Generator().manual_seed(0)) + 0.2
    r = torch.randn(150, 16, generator=torch.Generator().manual_seed(1))
    idx = torch.cat([torch.arange(120)[None], resamples(120, 6)])
    metric = METRICS.get(name)
    key = metric.outputs[0].key
    fast = metric.resampled(g, r, Ctx, idx)
    slow = np.array([metric.on_features(g[i], r, Ctx)[key] for i in idx])
    assert len(set(np.round(slow, 6))) == len(slow)  # the resamples differ: the check is not vacuous
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-7)
