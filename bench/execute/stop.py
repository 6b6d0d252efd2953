"""A clean stop: SIGINT (Ctrl-C) or SIGTERM to ``run`` / ``search`` ends the work at a safe point.

The CLI installs :func:`stop_signals` around a command. The handler never raises inside a write to
MLflow or Optuna (an exception in the middle of an SQLAlchemy commit leaves a traceback and a
half-reset connection): it only records the signal, and the driver's loops call
:meth:`StopSignals.check` between writes. Inside :meth:`StopSignals.interruptible` (work done in
this process that writes nothing to a store, e.g. a search trial's sampling) the signal raises
:class:`Stopped` at once. Workers ignore SIGINT (:func:`ignore_interrupts`): the driver stops them.

Without the CLI (a library call, a test), no handler is installed and Ctrl-C is Python's
KeyboardInterrupt, as before.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


class Stopped(BaseException):  # noqa: N818 (not an error: the user asked to stop)
    """The driver was asked to stop by ``signum``; ``done``/``cut``/``left`` say where the work stood."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.counts: dict[str, Any] = {}

    def counted(self, unit: str, finished: int, cut: int, left: int) -> Stopped:
        self.counts.update(unit=unit, finished=finished, cut=cut, left=max(0, left))
        return self

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@dataclass
class StopSignals:
    signum: int | None = None
    raise_now: bool = False
    previous: dict[int, Any] = field(default_factory=dict)

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        if self.raise_now:
            self.raise_now = False  # once: the cleanup after it must not be cut again
            raise Stopped(signum)

    def check(self) -> None:
        """Raise :class:`Stopped` if a stop was asked for (call between writes)."""
        if self.signum is not None:
            raise Stopped(self.signum)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block that writes to no store: a signal inside it stops it at once."""
        self.check()
        self.raise_now = True
        try:
            yield
        finally:
            self.raise_now = False


_ACTIVE: StopSignals | None = None


def active() -> StopSignals | None:
    """The handler the CLI installed, or None (library use: Ctrl-C is a KeyboardInterrupt)."""
    return _ACTIVE


def requested() -> bool:
    return _ACTIVE is not None and _ACTIVE.signum is not None


def check() -> None:
    if _ACTIVE is not None:
        _ACTIVE.check()


@contextmanager
def interruptible() -> Iterator[None]:
    if _ACTIVE is None:
        yield
        return
    with _ACTIVE.interruptible():
        yield


@contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Install the SIGINT/SIGTERM handler for the block (main thread only; elsewhere a no-op)."""
    global _ACTIVE
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        stop.previous[sig] = signal.signal(sig, stop.handle)
    _ACTIVE = stop
    try:
        yield stop
    finally:
        _ACTIVE = None
        for sig, old in stop.previous.items():
            signal.signal(sig, old)


def ignore_interrupts() -> None:
    """In a worker: Ctrl-C in a terminal reaches the whole process group, and the driver stops its
    workers; SIGTERM (from the driver) exits quietly through ``SystemExit``, so the process's
    finalizers run (its semaphores are released, not reported leaked by the resource tracker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)


def _exit_quietly(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise SystemExit(128 + signum)


def stop_line(stopped: Stopped, argv: list[str] | None = None) -> str:
    """The one line printed on a stop: what finished, what will be redone, the command to resume."""
    c, unit = stopped.counts, stopped.counts.get("unit", "job")
    argv = list(sys.argv if argv is None else argv)
    command = shlex.join(["python", *argv]) if argv and argv[0].endswith(".py") else shlex.join(argv)
    name = signal.Signals(stopped.signum).name
    if "finished" not in c:
        return f"stopped by {name} before any {unit} ran; to start again: {command}"
    return (f"stopped by {name}: {c['finished']} {unit}(s) finished and kept; {c.get('cut', 0)} cut off "
            f"(marked KILLED) and {c.get('left', 0)} not started will run when you resume: {command}")
