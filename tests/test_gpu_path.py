"""The GPU path's bookkeeping, checked on the CPU: what each worker is given (threads, fp32 math),
where tensors live in the training and sampling steps, and what fp16's skipped steps do."""

from __future__ import annotations

import torch
from tiny import tiny_study


def _tf32_allowed() -> tuple[bool, bool]:
    """(cuDNN convolutions, cuBLAS matmuls) may run float32 in TF32, as the legacy flags and, from
    torch 2.9, the per-operator settings say."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    conv = getattr(cudnn, "conv", None)
    if hasattr(conv, "fp32_precision"):
        assert (conv.fp32_precision == "tf32") == cudnn.allow_tf32
        assert (matmul.fp32_precision == "tf32") == matmul.allow_tf32
    return cudnn.allow_tf32, matmul.allow_tf32


def test_every_job_computes_fp32_in_ieee_and_tags_it(monkeypatch):
    """A run tagged fp32 must not have run its convolutions in TF32 (cuDNN's default on Ampere and
    later): each job turns TF32 off before it starts, whatever the process had, and says so."""
    from bench.jobs import run_job
    from bench.study import build_study

    cfg = build_study(tiny_study("fp32", train_steps=2, eval={"num_samples": 4, "nll_samples": 2},
                                 sample={"steps": 2, "batch_size": 4})).configs[0]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # PyTorch's default (restored after)
    assert _tf32_allowed()[0]  # what a worker starts with
    train = run_job("train", cfg.to_dict(), cfg.train_key())
    assert _tf32_allowed() == (False, False) and not torch.backends.cudnn.allow_tf32  # the legacy flag agrees
    torch.backends.cudnn.allow_tf32 = True
    evaluated = run_job("eval", cfg.to_dict(), cfg.key())
    assert _tf32_allowed() == (False, False)
    assert train["tags"]["protocol.fp32"] == evaluated["tags"]["protocol.fp32"] == "ieee"


# --- python -m bench.perf gpu: its budget and its 50k projection ---------------------------------
def test_gpu_benchmark_skips_a_case_that_would_end_past_its_budget():
    import time

    from bench.perf.gpu import BUDGET_S, QUICK, VARIANTS, Budget

    fp32, bf16, compiled = VARIANTS[0], VARIANTS[1], VARIANTS[3]
    budget = Budget(QUICK, start=time.perf_counter() - BUDGET_S + 20, peak={"fp32": 1.0, "bf16": 4.0})  # 20 s left
    budget.record(fp32.name, 2, first=3.0, steady=1.0)
    # the same variant at twice the batch: its first call's extra 2 s, then 1 + rounds calls of 2 s
    assert budget.estimate(fp32, 4) == 2.0 + (1 + QUICK.rounds) * 2.0
    # nothing of its precision measured yet: the fp32 row's time, scaled by the matmul peaks
    assert budget.estimate(bf16, 4) == (1 + QUICK.rounds) * 2.0 / 4
    budget.record(bf16.name, 2, first=1.5, steady=1.5)
    # a first compilation: the allowance, then calls as fast as the eager row of its precision
    assert budget.estimate(compiled, 2) == QUICK.compile_allowance_s + (1 + QUICK.rounds) * 1.5
    assert budget.skip(5.0) is None
    assert budget.skip(60.0).startswith("skipped: needs ~60 s, 20 s left")


def test_fifty_thousand_sample_evaluation_is_projected_from_the_measured_rows():
    from bench.perf.gpu import EVAL_IMAGES, eval_projection

    peak = {"fp32": 1e12, "bf16": 4e12}
    rows = [{"case": "net DDIM-10, float32", "batch": 8, "images/s": 500.0, "precision": "fp32"},
            {"case": "net DDIM-10, bf16 + compile", "batch": 8, "images/s": 1000.0, "precision": "bf16"},
            {"case": "Inception features", "batch": 8, "images/s": 5000.0, "flops": 10**10},
            {"case": "FID statistics", "batch": EVAL_IMAGES // 2, "seconds": 2.0},
            {"case": "net DDIM-10, skipped", "batch": 8, "images/s": float("nan"), "note": "skipped"}]
    row = eval_projection(rows, flops=2 * 10**9, steps=10, peak=peak)
    seconds = EVAL_IMAGES / 1000.0 + EVAL_IMAGES / 5000.0 + 2.0 * 2  # the fastest sampler; FID scaled to 50k
    ideal = EVAL_IMAGES * (2e9 * 10 / 4e12 + 1e10 / 1e12)
    assert row["images/s"] == EVAL_IMAGES / seconds and abs(row["roofline"] - ideal / seconds) < 1e-12
    assert "bf16 + compile, batch 8" in row["note"]
    assert "skipped" in eval_projection(rows[:2], 2 * 10**9, 10, peak)["note"]  # no Inception row measured


# --- host synchronisations: what crosses between host and device per step ------------------------
class DeviceCopies:
    """Counts copies between devices (aten._to_copy whose result lives elsewhere than its input)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if func is torch.ops.aten._to_copy.default and out.device != args[0].device:
                    counter.n += 1
                return out

        self.n, self.mode = 0, Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def test_a_table_is_copied_to_the_device_once_not_per_gather():
    """The training step gathers per-image coefficients (t: [B] on the device) from CPU float64
    tables; each table goes to the device once ("meta" stands in for a GPU: same dispatch, no data)."""
    import gc

    from bench.diffusion import make_schedule
    from bench.diffusion.chain import _ON_DEVICE, VARIANCES, Chain, gather

    abar = make_schedule("linear", 100).alphas_cumprod
    chain = Chain.build(abar, torch.arange(100))
    like, t = torch.empty(3, 1, 2, 2, device="meta"), torch.tensor([0, 5, 99], device="meta")
    v = torch.zeros(3, 1, 2, 2, device="meta")
    with DeviceCopies() as copies:
        for _ in range(3):  # three steps
            gather(chain.coef_x0, t, like)
            VARIANCES.get("learned_range")(chain, t, like, v)  # log beta and log beta-tilde
            VARIANCES.get("fixed_large")(chain, t, like, None)
    assert copies.n == 4  # coef_x0, log beta, log beta-tilde, fixed_large's table: once each
    # the derived tables are the chain's, with the formulas' values
    assert chain.log_betas is chain.log_betas and torch.equal(chain.log_betas, torch.log(chain.betas))
    cpu_t = torch.tensor([0, 5, 99])
    expected = torch.log(torch.cat([chain.posterior_variance[1:2], chain.betas[1:]]))[cpu_t].float()
    assert torch.equal(VARIANCES.get("fixed_large")(chain, cpu_t, torch.empty(3, 1, 2, 2), None).flatten(), expected)
    held = len(_ON_DEVICE)
    del chain
    gc.collect()
    assert len(_ON_DEVICE) <= held - 4  # a sampling call's chain takes its copies with it


def test_the_epoch_permutation_moves_to_the_device_once_per_epoch_not_per_step():
    from bench.training.loop import EpochSampler

    cpu = EpochSampler(10, seed=0)
    with DeviceCopies() as copies:
        meta = EpochSampler(10, seed=0, device="meta")
        batches = [meta.next(3) for _ in range(10)]  # 30 indices: three epochs, a batch across each end
    assert copies.n == 3 and all(b.device.type == "meta" for b in batches)
    order = torch.cat([cpu.next(3) for _ in range(10)])
    assert sorted(order[:10].tolist()) == list(range(10))


class StackedNoise:
    """Per-sample noise as it was drawn before the pinned buffer: B tensors, stacked, then moved."""

    def __init__(self, source):
        self.source = source

    def __call__(self):
        s = self.source
        return torch.stack([torch.randn(s.shape[1:], generator=g, dtype=s.dtype) for g in s.generators]).to(s.device)


def test_per_sample_noise_drawn_into_one_buffer_gives_the_same_images(monkeypatch):
    """Image i's noise is still seed i's: row for row as B separate draws, and a stochastic chain
    samples the same images (bit for bit) as with the stacked draws."""
    import bench.diffusion.core as core
    from bench.diffusion import Diffusion, NoiseSource

    for shape, dtype in (((3, 1, 2, 2), torch.float32), ((3, 3, 8, 8), torch.float32), ((2, 3, 8, 8), torch.float64)):
        ours = NoiseSource(shape, "cpu", dtype=dtype, seeds=[7, 8, 9][: shape[0]])
        theirs = StackedNoise(NoiseSource(shape, "cpu", dtype=dtype, seeds=[7, 8, 9][: shape[0]]))
        for _ in range(2):  # the generators advance alike
            assert torch.equal(ours(), theirs())

    class Net(torch.nn.Module):
        def forward(self, x, t, y):
            return 0.3 * x

    d, seeds = Diffusion("linear", 100), [11, 12, 13]
    drawn = d.sample(Net(), (3, 2, 4, 4), sampler="ddpm", steps=5, seeds=seeds)

    class Stacked(NoiseSource):
        def __call__(self):
            return StackedNoise(self)()

    monkeypatch.setattr(core, "NoiseSource", Stacked)
    stacked = d.sample(Net(), (3, 2, 4, 4), sampler="ddpm", steps=5, seeds=seeds)
    assert torch.equal(drawn, stacked) and not torch.equal(drawn[0], drawn[1])


# --- workers -------------------------------------------------------------------------------------
def test_workers_sharing_one_gpu_split_the_cores(monkeypatch):
    """``cuda:0*3`` starts three GPU workers on one machine: each gets a third of the cores, as
    CPU workers do (it had all of them: three times the cores in intra-op threads)."""
    from bench.execute.local import parse_devices, worker_threads

    monkeypatch.delenv("BENCH_THREADS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the device string is what is tested:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one visible GPU, none needed here
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    three = parse_devices("cuda:0*3")
    assert [s.device for s in three] == ["cuda"] * 3 and {s.visible for s in three} == {"0"}
    assert worker_threads(three, cores=16) == 5
    assert worker_threads(parse_devices("cuda:0"), cores=16) == 16
    assert worker_threads(parse_devices("cpu*2,cuda:0"), cores=16) == 5
    assert worker_threads(parse_devices("cuda:0*3"), cores=2) == 1  # never below one thread
    monkeypatch.setenv("BENCH_THREADS", "2")
    assert worker_threads(three, cores=16) == 2


# --- fp16 training -------------------------------------------------------------------------------
def test_a_step_the_grad_scaler_skips_does_not_advance_the_lr_schedule():
    """fp16 trains with a GradScaler, which skips the optimizer step when the gradients overflow; the
    warmup schedule must then stay where it is. accelerate gives no scaler on a CPU, so the test
    hands the Trainer torch's CPU GradScaler (the same object accelerate builds for fp16 on a GPU)
    and makes every gradient infinite for one step."""
    from accelerate.optimizer import AcceleratedOptimizer

    from bench.core.config import from_dict
    from bench.training.loop import Trainer

    cfg = from_dict({"data": {"dataset": "digits"}, "model": {"backbone": "unet-micro"},
                     "diffusion": {"timesteps": 50}, "train": {"steps": 3, "batch_size": 4, "warmup_steps": 10}})
    tr = Trainer(cfg)
    scaler = torch.amp.GradScaler("cpu")
    tr.accelerator.scaler = scaler  # accelerator.backward scales the loss
    tr.optimizer = AcceleratedOptimizer(tr.optimizer.optimizer, scaler=scaler)
    p = list(tr.raw_model.parameters())[-1]  # the output layer's: the only one with a gradient at first
    # (the output layer is zero-initialised, so nothing before it moves in the first step)
    hook = p.register_hook(lambda g: torch.full_like(g, float("inf")))
    before = p.detach().clone()
    lr = tr.scheduler.get_last_lr()[0]
    tr.step()
    assert tr.optimizer.step_was_skipped and torch.equal(p.detach(), before)
    assert tr.scheduler.last_epoch == 0 and tr.scheduler.get_last_lr()[0] == lr  # warmup did not advance
    hook.remove()
    tr.step()
    assert not tr.optimizer.step_was_skipped and not torch.equal(p.detach(), before)
    assert tr.scheduler.last_epoch == 1 and tr.scheduler.get_last_lr()[0] == 2 * lr  # (n + 1) / 10
