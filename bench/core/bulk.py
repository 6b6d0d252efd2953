"""Building many small objects at once without the cyclic garbage collector in the way.

Expanding a 100,000-point grid or planning its jobs allocates a few hundred thousand frozen
dataclasses, tuples and dicts, none of them in reference cycles. CPython's collector runs a pass
every few hundred allocations and a full pass as the young generations fill, so about a quarter
of that time is spent scanning objects that are all alive (``python -m bench.perf plan`` shows it).
:func:`no_gc` switches collection off for such a block and back on after it; reference counting
still frees everything as usual.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_gc() -> Iterator[None]:
    """Cyclic collection off inside the block (restored on exit, also on an exception; nested
    blocks leave it to the outermost)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
