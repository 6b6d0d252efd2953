"""Guidance methods (bench.diffusion.GUIDANCE) from first principles, on the exact denoiser of a
two-class Gaussian mixture (tests/gaussian.py): every method's combination is its paper's formula,
w = 0 is conditional sampling, cfg-interval over the full interval is cfg and over an empty one is
conditional sampling with one B call per level, and every method runs through every sampler."""

from __future__ import annotations

import math
import re

import pytest
import torch
from gaussian import MixtureDenoiser

from bench.core.errors import BenchError
from bench.diffusion import GUIDANCE, SAMPLERS, Diffusion, check_guidance
from bench.diffusion.guidance import WEIGHT_SCHEDULES
from bench.diffusion.samplers.registry import sampler_nfe

SHAPE = (6, 1, 4, 4)


@pytest.fixture(scope="module")
def setup():
    d = Diffusion(schedule="linear", timesteps=1000, objective="eps")
    return d, MixtureDenoiser(d.alphas_cumprod)


def _branches(d, model, x, t):
    """(eps_c, x0_c, eps_u, x0_u) at (x, t) from the closed-form class denoisers."""
    a, s = d.coefs(t, x)
    x0_0, x0_1, p1 = model.class_x0(x.double(), a.double(), s.double())
    x0_c, x0_u = x0_1.float(), ((1 - p1) * x0_0 + p1 * x0_1).float()
    return (x - a * x0_c) / s, x0_c, (x - a * x0_u) / s, x0_u


def _predict(d, model, x, t, w, method, **options):
    y = torch.ones(x.shape[0], dtype=torch.long)
    return d.predict(model, x, t, y, guidance=w, guidance_method=method, guidance_options=options)


def _x(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


T_MID = 300  # sigma = sqrt((1 - abar) / abar) about 1.1 on the linear schedule


def _sigma(d, t):
    abar = float(d.alphas_cumprod[t])
    return math.sqrt((1 - abar) / abar)


@pytest.mark.parametrize("method", ["cfg", "cfg-interval", "apg", "autoguidance"])
def test_w_zero_is_conditional_for_every_method(setup, method) -> None:
    d, model = setup
    x = _x()
    eps_c, x0_c, _, _ = _branches(d, model, x, T_MID)
    p = _predict(d, model, x, T_MID, 0.0, method)  # no guide needed: w = 0 never calls it
    torch.testing.assert_close(p.x0, x0_c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.eps, eps_c, rtol=1e-5, atol=1e-5)


def test_cfg_is_the_papers_formula(setup) -> None:
    d, model = setup
    x, w = _x(), 2.5
    eps_c, x0_c, eps_u, x0_u = _branches(d, model, x, T_MID)
    p = _predict(d, model, x, T_MID, w, "cfg")
    torch.testing.assert_close(p.eps, (1 + w) * eps_c - w * eps_u, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(p.x0, x0_c + w * (x0_c - x0_u), rtol=1e-4, atol=1e-4)


def test_cfg_interval_guides_only_inside_its_sigma_interval(setup) -> None:
    d, model = setup
    x, w, sigma = _x(), 2.0, _sigma(d, T_MID)
    cfg = _predict(d, model, x, T_MID, w, "cfg")
    cond = _predict(d, model, x, T_MID, 0.0, "cfg")
    inside = _predict(d, model, x, T_MID, w, "cfg-interval", sigma_lo=sigma / 2, sigma_hi=sigma * 2)
    below = _predict(d, model, x, T_MID, w, "cfg-interval", sigma_lo=sigma * 2, sigma_hi=sigma * 4)
    torch.testing.assert_close(inside.x0, cfg.x0)
    torch.testing.assert_close(below.x0, cond.x0)
    active = GUIDANCE.meta("cfg-interval")["active"]  # the paper's (sigma_lo, sigma_hi]
    assert not active(1.0, {"sigma_lo": 1.0, "sigma_hi": 2.0}) and active(2.0, {"sigma_lo": 1.0, "sigma_hi": 2.0})
    assert not torch.allclose(cfg.x0, cond.x0)


def test_apg_is_cfg_with_defaults_and_projects_out_the_parallel_part(setup) -> None:
    d, model = setup
    x, w = _x(), 3.0
    _, x0_c, _, x0_u = _branches(d, model, x, T_MID)
    cfg = _predict(d, model, x, T_MID, w, "apg")  # eta 1, no momentum, no threshold
    torch.testing.assert_close(cfg.x0, x0_c + w * (x0_c - x0_u), rtol=1e-4, atol=1e-4)
    orth = _predict(d, model, x, T_MID, w, "apg", eta=0.0)
    update = (orth.x0 - x0_c).flatten(1).double()
    assert (update * x0_c.flatten(1).double()).sum(1).abs().max() < 1e-4 * x0_c.flatten(1).norm(dim=1).max()
    # eta = 0 keeps exactly the orthogonal part of CFG's update
    diff = (x0_c - x0_u).flatten(1).double()
    unit = torch.nn.functional.normalize(x0_c.flatten(1).double(), dim=1)
    want = w * (diff - (diff * unit).sum(1, keepdim=True) * unit)
    torch.testing.assert_close(update, want, rtol=1e-4, atol=1e-4)
    r = 0.5 * float(diff.norm(dim=1).min())  # binding for every image
    capped = _predict(d, model, x, T_MID, w, "apg", norm_threshold=r)
    torch.testing.assert_close((capped.x0 - x0_c).flatten(1).norm(dim=1).double(),
                               torch.full((SHAPE[0],), w * r, dtype=torch.float64), rtol=1e-3, atol=1e-6)


def test_apg_momentum_accumulates_along_the_chain(setup) -> None:
    d, model = setup
    x, w, beta = _x(), 1.5, -0.5
    state: dict = {}
    y = torch.ones(SHAPE[0], dtype=torch.long)
    opts = check_guidance("apg", {"momentum": beta})
    first = d.predict(model, x, 400, y, w, guidance_method="apg", guidance_options=opts, guidance_state=state)
    second = d.predict(model, x, 300, y, w, guidance_method="apg", guidance_options=opts, guidance_state=state)
    _, x0_c1, _, x0_u1 = _branches(d, model, x, 400)
    _, x0_c2, _, x0_u2 = _branches(d, model, x, 300)
    torch.testing.assert_close(first.x0, x0_c1 + w * (x0_c1 - x0_u1), rtol=1e-4, atol=1e-4)
    running = (x0_c2 - x0_u2) + beta * (x0_c1 - x0_u1)
    torch.testing.assert_close(second.x0, x0_c2 + w * running, rtol=1e-4, atol=1e-4)


def test_cfg_pp_ddim_step_is_algorithm_1(setup) -> None:
    """x' = sqrt(abar') (x0_u + lam (x0_c - x0_u)) + sqrt(1 - abar') eps_u for one DDIM step."""
    d, model = setup
    lam = 0.6
    x = _x()
    p = _predict(d, model, x, T_MID, lam, "cfg++")
    eps_c, x0_c, eps_u, x0_u = _branches(d, model, x, T_MID)
    torch.testing.assert_close(p.eps, eps_u, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.x0, x0_u + lam * (x0_c - x0_u), rtol=1e-4, atol=1e-4)
    # lam = 1 keeps the conditional x0 but still renoises along the unconditional eps
    one = _predict(d, model, x, T_MID, 1.0, "cfg++")
    torch.testing.assert_close(one.x0, x0_c, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(one.eps, eps_c, atol=1e-3)


def test_weight_schedules_keep_w_on_average_and_vary_as_declared(setup) -> None:
    grid = [i / 10000 for i in range(10001)]
    for name, f in WEIGHT_SCHEDULES.items():
        mean = sum(f(u) for u in grid) / len(grid)
        assert mean == pytest.approx(1.0, abs=1e-3), name
    assert WEIGHT_SCHEDULES["linear"](1.0) == 0.0 and WEIGHT_SCHEDULES["linear"](0.0) == 2.0
    assert WEIGHT_SCHEDULES["cosine"](1.0) == pytest.approx(0.0, abs=1e-12)
    d, model = setup
    x = _x()
    # at the last trained step the linear schedule's weight is 0: conditional
    at_noise = _predict(d, model, x, 999, 4.0, "cfg", schedule="linear")
    cond = _predict(d, model, x, 999, 0.0, "cfg")
    torch.testing.assert_close(at_noise.x0, cond.x0)
    # at t = 0 it is 2w
    _, x0_c, _, x0_u = _branches(d, model, x, 0)
    near = _predict(d, model, x, 0, 1.5, "cfg", schedule="linear")
    torch.testing.assert_close(near.x0, x0_c + 3.0 * (x0_c - x0_u), rtol=1e-4, atol=1e-4)


def _sample(d, model, w, method="cfg", sampler="ddim", steps=20, spacing="trailing", guide=None, **options):
    info: dict = {}
    y = torch.ones(64, dtype=torch.long)
    if GUIDANCE.meta(method).get("guide") and guide is None:
        guide = MixtureDenoiser(d.alphas_cumprod, s0=0.8)  # a worse model of the same data: too wide
    out = d.sample(model, (64, 1, 4, 4), sampler=sampler, steps=steps, spacing=spacing, guidance=w, y=y,
                   seeds=range(64), guidance_method=method, guidance_options=options, info=info, guide=guide)
    return out, info


def test_full_interval_is_cfg_and_empty_interval_is_conditional_with_one_call_per_level(setup) -> None:
    d, model = setup
    cfg, info_cfg = _sample(d, model, 2.0)
    full, info_full = _sample(d, model, 2.0, "cfg-interval", sigma_lo=0.0, sigma_hi=math.inf)
    cond, info_cond = _sample(d, model, 0.0)
    empty, info_empty = _sample(d, model, 2.0, "cfg-interval", sigma_lo=1.0, sigma_hi=1.0)
    torch.testing.assert_close(full, cfg)
    torch.testing.assert_close(empty, cond)
    assert info_full["guided_calls"] == info_cfg["guided_calls"] == 20
    assert info_empty["guided_calls"] == info_cond["guided_calls"] == 0
    assert info_empty["nfe"] == info_full["nfe"] == 20
    # a real interval: one 2B call per level with sigma in (lo, hi], one B call elsewhere
    part, info_part = _sample(d, model, 2.0, "cfg-interval", sigma_lo=0.5, sigma_hi=5.0)
    from bench.diffusion.spacing import make_levels

    _, abar = make_levels("trailing", d.alphas_cumprod, 20)
    sigmas = ((1 - abar) / abar).sqrt().tolist()
    assert info_part["guided_calls"] == sum(0.5 < s <= 5.0 for s in sigmas) not in (0, 20)
    # guiding on part of the chain moves samples part of the way (toward class 1: pixel means up)
    assert float(cond.mean()) < float(part.mean()) < float(cfg.mean())


def test_guidance_moves_samples_away_from_the_other_class(setup) -> None:
    """On the mixture, CFG toward class 1 pushes samples along mu_1 - mu_0 (each pixel's mean up)
    beyond conditional sampling, more with larger w; APG with eta = 0 moves them less than CFG."""
    d, model = setup
    shift = {}
    for w in (0.0, 1.0, 3.0):
        out, _ = _sample(d, model, w)
        shift[w] = float(out.mean())
    assert shift[0.0] == pytest.approx(1.0, abs=0.1)  # conditional sampling: class 1's mean
    assert shift[0.0] < shift[1.0] < shift[3.0]
    apg, _ = _sample(d, model, 3.0, "apg", eta=0.0)
    assert shift[0.0] - 0.05 < float(apg.mean()) < shift[3.0]


@pytest.mark.parametrize("method", sorted(GUIDANCE.names()))
def test_every_method_through_every_sampler(setup, method) -> None:
    d, model = setup
    for sampler in SAMPLERS.names():
        steps = 6
        out, info = _sample(d, model, 0.5, method, sampler=sampler, steps=steps)
        assert torch.isfinite(out).all(), (method, sampler)
        networks = 2 if GUIDANCE.meta(method).get("guide") else 1  # autoguidance: the guide's calls count too
        if SAMPLERS.meta(sampler).get("adaptive"):  # dopri5: as many calls as its tolerance needed, each network's
            assert info["nfe"] % networks == 0 and info["nfe"] > networks * 6, (method, sampler)
        else:
            assert info["nfe"] == networks * sampler_nfe(sampler, info["visited_steps"]), (method, sampler)
        assert 0 < info["guided_calls"] <= info["nfe"]


def test_unknown_method_and_options_are_refused(setup) -> None:
    with pytest.raises(BenchError, match="unknown guidance method 'cfgg'.*cfg"):
        check_guidance("cfgg", {})
    with pytest.raises(BenchError, match="sample.guidance_options.sigma_low.*no option 'sigma_low'.*Did you mean"):
        check_guidance("cfg-interval", {"sigma_low": 1.0})
    with pytest.raises(BenchError, match="sigma_lo = 3.0 is above sigma_hi = 1.0"):
        check_guidance("cfg-interval", {"sigma_lo": 3.0, "sigma_hi": 1.0})
    with pytest.raises(BenchError, match="schedule.*not one of constant, linear, cosine"):
        check_guidance("cfg", {"schedule": "cubic"})


def test_autoguidance_is_cfg_against_the_weaker_models_prediction(setup) -> None:
    """x0 = x0_main + w (x0_main - x0_guide) for the same label; a guide equal to the model is no
    guidance; the guide runs once per level (counted in nfe); the main model need not be conditional."""
    d, model = setup
    weak = MixtureDenoiser(d.alphas_cumprod, s0=0.8)
    x, w, y = _x(), 1.5, torch.ones(SHAPE[0], dtype=torch.long)
    _, x0_c, _, _ = _branches(d, model, x, T_MID)
    _, x0_g, _, _ = _branches(d, weak, x, T_MID)
    p = d.predict(model, x, T_MID, y, w, guidance_method="autoguidance", guide=weak)
    torch.testing.assert_close(p.x0, x0_c + w * (x0_c - x0_g), rtol=1e-4, atol=1e-4)
    same, info = _sample(d, model, 2.0, "autoguidance", guide=model)
    cond, _ = _sample(d, model, 0.0)
    torch.testing.assert_close(same, cond)
    assert info["nfe"] == 40 and info["guide_calls"] == info["guided_calls"] == 20
    # a wider (worse) guide: guidance sharpens toward the main model, samples' spread shrinks
    sharp, _ = _sample(d, model, 2.0, "autoguidance", guide=weak)
    assert float(sharp.std()) < float(cond.std())
    from gaussian import GaussianDenoiser

    uncond = GaussianDenoiser(d.alphas_cumprod, "eps", mu=0.0, s0=0.5)  # no labels at all
    out = d.sample(uncond, (8, 1, 4, 4), steps=5, spacing="trailing", guidance=1.0, seeds=range(8),
                   guidance_method="autoguidance", guide=GaussianDenoiser(d.alphas_cumprod, "eps", mu=0.0, s0=0.8))
    assert torch.isfinite(out).all()
    with pytest.raises(BenchError, match="needs its guiding model"):
        d.sample(uncond, (8, 1, 4, 4), steps=5, guidance=1.0, seeds=range(8), guidance_method="autoguidance")


# --- autoguidance in a study: the guide is a plan node, checked before work ---------------------

def _study(zip_=None, **sample):
    from bench.study import build_study

    raw = {"name": "auto", "base": {
        "data": {"dataset": "digits"}, "model": {"backbone": "unet-tiny", "class_cond": True},
        "train": {"steps": 20, "p_uncond": 0.1},
        "sample": {"steps": 5, "guidance": 1.0, "guidance_method": "autoguidance", "guide": {"train": {"steps": 5}},
                   **sample},
        "eval": {"num_samples": 65, "extractor": "domain:digits", "metrics": ["fid"]}}}
    raw["zip"] = zip_ or {"sample.guidance": [1.0, 2.0]}
    return build_study(raw, source="auto.yaml")


def test_the_guide_is_one_train_node_shared_with_an_equal_training() -> None:
    # the 5-step model is a row of its own (plain CFG) and the guide of the 20-step model's runs
    study = _study({"train.steps": [5, 20, 20], "sample.guidance_method": ["cfg", "autoguidance", "autoguidance"],
                    "sample.guide": [{}, {"train.steps": 5}, {"train.steps": 5}],
                    "sample.guidance": [1.0, 1.0, 2.0]})  # fmt: skip
    plan = study.plan()
    five, twenty = (next(c for c in study.configs if c.train.steps == n).train_key() for n in (5, 20))
    assert {j.key for j in plan.by_kind("train")} == {five, twenty}  # the guide is not trained twice
    auto = [j for j in plan.by_kind("eval") if j.config.sample.guide]
    assert len(auto) == 2 and all(set(j.deps) == {twenty, five} for j in auto)


@pytest.mark.parametrize(
    ("sample", "needle"),
    [
        ({"guidance_method": "cfg"}, "sample.guide is the guiding model of guidance_method: autoguidance"),
        ({"guide": {}}, "autoguidance needs sample.guide"),
        ({"guide": {"data": {"image_size": 16}}}, "only model.* and train.* keys"),
        ({"guide": {"train": {"steps": -3}}}, "base.sample.guide.train.steps: negative train.steps = -3"),
        ({"guide": {"model": {"backbone": "unet-tiniest"}}}, "sample.guide.model.backbone"),
    ],
)
def test_guide_mistakes_are_refused_before_work(sample, needle) -> None:
    with pytest.raises(BenchError, match=re.escape(needle)):
        _study(**sample)
