"""Benchmarks: ``python -m bench.perf {sampler,train,metrics,grid,plan} [...]``, each printing a table.

Ratios are measured in one process (warm-up first, device synchronized before reading the clock),
never asserted by timed tests.
"""

from __future__ import annotations

import argparse
import importlib

SUITES = {
    "sampler": "bench.perf.sampler",
    "train": "bench.perf.train",
    "metrics": "bench.perf.metrics",
    "grid": "bench.perf.grid",
    "plan": "bench.perf.plan",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__)
    parser.add_argument("suite", choices=sorted(SUITES), help="which benchmark to run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (where the suite supports it)")
    args = parser.parse_args(argv)
    importlib.import_module(SUITES[args.suite]).main(device=args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
