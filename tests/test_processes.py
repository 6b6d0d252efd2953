"""First principles for the noise processes (issue 28): every sampler on every process, the
(process, objective) conversions, the flow-matching loss's minimum, and the reference codes
(diffusers' flow-matching Euler scheduler, the flow_matching package's AffineProbPath, Karras et
al.'s Table 1)."""

import math

import pytest
import torch
from gaussian import ProcessGaussian

from bench.core.errors import BenchError
from bench.diffusion import PROCESSES, SAMPLERS, Diffusion, objective_names
from bench.diffusion.objectives import convert, objective_meta
from bench.diffusion.objectives import get_objective as objective_registry_get

MU, S0 = 0.4, 0.3
CONTINUOUS = [n for n in PROCESSES.names() if n != "vp"]
NATIVE = {"rectified-flow": "velocity", "gvp": "velocity", "edm": "edm"}  # each process's usual target


def _defaults(sampler):
    meta = SAMPLERS.meta(sampler)
    return meta, {k: o.default for k, o in meta["options"].items()}


@pytest.mark.parametrize("process", CONTINUOUS)
@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_every_sampler_on_every_process_reaches_the_data(process, sampler):
    """Gaussian data, the exact prediction: the samples' mean and std are the data's, from the
    default spacing and the pure-noise start (t = 1 for rectified flow and gvp)."""
    d = Diffusion(process=process, objective=NATIVE[process])
    x = d.sample(ProcessGaussian(d, MU, S0), (2000, 1, 2, 2), sampler=sampler, steps=200,
                 generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    assert abs(x.mean().item() - MU) < 0.01
    assert abs(x.std().item() / S0 - 1) < 0.04


@pytest.mark.parametrize("process", CONTINUOUS)
@pytest.mark.parametrize("sampler", [n for n in SAMPLERS.names() if not SAMPLERS.meta(n)["stochastic"](
    {k: o.default for k, o in SAMPLERS.meta(n)["options"].items()}) and not SAMPLERS.meta(n).get("adaptive")])
def test_error_falls_with_nfe_at_the_declared_order(process, sampler):
    """A deterministic sampler is an affine map of x_T here: std(x0) / std(x_T) is its exact gain,
    S0 for the true flow. From 20 to 80 levels (x4) the gain's error falls by about 4^order (more
    than half that is required); levels uniform in log-SNR over the process's range, where the steps
    in lambda shrink as 1 / N everywhere."""
    meta, opts = _defaults(sampler)
    order = meta["order"](opts)
    d = Diffusion(process=process, objective=NATIVE[process])
    model = ProcessGaussian(d, MU, S0)
    x_T = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    err = []
    for steps in (20, 80):
        x = d.sample(model, x_T.shape, sampler=sampler, steps=steps, x_T=x_T.clone(), spacing="uniform-logsnr")
        err.append(abs((x.std() / x_T.std()).item() / S0 - 1))
    assert err[1] < err[0] / (0.5 * 4**order), err


@pytest.mark.parametrize("process", CONTINUOUS)
def test_default_levels_error_falls_with_nfe(process):
    """From the pure-noise start on the default (uniform in t) levels, the first-order samplers
    converge and Heun beats Euler at equal levels."""
    d = Diffusion(process=process, objective=NATIVE[process])
    model = ProcessGaussian(d, MU, S0)
    x_T = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def err(sampler, steps):
        x = d.sample(model, x_T.shape, sampler=sampler, steps=steps, x_T=x_T.clone())
        return abs((x.std() / x_T.std()).item() / S0 - 1)
    e10, e40 = err("euler", 10), err("euler", 40)
    assert e40 < e10 / 3
    assert err("heun", 40) < e40 / 5


def _truth(p, t, eps, x0):
    """Every objective's target at t, each written from its paper's definition."""
    a, s = p.alpha(t).float(), p.sigma(t).float()
    da, ds = p.d_alpha(t).float(), p.d_sigma(t).float()
    x_t = a * x0 + s * eps
    r = (a * a + s * s).sqrt()
    sd = getattr(p, "sigma_data", 0.5)
    out = {"eps": eps, "x0": x0, "v": (a * eps - s * x0) / r, "velocity": da * x0 + ds * eps}
    if (s > 0).all():
        out["score"] = -eps / s
    if (a > 0).all():  # Karras et al. eq. 7 on x = x_t / alpha, sigma = sigma_t / alpha
        sv = s / a
        c_skip, c_out = sd**2 / (sv**2 + sd**2), sv * sd / (sv**2 + sd**2).sqrt()
        out["edm"] = (x0 - c_skip * (x_t / a)) / c_out
    return x_t, a, s, out


def _pairs(process, u, src, dst):
    p = PROCESSES.get(process)()
    t = p.from_unit(torch.tensor(u, dtype=torch.float64)).view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(len(u), 3, 2, 2, generator=g), torch.randn(len(u), 3, 2, 2, generator=g)
    x_t, a, s, truth = _truth(p, t, eps, x0)
    k = Diffusion(process=process, objective=src).rates(t.flatten(), x0)
    return x_t, a, s, k, truth, x0, eps


@pytest.mark.parametrize("process", PROCESSES.names())
@pytest.mark.parametrize("src", objective_names())
@pytest.mark.parametrize("dst", objective_names())
def test_every_process_and_objective_round_trips(process, src, dst):
    """src -> dst equals dst's definition, and back; every objective gives the true (eps, x0)."""
    x_t, a, s, k, truth, x0, eps = _pairs(process, [0.05, 0.3, 0.7, 0.99], src, dst)
    out = convert(truth[src], src, dst, x_t, a, s, k)
    torch.testing.assert_close(out, truth[dst], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(convert(out, dst, src, x_t, a, s, k), truth[src], rtol=1e-4, atol=1e-4)
    eps_hat, x0_hat = objective_registry_get(src).to_eps_x0(truth[src], x_t, a, s, k)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("process", ["rectified-flow", "gvp"])
@pytest.mark.parametrize("src", [n for n in objective_names() if objective_meta(n)["at_pure_noise"]])
def test_objectives_that_claim_it_give_x0_at_pure_noise(process, src):
    """At t = 1 (alpha = 0) x_t is the noise; velocity, x0 and v still give x0 and eps exactly."""
    x_t, a, s, k, truth, x0, eps = _pairs(process, [1.0], src, src)
    assert float(a.abs().max()) < 1e-12
    eps_hat, x0_hat = objective_registry_get(src).to_eps_x0(truth[src], x_t, a, s, k)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-5, atol=1e-5)
    d = Diffusion(process=process, objective=src)
    assert d.u_top == 1.0
    assert Diffusion(process=process, objective="eps").u_top < 1.0  # eps cannot: sampling starts below t = 1


def _linear_coefs(d, t):
    """(A, B, w) of the objective's target A x0 + B eps and its loss weight at times t [n] (float64)."""
    k = d.rates(t, torch.zeros(len(t), 1, dtype=torch.float64))
    one, zero = torch.ones(len(t), 1, dtype=torch.float64), torch.zeros(len(t), 1, dtype=torch.float64)
    a_ = d.objective.from_eps_x0(zero, one, k.alpha, k.sigma, k)
    b_ = d.objective.from_eps_x0(one, zero, k.alpha, k.sigma, k)
    return a_.flatten(), b_.flatten(), d.objective.loss_weight(k.alpha, k.sigma).flatten(), k


@pytest.mark.parametrize("process,objective", [(p, o) for p in CONTINUOUS for o in ("velocity", "eps", "x0", "v")]
                         + [("edm", "edm")])
def test_loss_of_the_exact_field_is_its_closed_form_minimum(process, objective):
    """For x0 ~ N(mu, s0^2) the target A x0 + B eps given x_t has variance (A sigma - B alpha)^2
    s0^2 / (alpha^2 s0^2 + sigma^2): the least loss any network reaches at t. Averaged over the
    training times (uniform in unit time) it is what the exact field's loss measures (the
    flow-matching loss for velocity); a wrong field's loss is larger."""
    d = Diffusion(process=process, objective=objective)
    u = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    t = d.process.from_unit(u)
    a_, b_, w, k = _linear_coefs(d, t)
    al, si = k.alpha.flatten(), k.sigma.flatten()
    closed = (w * (a_ * si - b_ * al) ** 2 * S0**2 / (al**2 * S0**2 + si**2)).mean().item()
    g = torch.Generator().manual_seed(0)
    x0 = MU + S0 * torch.randn(8192, 1, 4, 4, generator=g)
    exact = ProcessGaussian(d, MU, S0)
    got = sum(d.training_loss(exact, x0, generator=g).item() for _ in range(4)) / 4
    assert got == pytest.approx(closed, rel=0.03)
    wrong = ProcessGaussian(d, MU + 0.3, S0)
    assert d.training_loss(wrong, x0, generator=g).item() > 1.05 * closed


def test_edm_preconditioning_is_karras_table_1():
    """The network sees c_in x and c_noise; D = c_skip x + c_out F; the loss of the F-target is
    lambda(sigma) |D - y|^2 with lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (eq. 8)."""
    d = Diffusion(process="edm", objective="edm")
    p, sd = d.process, 0.5
    sig = torch.tensor([0.002, 0.1, 1.0, 7.5, 80.0], dtype=torch.float64)
    torch.testing.assert_close(p.c_skip(sig), sd**2 / (sig**2 + sd**2))
    torch.testing.assert_close(p.c_out(sig), sig * sd / (sd**2 + sig**2).sqrt())
    torch.testing.assert_close(p.c_in(sig), 1 / (sig**2 + sd**2).sqrt())
    torch.testing.assert_close(p.c_noise(sig), sig.log() / 4)
    seen = {}

    def net(x, t, y=None):
        seen["x"], seen["t"] = x, t
        return torch.tanh(x) + 0.1 * t.view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 2, 2, generator=g, dtype=torch.float64)
    s4 = sig.view(-1, 1, 1, 1)
    eps, x0 = d.eps_x0(net, x, sig)
    torch.testing.assert_close(seen["x"], x / (s4**2 + sd**2).sqrt())
    torch.testing.assert_close(seen["t"].double(), sig.log() / 4, rtol=1e-6, atol=1e-6)
    F = net(x / (s4**2 + sd**2).sqrt(), (sig.log() / 4).float())
    D = sd**2 / (s4**2 + sd**2) * x + s4 * sd / (s4**2 + sd**2).sqrt() * F
    torch.testing.assert_close(x0, D)
    torch.testing.assert_close(eps, (x - D) / s4)
    # the training loss at given sigmas (the t_sampler hook) = lambda(sigma) |D - y|^2 of EDM's loss.py
    y = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d.t_sampler = lambda n, generator, device: sig.float()
    loss = d.training_loss(net, y, generator=torch.Generator().manual_seed(2))
    n = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    _, D_yn = d.eps_x0(net, y + s4.float().double() * n, sig.float().double())
    lam = (s4**2 + sd**2) / (s4 * sd) ** 2
    torch.testing.assert_close(loss, (lam * (D_yn - y) ** 2).flatten(1).mean(1).mean(), rtol=1e-4, atol=1e-5)


class _Net(torch.nn.Module):
    """A small fixed network f(x, t) for the reference comparisons."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x, t, y=None):
        tt = t.float().view(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return torch.tanh(self.conv(torch.cat([x, tt], 1)))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_on_rectified_flow_is_diffusers_flow_match_euler(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    net, steps = _Net(), 12
    x_T = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    d = Diffusion(process="rectified-flow", objective="velocity", shift=shift)
    with torch.no_grad():
        ours = d.sample(net, x_T.shape, sampler="euler", steps=steps, x_T=x_T.clone())
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        sched.set_timesteps(sigmas=[1 - i / steps for i in range(steps)])  # the unshifted levels; it shifts them
        x = x_T.clone()
        for t in sched.timesteps:  # diffusers passes t x 1000 to its transformer
            x = sched.step(net(x, (t / 1000).expand(x.shape[0])), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
    # and every other first-order sampler in sigma is the same map on the linear path (DDIM's form)
    with torch.no_grad():
        ddim = d.sample(net, x_T.shape, sampler="ddim", steps=steps, x_T=x_T.clone())
    torch.testing.assert_close(ddim, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("process,scheduler", [("rectified-flow", "CondOTScheduler"), ("gvp", "CosineScheduler")])
def test_conversions_are_flow_matching_affine_prob_path(process, scheduler):
    """The flow_matching package (Lipman et al.'s library) runs time the other way (t = 1 data,
    x_t = alpha_t x_1 + sigma_t x_0 with x_0 the noise): its t is 1 - ours and its velocity -ours."""
    import flow_matching.path.scheduler as fms
    from flow_matching.path import AffineProbPath

    path = AffineProbPath(scheduler=getattr(fms, scheduler)())
    d = Diffusion(process=process, objective="velocity")
    g = torch.Generator().manual_seed(0)
    t_ours = torch.tensor([0.1, 0.37, 0.5, 0.93], dtype=torch.float64)
    x0, eps = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    t_fm = (1 - t_ours).float().view(-1, 1, 1, 1)
    sample = path.sample(x_0=eps, x_1=x0, t=(1 - t_ours).float())
    k = d.rates(t_ours, x0)
    x_t = k.alpha * x0 + k.sigma * eps
    torch.testing.assert_close(x_t, sample.x_t, rtol=1e-4, atol=1e-4)
    v = d.process.velocity(eps, x0, t_ours.view(-1, 1, 1, 1)).float()
    torch.testing.assert_close(v, -sample.dx_t, rtol=1e-4, atol=1e-4)
    a, s = k.alpha, k.sigma

    def conv(pred, src, dst):
        return convert(pred, src, dst, x_t, a, s, k)
    torch.testing.assert_close(conv(v, "velocity", "x0"), path.velocity_to_target(-v, x_t, t_fm), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv(v, "velocity", "eps"), path.velocity_to_epsilon(-v, x_t, t_fm),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv(x0, "x0", "velocity"), -path.target_to_velocity(x0, x_t, t_fm),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv(eps, "eps", "velocity"), -path.epsilon_to_velocity(eps, x_t, t_fm),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv(eps, "eps", "x0"), path.epsilon_to_target(eps, x_t, t_fm), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv(x0, "x0", "eps"), path.target_to_epsilon(x0, x_t, t_fm), rtol=1e-4, atol=1e-4)


def test_process_refusals_are_one_message():
    with pytest.raises(BenchError, match="shift"):
        Diffusion(process="vp", shift=3.0)
    with pytest.raises(BenchError, match="positive"):
        Diffusion(process="rectified-flow", shift=0.0)
    with pytest.raises(BenchError, match="Did you mean 'gvp'"):
        Diffusion(process="gvpp")
    with pytest.raises(BenchError, match="loss 'simple'"):
        Diffusion(process="rectified-flow", loss="hybrid", variance="learned_range")


def test_shift_is_sd3_equation_23_and_scales_the_noise_level():
    p1, p3 = PROCESSES.get("rectified-flow")(shift=1.0), PROCESSES.get("rectified-flow")(shift=3.0)
    u = torch.linspace(0.01, 0.99, 9, dtype=torch.float64)
    torch.testing.assert_close(p3.from_unit(u), 3 * u / (1 + 2 * u))
    torch.testing.assert_close(p3.ve(p3.from_unit(u)), 3 * p1.ve(p1.from_unit(u)))
    g1, g3 = PROCESSES.get("gvp")(shift=1.0), PROCESSES.get("gvp")(shift=3.0)
    torch.testing.assert_close(g3.ve(g3.from_unit(u)), 3 * g1.ve(g1.from_unit(u)))
    assert math.isinf(float(p3.ve(p3.from_unit(1.0))))


def test_process_keys_leave_existing_runs_keys_unchanged():
    """diffusion.process / shift are OMIT_DEFAULT: a vp run's keys are those it had before them;
    any other value is in the train key."""
    from dataclasses import replace

    from bench.core.config import RunConfig

    base = RunConfig()
    same = replace(base, diffusion=replace(base.diffusion, process="vp", shift=1.0))
    assert same.train_key() == base.train_key() and same.key() == base.key()
    flow = replace(base, diffusion=replace(base.diffusion, process="rectified-flow", objective="velocity"))
    shifted = replace(flow, diffusion=replace(flow.diffusion, shift=3.0))
    assert len({base.train_key(), flow.train_key(), shifted.train_key()}) == 3


def test_unet_and_dit_take_a_float_time_as_t_x_1000():
    """A model built with time_scale = 1000 (a continuous process) embeds t in [0, 1] as the
    vp model embeds the timestep t x 1000: the same network, the same output."""
    from bench.models import build_model

    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.25, 0.731])
    for backbone in ("unet-micro", "dit-tiny"):
        torch.manual_seed(0)
        plain = build_model(backbone, 1, 8).eval()
        torch.manual_seed(0)
        scaled = build_model(backbone, 1, 8, time_scale=1000.0).eval()
        with torch.no_grad():
            torch.testing.assert_close(scaled(x, t), plain(x, t * 1000))
        assert scaled.time_scale == 1000.0 and plain.time_scale == 1.0


class _CondNet(torch.nn.Module):
    """A class-conditional net taking a float time (the continuous processes' contract)."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 1, 3, padding=1)
        self.yemb = torch.nn.Embedding(4, 1)

    def forward(self, x, t, y=None):
        assert t.is_floating_point() and t.shape == (x.shape[0],)
        y = torch.full((x.shape[0],), 3) if y is None else y
        tt = t.float().view(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return torch.tanh(self.conv(torch.cat([x, tt], 1))) + self.yemb(y)[:, :, None, None]


@pytest.mark.parametrize("process", CONTINUOUS)
@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_every_sampler_option_and_guidance_runs_on_every_process(process, sampler):
    """Stochastic options (DDIM eta, Heun / Euler churn through ve_at), clipping, and guidance
    (cfg, and cfg-interval whose interval is in sigma / alpha) on every process: finite, the counted
    NFE as declared, w = 0 equal to the unguided chain."""
    from bench.diffusion.samplers import sampler_nfe

    d = Diffusion(process=process, objective=NATIVE[process])
    net, y = _CondNet(), torch.tensor([0, 1, 2])
    opts = {"s_churn": 2.0} if sampler in ("euler", "heun") else {}
    info = {}
    x = d.sample(net, (3, 1, 4, 4), sampler=sampler, steps=6, eta=0.5, options=opts, seeds=[0, 1, 2], y=y,
                 clip_denoised=True, guidance=1.5, info=info)
    assert x.shape == (3, 1, 4, 4) and torch.isfinite(x).all()
    if not SAMPLERS.meta(sampler).get("adaptive"):  # an adaptive solver's count is its own (counted, not declared)
        assert info["nfe"] == sampler_nfe(sampler, 6, {**opts, **({"eta": 0.5} if sampler == "ddim" else {})})
    x = d.sample(net, (3, 1, 4, 4), sampler=sampler, steps=6, seeds=[0, 1, 2], y=y, guidance=1.5,
                 guidance_method="cfg-interval", guidance_options={"sigma_lo": 0.3, "sigma_hi": 3.0})
    assert torch.isfinite(x).all()
    plain = d.sample(net, (3, 1, 4, 4), sampler=sampler, steps=6, seeds=[0, 1, 2], y=y)
    zero = d.sample(net, (3, 1, 4, 4), sampler=sampler, steps=6, seeds=[0, 1, 2], y=y, guidance=0.0)
    torch.testing.assert_close(plain, zero)


def test_a_study_validates_process_keys_before_work(tmp_path):
    """diffusion.process / shift / objective are checked when the study is read (one message with
    the key); sample.nfe on a continuous process counts its levels (never deduplicated)."""
    import yaml

    from bench.study import load_study

    def study(diffusion, sample=None):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({
            "name": "p", "base": {"data": {"dataset": "digits"}, "model": {"backbone": "unet-micro"},
                                  "diffusion": diffusion, "sample": sample or {}, "train": {"steps": 2},
                                  "eval": {"metrics": ["kid"], "num_samples": 64, "kid_subset_size": 32,
                                           "extractor": "domain:digits"}},
            "seeds": [0]}))
        return load_study(path)

    with pytest.raises(BenchError, match="diffusion.process.*Did you mean 'rectified-flow'"):
        study({"process": "rectified-flows"})
    with pytest.raises(BenchError, match="shift"):
        study({"process": "vp", "shift": 3.0})
    with pytest.raises(BenchError, match="objective"):
        study({"process": "rectified-flow", "objective": "velocityy"})
    runs = study({"process": "rectified-flow", "objective": "velocity", "shift": 3.0},
                 {"sampler": "euler", "spacing": "quadratic", "nfe": 40}).configs
    assert runs[0].sample.steps == 40 and runs[0].diffusion.shift == 3.0
