"""Where sampling noise comes from: one generator for the batch, or one per sample.

With ``seeds=[...]`` every image draws its noise from its own CPU generator (as edm's
``StackedRandomGenerator``), so image i depends only on seed i: not on batch size, on the other
images in the batch, or on the device (noise is drawn on the CPU, then moved: for a GPU through
pinned memory, asynchronously).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bench.core.errors import BenchError


class NoiseSource:
    def __init__(self, shape: Sequence[int], device: torch.device | str, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None, seeds: Sequence[int] | None = None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.generator = generator
        self.generators: list[torch.Generator] | None = None
        if seeds is not None:
            if generator is not None:
                raise BenchError("pass either generator= or seeds=, not both")
            if len(seeds) != self.shape[0]:
                raise BenchError(f"seeds has {len(seeds)} entries but the batch has {self.shape[0]} images; "
                                 "give one seed per image")
            self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self) -> torch.Tensor:
        if self.generators is not None:
            return self._per_sample()
        if self.generator is not None:
            return torch.randn(self.shape, generator=self.generator, dtype=self.dtype,
                               device=self.generator.device).to(self.device)
        return torch.randn(self.shape, dtype=self.dtype, device=self.device)

    def _per_sample(self) -> torch.Tensor:
        """Image i's noise from generator i, each drawn into its row of one host buffer. For a GPU
        the buffer is pinned and the copy asynchronous (no host synchronisation per stochastic step;
        PyTorch's pinned-memory cache keeps the buffer from reuse until its copy has run)."""
        pinned = self.device.type == "cuda"
        buf = torch.empty(self.shape, dtype=self.dtype, pin_memory=pinned)
        for row, g in zip(buf, self.generators):
            torch.randn(self.shape[1:], generator=g, dtype=self.dtype, out=row)
        return buf.to(self.device, non_blocking=pinned)
