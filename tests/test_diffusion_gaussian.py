"""First principles: with the exact denoiser of Gaussian data, every sampler reproduces the data."""

import math

import pytest
import torch
from gaussian import GaussianDenoiser

from bench.diffusion import OBJECTIVES, SCHEDULES, Diffusion

MU, S0 = 0.4, 0.3
N = 1000  # images of 1x4x4: 16,000 values, so the mean is known to ~0.003, the std to ~0.6%

# (sampler, steps, eta, spacing, std tolerance). Each sampler has a discretisation error that
# shrinks with steps (DDIM and DDPM first order, DPM-Solver++ second order); the step counts here
# make it small, the tests below check the error itself.
RUNS = [
    ("ddpm", 1000, 1.0, "leading", 0.03),
    ("ddpm", 250, 1.0, "linspace", 0.06),  # respaced chain (Nichol & Dhariwal)
    ("ddim", 250, 0.0, "linspace", 0.03),
    ("ddim", 250, 0.5, "linspace", 0.03),
    ("ddim", 250, 1.0, "linspace", 0.06),
    ("dpm-solver++", 100, 0.0, "linspace", 0.04),
]


@pytest.mark.parametrize("schedule", SCHEDULES.names())
@pytest.mark.parametrize("objective", OBJECTIVES.names())
@pytest.mark.parametrize("sampler,steps,eta,spacing,std_rtol", RUNS)
def test_exact_denoiser_reproduces_gaussian(schedule, objective, sampler, steps, eta, spacing, std_rtol):
    d = Diffusion(schedule, 1000, objective=objective)
    model = GaussianDenoiser(d.alphas_cumprod, objective, MU, S0)
    x = d.sample(model, (N, 1, 4, 4), sampler=sampler, steps=steps, eta=eta, spacing=spacing,
                 generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    assert abs(x.mean().item() - MU) < 0.015
    assert abs(x.std().item() / S0 - 1) < std_rtol


def _std_error(d, sampler, steps):
    """Deterministic samplers are affine maps of x_T here, so std(x_0) / std(x_T) is the map's exact
    gain (no sampling noise); the true flow maps N(0, 1) to N(MU, S0^2), a gain of S0."""
    model = GaussianDenoiser(d.alphas_cumprod, "eps", MU, S0)
    x_T = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = d.sample(model, x_T.shape, sampler=sampler, steps=steps, spacing="linspace", x_T=x_T)
    return abs((x.std() / x_T.std()).item() / S0 - 1)


def test_dpm_solver_is_second_order_and_ddim_first_order():
    """Going from 100 to 250 steps (x2.5) divides a first-order error by ~2.5, a second-order by ~6."""
    d = Diffusion("linear", 1000)
    ddim_ratio = _std_error(d, "ddim", 100) / _std_error(d, "ddim", 250)
    dpm_ratio = _std_error(d, "dpm-solver++", 100) / _std_error(d, "dpm-solver++", 250)
    assert 1.8 < ddim_ratio < 3.5
    assert dpm_ratio > 4.0


def test_ddim_matches_its_closed_form_map_on_gaussian_data():
    """Deterministic DDIM is an affine map of x_T for Gaussian data; propagate mean and variance by
    hand through x' = sqrt(abar') x0_hat + sqrt(1 - abar') eps_hat (Song et al. eq. 12)."""
    d = Diffusion("cosine", 1000)
    model = GaussianDenoiser(d.alphas_cumprod, "eps", MU, S0)
    steps = 20
    ab = d.alphas_cumprod[torch.arange(steps) * (1000 // steps)].tolist()  # leading spacing
    mean, var = 0.0, 1.0
    for i in reversed(range(steps)):
        a, s = ab[i] ** 0.5, (1 - ab[i]) ** 0.5
        a_p, s_p = (ab[i - 1] ** 0.5, (1 - ab[i - 1]) ** 0.5) if i > 0 else (1.0, 0.0)
        k = a * S0**2 / (a * a * S0**2 + s * s)  # x0_hat = MU + k (x - a MU)
        gain = a_p * k + s_p * (1 - a * k) / s
        mean = gain * mean + (a_p - s_p * a / s) * (MU - k * a * MU)
        var = gain * gain * var
    x = d.sample(model, (N, 1, 4, 4), sampler="ddim", steps=steps, generator=torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - mean) < 0.01
    assert abs(x.std().item() / var**0.5 - 1) < 0.01
    assert var**0.5 < 0.95 * S0  # at 20 steps the map really is off the data: the check has teeth


def test_untrained_denoiser_does_not_reproduce_gaussian():
    """The check above can fail: a model that predicts eps = 0 does not give N(mu, s0^2)."""
    d = Diffusion("linear", 1000)
    x = d.sample(lambda x, t, y: torch.zeros_like(x), (N, 1, 4, 4), sampler="ddim", steps=50,
                 generator=torch.Generator().manual_seed(0))
    assert abs(x.std().item() / S0 - 1) > 0.5


def test_ddim_eta1_full_steps_equals_ddpm_fixed_small():
    """DDIM with eta = 1 and S = T has DDPM's per-step mean and variance (Song et al., eq. 16)."""
    d = Diffusion("linear", 200, variance="fixed_small")
    model = GaussianDenoiser(d.alphas_cumprod, "eps", MU, S0)
    seeds = list(range(16))
    a = d.sample(model, (16, 1, 4, 4), sampler="ddpm", steps=200, seeds=seeds)
    b = d.sample(model, (16, 1, 4, 4), sampler="ddim", steps=200, eta=1.0, seeds=seeds)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    c = d.sample(model, (16, 1, 4, 4), sampler="ddim", steps=200, eta=0.0, seeds=seeds)
    assert (a - c).abs().max() > 1e-2  # eta matters


def test_learned_range_endpoints_are_the_fixed_variances():
    """v = -1 gives beta-tilde (fixed_small), v = +1 gives beta (fixed_large) (Nichol & Dhariwal eq. 15)."""
    seeds = list(range(8))
    for v, fixed in [(-1.0, "fixed_small"), (1.0, "fixed_large")]:
        learned = Diffusion("cosine", 100, variance="learned_range", loss="hybrid")
        ref = Diffusion("cosine", 100, variance=fixed)
        m_l = GaussianDenoiser(learned.alphas_cumprod, "eps", MU, S0, learned_v=v)
        m_f = GaussianDenoiser(ref.alphas_cumprod, "eps", MU, S0)
        for steps in (100, 25):
            a = learned.sample(m_l, (8, 1, 4, 4), sampler="ddpm", steps=steps, seeds=seeds)
            b = ref.sample(m_f, (8, 1, 4, 4), sampler="ddpm", steps=steps, seeds=seeds)
            torch.testing.assert_close(a, b)


def test_point_mass_bits_per_dim_is_prior_plus_decoder():
    """For data that is one point c, the exact denoiser predicts x0 = c, so every KL term with
    t > 0 vanishes and the bound is prior KL + decoder NLL, both computable by hand."""
    T = 50
    d = Diffusion("linear", T)
    c = torch.full((3, 1, 2, 2), -1.0 + 2 * 170 / 255)  # an 8-bit value, not at the edges
    model = GaussianDenoiser(d.alphas_cumprod, "eps", c[0, 0, 0, 0].item(), 0.0)
    vb = d.vlb_terms(model, c, generator=torch.Generator().manual_seed(0))
    assert vb["terms"][:, 1:].abs().max() < 1e-5

    abar = d.alphas_cumprod
    a_T, var_T = abar[-1].sqrt().item(), 1 - abar[-1].item()
    cval = c[0, 0, 0, 0].item()
    prior_nats = 0.5 * (-1 - math.log(var_T) + var_T + (a_T * cval) ** 2)
    # decoder: N(c, sigma^2) mass of the bin [c - 1/255, c + 1/255]; sigma^2 = beta-tilde_1 (clipped)
    beta_tilde_1 = d.schedule.betas[1].item() * (1 - abar[0].item()) / (1 - abar[1].item())
    mass = math.erf((1 / 255) / math.sqrt(2 * beta_tilde_1))
    decoder_nats = -math.log(mass)
    expected = (prior_nats + decoder_nats) / math.log(2)
    bpd = d.bits_per_dim(model, c, generator=torch.Generator().manual_seed(0))
    assert bpd.shape == (3,)
    torch.testing.assert_close(bpd, torch.full((3,), expected, dtype=torch.float64), rtol=1e-4, atol=1e-5)


def test_untrained_model_scores_more_bits_than_exact():
    T = 50
    d = Diffusion("cosine", T)
    g = torch.Generator().manual_seed(1)
    x0 = (MU + S0 * torch.randn(16, 1, 4, 4, generator=g)).clamp(-1, 1)
    x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1  # 8-bit data
    exact = GaussianDenoiser(d.alphas_cumprod, "eps", MU, S0)
    untrained = torch.nn.Conv2d(1, 1, 3, padding=1)
    bpd_exact = d.bits_per_dim(exact, x0, generator=torch.Generator().manual_seed(0))
    bpd_bad = d.bits_per_dim(lambda x, t, y: untrained(x), x0, generator=torch.Generator().manual_seed(0))
    assert bpd_exact.mean() + 0.5 < bpd_bad.mean()
