"""Optuna search over inference-time axes on one trained checkpoint: the only package importing optuna.

``run`` is the search loop (train the base point once, then trials as EVAL runs in MLflow),
``store`` finds and checks the Optuna storage. The ``search:`` section's schema is
:mod:`bench.study.search_spec` (read without Optuna).
"""

from bench.search.run import SearchSummary, make_sampler, open_storage, optuna_counts, run_search, train_base

__all__ = ["SearchSummary", "make_sampler", "open_storage", "optuna_counts", "run_search", "train_base"]
