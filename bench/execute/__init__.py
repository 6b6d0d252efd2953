"""Executors: where jobs run. ``local`` (a process per device), ``ray``, ``slurm`` (submitit)."""

from bench.execute.base import Outcome, Pool, RunSummary, run_plan
from bench.execute.local import LocalPool, parse_devices

__all__ = ["Outcome", "Pool", "RunSummary", "run_plan", "LocalPool", "parse_devices"]
