"""Benchmarks: ``python -m bench.perf {sampler,train,metrics,grid,plan,gpu,drill} [...]``, each printing a table.

Ratios are measured in one process (warm-up first, device synchronized before reading the clock),
never asserted by timed tests.
"""

from __future__ import annotations

import argparse
import importlib

from bench.core.allocator import tune_allocator

SUITES = {
    "sampler": "bench.perf.sampler",
    "train": "bench.perf.train",
    "metrics": "bench.perf.metrics",
    "grid": "bench.perf.grid",
    "plan": "bench.perf.plan",
    "gpu": "bench.perf.gpu",
    "drill": "bench.perf.drill",
}
QUICK = {"gpu", "drill"}  # suites with a --quick bookkeeping run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__)
    parser.add_argument("suite", choices=sorted(SUITES), help="which benchmark to run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (where the suite supports it)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long bookkeeping run (suites: "
                        + ", ".join(sorted(QUICK)) + ")")
    args = parser.parse_args(argv)
    if args.quick and args.suite not in QUICK:
        parser.error(f"--quick: suite {args.suite!r} has no quick run (those that do: {', '.join(sorted(QUICK))})")
    extra = {"quick": True} if args.quick else {}
    tune_allocator()  # as in every worker: the timings are of the code, not of glibc's page faults
    importlib.import_module(SUITES[args.suite]).main(device=args.device, **extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
