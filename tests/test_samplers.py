"""The sampler family on any discretization, from first principles and against diffusers.

Gaussian data x0 ~ N(MU, S0^2) has a closed-form optimal denoiser and a closed-form probability-
flow ODE: in x = x0 + sigma eps the flow from sigma_top maps x to MU + (x - MU) sqrt(S0^2 + sigma^2)
/ sqrt(S0^2 + sigma_top^2). Every chain here ends with the step sigma_min -> 0 that returns the
denoised x0 = D(x; sigma_min), so the exact answer of a discretization is that map to sigma_min,
then D. The error of each deterministic sampler must fall with counted NFE at its declared order.
"""

import math

import numpy as np
import pytest
import torch
from gaussian import GaussianDenoiser

from bench.core.errors import BenchError
from bench.diffusion import SAMPLERS, SPACINGS, Diffusion
from bench.diffusion.samplers import check_options, sampler_nfe, steps_for_nfe
from bench.diffusion.spacing import make_levels, trained_sigmas

MU, S0 = 0.4, 0.3


def _variants() -> list[tuple[str, dict]]:
    """Every sampler at its defaults, and at every value of an ``order`` option."""
    out = []
    for name in SAMPLERS.names():
        opts = SAMPLERS.meta(name)["options"]
        out.append((name, {}))
        if "order" in opts:
            o = opts["order"]
            out += [(name, {"order": k}) for k in range(int(o.low), int(o.high) + 1) if k != o.default]
    return out + [("dpm-solver++", {"order": 3, "reference_3m": True}), ("unipc", {"corrector": False})]


def _deterministic(name, opts):
    return not SAMPLERS.meta(name)["stochastic"](check_options(name, opts))


def _exact(d, spacing, steps, x_T):
    t, abar = make_levels(spacing, d.alphas_cumprod, steps)
    s_top, s_min = math.sqrt((1 - abar[-1]) / abar[-1]), math.sqrt((1 - abar[0]) / abar[0])
    x_min = MU + (x_T / abar[-1].sqrt() - MU) * math.sqrt(S0**2 + s_min**2) / math.sqrt(S0**2 + s_top**2)
    return MU + S0**2 / (S0**2 + s_min**2) * (x_min - MU)


@pytest.fixture(scope="module")
def gaussian():
    d = Diffusion("linear", 1000)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return d, GaussianDenoiser(d.alphas_cumprod, "eps", MU, S0), x_T


@pytest.mark.parametrize("spacing", ["exponential", "karras"])
@pytest.mark.parametrize("name,opts", [v for v in _variants() if _deterministic(*v)
                                       and not SAMPLERS.meta(v[0]).get("adaptive")])  # its steps follow rtol / atol
def test_error_falls_with_nfe_at_the_declared_order(gaussian, name, opts, spacing):
    """Slope of log(max error) against log(counted NFE) over steps 40..320: the order the sampler declares (Euler 1, Heun and 2M 2, 3M 3, UniPC-p p + 1, ...)."""
    d, model, x_T = gaussian
    declared = SAMPLERS.meta(name)["order"](check_options(name, opts))
    nfes, errs = [], []
    for steps in (40, 80, 160, 320):
        info = {}
        x = d.sample(model, x_T.shape, sampler=name, steps=steps, spacing=spacing, x_T=x_T, options=opts,
                     info=info)
        assert x.dtype == torch.float64
        nfes.append(info["nfe"])
        errs.append((x - _exact(d, spacing, steps, x_T)).abs().max().item())
    slope = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
    # at least the declared order (a lower-order bug fails), and not a whole order more (a mis-declared
    # order fails; uniform-in-lambda steps can super-converge by a fraction on this linear problem)
    assert declared - 0.4 < slope < declared + 1.0, (name, opts, declared, slope, errs)
    assert errs[-1] < 1e-2


def test_first_order_samplers_coincide():
    """DDIM (eta 0), Euler and first-order DPM-Solver++ are one method (Euler in x / sqrt(abar))."""
    d = Diffusion("cosine", 200)
    model = GaussianDenoiser(d.alphas_cumprod, "v", MU, S0)
    x_T = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for spacing in ("trailing", "karras"):
        ref = d.sample(model, x_T.shape, sampler="ddim", steps=12, spacing=spacing, x_T=x_T)
        for name, opts in [("euler", {}), ("dpm-solver++", {"order": 1}), ("euler-ancestral", {"eta": 0.0})]:
            torch.testing.assert_close(d.sample(model, x_T.shape, sampler=name, steps=12, spacing=spacing,
                                                x_T=x_T, options=opts), ref)


@pytest.mark.parametrize("name,opts", [(n, {}) for n in SAMPLERS.names()] + [
    ("heun", {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 50.0}), ("euler", {"s_churn": 5.0})])
def test_every_sampler_reproduces_the_data_distribution(name, opts):
    """Mean and std of 4,000 x 16 samples from the exact denoiser match N(MU, S0^2)."""
    d = Diffusion("linear", 1000)
    model = GaussianDenoiser(d.alphas_cumprod, "eps", MU, S0)
    stochastic = SAMPLERS.meta(name)["stochastic"](check_options(name, opts))
    steps = 1000 if name == "ddpm" else 500 if stochastic else 100  # first-order SDE steps converge slowly
    x = d.sample(model, (4000, 1, 4, 4), sampler=name, steps=steps, spacing="karras" if name != "ddpm" else
                 "leading", options=opts, generator=torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - MU) < 0.01, x.mean()
    assert abs(x.std().item() / S0 - 1) < 0.04, x.std()


@pytest.mark.parametrize("spacing", SPACINGS.names())
@pytest.mark.parametrize("name", SAMPLERS.names())
def test_nfe_is_counted_on_every_discretization(name, spacing):
    """The network's own call count equals the sampler's declared nfe(levels) on every spacing,
    and a budget is met exactly (or refused with one error)."""
    calls = []

    class Net(torch.nn.Module):
        def forward(self, x, t, y=None):
            calls.append(t)
            return 0.1 * x

    d = Diffusion("linear", 100)
    info = {}
    d.sample(Net(), (2, 1, 2, 2), sampler=name, steps=9, spacing=spacing, info=info,
             generator=torch.Generator().manual_seed(0))
    if SAMPLERS.meta(name).get("adaptive"):  # dopri5: counted, and no budget to meet
        assert info["nfe"] == len(calls) > 0
        with pytest.raises(BenchError, match="is adaptive"):
            steps_for_nfe(name, 10, spacing, 100)
        return
    assert info["nfe"] == len(calls) == sampler_nfe(name, info["visited_steps"])
    for budget in (5, 10, 20):
        try:
            steps = steps_for_nfe(name, budget, spacing, 100)
        except BenchError as e:
            assert "cannot meet" in str(e) and name == "heun" and budget % 2 == 0
            continue
        calls.clear()
        d.sample(Net(), (1, 1, 2, 2), sampler=name, steps=steps, spacing=spacing, info=info)
        assert len(calls) == budget


def test_noise_level_schedules_follow_their_definitions():
    d = Diffusion("linear", 1000)
    sig = trained_sigmas(d.alphas_cumprod)
    for spacing in ("karras", "exponential", "uniform-logsnr"):
        t, abar = make_levels(spacing, d.alphas_cumprod, 18)
        s = ((1 - abar) / abar).sqrt().numpy()
        assert len(s) == 18 and (np.diff(s) > 0).all() and t.is_floating_point()
        np.testing.assert_allclose([s[0], s[-1]], [sig[0], sig[-1]], rtol=1e-12)
        assert t[0] == 0 and t[-1] == 999 and (np.diff(t.numpy()) > 0).all()
    k = ((1 - make_levels("karras", d.alphas_cumprod, 18, rho=7.0)[1]) / make_levels(
        "karras", d.alphas_cumprod, 18, rho=7.0)[1]).sqrt().numpy()[::-1]
    ramp = np.linspace(0, 1, 18)
    ref = (sig[-1] ** (1 / 7) + ramp * (sig[0] ** (1 / 7) - sig[-1] ** (1 / 7))) ** 7  # EDM eq. 5
    np.testing.assert_allclose(k, ref, rtol=1e-10)
    e = make_levels("exponential", d.alphas_cumprod, 18)[1]
    u = make_levels("uniform-logsnr", d.alphas_cumprod, 18)[1]
    torch.testing.assert_close(e, u)  # geometric in sigma is uniform in log-SNR: one discretization
    logsnr = torch.log(u / (1 - u))
    torch.testing.assert_close(logsnr.diff(), torch.full((17,), float(logsnr.diff()[0]), dtype=torch.float64))
    # a level that is a trained sigma maps back to its timestep
    t, _ = make_levels("karras", d.alphas_cumprod, 2)
    assert t.tolist() == [0.0, 999.0]
    with pytest.raises(BenchError, match="rho"):
        make_levels("karras", d.alphas_cumprod, 10, rho=0.0)


def test_steps_for_nfe_refuses_what_a_sampler_cannot_meet():
    assert steps_for_nfe("heun", 9, "karras", 1000) == 5
    assert steps_for_nfe("ddim", 10, "leading", 1000) == 10
    with pytest.raises(BenchError, match=r"heun.*cannot meet nfe = 10.*2 levels - 1|cannot meet"):
        steps_for_nfe("heun", 10, "karras", 1000)


# --- against diffusers, same network, levels and noise ------------------------------------------
class _Net(torch.nn.Module):
    """A fixed nonlinear function of (x, t), float t allowed: what a trained network is to a sampler."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.discrete_time = False

    def forward(self, x, t, y=None):
        tt = t.float().view(-1, 1, 1, 1) / 1000
        return torch.tanh(self.conv(x) * (1 + tt)) + 0.1 * torch.sin(3 * tt) * x


def _diffusers_run(sched, net, x_T, steps, ve_start):
    sched.set_timesteps(steps)
    x = x_T * (1 + sched.sigmas[0] ** 2) ** 0.5 if ve_start else x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            out = net(sched.scale_model_input(x, t), torch.full((x.shape[0],), float(t)))
            x = sched.step(out, t, x).prev_sample
    return x


EQUIVALENT = [  # (ours, options, diffusers scheduler, its config)
    ("euler", {}, "EulerDiscreteScheduler", {}),
    ("heun", {}, "HeunDiscreteScheduler", {}),
    ("dpm-solver++", {"order": 2}, "DPMSolverMultistepScheduler", {"solver_order": 2}),
    ("dpm-solver++", {"order": 3, "reference_3m": True}, "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("unipc", {"order": 2}, "UniPCMultistepScheduler", {"solver_order": 2}),
    ("unipc", {"order": 3}, "UniPCMultistepScheduler", {"solver_order": 3}),
]


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [6, 20])
@pytest.mark.parametrize("name,opts,cls,cfg", EQUIVALENT)
def test_equals_diffusers_where_the_definitions_coincide(name, opts, cls, cfg, steps, karras):
    """Same betas, levels, network and x_T: equal to float32 round-off. Where they differ, stated:
    diffusers' Euler/Heun take karras' range from the spaced timesteps (so 'linspace', whose range is
    the full [sigma_0, sigma_{T-1}], is the comparable one) and start from sqrt(1 + sigma^2) x_T, as
    here; its DPM-Solver / UniPC karras runs round the network's timestep (the nearest trained one,
    ``discrete_time`` here) while keeping the unrounded sigma, as here with discrete_time."""
    import diffusers

    T, net = 1000, _Net()
    euler_family = name in ("euler", "heun")
    sched = getattr(diffusers, cls)(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                    timestep_spacing="linspace" if karras and euler_family else "trailing",
                                    use_karras_sigmas=karras, **cfg)
    net.discrete_time = karras and not euler_family
    x_T = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    ref = _diffusers_run(sched, net, x_T, steps, ve_start=euler_family)
    ours = Diffusion("linear", T).sample(net, x_T.shape, sampler=name, steps=steps, x_T=x_T, options=opts,
                                         spacing="karras" if karras else "trailing")
    scale = ref.abs().max().item()
    assert (ours - ref).abs().max().item() < 2e-5 * scale, ((ours - ref).abs().max(), scale)


def test_stochastic_samplers_equal_diffusers_on_the_same_noise(monkeypatch):
    """dpm-solver++-sde equals diffusers' sde-dpmsolver++ (midpoint) and euler-ancestral its
    EulerAncestralDiscreteScheduler, each pair replaying one noise list. (diffusers' trailing start
    is sigma_max x_T, ours sqrt(1 + sigma_max^2) x_T: the run feeds it ours.)"""
    import diffusers

    from bench.diffusion import NoiseSource

    T, net, steps = 1000, _Net(), 8
    x_T = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    zs = [torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(10 + k)) for k in range(steps)]
    kw = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
              timestep_spacing="trailing")
    sched = diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", **kw)
    sched.set_timesteps(steps)
    x = x_T.clone()
    for k, t in enumerate(sched.timesteps):
        x = sched.step(net(x, torch.full((2,), float(t))), t, x, variance_noise=zs[k]).prev_sample
    ref_sde = x

    class Replay(NoiseSource):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.k = 0

        def __call__(self):
            self.k += 1
            return zs[self.k - 1]

    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea

    import bench.diffusion.core as core

    monkeypatch.setattr(core, "NoiseSource", Replay)

    def ours(sampler):
        return Diffusion("linear", T).sample(net, x_T.shape, sampler=sampler, steps=steps, spacing="trailing",
                                             x_T=x_T)

    assert (ours("dpm-solver++-sde") - ref_sde).abs().max() < 2e-5 * ref_sde.abs().max()

    # euler-ancestral against EulerAncestralDiscreteScheduler, whose noise is replayed from the same list
    drawn = iter(zs)
    monkeypatch.setattr(ea, "randn_tensor", lambda *a, **k: next(drawn))
    ref_anc = _diffusers_run(diffusers.EulerAncestralDiscreteScheduler(**kw), net, x_T, steps, ve_start=True)
    ours_anc = ours("euler-ancestral")
    assert (ours_anc - ref_anc).abs().max() < 2e-5 * ref_anc.abs().max()


def test_a_study_budget_sets_steps_per_sampler_and_refuses_what_cannot_be_met():
    """``sample.nfe`` in a study: each sampler gets the steps that meet it; Heun's even budget is one
    error naming the study key and the budgets it meets, before any work."""
    from bench.study.build import build_study

    raw = {"name": "budget", "base": {"sample": {"spacing": "karras"}, "eval": {"metrics": ["kid"], "extractor": "domain:digits", "num_samples": 200}},
           "zip": {"sample.sampler": ["ddim", "heun"], "sample.nfe": [10, 9]}}
    configs = build_study(raw).configs
    assert [(c.sample.sampler, c.sample.steps, c.sample.nfe) for c in configs] == [("ddim", 10, 10), ("heun", 5, 9)]
    raw["zip"]["sample.nfe"] = [10, 10]
    with pytest.raises(BenchError, match=r"sample\.nfe.*heun.*cannot meet nfe = 10.*\[9, 11\]"):
        build_study(raw)
