"""bench.metrics against the real torch-fidelity and clean-fid (no mocks), on digits, offline."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from bench.core.config import DataSpec, EvalSpec
from bench.core.errors import BenchError
from bench.data import load_images
from bench.metrics import (
    EXTRACTORS,
    FORWARD_IMAGES,
    HIGHER_IS_BETTER,
    INCEPTION_URL,
    METRICS,
    FIDSampleSizeWarning,
    class_accuracy,
    compute_metrics,
    get_extractor,
    higher_is_better,
    metric_outputs,
    nll_bpd,
    save_random_inception_weights,
    validate_eval,
)
from bench.metrics.features import UInt8Images

FIDELITY = ("fid", "is", "kid", "precision", "recall")


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One cache folder for the session: the digits classifier is trained once, never in the repo."""
    root = tmp_path_factory.mktemp("metrics_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="session")
def digits_ext(cache):
    return get_extractor("domain:digits", image_size=8, progress=False)


@pytest.fixture(scope="session")
def digits():
    return load_images(DataSpec(), "train"), load_images(DataSpec(), "test")


def noise(n: int, channels: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def quiet(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleSizeWarning)
        return compute_metrics(**kw)


# --- registries ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_declares_outputs_and_direction(name: str) -> None:
    meta = METRICS.meta(name)
    assert isinstance(meta["higher_is_better"], bool) and meta["outputs"]
    spreads = {o.spread for o in METRICS.get(name).outputs if o.spread}  # IS's std, NLL's standard error
    for key in meta["outputs"]:
        assert key in spreads or key.endswith("_std") or HIGHER_IS_BETTER[key] == meta["higher_is_better"]
        if key in spreads:
            assert higher_is_better(key) is None  # a spread is no score


def test_higher_is_better_per_output_key() -> None:
    expected = {"fid": False, "is_mean": True, "kid_mean": False, "precision": True, "recall": True,
                "class_accuracy": True, "nll_bpd": False}
    assert {k: higher_is_better(k) for k in expected} == expected
    assert higher_is_better("is_std") is None and higher_is_better("train_seconds") is None
    assert metric_outputs(["is", "kid", "nll"]) == ["is_mean", "is_std", "kid_mean", "kid_std", "nll_bpd",
                                                    "nll_bpd_se"]


@pytest.mark.parametrize("name", EXTRACTORS.names())
def test_every_extractor_declares_its_feature_size(name: str) -> None:
    assert EXTRACTORS.meta(name)["feature_dim"] > 0


def test_unknown_extractor_says_did_you_mean() -> None:
    with pytest.raises(BenchError, match="Did you mean 'domain:digits'"):
        compute_metrics(noise(8), extractor="domian:digits", metrics=("kid",))
    with pytest.raises(BenchError, match="Did you mean 'digits'"):
        compute_metrics(noise(8), extractor="domain:digts", metrics=("kid",))
    with pytest.raises(BenchError, match="Did you mean 'inception'"):
        compute_metrics(noise(8), extractor="inceptoin", metrics=("kid",))


# --- the domain classifier ----------------------------------------------------------------------
def test_domain_classifier_is_accurate_and_cached(digits_ext, digits, cache) -> None:
    _, test = digits
    assert digits_ext.accuracy >= 0.95
    assert class_accuracy(test.images, test.labels, "domain:digits") >= 0.95
    assert os.path.commonpath([digits_ext.weights_path, str(cache)]) == str(cache)
    assert "extractors" in digits_ext.weights_path and len(digits_ext.weights_sha256) == 64


def test_domain_classifier_refuses_below_required_accuracy(digits_ext, monkeypatch) -> None:
    from bench.metrics import domain

    monkeypatch.setitem(domain.MIN_ACCURACY, "digits", 1.01)
    with pytest.raises(BenchError, match="below the 101% needed"):
        get_extractor("domain:digits", image_size=8)


# --- FID / IS / KID / PR ------------------------------------------------------------------------
def test_all_fidelity_metrics_with_protocol(digits_ext, digits) -> None:
    train, _ = digits
    with pytest.warns(FIDSampleSizeWarning, match="biased"):
        m = compute_metrics(train.images[:500], "digits:test", "domain:digits", FIDELITY)
    assert set(m) == {"fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall"}
    assert all(isinstance(v, float) for v in m.values())
    assert 0.5 <= m["precision"] <= 1 and 0.5 <= m["recall"] <= 1 and abs(m["kid_mean"]) < 0.05
    p = m.protocol
    assert (p["num_samples"], p["reference"], p["reference_count"], p["extractor"]) == (
        500, "digits:test", 360, "domain:digits")
    assert p["weights_sha256"] == digits_ext.weights_sha256 and p["feature_dim"] == 64
    assert p["backend"] == "torch-fidelity" and "8x8" in p["resize"]


def test_fid_of_a_set_with_itself_is_zero(digits_ext, digits) -> None:
    _, test = digits
    m = quiet(images=test.images, reference="digits:test", metrics=("fid",))
    assert abs(m["fid"]) < 1e-6


def test_fid_separates_digits_from_noise(digits_ext, digits) -> None:
    train, _ = digits
    a, b = train.images[:700], train.images[700:1400]
    same = quiet(images=a, reference=b, metrics=("fid",))["fid"]
    far = quiet(images=noise(700), reference=b, metrics=("fid",))["fid"]
    assert same < 5 and far > 20 * same


def test_fid_equals_torch_fidelity_called_directly(digits_ext, digits) -> None:
    import torch_fidelity

    train, test = digits
    ours = quiet(images=train.images[:400], reference="digits:test", metrics=("fid",))["fid"]
    direct = torch_fidelity.calculate_metrics(
        input1=UInt8Images(train.images[:400]), input2=UInt8Images(test.images), fid=True, cuda=False,
        verbose=False, cache=False, save_cpu_ram=True, **digits_ext.tf_kwargs())["frechet_inception_distance"]
    assert ours == pytest.approx(direct, rel=1e-6)


def test_clean_fid_backend_agrees_with_torch_fidelity(digits_ext, digits) -> None:
    train, _ = digits
    kw = dict(images=train.images[:400], reference="digits:test", metrics=("fid",))
    tf = quiet(**kw)
    cf = quiet(**kw, fid_backend="clean-fid")
    assert cf.protocol["backend"] == "clean-fid"
    # clean-fid's own pipeline ran (its PNG reader, "clean" resize and feature loop), on our classifier
    assert cf.protocol["cleanfid_mode"] == "clean" and "custom_feat_extractor" in cf.protocol["cleanfid_features"]
    assert cf["fid"] == pytest.approx(tf["fid"], rel=0.01)


def test_inception_score_of_digits_and_noise(digits_ext, digits) -> None:
    train, _ = digits
    assert compute_metrics(train.images, metrics=("is",))["is_mean"] >= 8
    assert compute_metrics(noise(500), metrics=("is",))["is_mean"] < 2


def test_second_evaluation_reuses_cached_reference_features(digits_ext, digits) -> None:
    train, _ = digits
    ref = train.images[1000:1300]  # a reference no other test uses: the first call must miss
    gen = train.images[:200]
    before = FORWARD_IMAGES[digits_ext.tf_name]
    first = compute_metrics(gen, ref, metrics=("kid", "precision"))
    after_first = FORWARD_IMAGES[digits_ext.tf_name]
    second = compute_metrics(gen, ref, metrics=("kid", "precision"))
    assert after_first - before == 200 + 300
    assert FORWARD_IMAGES[digits_ext.tf_name] - after_first == 200  # only the generated images
    assert (first.protocol["reference_cache"], second.protocol["reference_cache"]) == ("miss", "hit")
    assert dict(first) == dict(second)


# --- bad input ----------------------------------------------------------------------------------
def test_too_few_samples_for_fid(digits_ext, digits) -> None:
    with pytest.raises(BenchError, match="at least 65 generated images"):
        compute_metrics(digits[0].images[:50], metrics=("fid",))


def test_images_must_be_uint8_without_nan(digits_ext) -> None:
    x = noise(8).float()
    with pytest.raises(BenchError, match="run 'ddim-50'.*uint8"):
        compute_metrics(x, metrics=("kid",), run_name="ddim-50")
    x[3, 0, 1, 1] = float("nan")
    with pytest.raises(BenchError, match="run 'ddim-50'.*NaN \\(1 of 8"):
        compute_metrics(x, metrics=("kid",), run_name="ddim-50")


def test_channels_and_sizes_the_extractor_cannot_take(digits_ext, digits) -> None:
    with pytest.raises(BenchError, match="3 channels.*1-channel"):
        compute_metrics(noise(8, channels=3), metrics=("kid",))
    with pytest.raises(BenchError, match="reference images are 16x16.*trained on 8x8"):
        compute_metrics(noise(8), reference=noise(8, size=16), metrics=("kid",))
    with pytest.raises(BenchError, match="generated images are 8x8.*asked for 16x16"):
        compute_metrics(noise(8), metrics=("kid",), image_size=16, extractor="domain:digits")


def test_unknown_or_misplaced_metric(digits_ext) -> None:
    with pytest.raises(BenchError, match="Did you mean 'kid'"):
        compute_metrics(noise(8), metrics=("kdi",))
    with pytest.raises(BenchError, match="nll_bpd"):
        compute_metrics(noise(8), metrics=("nll",))
    with pytest.raises(BenchError, match="labels="):
        compute_metrics(noise(8), metrics=("class_accuracy",))


def test_class_accuracy_through_compute_metrics(digits_ext, digits) -> None:
    _, test = digits
    m = compute_metrics(test.images, metrics=("class_accuracy", "kid"), labels=test.labels)
    assert m["class_accuracy"] >= 0.95 and set(m) == {"class_accuracy", "kid_mean", "kid_std"}
    wrong = (test.labels + 1) % 10
    assert class_accuracy(test.images, wrong, "domain:digits") < 0.05


# --- study-time validation ----------------------------------------------------------------------
def test_validate_eval(tmp_path, monkeypatch) -> None:
    digits = DataSpec()
    validate_eval(EvalSpec(num_samples=500, extractor="domain:digits", metrics=FIDELITY), digits)
    with pytest.raises(BenchError, match=r"eval\.metrics.*Did you mean 'recall'"):
        validate_eval(EvalSpec(extractor="domain:digits", metrics=("recal",)), digits)
    with pytest.raises(BenchError, match=r"eval\.num_samples.*at least 65"):
        validate_eval(EvalSpec(num_samples=50, extractor="domain:digits", metrics=("fid",)), digits)
    with pytest.raises(BenchError, match=r"eval\.nll_samples"):
        validate_eval(EvalSpec(extractor="domain:digits", metrics=("nll",)), digits)
    with pytest.raises(BenchError, match=r"study\.eval\.extractor.*Did you mean 'mnist'"):
        validate_eval(EvalSpec(extractor="domain:mnsit", metrics=("kid",)), digits, where="study.eval")
    with pytest.raises(BenchError, match=r"eval\.fid_backend.*Did you mean 'clean-fid'"):
        validate_eval(EvalSpec(extractor="domain:digits", fid_backend="cleanfid"), digits)
    with pytest.raises(BenchError, match=r"digits:test has 360"):
        validate_eval(EvalSpec(num_samples=5000, extractor="inception", metrics=("fid",),
                               inception_weights=str(tmp_path / "w.pth")), digits)


def test_validate_eval_inception_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS", raising=False)
    spec = EvalSpec(extractor="inception", metrics=("kid",))
    with pytest.raises(BenchError, match=f"offline.*{INCEPTION_URL}.*eval.inception_weights"):
        validate_eval(spec, DataSpec())
    with pytest.raises(BenchError, match="does not exist"):
        validate_eval(EvalSpec(extractor="inception", metrics=("kid",), inception_weights=str(tmp_path / "no")),
                      DataSpec())
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"not checked at validation")
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(weights))
    validate_eval(spec, DataSpec())
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS")
    with pytest.raises(BenchError, match=INCEPTION_URL):
        compute_metrics(noise(8), extractor="inception", metrics=("kid",))


# --- inception, offline, random weights ---------------------------------------------------------
def test_inception_offline_with_a_local_weights_file(tmp_path, digits, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    weights = save_random_inception_weights(tmp_path / "random-inception.pth")
    _, test = digits
    m = compute_metrics(test.images[:8], noise(8), extractor="inception", metrics=("kid", "is"),
                        inception_weights=str(weights))
    assert set(m) == {"kid_mean", "kid_std", "is_mean", "is_std"} and m["kid_mean"] > 0
    assert m.protocol["feature_dim"] == 2048 and "299" in m.protocol["resize"]
    from bench.metrics.extractors import file_sha256

    assert m.protocol["weights_sha256"] == file_sha256(weights)
    with pytest.raises(BenchError, match="at least 2049 generated images"):
        compute_metrics(test.images[:8], noise(8), extractor="inception", metrics=("fid",),
                        inception_weights=str(weights))


# --- NLL ----------------------------------------------------------------------------------------
def test_nll_bpd_through_the_diffusion_contract(digits) -> None:
    import bench.diffusion

    if not hasattr(bench.diffusion, "Diffusion"):
        pytest.skip("bench.diffusion has no Diffusion yet (being written)")
    d = bench.diffusion.Diffusion(schedule="cosine", timesteps=20)

    def model(x, t, y):
        return torch.zeros_like(x)

    images = digits[1].images[:6]
    ours = nll_bpd(d, model, images, batch_size=4, progress=False, generator=torch.Generator().manual_seed(0))
    x0 = images.float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    direct = torch.cat([d.bits_per_dim(model, x0[:4], None, generator=g),
                        d.bits_per_dim(model, x0[4:], None, generator=g)]).double().mean()
    assert ours == pytest.approx(float(direct), rel=1e-9) and ours > 0
    with pytest.raises(BenchError, match="uint8"):
        nll_bpd(d, model, x0, progress=False)


def test_stratified_nll_estimate_is_unbiased_within_its_reported_error(digits) -> None:
    """K = 16 of T = 200 terms per image (t = 0 and 15 strata): per image, the mean of 8 draws equals
    the full bound within the differences' own standard error (the image's part cancels); the draws'
    dataset means scatter within the error nll_bpd_stats reports; K calls per image, not T."""
    from gaussian import GaussianDenoiser

    from bench.diffusion import Diffusion
    from bench.metrics.nll import nll_bpd_stats

    d = Diffusion(schedule="linear", timesteps=200)
    model = GaussianDenoiser(d.alphas_cumprod, "eps", mu=-0.3, s0=0.6)  # a fixed, imperfect model
    calls = []
    counted = lambda x, t, y: (calls.append(1), model(x, t, y))[1]  # noqa: E731
    images = digits[1].images[:256]
    assert len(images) == 256
    x0 = images.float() / 127.5 - 1
    full = d.bits_per_dim(counted, x0, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 200
    calls.clear()
    draws = torch.stack([d.bits_per_dim(counted, x0, generator=torch.Generator().manual_seed(r), timesteps=16)
                         for r in range(1, 9)])  # fmt: skip
    assert len(calls) == 8 * 16
    diff = draws.mean(0) - full
    assert abs(float(diff.mean())) <= 3 * float(diff.std()) / len(diff) ** 0.5
    # a mistake of 5% in the weights would not pass: the test resolves the sum to better than that
    assert 3 * float(diff.std()) / len(diff) ** 0.5 < 0.05 * float(full.mean())
    stats = [nll_bpd_stats(d, model, images, batch_size=256, progress=False, timesteps=16,
                           generator=torch.Generator().manual_seed(r)) for r in (1, 2, 3, 4)]  # fmt: skip
    means = torch.tensor([m for m, _ in stats])
    assert float(means.std()) <= 2 * min(se for _, se in stats)
    with pytest.raises(BenchError, match="2 <= K <= T = 200"):
        d.stratified_bpd(model, x0[:2], 1)


def test_clean_fid_inception_offline_names_its_own_file(tmp_path, monkeypatch) -> None:
    """clean-fid's Inception is another file than torch-fidelity's: offline, validation says which."""
    from dataclasses import replace

    weights = save_random_inception_weights(tmp_path / "tf-inception.pth")
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    monkeypatch.setenv("BENCH_CLEANFID_DIR", str(tmp_path / "cleanfid"))
    mnist = DataSpec(dataset="mnist")  # 10,000 test images: enough for Inception FID
    spec = EvalSpec(num_samples=5000, extractor="inception", metrics=("fid",), inception_weights=str(weights))
    validate_eval(spec, mnist)  # torch-fidelity's backend has what it needs
    with pytest.raises(BenchError, match=r"eval\.fid_backend: .*inception-2015-12-05\.pt"):
        validate_eval(replace(spec, fid_backend="clean-fid"), mnist)


@pytest.mark.parametrize("k", [1, 101])
def test_nll_timesteps_outside_two_to_t_is_refused_before_work(k) -> None:
    from bench.study import build_study

    raw = {"name": "k", "base": {"data": {"dataset": "digits"}, "diffusion": {"timesteps": 100},
                                 "eval": {"metrics": ["fid", "nll"], "nll_samples": 8, "nll_timesteps": k,
                                          "num_samples": 65, "extractor": "domain:digits"}}}
    with pytest.raises(BenchError, match=rf"base.eval.nll_timesteps.*nll_timesteps = {k} must be in \[2, "
                                         r"diffusion.timesteps = 100\]"):
        build_study(raw, source="k.yaml")


def test_class_accuracy_on_a_fresh_cache_trains_its_classifier(digits, tmp_path, monkeypatch) -> None:
    """class_accuracy runs under no_grad; the first call on an empty cache trains the classifier
    (with gradients enabled) instead of failing in backward()."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "fresh"))
    _, test = digits
    assert class_accuracy(test.images, test.labels, "domain:digits") >= 0.95
