"""Training-time densities (``train.t_sampling``): every registered density's samples follow its
closed-form CDF (a Kolmogorov-Smirnov bound), its pdf is the CDF's derivative and integrates to
one, the SD3 formulas hold where they have independent forms, and out-of-range options are refused."""

import math

import pytest
import torch

from bench.core.errors import BenchError
from bench.diffusion import PROCESSES, TIME_SAMPLING, Diffusion, TimeSampler, check_t_sampling, make_schedule
from bench.diffusion.objectives import objective_names

N = 20_000
KS_CRIT = 1.95 / math.sqrt(N)  # the KS statistic's 0.1 % critical value


def _flow():
    return PROCESSES.get("rectified-flow")()


def _chain(T=100):
    return PROCESSES.get("vp")(alphas_cumprod=make_schedule("linear", T).alphas_cumprod)


# options away from the defaults as well, so a wrong use of an option shows
CASES = [(name, {}) for name in TIME_SAMPLING.names()] + [
    ("logit-normal", {"loc": 0.5, "scale": 0.6}), ("mode", {"scale": -0.7}), ("mode", {"scale": 1.7}),
    ("edm-lognormal", {"p_mean": 0.3, "p_std": 0.5}),
]


@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_samples_follow_the_closed_form_cdf(name, opts):
    d = TIME_SAMPLING.get(name)
    o = check_t_sampling(name, opts)
    x = d.draw(N, torch.Generator().manual_seed(0), "cpu", **o).sort().values
    assert x.dtype == torch.float64 and x.shape == (N,)
    ecdf_hi = torch.arange(1, N + 1, dtype=torch.float64) / N
    f = d.cdf(x, **o)
    ks = max(float((ecdf_hi - f).abs().max()), float((ecdf_hi - 1 / N - f).abs().max()))
    assert ks < KS_CRIT, (name, opts, ks)


@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_pdf_is_the_cdfs_derivative_and_integrates_to_one(name, opts):
    d = TIME_SAMPLING.get(name)
    o = check_t_sampling(name, opts)
    if d.space == "unit":
        x = torch.linspace(1e-4, 1 - 1e-4, 20001, dtype=torch.float64)
        mass = float(d.cdf(x[-1:], **o) - d.cdf(x[:1], **o))
    else:
        x = torch.exp(torch.linspace(-12, 8, 20001, dtype=torch.float64))
        mass = 1.0
    p = d.pdf(x, **o)
    assert abs(float(torch.trapezoid(p, x)) - mass) < 1e-3
    h = 1e-6 * (x[1:-1] if d.space == "sigma" else torch.ones_like(x[1:-1]))
    slope = (d.cdf(x[1:-1] + h, **o) - d.cdf(x[1:-1] - h, **o)) / (2 * h)
    assert torch.allclose(slope, p[1:-1], rtol=1e-4, atol=1e-4)


def test_sd3_formulas():
    """SD3 eq. 19-22 in independent forms: logit-normal(m, s) is sigmoid of N(m, s^2) (median sigmoid(m));
    mode(0) is uniform and mode(s) has quantiles f_mode(1 - q); cosmap's CDF is (2 / pi) atan(t / (1 - t))."""
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    ln = TIME_SAMPLING.get("logit-normal").draw(N, g, "cpu", loc=0.5, scale=0.6)
    assert abs(float(ln.median()) - 1 / (1 + math.exp(-0.5))) < 0.01
    mode = TIME_SAMPLING.get("mode")
    u0 = mode.draw(N, g, "cpu", scale=0.0)
    assert abs(float(u0.mean()) - 0.5) < 0.01 and abs(float(u0.var()) - 1 / 12) < 0.003
    s = 1.29
    expected = 1 - (1 - q) - s * (torch.cos(math.pi / 2 * (1 - q)) ** 2 - 1 + (1 - q))  # f_mode(1 - q; s)
    assert torch.allclose(torch.quantile(mode.draw(N, g, "cpu", scale=s), q), expected, atol=0.01)
    cos = TIME_SAMPLING.get("cosmap").draw(N, g, "cpu")
    assert torch.allclose(torch.quantile(cos, q), torch.tan(math.pi / 2 * q) / (1 + torch.tan(math.pi / 2 * q)),
                          atol=0.01)


def test_edm_lognormal_on_rectified_flow_is_logit_normal():
    """sigma = t / (1 - t) on rectified flow, so ln sigma ~ N(m, s^2) is logit(t) ~ N(m, s^2)."""
    ts = TimeSampler("edm-lognormal", {"p_mean": 0.3, "p_std": 0.5})
    t = ts.draw(_flow(), N, torch.Generator().manual_seed(2)).double().sort().values
    assert t.dtype == torch.float64 and 0 < float(t.min()) and float(t.max()) < 1
    f = TIME_SAMPLING.get("logit-normal").cdf(t, loc=0.3, scale=0.5)
    assert float((torch.arange(1, N + 1) / N - f).abs().max()) < KS_CRIT + 1e-4  # float32 t


def test_the_chain_draws_integer_timesteps():
    """Uniform on the VP chain is today's randint draw (runs keep their numbers); a unit density is
    floor(u T); the log-normal picks the timestep nearest in log sigma."""
    chain = _chain(100)
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    t = TimeSampler().draw(chain, 64, g)
    assert torch.equal(t, torch.randint(0, 100, (64,), generator=ref))
    t = TimeSampler("logit-normal").draw(chain, N, torch.Generator().manual_seed(4))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 99
    assert abs(float((t < 50).double().mean()) - 0.5) < 0.02  # logit-normal(0, 1) is symmetric about 1/2
    sig = torch.tensor([0.05, 1.0, 20.0], dtype=torch.float64)
    t = TimeSampler.sigma_to_time(chain, sig)
    abar = chain.alphas_cumprod
    table = ((1 - abar) / abar).sqrt().log()
    assert torch.equal(t, (sig.log()[:, None] - table[None]).abs().argmin(1))


WEIGHTED = [(p, o) for p in PROCESSES.names() for o in objective_names()]


@pytest.mark.parametrize("process,objective", WEIGHTED, ids=[f"{p}-{o}" for p, o in WEIGHTED])
def test_the_weighting_is_on_the_x0_error_for_every_objective(process, objective):
    """multiplier(t) x the objective's own per-image loss = w(sigma / alpha) |x0_hat - x0|^2 (edm: lambda(sigma)
    of Karras et al.; min-snr: min(SNR, gamma)), for any prediction: the weighting means the same whatever
    the network predicts."""
    d = Diffusion("linear", 100, objective=objective, process=process)
    g = torch.Generator().manual_seed(5)
    x0, noise, pred = (torch.randn(6, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    u = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95], dtype=torch.float64)
    p = d.process
    t = (u * 100).long() if not p.continuous else p.from_unit(u)
    k = d.rates(t.double(), x0)
    x_t = k.alpha * x0 + k.sigma * noise
    own = (d.objective.loss_weight(k.alpha, k.sigma) * (pred - d.objective.from_eps_x0(noise, x0, k.alpha, k.sigma, k))
           ** 2).flatten(1).mean(1)
    x0_hat = d.objective.to_eps_x0(pred, x_t, k.alpha, k.sigma, k)[1]
    err = ((x0_hat - x0) ** 2).flatten(1).mean(1)
    ve = (k.sigma / k.alpha).flatten()
    for opts, w in [({"weighting": "edm", "sigma_data": 0.5}, (ve**2 + 0.25) / (ve * 0.5) ** 2),
                    ({"weighting": "min-snr", "gamma": 5.0}, torch.clamp(ve**-2, max=5.0))]:
        m = TimeSampler("cosmap", opts).multiplier(d, t)
        assert torch.allclose(m.double() * own, w * err, rtol=1e-4), (opts, m.double() * own, w * err)
    assert TimeSampler("edm-lognormal").options["weighting"] == "edm"  # EDM's density comes with its lambda


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(t.detach().clone())
        return x * self.w


@pytest.mark.parametrize("process", ["rectified-flow", "vp"])
def test_training_draws_t_from_the_density(process):
    """installed on a Diffusion, the density is where training_loss looks: logit-normal(0.5, 0.6) on
    rectified flow (the network sees t), floor(u T) on the VP chain; the default installs nothing."""
    d = Diffusion("linear", 100, objective="velocity" if process != "vp" else "eps", process=process)
    TimeSampler().install(d)
    assert d.t_sampler is None and d.weighting is None
    TimeSampler("logit-normal", {"loc": 0.5, "scale": 0.6, "weighting": "edm"}).install(d)
    assert d.weighting is not None
    model, g = _Recorder(), torch.Generator().manual_seed(6)
    for _ in range(20):
        assert torch.isfinite(d.training_loss(model, torch.randn(500, 1, 2, 2), generator=g))
    t = torch.cat(model.seen).double().sort().values
    if process == "vp":
        assert t.dtype == torch.float64 and bool((t == t.round()).all()) and float(t.max()) <= 99
        t = (t + 0.5) / 100  # floor(u T): the bin's middle
    f = TIME_SAMPLING.get("logit-normal").cdf(t, loc=0.5, scale=0.6)
    ks = float((torch.arange(1, len(t) + 1) / len(t) - f).abs().max())
    assert ks < (1.95 / len(t) ** 0.5 + (0.01 if process == "vp" else 1e-4)), ks


@pytest.mark.parametrize("name,opts,needle", [
    ("logit-normal", {"scale": 0.0}, "train.t_sampling_options.scale = 0.0 is outside"),
    ("mode", {"scale": 1.9}, "train.t_sampling_options.scale = 1.9 is outside"),
    ("edm-lognormal", {"p_std": -1}, "train.t_sampling_options.p_std = -1.0 is outside"),
    ("cosmap", {"loc": 0.0}, "has no option 'loc'"),
    ("uniform", {"weighting": "edn"}, "Did you mean 'edm'"),
])
def test_out_of_range_options_are_refused(name, opts, needle):
    with pytest.raises(BenchError) as e:
        TimeSampler(name, opts)
    assert needle in str(e.value)
    with pytest.raises(BenchError, match="unknown timestep density 'logit_normal'.*Did you mean 'logit-normal'"):
        TimeSampler("logit_normal")


PLAN_MISTAKES = {
    "an option out of range": ({"t_sampling": "logit-normal", "t_sampling_options": {"scale": -1.0}},
                               ["train.t_sampling_options.scale = -1.0 is outside [0.001, 10.0]"]),
    "an option the density lacks": ({"t_sampling": "mode", "t_sampling_options": {"loc": 0.0}},
                                    ["train.t_sampling_options.loc", "has no option 'loc'", "scale"]),
    "an unknown density": ({"t_sampling": "logitnormal"}, ["train.t_sampling", "Did you mean 'logit-normal'"]),
    "a density with the bound's loss": ({"t_sampling": "cosmap", "loss": "vlb"},
                                        ["base.train.t_sampling", "reweights the loss over t", "diffusion.loss: simple"]),
}


@pytest.mark.parametrize("name", PLAN_MISTAKES)
def test_plan_refuses_with_one_message(name, tmp_path, capsys):
    import yaml
    from tiny import tiny_study

    from bench.cli import main

    train, words = dict(PLAN_MISTAKES[name][0]), PLAN_MISTAKES[name][1]
    loss = train.pop("loss", "simple")
    study = tiny_study("t-sampling", train=train, diffusion={"loss": loss})
    path = tmp_path / "t-sampling.yaml"
    path.write_text(yaml.safe_dump(study))
    code = main(["plan", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("error:") == 1, err
    for w in words:
        assert w in err, f"{w!r} not in {err}"


def test_the_density_is_in_the_train_key_and_its_default_is_not():
    from bench.core.config import from_dict

    base = from_dict({})
    assert from_dict({"train": {"t_sampling": "uniform"}}).train_key() == base.train_key()
    ln = from_dict({"train": {"t_sampling": "logit-normal"}})
    assert ln.train_key() != base.train_key()
    assert from_dict({"train": {"t_sampling": "logit-normal", "t_sampling_options": {"scale": 0.5}}}).train_key() \
        not in (ln.train_key(), base.train_key())


def test_the_trainer_installs_the_density_and_refuses_bad_options():
    from bench.core.config import DiffusionSpec, RunConfig, TrainSpec
    from bench.training.loop import Trainer

    def cfg(**train):
        return RunConfig(diffusion=DiffusionSpec(timesteps=50),
                         train=TrainSpec(steps=1, batch_size=4, warmup_steps=0, **train))

    tr = Trainer(cfg(t_sampling="mode", t_sampling_options={"scale": 0.5}))
    assert tr.diffusion.t_sampler is not None and tr.diffusion.weighting is None
    assert math.isfinite(float(tr.step()))
    assert Trainer(cfg()).diffusion.t_sampler is None  # the default: the Diffusion's own draw
    with pytest.raises(BenchError, match="train.t_sampling_options.scale = 3.0 is outside"):
        Trainer(cfg(t_sampling="mode", t_sampling_options={"scale": 3.0}))
