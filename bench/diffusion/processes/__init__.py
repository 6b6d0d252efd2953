"""Noise processes, one file each, registered on import: ``PROCESSES.get(name)(shift=..., **options)``.

See :mod:`bench.diffusion.processes.base` for what a process states.
"""

import importlib
import pkgutil

from bench.diffusion.processes.base import PROCESSES, U_EDGE, Process

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["PROCESSES", "Process", "U_EDGE"]
