"""One generic registry for every named choice in the bench (schedules, samplers, presets, ...).

Modelled on lm-evaluation-harness' ``lm_eval/api/registry.py``: entries are registered by
decorator with metadata stored beside them, collisions are refused, and an unknown name is
answered with "did you mean ...?" plus every available choice. Standard library only.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from bench.core.errors import BenchError

T = TypeVar("T")


def did_you_mean(name: object, choices: Iterable[str], cutoff: float = 0.6, n: int = 3) -> str:
    """`` Did you mean 'ddim'?`` for the choices close to ``name``, or ``""``: the one hint every
    "unknown name" message in the bench ends with."""
    close = difflib.get_close_matches(str(name), sorted(choices), n=n, cutoff=cutoff)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class UnknownChoiceError(BenchError, KeyError):
    """An unknown name was asked of a registry."""

    def __str__(self) -> str:  # KeyError would quote the message; show it plainly
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> object, with metadata. ``kind`` names the registry in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._origin: dict[str, str | None] = {}

    def register(self, name: str, obj: T | None = None, **metadata: Any) -> Any:
        """Register ``obj`` under ``name``; without ``obj`` it returns a decorator.

        >>> SAMPLERS.register("ddim", ddim_fn, deterministic=True)     # direct
        >>> @SAMPLERS.register("ddpm", stochastic=True)                 # decorator
        ... def ddpm(...): ...
        """
        if not isinstance(name, str) or not name:
            raise BenchError(f"{self.kind} names must be non-empty strings, got {name!r}")

        def add(entry: T) -> T:
            if name in self._entries:
                raise BenchError(
                    f"{self.kind} {name!r} is already registered ({self._entries[name]!r}); "
                    "choose another name or unregister the old entry first"
                )
            self._entries[name] = entry
            self._meta[name] = dict(metadata)
            self._origin[name] = _importing_module()
            return entry

        if obj is not None:
            return add(obj)
        return add

    def unregister(self, name: str) -> None:
        self._check(name)
        del self._entries[name]
        del self._meta[name]
        self._origin.pop(name, None)

    def get(self, name: str) -> T:
        self._check(name)
        return self._entries[name]

    __getitem__ = get

    def meta(self, name: str) -> dict[str, Any]:
        self._check(name)
        return dict(self._meta[name])

    def origin(self, name: str) -> str | None:
        """The module whose import registered ``name`` (``bench.metrics.defs.fid``): the entry's own
        file, where its name may be written (``tests/test_architecture.py`` checks nowhere else)."""
        self._check(name)
        return self._origin.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

    def check(self, name: object, where: str = "") -> str:
        """Return ``name`` if registered, else raise the standard error (``where`` says where)."""
        self._check(name, where)
        return name  # type: ignore[return-value]

    def _check(self, name: object, where: str = "") -> None:
        if isinstance(name, str) and name in self._entries:
            return
        raise UnknownChoiceError(self.unknown_message(name, where))

    def unknown_message(self, name: object, where: str = "") -> str:
        choices = self.names()
        hint = did_you_mean(name, choices, cutoff=0.5)
        loc = f" at {where}" if where else ""
        return f"unknown {self.kind} {name!r}{loc}.{hint} Available: {', '.join(choices) or '(none)'}."


def _importing_module() -> str | None:
    """The module whose top-level code is running (the innermost ``<module>`` frame): the one
    registering, through however many helpers (``register_metric``, a decorator)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    return frame.f_globals.get("__name__") if frame is not None else None


def lookup(registry: Registry[Callable[..., Any]], name: str, where: str = "") -> Any:
    """``registry.get`` with a location for the error message."""
    return registry.get(registry.check(name, where))
