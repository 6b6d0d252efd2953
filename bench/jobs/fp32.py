"""fp32 means IEEE float32 on every device: TF32 off for matmuls and cuDNN convolutions.

PyTorch multiplies float32 matrices in full precision by default, but lets cuDNN run float32
convolutions in TF32 (a 10-bit mantissa) on Ampere and later GPUs: a U-Net "trained in fp32" there
would have computed its convolutions at reduced precision, and differently from the same run on an
older GPU or a CPU. Every job turns TF32 off before it starts (process-wide: a worker runs jobs one
after another) and tags its run ``protocol.fp32 = ieee``. bf16 autocast is unaffected: its matmuls
and convolutions run in bf16 either way. ``python -m bench.perf gpu`` measures fp32 the same way.
"""

from __future__ import annotations

FP32_MATH = "ieee"  # the value of the protocol.fp32 tag


def strict_fp32() -> dict[str, str]:
    """Turn TF32 off for float32 matmuls and cuDNN convolutions; returns the run's tag."""
    import torch

    # the legacy flags, on every torch: from 2.9 they set the per-operator fp32_precision too, while
    # setting "ieee" through the per-operator API makes the legacy cudnn.allow_tf32 raise when read
    # (torch 2.14), and inductor's convolution kernels read it
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {"protocol.fp32": FP32_MATH}
