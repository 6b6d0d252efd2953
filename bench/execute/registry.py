"""``EXECUTORS``: where jobs run, by name. Each executor module registers one factory
``make(devices, progress, **options) -> Pool`` with what the rest asks about it: the options it
takes, the ``run`` flags that set them, the package it needs and the pip extra that installs it,
and the options and environment its conformance test runs with on a machine without a cluster.

Adding an executor is one new module in ``bench/execute/`` that calls :func:`register_executor`;
:func:`make_pool`, the CLI's ``--executor`` choices and flags, the "install the extra" message,
the packaging test and the executor conformance tests read the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.core.errors import BenchError
from bench.core.registry import Registry

EXECUTORS: Registry[Callable[..., Any]] = Registry("executor")


@dataclass(frozen=True)
class Flag:
    """A ``run`` flag that sets a pool option: ``--max-retries`` sets ``max_retries``. Declared by
    the executors that take it (a flag two executors declare is one flag)."""

    name: str
    type: type = str
    help: str = ""

    @property
    def cli(self) -> str:
        return f"--{self.name.replace('_', '-')}"


def register_executor(name: str, factory: Callable[..., Any], *, options: tuple[str, ...] = (),
                      flags: tuple[Flag, ...] = (), package: str | None = None, extra: str | None = None,
                      test_options: Mapping[str, Any] | None = None, test_env: Mapping[str, str] | None = None,
                      help: str = "") -> Callable[..., Any]:
    """Register an executor: ``factory(devices, progress, **options)``; ``flags`` (each one of
    ``options``) are added to ``run``; ``package`` is the optional module it imports and ``extra``
    the pip extra of diffusion-ablation-bench that installs it; ``test_options`` / ``test_env``: what
    its conformance test passes and sets on a machine without a cluster."""
    for f in flags:
        if f.name not in options:
            raise BenchError(f"executor {name!r}: flag {f.cli} sets {f.name!r}, which is not one of its options "
                             f"({', '.join(options)})")
    return EXECUTORS.register(name, factory, options=tuple(options), flags=tuple(flags), package=package,
                              extra=extra, test_options=dict(test_options or {}), test_env=dict(test_env or {}),
                              help=help)


def executor_flags() -> list[Flag]:
    """Every executor's ``run`` flags, once each (the first declaration's type and help)."""
    out: dict[str, Flag] = {}
    for name in EXECUTORS.names():
        for f in EXECUTORS.meta(name).get("flags", ()):
            out.setdefault(f.name, f)
    return list(out.values())


def extra_of(package: str) -> str:
    """The pip extra that installs ``package``, as the executor needing it declares (else its name)."""
    return next((m["extra"] for m in map(EXECUTORS.meta, EXECUTORS.names())
                 if m.get("package") == package and m.get("extra")), package)


def pool_options(cls: type, given: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The keyword options of a pool class: every ``__init__`` parameter but those the factory
    passes itself (``progress``, and ``given``)."""
    import inspect

    skip = {"self", "progress", *given}
    return tuple(n for n in inspect.signature(cls.__init__).parameters if n not in skip)


def make_pool(executor: str, devices: str = "auto", progress: bool = True, /, **options: Any) -> Any:
    """The pool of ``executor``; ``options`` go to it, each refused unless that executor declares it."""
    make = EXECUTORS.get(EXECUTORS.check(executor, "--executor"))
    declared = EXECUTORS.meta(executor).get("options", ())
    for name in options:
        if name not in declared:
            owners = [n for n in EXECUTORS.names() if name in EXECUTORS.meta(n).get("options", ())]
            flag = f"--{name.replace('_', '-')}"
            if owners:
                raise BenchError(f"{flag} applies to --executor {' or '.join(owners)} only "
                                 f"(this run uses --executor {executor})")
            raise BenchError(f"{flag} is not an option of any executor")
    return make(devices, progress, **options)
