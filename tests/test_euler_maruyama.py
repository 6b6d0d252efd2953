"""SiT's Euler-Maruyama sampler (``euler-maruyama``): every diffusion-coefficient form keeps the data's
moments on Gaussian data (the SDE has the interpolant's marginals for any w >= 0), and w = 0 is the
probability-flow ODE's Euler step, which on rectified flow is DDIM's."""

import pytest
import torch
from gaussian import ProcessGaussian

from bench.diffusion import Diffusion
from bench.diffusion.samplers.euler_maruyama import FORMS

MU, S0 = 0.4, 0.3


@pytest.mark.parametrize("process", ["rectified-flow", "gvp"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_reaches_the_datas_moments(process, form):
    d = Diffusion(process=process, objective="velocity")
    x = d.sample(ProcessGaussian(d, MU, S0), (2000, 1, 2, 2), sampler="euler-maruyama", steps=200,
                 options={"diffusion": form, "norm": 1.0}, generator=torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - MU) < 0.01 and abs(x.std().item() / S0 - 1) < 0.04, (x.mean(), x.std())


def test_no_diffusion_is_the_ode_euler_step():
    """norm 0: x_{t'} = x_t + (t' - t) v, on rectified flow DDIM's step (1 - t') x0 + t' eps; no noise is drawn."""
    d = Diffusion(process="rectified-flow", objective="velocity")
    model = ProcessGaussian(d, MU, S0)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    em = d.sample(model, x_T.shape, sampler="euler-maruyama", steps=12, x_T=x_T.clone(), options={"norm": 0.0})
    ddim = d.sample(model, x_T.shape, sampler="ddim", steps=12, x_T=x_T.clone())
    torch.testing.assert_close(em, ddim)
    noisy = d.sample(model, x_T.shape, sampler="euler-maruyama", steps=12, x_T=x_T.clone(),
                     generator=torch.Generator().manual_seed(2))
    assert (noisy - ddim).abs().max() > 0.01  # the default (w = sigma) is stochastic
