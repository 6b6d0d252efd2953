#!/usr/bin/env python
"""Entry point: ``python run_ablation.py {run,plan,list,report,search} ...`` (see bench.cli)."""

from bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
