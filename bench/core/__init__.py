"""The bottom layer: errors, the one registry class, the run configuration and its keys, paths.

Standard library, PyYAML-free and torch-free at import time; every other package builds on it.
"""

from bench.core.errors import BenchError
from bench.core.registry import Registry, UnknownChoiceError, did_you_mean

__all__ = ["BenchError", "Registry", "UnknownChoiceError", "did_you_mean"]
