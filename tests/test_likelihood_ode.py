"""NLL through the probability-flow ODE (bench.diffusion.likelihood_ode), from first principles.

Correlated Gaussian data x0 ~ N(mu, Sigma) has, on every process, the closed-form marginal x_t ~
N(alpha mu, alpha^2 Sigma + sigma^2 I) and the closed-form probability-flow velocity v = alpha' mu +
(alpha alpha' Sigma + sigma sigma' I)(alpha^2 Sigma + sigma^2 I)^{-1} (x - alpha mu). Its ODE NLL must be
the closed form -log N(x; alpha(t_min) mu, ...) / (D ln 2): with the exact trace to a tight tolerance,
with Hutchinson's estimate within the standard error it reports (Sigma is not diagonal, so the
estimate does have variance).
"""

import math

import pytest
import torch

from bench.diffusion.likelihood_ode import dequantize, ode_log_likelihood
from bench.diffusion.processes import PROCESSES

D = 16
_g = torch.Generator().manual_seed(0)
Q, _ = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64, generator=_g))
LAM = torch.linspace(0.05, 1.0, D, dtype=torch.float64)
SIGMA = Q @ torch.diag(LAM) @ Q.T
MU = torch.linspace(-0.5, 0.5, D, dtype=torch.float64)
EYE = torch.eye(D, dtype=torch.float64)


def _process(name):
    return PROCESSES.get(name)()


def exact_field(p):
    def v(x, t):
        t = t.double()[:1]
        a, s, da, ds = (float(f(t)) for f in (p.alpha, p.sigma, p.d_alpha, p.d_sigma))
        m = (a * da * SIGMA + s * ds * EYE) @ torch.linalg.inv(a * a * SIGMA + s * s * EYE)
        out = da * MU + (x.double().flatten(1) - a * MU) @ m.T
        return out.to(x.dtype).view_as(x)

    return v


def data(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    x0 = MU + torch.randn(n, D, dtype=torch.float64, generator=g) @ torch.linalg.cholesky(SIGMA).T
    return x0


def _marginal(p, t):
    t = torch.tensor(float(t), dtype=torch.float64)
    a, s = float(p.alpha(t)), float(p.sigma(t))
    return a, torch.distributions.MultivariateNormal(a * MU, a * a * SIGMA + s * s * EYE), a * a * LAM + s * s


def closed_form_bpd(p, x0):
    """What the ODE computes, in closed form: -[log p_{t_min}(x0) + log prior(x_T) - log p_{t_max}(x_T)] / (D ln 2),
    x_T the exact flow of x0 (x_t = alpha mu + C_t^(1/2) C_{t_min}^(-1/2) (x0 - alpha(t_min) mu), C_t = alpha^2 Sigma
    + sigma^2 I, all functions of Sigma); the prior N(0, (alpha^2 + sigma^2) I) at t_max is p_{t_max} where
    alpha(t_max) = 0 (rectified flow, gvp) and differs from it by O(mu / sigma_max) on edm, O(alpha(t_max)) on vp."""
    a0, start, c0 = _marginal(p, p.t_min)
    a1, end, c1 = _marginal(p, p.t_max)
    x_top = a1 * MU + ((x0 - a0 * MU) @ Q * (c1 / c0).sqrt()) @ Q.T
    t_top = torch.tensor(float(p.t_max), dtype=torch.float64)
    var = float(p.alpha(t_top)) ** 2 + float(p.sigma(t_top)) ** 2
    prior = torch.distributions.MultivariateNormal(torch.zeros(D, dtype=torch.float64), var * EYE)
    return -(start.log_prob(x0) + prior.log_prob(x_top) - end.log_prob(x_top)) / (D * math.log(2))


@pytest.mark.parametrize("name", PROCESSES.names())
def test_exact_trace_equals_the_closed_form(name):
    p = _process(name)
    x0 = data(4)
    r = ode_log_likelihood(exact_field(p), p, x0.float().view(4, 1, 4, 4), exact=True, rtol=1e-6, atol=1e-6)
    assert r.nfe > 0 and torch.equal(r.bpd_se, torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(r.bpd, closed_form_bpd(p, x0), atol=1e-4), (r.bpd, closed_form_bpd(p, x0))


@pytest.mark.parametrize("name", ["rectified-flow", "gvp"])
def test_hutchinson_is_within_its_reported_error(name):
    p = _process(name)
    n = 16
    x0 = data(n, seed=2)
    r = ode_log_likelihood(exact_field(p), p, x0.float().view(n, 1, 4, 4), probes=8,
                           generator=torch.Generator().manual_seed(3))
    z = (r.bpd - closed_form_bpd(p, x0)) / r.bpd_se
    assert bool((r.bpd_se > 1e-4).all())  # a non-diagonal Jacobian: the estimate has variance
    assert float(z.abs().max()) < 4.5, z
    mean_z = float(z.mean()) * n**0.5  # the set's mean error against its own standard error
    assert abs(mean_z) < 4.0, z


def test_dequantization_fills_each_bin():
    """(k + u) / 128 - 1 lies in k's bin [k / 128 - 1, (k + 1) / 128 - 1) of width 2 / 256 (the 7-bit offset:
    -log2(2 / 256) = 7), from uint8 or from k / 127.5 - 1 alike."""
    k = torch.arange(256, dtype=torch.uint8).view(4, 1, 8, 8)
    y = dequantize(k, torch.Generator().manual_seed(0))
    lo = k.double() / 128 - 1
    assert bool((y >= lo).all()) and bool((y < lo + 1 / 128 + 1e-6).all())
    assert torch.allclose(dequantize(k.float() / 127.5 - 1, torch.Generator().manual_seed(0)), y)


NATIVE = {"vp": "eps", "rectified-flow": "velocity", "gvp": "velocity", "edm": "edm"}


def _gaussian_model(d, mu, s0):
    from gaussian import GaussianDenoiser, ProcessGaussian

    return GaussianDenoiser(d.alphas_cumprod, "eps", mu, s0) if not d.continuous else ProcessGaussian(d, mu, s0)


@pytest.mark.parametrize("name", PROCESSES.names())
def test_through_the_diffusion_and_its_objective(name):
    """The same closed form through a model and the Diffusion's own (eps, x0) conversion (each process's
    native objective): isotropic Gaussian data N(0.4, 0.3^2 I), the exact trace."""
    from bench.diffusion import Diffusion
    from bench.diffusion.likelihood_ode import ode_bits_per_dim

    d = Diffusion("linear", 1000, objective=NATIVE[name], process=name)
    mu, s0 = 0.4, 0.3
    x0 = mu + s0 * torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    r = ode_bits_per_dim(d, _gaussian_model(d, mu, s0), x0.float(), exact=True, rtol=1e-6, atol=1e-6,
                         dequantize_8bit=False)
    p = d.process

    def marginal(t):
        t = torch.tensor(float(t), dtype=torch.float64)
        a, s = float(p.alpha(t)), float(p.sigma(t))
        return a, (a * a * s0**2 + s * s) ** 0.5

    (a0, c0), (a1, c1) = marginal(p.t_min), marginal(p.t_max)
    x_top = a1 * mu + (x0 - a0 * mu) * c1 / c0
    normal = torch.distributions.Normal
    logp = (normal(a0 * mu, c0).log_prob(x0) + normal(0.0, (a1**2 + (c1**2 - a1**2 * s0**2)) ** 0.5).log_prob(x_top)
            - normal(a1 * mu, c1).log_prob(x_top)).flatten(1).sum(1)
    assert torch.allclose(r.bpd, -logp / (4 * math.log(2)), atol=2e-4), (r.bpd, -logp / (4 * math.log(2)))


def test_the_nll_metric_of_a_continuous_process_is_the_odes_and_vp_has_both():
    """``nll`` on rectified flow is the ODE's NLL of the dequantized test images (no bound exists): for the exact
    N(0, 0.3^2) model, -log2 N(y; 0, 0.3^2) per dim + 7 of y = (k + u) / 128 - 1; a VP model reports its bound
    as ``nll_bpd`` and the ODE's NLL as ``nll_ode_bpd`` beside it."""
    from bench.diffusion import Diffusion
    from bench.metrics import METRICS
    from bench.metrics.nll import ModelContext

    images = torch.randint(80, 176, (6, 1, 2, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    y = dequantize(images, torch.Generator().manual_seed(0)).double()  # the metric's first draws from seed 0
    closed = float((-torch.distributions.Normal(0.0, 0.3).log_prob(y).flatten(1).sum(1) / (4 * math.log(2)) + 7).mean())
    for name in ("rectified-flow", "vp"):
        d = Diffusion("linear", 50, objective=NATIVE[name], process=name)
        ctx = ModelContext(d, _gaussian_model(d, 0.0, 0.3), None, images, None, "cpu", seed=0)
        nll = METRICS.get("nll").compute(ctx)
        ode = METRICS.get("nll_ode").compute(ctx)
        assert set(ode) == {"nll_ode_bpd", "nll_ode_bpd_se"} and all(math.isfinite(v) for v in ode.values())
        if name == "vp":  # the bound of a 50-step chain and the ODE's likelihood: two quantities, side by side
            assert math.isfinite(nll["nll_bpd"]) and abs(nll["nll_bpd"] - ode["nll_ode_bpd"]) > 0.1
        else:
            assert nll["nll_bpd"] == ode["nll_ode_bpd"] == pytest.approx(closed, abs=2e-3)
