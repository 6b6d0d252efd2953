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
