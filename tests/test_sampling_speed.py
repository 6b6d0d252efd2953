"""The speed settings of sampling: guided batching (one 2B call or two B calls), sample.precision,
sample.compile, the GPU benchmark's bookkeeping, the sampler loop's per-level precomputation, and
the CPU allocator's thresholds."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time

import pytest
import torch

from bench.core.errors import BenchError
from bench.diffusion import Diffusion
from bench.diffusion.batching import _MEASURED, faster_is_split, split_guided
from bench.models import build_model


def _tiny_unet(num_classes: int | None = 10) -> torch.nn.Module:
    """unet-tiny with every weight perturbed: its zero-initialised output layer would make every
    prediction 0, and every comparison below trivially equal."""
    torch.manual_seed(0)
    net = build_model("unet-tiny", 1, 8, num_classes=num_classes).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


# --- guided batching -----------------------------------------------------------------------------
def test_faster_is_split_picks_the_faster_of_the_two_ways():
    def slow():
        time.sleep(0.03)

    def fast():
        time.sleep(0.001)

    cpu = torch.device("cpu")
    assert faster_is_split(joint=slow, split=fast, device=cpu) is True
    assert faster_is_split(joint=fast, split=slow, device=cpu) is False


def test_split_guided_measures_once_per_device_model_and_shape():
    mode = "measure"
    calls = {"joint": 0, "split": 0}

    def way(name, slow):
        def run():
            calls[name] += 1
            time.sleep(0.02 if slow else 0.002)
        return run

    net, cpu = _tiny_unet(), torch.device("cpu")
    assert split_guided("joint", net, cpu, (4, 1, 8, 8), torch.float32, way("joint", 1), way("split", 0)) is False
    assert split_guided("split", net, cpu, (4, 1, 8, 8), torch.float32, way("joint", 0), way("split", 1)) is True
    # auto is a fixed rule, the joint call, whichever way is faster: the same config stores the same choice
    assert split_guided("auto", net, cpu, (4, 1, 8, 8), torch.float32, way("joint", 1), way("split", 0)) is False
    assert calls == {"joint": 0, "split": 0}  # a fixed mode times nothing
    _MEASURED.clear()
    assert split_guided(mode, net, cpu, (4, 1, 8, 8), torch.float32, way("joint", 0), way("split", 1)) is False
    after_first = dict(calls)
    assert after_first["joint"] == after_first["split"] == 4  # a warm-up and three interleaved rounds
    assert split_guided(mode, _tiny_unet(), cpu, (4, 1, 8, 8), torch.float32, way("joint", 1), way("split", 0)) is False
    assert calls == after_first  # an equal architecture reuses the measurement
    assert split_guided(mode, net, cpu, (8, 1, 8, 8), torch.float32, way("joint", 1), way("split", 0)) is True
    assert calls["joint"] == 8  # a new shape is measured again, and here two B calls were faster
    _MEASURED.clear()


def test_measured_batching_samples_like_the_fixed_ways_and_counts_the_same_nfe():
    net = _tiny_unet()
    d = Diffusion("linear", 100)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    out, infos = {}, {}
    _MEASURED.clear()
    for mode in ("measure", "joint", "split"):
        infos[mode] = {}
        out[mode] = d.sample(net, x_T.shape, steps=4, guidance=1.5, y=y, x_T=x_T, guidance_batch=mode, info=infos[mode])
    _MEASURED.clear()
    assert infos["measure"]["guidance_batch"] in ("joint", "split")
    assert {i["nfe"] for i in infos.values()} == {4} and {i["guided_calls"] for i in infos.values()} == {4}
    torch.testing.assert_close(out["joint"], out["split"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["measure"], out["joint"], rtol=1e-4, atol=1e-4)


def test_apg_momentum_is_not_advanced_by_the_batching_measurement():
    """The measurement runs on a copy of the method's state: APG's running average sees the
    chain's calls only, so measured and fixed batching give the same images."""
    net = _tiny_unet()
    d = Diffusion("linear", 100)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    kw = dict(steps=4, guidance=2.0, y=torch.tensor([0, 1, 2, 3]), x_T=x_T, guidance_method="apg",
              guidance_options={"momentum": -0.5})
    _MEASURED.clear()
    measured = d.sample(net, x_T.shape, guidance_batch="measure", **kw)
    _MEASURED.clear()
    torch.testing.assert_close(measured, d.sample(net, x_T.shape, guidance_batch="joint", **kw), rtol=1e-4, atol=1e-4)


def test_unknown_guidance_batch_is_refused():
    with pytest.raises(BenchError, match="guidance_batch = 'both' is not one of auto, measure, joint, split"):
        Diffusion("linear", 100).sample(_tiny_unet(), (2, 1, 8, 8), steps=2, guidance=1.0, y=torch.tensor([0, 1]),
                                        guidance_batch="both")


# --- the sampler loop ----------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_precomputed_coefficients_equal_the_chain_formulas(sampler):
    """DDIM's and DDPM's per-level python-float coefficients reproduce the update written with the
    chain's tensors (Song et al. eq. 12; Ho et al. eq. 7 with the fixed variance), step by step."""
    d = Diffusion("cosine", 100)
    net = _tiny_unet(None)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    eta = 0.7
    got = d.sample(net, x_T.shape, sampler=sampler, steps=6, eta=eta, x_T=x_T,
                   generator=torch.Generator().manual_seed(9), clip_denoised=False)
    from bench.diffusion.chain import Chain
    from bench.diffusion.spacing import make_levels

    t, abar = make_levels("leading", d.alphas_cumprod, 6)
    chain = Chain.from_levels(t, abar)
    gen = torch.Generator().manual_seed(9)
    x = x_T.clone()
    for i in range(len(chain) - 1, -1, -1):
        tt = torch.full((3,), int(chain.t[i]))
        eps = net(x, tt, None)
        a, s = chain.abar[i].sqrt(), (1 - chain.abar[i]).sqrt()
        x0 = (x - s * eps) / a
        if sampler == "ddim":
            ab, ab_prev = chain.abar[i], chain.abar_prev[i]
            sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp_min(0).sqrt() * eps
            if sigma > 0 and i > 0:
                x = x + sigma * torch.randn(x.shape, generator=gen, dtype=torch.float32)
        else:
            mean = chain.coef_x0[i] * x0 + chain.coef_xt[i] * x
            x = mean + chain.posterior_log_variance[i].mul(0.5).exp() * torch.randn(
                x.shape, generator=gen, dtype=torch.float32) if i > 0 else mean
    torch.testing.assert_close(got, x, rtol=1e-6, atol=1e-6)


# --- precision and compilation -------------------------------------------------------------------
def _config(**sample):
    from bench.core.config import from_dict

    return from_dict({"data": {"dataset": "digits"}, "model": {"class_cond": True},
                      "sample": {"steps": 3, "batch_size": 8, **sample}, "eval": {"num_samples": 8}})


def test_bf16_sampling_agrees_with_float32_within_bf16_tolerance():
    """sample.precision: bf16 runs the network under bf16 autocast (here the CPU's): the images
    differ from float32's, by at most what bf16's 8-bit mantissa allows."""
    from bench.jobs.eval import generate, sampling_precision

    net = _tiny_unet()
    d = Diffusion("cosine", 100)
    fp32, _, _, _ = generate(_config(), net, d, None, "cpu", progress=False)
    bf16, _, _, _ = generate(_config(precision="bf16"), net, d, None, "cpu", progress=False)
    diff = (fp32.int() - bf16.int()).abs()
    assert diff.float().mean() > 0  # autocast ran: bf16 changed something
    assert diff.max() <= 8  # of 255 levels: bf16's relative precision 2^-8 through three steps
    assert diff.float().mean() < 1.0
    assert sampling_precision(_config(precision="bf16"), "cpu") == "bf16"
    assert sampling_precision(_config(), "cpu") == "fp32"  # auto on a CPU


def test_compiled_sampling_gives_the_eager_images(monkeypatch):
    """sample.compile: true samples through torch.compile (dynamo's eager backend here: the same
    graph capture without code generation, seconds instead of a minute on 2 cores)."""
    from bench.jobs.eval import generate, sampling_tags

    monkeypatch.setenv("BENCH_COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    net = _tiny_unet()
    d = Diffusion("cosine", 100)
    eager, _, _, calls = generate(_config(), net, d, None, "cpu", progress=False)
    comp, _, _, comp_calls = generate(_config(compile=True), net, d, None, "cpu", progress=False)
    assert torch.equal(eager, comp) and calls == comp_calls
    assert sampling_tags(_config(compile=True), "cpu")["protocol.sample_compile"] == "eager"
    assert sampling_tags(_config(), "cpu")["protocol.sample_compile"] == "none"


def test_speed_settings_are_in_the_sample_key_only_when_set():
    base = _config()
    assert _config(precision="auto").sample_key() == base.sample_key()  # defaults leave keys unchanged
    keys = {base.sample_key(), _config(precision="bf16").sample_key(), _config(compile=True).sample_key(),
            _config(guidance_batch="split").sample_key()}
    assert len(keys) == 4


@pytest.mark.parametrize("key, value, message", [
    ("precision", "fp16", "unknown sample.precision 'fp16'"),
    ("guidance_batch", "both", "unknown sample.guidance_batch 'both'"),
    ("compile", "yes", "sample.compile"),
])
def test_bad_speed_settings_are_refused_before_work(key, value, message):
    from tiny import tiny_study

    from bench.study import build_study

    with pytest.raises(BenchError, match=message):
        build_study(tiny_study("speed", sample={key: value}))


# --- the GPU benchmark, on the CPU -----------------------------------------------------------------
def test_forward_flops_counts_a_convolution_by_hand():
    from bench.perf.gpu import forward_flops

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=False)

        def forward(self, x, t, y):
            return self.conv(x)

    assert forward_flops(Conv(), (2, 3, 8, 8), "cpu") == 2 * 2 * 5 * 3 * 3 * 3 * 8 * 8  # 2 x MACs


def test_gpu_benchmark_quick_run_on_cpu(capsys):
    from bench.perf.__main__ import main
    from bench.perf.gpu import QUICK, VARIANTS

    assert main(["gpu", "--device", "cpu", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP per image per forward" in out and "matmul peak fp32" in out
    rows = [line for line in out.splitlines() if line.startswith("| unet-micro") or line.startswith("| Inception")]
    assert len(rows) == len(QUICK.batches) * len(VARIANTS) + 1
    assert sum("CUDA only" in r for r in rows) == len(QUICK.batches)  # CUDA graphs need a GPU
    measured = [r for r in rows if "CUDA only" not in r]
    for r in measured:
        rate, roofline = (float(c) for c in r.split("|")[3:5])
        assert rate > 0 and 0 < roofline
    fid, projected = (next(line for line in out.splitlines() if line.startswith(p))
                      for p in ("| FID statistics", "| 50000-sample DDIM-2 evaluation"))
    assert float(fid.split("|")[3]) > 0 and float(projected.split("|")[3]) > 0 and "roofline" in projected
    with pytest.raises(SystemExit):
        main(["plan", "--quick"])  # only the GPU suite has a quick run


# --- the CPU allocator ---------------------------------------------------------------------------
_MMAPPED_BLOCKS = """
import ctypes, sys
from bench.core.allocator import tune_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
tuned = tune_allocator()
before = libc.mallinfo2().hblks
block = libc.malloc(4 << 20)  # an activation-sized buffer: 4 MiB
print(tuned, libc.mallinfo2().hblks - before)
libc.free(block)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="glibc >= 2.33 only (mallinfo2)")
@pytest.mark.parametrize("setting, expected", [("tuned", "True 0"), ("default", "False 1")])
def test_tuned_allocator_serves_activation_buffers_from_the_heap(setting, expected):
    """glibc maps a 4 MiB block with its own mmap (one more mmapped block, page faults on every
    use); after tune_allocator it comes from the heap. BENCH_MALLOC=default leaves glibc alone."""
    env = {**os.environ, "BENCH_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", _MMAPPED_BLOCKS], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert " ".join(out) == expected
