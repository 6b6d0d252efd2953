"""Whether this machine can download a file: ``$BENCH_OFFLINE`` or one TCP connect (cached).

Standard library only: study validation asks before any work whether weights it lacks can be fetched.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from bench.core.errors import BenchError

OFFLINE_ENV = "BENCH_OFFLINE"
TIMEOUT_ENV = "BENCH_CONNECT_TIMEOUT"


def connect_timeout(default: float, given: float | None = None) -> float:
    """Seconds to wait for a server (tracking server, Ray head, database) before one clear error:
    ``given`` where a caller passed one, else ``$BENCH_CONNECT_TIMEOUT`` where set (a slow link
    wants more, a test of a silent port less), else ``default``."""
    if given is not None:
        return given
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise BenchError(f"${TIMEOUT_ENV}={raw!r}: give the seconds to wait for a server as a positive number")
    return value


def can_reach(url: str) -> bool:
    """False when ``$BENCH_OFFLINE`` is set or ``url``'s host cannot be reached on port 443."""
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    return _reachable(urlparse(url).hostname or "")


@functools.lru_cache(maxsize=8)
def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
