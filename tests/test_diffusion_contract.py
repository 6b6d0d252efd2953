"""Contract tests, parametrized over the registries: a new entry is tested the day it is registered."""

import numpy as np
import pytest
import torch
from gaussian import GaussianDenoiser

from bench.core.errors import BenchError
from bench.core.registry import Registry, UnknownChoiceError
from bench.diffusion import (
    LOSSES,
    OBJECTIVES,
    SAMPLERS,
    SCHEDULES,
    SPACINGS,
    VARIANCES,
    Diffusion,
    convert,
    make_schedule,
    make_timesteps,
)
from bench.diffusion.batching import _MEASURED


class TinyNet(torch.nn.Module):
    """A small conv net with a class embedding: the shape of a real backbone, seconds to run."""

    def __init__(self, channels=1, out_mult=1, num_classes=None):
        super().__init__()
        self.num_classes = num_classes
        self.conv = torch.nn.Conv2d(channels, channels * out_mult, 3, padding=1)
        self.temb = torch.nn.Embedding(1000, channels * out_mult)
        self.yemb = torch.nn.Embedding(num_classes + 1, channels * out_mult) if num_classes else None
        self.calls: list[int] = []
        self.discrete_time = True  # an embedding table over integer t: noise-level schedules quantize

    def forward(self, x, t, y=None):
        self.calls.append(x.shape[0])
        h = self.conv(x) + self.temb(t % 1000)[:, :, None, None]
        if self.yemb is not None:
            y = torch.full_like(t, self.num_classes) if y is None else y
            h = h + self.yemb(y)[:, :, None, None]
        return h


# --- registry --------------------------------------------------------------------------------------
def test_registry_did_you_mean_and_choices():
    with pytest.raises(UnknownChoiceError) as e:
        SAMPLERS.get("ddmi")
    msg = str(e.value)
    assert "Did you mean" in msg and "'ddim'" in msg and "ddpm" in msg and "dpm-solver++" in msg


def test_registry_refuses_collisions_and_keeps_metadata():
    r: Registry[int] = Registry("thing")
    r.register("a", 1, higher_is_better=True)

    @r.register("b", speed=3)
    def b():
        return 2

    assert r.get("b")() == 2 and r.meta("a") == {"higher_is_better": True}
    with pytest.raises(BenchError, match="already registered"):
        r.register("a", 5)
    assert "a" in r and len(r) == 2 and r.names() == ["a", "b"]


# --- contract over every sampler x objective x schedule x variance ---------------------------------
@pytest.mark.parametrize("sampler", SAMPLERS.names())
@pytest.mark.parametrize("objective", OBJECTIVES.names())
@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_every_combination_gives_finite_output_of_right_shape(sampler, objective, schedule):
    d = Diffusion(schedule, 100, objective=objective)
    # an adaptive solver on TinyNet's field, which jumps at every integer t (discrete_time): loose tolerances
    opts = {"rtol": 1e-2, "atol": 1e-2} if SAMPLERS.meta(sampler).get("adaptive") else None
    x = d.sample(TinyNet(2), (3, 2, 4, 4), sampler=sampler, steps=10, eta=0.5, seeds=[0, 1, 2],
                 clip_denoised=True, options=opts)
    assert x.shape == (3, 2, 4, 4) and torch.isfinite(x).all()


@pytest.mark.parametrize("variance", VARIANCES.names())
@pytest.mark.parametrize("loss", LOSSES.names())
def test_every_variance_and_loss_trains(variance, loss):
    learned = VARIANCES.meta(variance)["learned"]
    if learned and not LOSSES.meta(loss)["trains_variance"]:
        with pytest.raises(BenchError, match="no gradient"):
            Diffusion("cosine", 100, variance=variance, loss=loss)
        return
    d = Diffusion("cosine", 100, variance=variance, loss=loss)
    net = TinyNet(1, 2 if learned else 1)
    x0 = torch.rand(8, 1, 4, 4) * 2 - 1
    loss_value = d.training_loss(net, x0, generator=torch.Generator().manual_seed(0))
    assert loss_value.ndim == 0 and torch.isfinite(loss_value)
    loss_value.backward()
    assert net.conv.weight.grad is not None and net.conv.weight.grad.abs().sum() > 0
    x = d.sample(net, (2, 1, 4, 4), sampler="ddpm", steps=10, seeds=[0, 1], clip_denoised=True)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("src", OBJECTIVES.names())
@pytest.mark.parametrize("dst", OBJECTIVES.names())
def test_objective_conversions_round_trip(src, dst):
    abar = make_schedule("cosine", 1000).alphas_cumprod
    t = torch.tensor([0, 10, 500, 999])
    a = abar[t].sqrt().float().view(-1, 1, 1, 1)
    s = (1 - abar[t]).sqrt().float().view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    x_t = a * x0 + s * eps
    truth = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s}
    out = convert(truth[src], src, dst, x_t, a, s)
    torch.testing.assert_close(out, truth[dst], rtol=1e-3, atol=2e-3)
    back = convert(out, dst, src, x_t, a, s)
    torch.testing.assert_close(back, truth[src], rtol=1e-3, atol=2e-3)


TIMESTEP_SPACINGS = [n for n in SPACINGS.names() if SPACINGS.meta(n)["kind"] == "timesteps"]


@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("T", [10, 50, 100, 1000, 4000])
def test_every_spacing_is_right_for_every_step_count(spacing, T):
    """For every S in [1, T]: strictly increasing, distinct, inside [0, T), ending where the
    spacing's definition says; exactly S of them unless the spacing deduplicates; a refusal is
    one BenchError that names the alternatives."""
    meta = SPACINGS.meta(spacing)
    refused = 0
    for S in range(1, T + 1):
        if meta.get("refuses") and meta["refuses"](T, S):
            with pytest.raises(BenchError, match="use spacing"):
                make_timesteps(spacing, T, S)
            refused += 1
            continue
        ts = make_timesteps(spacing, T, S).numpy()
        assert ts.dtype == np.int64 and ts[0] >= 0 and ts[-1] < T, (S, ts)
        assert (np.diff(ts) > 0).all(), (S, ts)
        assert ts[-1] == meta["last"](T, S), (S, ts[-1])
        assert len(ts) == S or (meta.get("dedup") and 1 <= len(ts) < S), (S, len(ts))
    assert refused < T // 2 + 1


def test_spacings_match_the_reference_definitions():
    """diffusers' float formulas where they are exact; the DDIM authors' quad; trailing's float
    arange gains an element at T=1000, S=61 (the bug this integer version fixes)."""
    T = 1000
    for S in (10, 20, 50, 100, 250):
        ref = np.round(np.arange(T, 0, -T / S)).astype(np.int64)[::-1] - 1
        assert make_timesteps("trailing", T, S).tolist() == sorted(ref.tolist())
        assert make_timesteps("linspace", T, S).tolist() == np.linspace(0, T - 1, S).round().astype(int).tolist()
        assert make_timesteps("leading", T, S).tolist() == (np.arange(S) * (T // S)).tolist()
        quad = sorted({int(v) for v in np.linspace(0, np.sqrt(T * 0.8), S) ** 2})
        assert make_timesteps("quadratic", T, S).tolist() == quad
    assert len(np.arange(T, 0, -T / 61)) == 62 and len(make_timesteps("trailing", T, 61)) == 61
    assert len(make_timesteps("quadratic", T, 50)) < 50  # the repeats of the first steps, once each


def test_schedules_match_their_papers():
    lin = make_schedule("linear", 1000)
    assert lin.betas.dtype == torch.float64
    assert lin.betas[0].item() == pytest.approx(1e-4) and lin.betas[-1].item() == pytest.approx(0.02)
    cos = make_schedule("cosine", 1000)
    assert cos.betas.max().item() == pytest.approx(0.999)  # clipped (Nichol & Dhariwal)

    def f(u):
        return torch.cos(torch.tensor((u + 0.008) / 1.008 * torch.pi / 2, dtype=torch.float64)) ** 2

    assert cos.alphas_cumprod[499].item() == pytest.approx((f(0.5) / f(0.0)).item(), rel=1e-9)
    sl = make_schedule("scaled_linear", 1000)
    assert sl.betas[0].item() == pytest.approx(0.00085) and sl.betas[-1].item() == pytest.approx(0.012)
    sig = make_schedule("sigmoid", 1000)
    assert (sig.alphas_cumprod[1:] < sig.alphas_cumprod[:-1]).all()
    custom = make_schedule(torch.full((10,), 0.1))
    assert custom.timesteps == 10 and custom.alphas_cumprod[-1].item() == pytest.approx(0.9**10)


def test_user_registered_schedule_is_usable():
    SCHEDULES.register("constant-test", lambda T: torch.full((T,), 0.05, dtype=torch.float64))
    try:
        d = Diffusion("constant-test", 50)
        assert d.alphas_cumprod[-1].item() == pytest.approx(0.95**50)
    finally:
        SCHEDULES.unregister("constant-test")


# --- guidance --------------------------------------------------------------------------------------
def test_guidance_is_one_2b_call_or_two_b_calls_per_step_and_follows_the_cfg_convention():
    torch.manual_seed(0)
    net = TinyNet(1, num_classes=10).double()  # float64: a 2B batch and two B batches round alike
    d = Diffusion("linear", 100)
    y = torch.tensor([1, 2, 3])
    x_T = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    runs = {}
    _MEASURED.clear()  # measure times here, whatever ran before in this process
    for mode in ("joint", "split", "measure", "auto"):
        net.calls.clear()
        info: dict = {}
        runs[mode] = d.sample(net, x_T.shape, sampler="ddim", steps=7, guidance=2.0, y=y, x_T=x_T,
                              guidance_batch=mode, info=info)
        runs[mode + " calls"], runs[mode + " info"] = list(net.calls), info
    assert runs["joint calls"] == [6] * 7  # one network call on 2B per step
    assert runs["split calls"] == [3] * 14  # or two on B
    # measure: a warm-up and three rounds each way (not counted as NFE), then the chain the faster way
    measured = runs["measure calls"]
    assert measured[:12].count(6) == 4 and measured[:12].count(3) == 8
    assert measured[12:] == ([3] * 14 if runs["measure info"]["guidance_batch"] == "split" else [6] * 7)
    assert runs["auto calls"] == [6] * 7 and runs["auto info"]["guidance_batch"] == "joint"  # a fixed rule
    for mode in ("joint", "split", "measure", "auto"):  # the same NFE counted either way: 7 guided calls
        assert runs[mode + " info"]["nfe"] == 7 and runs[mode + " info"]["guided_calls"] == 7
    assert runs["joint info"]["guidance_batch"] == "joint"
    torch.testing.assert_close(runs["joint"], runs["split"], rtol=1e-10, atol=1e-10)
    guided = runs["joint"]

    class ManualCFG(torch.nn.Module):
        """eps~ = (1 + w) eps(x, y) - w eps(x, null), computed by hand with two calls."""

        num_classes = 10

        def forward(self, x, t, yy):
            null = torch.full_like(yy, 10)
            return 3.0 * net(x, t, yy) - 2.0 * net(x, t, null)

    manual = d.sample(ManualCFG(), x_T.shape, sampler="ddim", steps=7, guidance=0.0, y=y, x_T=x_T)
    assert guided.dtype == torch.float64
    torch.testing.assert_close(guided, manual, rtol=1e-10, atol=1e-10)

    net.calls.clear()
    w0 = d.sample(net, x_T.shape, sampler="ddim", steps=7, guidance=0.0, y=y, x_T=x_T)
    assert net.calls == [3] * 7
    cond = d.sample(lambda x, t, yy: net(x, t, yy), x_T.shape, sampler="ddim", steps=7, y=y, x_T=x_T)
    torch.testing.assert_close(w0, cond)
    assert (guided - w0).abs().max() > 1e-3


# --- seeding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_same_seeds_same_images_at_any_batch_size(sampler):
    d = Diffusion("cosine", 100)
    model = GaussianDenoiser(d.alphas_cumprod, "eps", 0.2, 0.5)
    seeds = list(range(100, 108))
    adaptive = SAMPLERS.meta(sampler).get("adaptive")  # one step size per batch: equal within its tolerance
    opts = {"rtol": 1e-5, "atol": 1e-5} if adaptive else None
    big = d.sample(model, (8, 1, 4, 4), sampler=sampler, steps=20, eta=1.0, seeds=seeds, options=opts)
    small = torch.cat([d.sample(model, (3, 1, 4, 4), sampler=sampler, steps=20, eta=1.0, seeds=seeds[:3], options=opts),
                       d.sample(model, (3, 1, 4, 4), sampler=sampler, steps=20, eta=1.0, seeds=seeds[3:6], options=opts),
                       d.sample(model, (2, 1, 4, 4), sampler=sampler, steps=20, eta=1.0, seeds=seeds[6:], options=opts)])
    torch.testing.assert_close(big, small, **({"rtol": 0.0, "atol": 1e-3} if adaptive else {}))
    other = d.sample(model, (8, 1, 4, 4), sampler=sampler, steps=20, eta=1.0, seeds=list(range(8)), options=opts)
    assert (other - big).abs().max() > 0.1


# --- hybrid loss -----------------------------------------------------------------------------------
def test_hybrid_vlb_term_does_not_train_the_mean():
    """L_hybrid's vlb term reaches the variance channel only (Nichol & Dhariwal, Sec. 3.1)."""
    import copy

    torch.manual_seed(0)
    x0 = torch.rand(16, 1, 4, 4) * 2 - 1
    base = TinyNet(1, 2)
    torch.nn.init.normal_(base.conv.weight)

    def grads(loss, variance="learned_range", first_channel_only=False):
        net = copy.deepcopy(base)
        model = (lambda x, t, y: net(x, t, y)[:, :1]) if first_channel_only else net
        d = Diffusion("linear", 100, variance=variance, loss=loss, hybrid_weight=0.5)
        d.training_loss(model, x0, generator=torch.Generator().manual_seed(3)).backward()
        return net.conv.weight.grad[0].clone(), net.conv.weight.grad[1].clone()

    mean_h, var_h = grads("hybrid")
    mean_v, _ = grads("vlb")
    mean_s, var_s = grads("simple", "fixed_small", first_channel_only=True)
    torch.testing.assert_close(mean_h, mean_s)  # prediction channel: L_simple's gradient only
    assert var_s.abs().sum() == 0 and var_h.abs().sum() > 0  # variance channel: the vlb term's
    assert (mean_v - mean_h).abs().sum() > 1e-6  # plain vlb does train the mean


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"schedule": "cosin"}, "Did you mean 'cosine'"),
    ({"objective": "epsilon"}, "unknown objective"),
    ({"variance": "fixed"}, "unknown variance"),
    ({"loss": "mse"}, "unknown loss"),
    ({"variance": "learned_range", "loss": "simple"}, "hybrid"),
])
def test_bad_diffusion_arguments(kwargs, match):
    with pytest.raises(BenchError, match=match):
        Diffusion(**{"schedule": "linear", "timesteps": 100, **kwargs})


@pytest.mark.parametrize("kwargs,match", [
    ({"sampler": "eulerr"}, "unknown sampler.*euler"),
    ({"spacing": "uniform"}, "unknown spacing"),
    ({"steps": 0}, r"steps=0 is impossible"),
    ({"steps": 101}, r"must be an int in \[1, 100\]"),
    ({"eta": 1.5}, r"outside \[0, 1\]"),
    ({"eta": -0.1}, r"outside \[0, 1\]"),
    ({"spacing": "leading", "steps": 60}, r"steps=60 > T/2 .* use spacing 'linspace' or"),
    ({"guidance": 1.0}, "needs class labels"),
])
def test_bad_sample_arguments(kwargs, match):
    d = Diffusion("linear", 100)
    with pytest.raises(BenchError, match=match):
        d.sample(TinyNet(1, num_classes=10), (2, 1, 4, 4), **kwargs)


def test_guidance_on_unconditional_model():
    with pytest.raises(BenchError, match="class-conditional"):
        Diffusion("linear", 100).sample(TinyNet(1), (2, 1, 4, 4), guidance=1.0, y=torch.tensor([0, 1]))


def test_learned_range_model_returning_c_channels():
    d = Diffusion("linear", 100, variance="learned_range", loss="hybrid")
    with pytest.raises(BenchError, match="needs 2C channels"):
        d.sample(TinyNet(1, 1), (2, 1, 4, 4), steps=5)


def test_model_returning_wrong_shape():
    d = Diffusion("linear", 100)
    with pytest.raises(BenchError, match=r"returned shape \(2, 1, 2, 2\)"):
        d.sample(lambda x, t, y: x[:, :, :2, :2], (2, 1, 4, 4), steps=5)


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_nfe_is_what_the_network_saw_and_options_are_declared(sampler):
    """``info['nfe']`` equals the calls a counting network received (a guided call on 2B counts
    once, as guided; as two B calls, once too); every declared option is accepted at its default,
    unknown ones refused."""
    from bench.diffusion import check_options
    from bench.diffusion.samplers import declared_options

    net = TinyNet(1, num_classes=3)
    seen = net.calls  # the batch size of every forward the network ran
    info = {}
    defaults = {o.name: o.default for o in declared_options(sampler).values()}
    Diffusion("linear", 100).sample(net, (2, 1, 4, 4), sampler=sampler, steps=7, guidance=1.0,
                                    y=torch.tensor([0, 1]), options=defaults, info=info, guidance_batch="joint")
    assert info["nfe"] == len(seen) and info["guided_calls"] == len(seen) and set(seen) == {4}
    assert info["visited_steps"] == 7
    seen.clear()
    split: dict = {}
    Diffusion("linear", 100).sample(net, (2, 1, 4, 4), sampler=sampler, steps=7, guidance=1.0,
                                    y=torch.tensor([0, 1]), options=defaults, info=split, guidance_batch="split")
    # an adaptive solver's step count follows the rounding of joint vs split calls: only its own count is checked
    same = SAMPLERS.meta(sampler).get("adaptive") or split["nfe"] == info["nfe"]
    assert same and split["nfe"] == split["guided_calls"] and len(seen) == 2 * split["nfe"] and set(seen) == {2}
    with pytest.raises(BenchError, match="has no option 'nope'"):
        check_options(sampler, {"nope": 1})
