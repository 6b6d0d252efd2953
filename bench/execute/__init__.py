"""Executors: where jobs run. The scheduler (:func:`run_plan`) is shared; ``EXECUTORS`` names the
pools it can drive: ``local`` (a process per device), ``ray``, ``slurm`` (submitit).

Every module of this package is imported here, so an executor registers itself by being a file
in ``bench/execute/`` (none of them imports Ray or submitit before a pool is made).
"""

import importlib
import pkgutil

from bench.execute.registry import EXECUTORS, make_pool
from bench.execute.scheduler import Outcome, Pool, RunSummary, done_keys, run_plan

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["EXECUTORS", "Outcome", "Pool", "RunSummary", "done_keys", "make_pool", "run_plan"]
