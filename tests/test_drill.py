"""The faults and load drill, small: a real ``run`` driver on 4 CPU workers, a worker SIGKILLed every
2 finished jobs on the SQLite store, and an ``mlflow server`` killed and restarted mid-grid. Every
job finishes exactly once, nothing stays RUNNING, no "database is locked" reaches the user.
(``python -m bench.perf drill`` runs 200 jobs per scenario.)"""

from __future__ import annotations

import pytest

from bench.perf.drill import run_scenario


@pytest.mark.parametrize(("name", "kw"), [("kill-worker", {"kill_every": 2}), ("server-restart", {"server": True})])
def test_drill_loses_and_duplicates_nothing(tmp_path, name, kw) -> None:
    row = run_scenario(name, 6, tmp_path, **kw)
    assert row.faults >= 1, row  # the fault really happened mid-grid
    assert (row.lost, row.duplicated, row.running, row.locked, row.exit_status) == (0, 0, 0, False, 0), row
    assert row.jobs == 7  # 6 evaluations + their training
    if name == "kill-worker":
        assert row.retries >= 1, row  # a killed worker's job went again
