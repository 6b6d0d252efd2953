"""``EXECUTORS``: where jobs run, by name. Each executor module registers one factory
``make(devices, progress, **options) -> Pool`` with the CLI options it takes (``options=(...)``).

Adding an executor is one new module in ``bench/execute/`` that calls
``EXECUTORS.register(name, factory, options=(...), help=...)``; :func:`make_pool`, the CLI's
``--executor`` choices and the executor conformance tests read the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.core.errors import BenchError
from bench.core.registry import Registry

EXECUTORS: Registry[Callable[..., Any]] = Registry("executor")


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
