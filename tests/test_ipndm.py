"""iPNDM against a transcription of the reference code (Zhou et al. 2024, github zju-pi/diff-sampler,
``diff-solvers-main/solvers.py``: ``ipndm_sampler`` and ``ipndm_v_sampler``) on the same levels and
network, and its NFE accounting (issue 29)."""

import math

import pytest
import torch

from bench.diffusion import Diffusion
from bench.diffusion.samplers import sampler_nfe, steps_for_nfe
from bench.diffusion.samplers.ipndm import AB, ab_weights
from bench.diffusion.spacing import make_levels


def zhou_v_coeffs(t_steps, i, order):
    """The weights of ``ipndm_v_sampler``'s step i (from t_steps[i] to t_steps[i + 1]), newest first,
    transcribed line by line."""
    t_cur, t_next = t_steps[i], t_steps[i + 1]
    if order == 1:
        return [1.0]
    if order == 2:
        h_n = (t_next - t_cur)
        h_n_1 = (t_cur - t_steps[i - 1])
        coeff1 = (2 + (h_n / h_n_1)) / 2
        coeff2 = -(h_n / h_n_1) / 2
        return [coeff1, coeff2]
    if order == 3:
        h_n = (t_next - t_cur)
        h_n_1 = (t_cur - t_steps[i - 1])
        h_n_2 = (t_steps[i - 1] - t_steps[i - 2])
        temp = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
        coeff1 = (2 + (h_n / h_n_1)) / 2 + temp
        coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp
        coeff3 = temp * h_n_1 / h_n_2
        return [coeff1, coeff2, coeff3]
    h_n = (t_next - t_cur)
    h_n_1 = (t_cur - t_steps[i - 1])
    h_n_2 = (t_steps[i - 1] - t_steps[i - 2])
    h_n_3 = (t_steps[i - 2] - t_steps[i - 3])
    temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
    temp2 = ((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (
        6 * (h_n + h_n_1 + h_n_2))) * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (
        h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
    coeff1 = (2 + (h_n / h_n_1)) / 2 + temp1 + temp2
    coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (
        1 + (h_n_1 / h_n_2) + (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3)))) * temp2
    coeff3 = temp1 * h_n_1 / h_n_2 + ((h_n_1 / h_n_2) + (h_n_1 * (h_n_1 + h_n_2) / (
        h_n_2 * (h_n_2 + h_n_3))) * (1 + h_n_2 / h_n_3)) * temp2
    coeff4 = -temp2 * (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))) * h_n_1 / h_n_2
    return [coeff1, coeff2, coeff3, coeff4]


def lagrange_coeffs(t_steps, i, order):
    """The variable-step Adams-Bashforth weights of step i (ours), in ``zhou_v_coeffs``'s place."""
    return ab_weights([t_steps[i - k] for k in range(order)], t_steps[i + 1])


def zhou_ipndm(net, x, t_steps, max_order=4, variable=False, denoise_to_zero=False, coeffs=zhou_v_coeffs):
    """The main loop of ``ipndm_sampler`` (``variable``: ``ipndm_v_sampler``, its weights from
    ``coeffs``), transcribed line by line (x = latents * t_steps[0] done by the caller; afs off).
    ``net(x, sigma)`` is D(x; sigma)."""
    buffer_model = []
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x
        denoised = net(x_cur, t_cur)
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i + 1)
        if variable:
            c = coeffs(t_steps, i, order)
            x = x_cur + (t_next - t_cur) * sum(cj * dj for cj, dj in zip(c, [d_cur, *buffer_model[::-1]]))
        elif order == 1:
            x = x_cur + (t_next - t_cur) * d_cur
        elif order == 2:
            x = x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
        elif order == 3:
            x = x_cur + (t_next - t_cur) * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2]) / 12
        else:
            x = x_cur + (t_next - t_cur) * (55 * d_cur - 59 * buffer_model[-1] + 37 * buffer_model[-2]
                                            - 9 * buffer_model[-3]) / 24
        if max_order == 1:  # the reference's next line fails on its empty buffer here (IndexError); unread
            continue
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            buffer_model[-1] = d_cur
        else:
            buffer_model.append(d_cur)
    if denoise_to_zero:
        x = net(x, t_next)
    return x


class ToyEps(torch.nn.Module):
    """A smooth nonlinear eps-network of (x_t, t), near eps = x_t (a denoiser of data near 0, so the
    trajectories stay bounded); no closed-form ODE, so only the update is tested."""

    def forward(self, x, t, y=None):
        tt = t.double().view(-1, 1, 1, 1) / 1000
        return 0.8 * x + 0.3 * torch.tanh(2 * x) * (0.5 + tt) + 0.1 * torch.sin(3 * x + 5 * tt) * x.flip(-1)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("variable", [False, True])
@pytest.mark.parametrize("denoise_to_zero", [False, True])
def test_update_equals_the_reference_on_the_same_levels(order, variable, denoise_to_zero):
    """Our sampler on karras levels of a VP model = the transcription on t_steps = the chain's sigmas,
    fed D(x; sigma_i) from the same network at the same time input (rtol 1e-5): ``denoise_to_zero``
    is the reference's option of that name; without it the reference's default (stop at sigma_min).
    ``variable`` at orders 3 and 4: the reference's loop with the Adams-Bashforth weights in place
    of its own, which are not those (next test)."""
    d, net, steps = Diffusion("linear", 1000), ToyEps(), 8
    t, abar = make_levels("karras", d.alphas_cumprod, steps)
    sig = ((1 - abar) / abar).sqrt().tolist()[::-1]  # decreasing, the reference's t_steps
    t_of = dict(zip(sig, t.tolist()[::-1]))
    x_T = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def D(x, s):  # the Denoiser's ve(): the VP input x / sqrt(1 + s^2) at the level's float32 time; x0 = x - s eps
        return x - s * net(x / math.sqrt(1 + s * s), torch.full((len(x),), t_of[s], dtype=torch.float32))

    coeffs = lagrange_coeffs if order > 2 else zhou_v_coeffs
    ref = zhou_ipndm(D, x_T * math.sqrt(1 + sig[0] ** 2), sig, order, variable, denoise_to_zero, coeffs)
    info: dict = {}
    opts = {"order": order, "variable": variable, "denoise_to_zero": denoise_to_zero}
    ours = d.sample(net, x_T.shape, sampler="ipndm", steps=steps, spacing="karras", x_T=x_T, options=opts, info=info)
    assert info["nfe"] == (steps if denoise_to_zero else steps - 1) == sampler_nfe("ipndm", steps, opts)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    if not variable:  # the fixed weights do not see the step sizes: different from the variable ones here
        other = zhou_ipndm(D, x_T * math.sqrt(1 + sig[0] ** 2), sig, order, True, denoise_to_zero, lagrange_coeffs)
        assert order == 1 or (ours - other).abs().max() > 1e-3


def test_reference_variable_weights_of_order_3_and_4_are_not_adams_bashforth():
    """Zhou et al.'s ``ipndm_v_sampler``: order 2 is the variable-step AB2; order 3 reads
    ``(1 - A * B) / 2`` where the AB3 weight is ``(1 - A) * B / 2`` (the same where B = 1, equal steps),
    and order 4's third-difference weight is 11/24 on equal steps where AB4's is 3/8: neither
    integrates a quadratic exactly on karras-like steps, which our weights do."""
    ts = [80.0, 20.0, 4.0, 1.1, 0.3, 0.01]
    eq = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0]
    assert zhou_v_coeffs(ts, 4, 2) == pytest.approx(lagrange_coeffs(ts, 4, 2), rel=1e-12)
    assert zhou_v_coeffs(eq, 4, 3) == pytest.approx(AB[3], rel=1e-12)
    assert zhou_v_coeffs(eq, 4, 4) != pytest.approx(AB[4], rel=1e-2)
    h = ts[5] - ts[4]
    exact = (ts[5] ** 3 - ts[4] ** 3) / 3  # int of s^2 over the last step
    for order in (3, 4):
        nodes = [ts[4 - k] for k in range(order)]
        ours = h * sum(w * s**2 for w, s in zip(lagrange_coeffs(ts, 4, order), nodes))
        published = h * sum(w * s**2 for w, s in zip(zhou_v_coeffs(ts, 4, order), nodes))
        assert ours == pytest.approx(exact, rel=1e-9)
        assert abs(published - exact) > 10 * abs(exact)


def test_variable_weights_are_the_fixed_ones_on_equal_steps_and_exact_on_polynomials():
    """ab_weights on equal steps = the fixed AB weights; on uneven steps they integrate every
    polynomial of degree < history length exactly (the defining property of Adams-Bashforth)."""
    for k in (1, 2, 3, 4):
        assert ab_weights([5.0 + j for j in range(k)], 4.0) == pytest.approx(AB[k], rel=1e-12)
    nodes, s_next = [0.3, 1.1, 4.0, 20.0], 0.01  # karras-like: each step 3-15x the next
    h = s_next - nodes[0]
    for p in range(4):
        w = ab_weights(nodes, s_next)
        exact = (s_next ** (p + 1) - nodes[0] ** (p + 1)) / (p + 1)
        assert h * sum(wj * s**p for wj, s in zip(w, nodes)) == pytest.approx(exact, rel=1e-10)
        # the fixed weights do not: they read the same derivatives as if the steps were equal
    assert h * sum(wj * s for wj, s in zip(AB[4], nodes)) != pytest.approx((s_next**2 - nodes[0] ** 2) / 2, rel=0.1)


def test_stop_at_sigma_min_buys_one_level_for_the_same_nfe():
    """A ``sample.nfe`` budget on ``denoise_to_zero: false`` gives one level more, no call at sigma_min."""
    for nfe in (1, 5, 10):
        assert steps_for_nfe("ipndm", nfe, "karras", 1000, {}) == nfe
        assert steps_for_nfe("ipndm", nfe, "karras", 1000, {"denoise_to_zero": False}) == (nfe + 1 if nfe > 1 else 1)


@pytest.mark.parametrize("order", [3, 4])
def test_variable_weights_keep_their_order_on_karras_levels(order):
    """With the variable-step weights the observed order on karras levels is the history length
    (the fixed weights give about 2 whatever the history: test_samplers' convergence test)."""
    from gaussian import GaussianDenoiser
    from test_samplers import MU, S0, _exact

    d = Diffusion("linear", 1000)
    model = GaussianDenoiser(d.alphas_cumprod, "eps", MU, S0)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errs = []
    for steps in (40, 80, 160):
        x = d.sample(model, x_T.shape, sampler="ipndm", steps=steps, spacing="karras", x_T=x_T,
                     options={"order": order, "variable": True})
        errs.append((x - _exact(d, "karras", steps, x_T)).abs().max().item())
    slope = math.log(errs[0] / errs[-1]) / math.log(4)
    assert order - 0.4 < slope < order + 0.6, (order, slope, errs)


class MixtureEps(torch.nn.Module):
    """The exact eps of data x0 ~ (1/K) sum_k N(mu_k, s0^2 I) (K modes in D pixels): the posterior over
    modes sharpens from uniform to one-hot as sigma falls through the modes' spacing, so the ODE's
    derivative d = eps-hat turns abruptly between a few karras levels (a single Gaussian's does not)."""

    def __init__(self, alphas_cumprod: torch.Tensor, mus: torch.Tensor, s0: float) -> None:
        super().__init__()
        self.log_s = 0.5 * torch.log((1 - alphas_cumprod.double()) / alphas_cumprod.double())
        self.mus, self.s0 = mus, s0

    def forward(self, x, t, y=None):
        t = t.cpu().double()
        lo = t.floor().long().clamp(0, len(self.log_s) - 2)
        log_sig = (1 - (t - lo)) * self.log_s[lo] + (t - lo) * self.log_s[lo + 1]  # as the levels' t stands for
        abar = (1 / (1 + torch.exp(2 * log_sig))).view(-1, 1)
        xf, a, s = x.double().flatten(1), abar.sqrt(), (1 - abar).sqrt()
        var = a**2 * self.s0**2 + s**2
        dist = ((xf[:, None] - a[:, None] * self.mus[None]) ** 2).sum(-1)
        post = torch.softmax(-dist / (2 * var), -1)
        x0 = (post[..., None] * (self.mus[None] + (a * self.s0**2 / var)[:, None] * (xf[:, None] - a[:, None] * self.mus[None]))).sum(1)
        return ((xf - a * x0) / s).view_as(x).to(x.dtype)


def test_fixed_weights_fail_at_low_nfe_where_the_derivative_turns_between_levels():
    """The regime of issue 29, with exact denoisers (no network error). On a 10-mode mixture at NFE 5
    on karras levels (each step 3-10x the next), the fixed weights extrapolate the turn of d over a
    step as if the previous, much longer step had the same length: iPNDM's error is twice Euler's,
    while the variable-step weights (which shrink the history's weight with the step ratio) beat
    Euler. On a single Gaussian the same fixed weights beat Euler: the failure needs the turn."""
    d = Diffusion("linear", 1000)
    mus = torch.randn(10, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64).clamp(-1, 1)
    net = MixtureEps(d.alphas_cumprod, mus, 0.1)
    x_T = torch.randn(32, 1, 1, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def err(sampler, opts, x_ref, model):
        steps = steps_for_nfe(sampler, 5, "karras", 1000, opts)
        x = d.sample(model, x_T.shape, sampler=sampler, steps=steps, spacing="karras", x_T=x_T, options=opts)
        return (x - x_ref).flatten(1).norm(dim=1).mean().item()

    ref = d.sample(net, x_T.shape, sampler="ipndm", steps=200, spacing="karras", x_T=x_T, options={"variable": True})
    euler, fixed, variable = err("euler", {}, ref, net), err("ipndm", {}, ref, net), err("ipndm", {"variable": True}, ref, net)
    assert fixed > 1.5 * euler and variable < euler, (euler, fixed, variable)

    from gaussian import GaussianDenoiser

    gauss = GaussianDenoiser(d.alphas_cumprod, "eps", 0.0, 0.3)
    ref = d.sample(gauss, x_T.shape, sampler="ipndm", steps=200, spacing="karras", x_T=x_T, options={"variable": True})
    assert err("ipndm", {}, ref, gauss) < 0.5 * err("euler", {}, ref, gauss)
