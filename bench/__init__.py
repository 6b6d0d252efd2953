"""diffusion-ablation-bench: one study file, one command, comparable numbers.

>>> import bench
>>> bench.run_study("ablations/quickstart.yaml", **{"eval.num_samples": 200})
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def run_study(path: Any, **kwargs: Any) -> Any:
    """Run a study file end to end (see :func:`bench.pipeline.run_study`)."""
    from bench.pipeline import run_study as _run

    return _run(path, **kwargs)


__all__ = ["run_study", "__version__"]
