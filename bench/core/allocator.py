"""glibc's allocator kept from handing activation buffers back to the kernel between calls.

A network's activations on a CPU are buffers of a few hundred KB to a few MB, freed and allocated
again at every call. glibc serves buffers above its mmap threshold (128 KB at start, raised
dynamically after frees) with fresh ``mmap`` pages and trims the heap's top beyond its trim
threshold, so every call pays page faults and the zeroing of new pages. Depending on the order of
earlier allocations the same forward then runs up to a quarter slower: ``python -m bench.perf
sampler`` measured a sampler 1.24x slower than the bare forwards it calls, and both 20 % faster
with the thresholds fixed (PyTorch's CPU tuning guide suggests jemalloc or tcmalloc for the same
reason). :func:`tune_allocator` fixes them with ``mallopt`` in the running process:

- ``M_MMAP_THRESHOLD`` 32 MiB (glibc's maximum): smaller buffers come from the heap and are reused;
- ``M_TRIM_THRESHOLD`` 256 MiB and ``M_TOP_PAD`` 64 MiB: freed heap stays mapped for the next call.

The cost is up to ~300 MiB of freed memory a process keeps instead of returning. Every process
that runs a job (a worker of any executor, a search's trials), the benchmarks and the test suite
call it; ``BENCH_MALLOC=default`` leaves glibc's own behaviour. Elsewhere than glibc (macOS, musl)
it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h>
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 256 << 20, M_TOP_PAD: 64 << 20}


@functools.cache
def tune_allocator() -> bool:
    """Apply :data:`SETTINGS` once per process; True where glibc accepted every one."""
    if not sys.platform.startswith("linux") or os.environ.get("BENCH_MALLOC", "tuned") == "default":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
