"""The adaptive ``dopri5`` sampler: torchdiffeq's own odeint on the same network and noise, the exact
probability-flow map of Gaussian data within its tolerance, its counted NFE, and no ``sample.nfe``."""

import math

import pytest
import torch
import yaml
from gaussian import GaussianDenoiser, ProcessGaussian

from bench.core.errors import BenchError
from bench.diffusion import PROCESSES, Diffusion
from bench.diffusion.samplers import steps_for_nfe

MU, S0 = 0.4, 0.3


class FlowNet(torch.nn.Module):
    """A smooth nonlinear velocity field in (x, t): a stand-in for a trained flow model."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4, 4, generator=g) * 0.3)
        self.calls = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        return torch.tanh(x @ self.w) * (1 + t.view(-1, 1, 1, 1)) - 0.5 * x


def test_equals_torchdiffeq_odeint_on_the_same_network_and_noise():
    """rectified flow, velocity target: the sample is odeint(v, x_T, [1, 0], method='dopri5') (rtol = atol = 1e-4),
    and the NFE logged is the network's own call count."""
    from torchdiffeq import odeint

    net = FlowNet()
    d = Diffusion(process="rectified-flow", objective="velocity")
    x_T = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    info = {}
    out = d.sample(net, x_T.shape, sampler="dopri5", x_T=x_T, info=info, options={"rtol": 1e-4, "atol": 1e-4})
    assert info["nfe"] == net.calls > 6
    with torch.no_grad():
        ref = odeint(lambda t, x: net(x, t.expand(5)), x_T, torch.tensor([1.0, 0.0]), rtol=1e-4, atol=1e-4,
                     method="dopri5")[-1]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("process", PROCESSES.names())
def test_gaussian_data_reaches_its_moments(process):
    d = Diffusion(process=process, objective="eps" if process == "vp" else "velocity")
    model = GaussianDenoiser(d.alphas_cumprod, "eps", MU, S0) if process == "vp" else ProcessGaussian(d, MU, S0)
    x = d.sample(model, (2000, 1, 2, 2), sampler="dopri5", generator=torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - MU) < 0.01 and abs(x.std().item() / S0 - 1) < 0.04


def test_the_error_follows_the_tolerance():
    """On the VP chain the exact answer is the Gaussian flow from t = T - 1 to t = 0, then D at t = 0: the
    error falls with the tolerance, with more counted calls."""
    d = Diffusion("linear", 1000)
    model = GaussianDenoiser(d.alphas_cumprod, "eps", MU, S0)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    abar = d.alphas_cumprod.double()
    s_top, s_min = math.sqrt((1 - abar[-1]) / abar[-1]), math.sqrt((1 - abar[0]) / abar[0])
    x_min = MU + (x_T / abar[-1].sqrt() - MU) * math.sqrt(S0**2 + s_min**2) / math.sqrt(S0**2 + s_top**2)
    exact = MU + S0**2 / (S0**2 + s_min**2) * (x_min - MU)
    errs, nfes = [], []
    for tol in (1e-3, 1e-6, 1e-9):
        info = {}
        x = d.sample(model, x_T.shape, sampler="dopri5", x_T=x_T, info=info, options={"rtol": tol, "atol": tol})
        errs.append(float((x - exact).abs().max()))
        nfes.append(info["nfe"])
    # (the floor: the network sees its time as float32)
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-6 and nfes[0] < nfes[1] < nfes[2], (errs, nfes)


def test_a_budget_is_refused_before_work(tmp_path, capsys):
    from tiny import tiny_study

    from bench.cli import main

    with pytest.raises(BenchError, match="'dopri5' is adaptive"):
        steps_for_nfe("dopri5", 20, "leading", 100)
    study = tiny_study("dopri5-budget", sample={"sampler": "dopri5", "nfe": 20})
    path = tmp_path / "dopri5-budget.yaml"
    path.write_text(yaml.safe_dump(study))
    code = main(["plan", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err, err
    assert "sample.nfe" in err and "'dopri5' is adaptive" in err and "drop sample.nfe" in err
    study = tiny_study("dopri5-tol", sample={"sampler": "dopri5", "options": {"rtol": 0.0}})
    path.write_text(yaml.safe_dump(study))
    assert main(["plan", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "sample.options.rtol = 0.0 is outside" in capsys.readouterr().err
