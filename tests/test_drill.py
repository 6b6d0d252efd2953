"""The faults and load drill, small: a real ``run`` driver on 4 CPU workers logging to an ``mlflow
server`` that is killed and restarted mid-grid, while a worker is SIGKILLed every 2 finished jobs.
Every job finishes exactly once, nothing stays RUNNING, no "database is locked" reaches the user.
(``python -m bench.perf drill`` runs 200 jobs per scenario, one fault each, SQLite too.)"""

from __future__ import annotations

from bench.perf.drill import run_scenario


def test_drill_loses_and_duplicates_nothing(tmp_path) -> None:
    row = run_scenario("server-restart+kill", 6, tmp_path, server=True, kill_every=2)
    # the server restart happened mid-grid; a worker kill also needs a worker busy at the moment the
    # count is reached, which a 7-job grid does not guarantee (seen on CI: faults=1)
    assert row.faults >= 1, row
    # No assertion on retries: a SIGKILL can land on a worker whose job has just returned (seen on CI:
    # faults=2, retries=0), which is a kill the scheduler must survive but has nothing to retry.
    assert (row.lost, row.duplicated, row.running, row.locked, row.exit_status) == (0, 0, 0, False, 0), row
    assert row.jobs == 7  # 6 evaluations + their training
