"""The worker pool: results in order, dead workers replaced, hopeless tasks reported."""

import functools
import os
from pathlib import Path

import pytest

from envs.workers import WorkerDiedError, WorkerPool


def _square_init():
    return lambda x: x * x


def _die_on_init(marker: str, task: int):
    if task == 3 and not Path(marker).exists():
        Path(marker).write_text("x")
        os._exit(9)
    return task + 100


def _dying_init(marker: str):
    return functools.partial(_die_on_init, marker)


def _always_die_init():
    def run(task):
        if task == 1:
            os._exit(3)
        return task

    return run


def test_results_come_back_in_task_order():
    seen = []
    with WorkerPool(_square_init, workers=2) as pool:
        assert pool.map(list(range(10)), on_result=lambda i, r: seen.append(i)) == [x * x for x in range(10)]
        assert pool.map([7]) == [49]  # the pool is reusable
    assert sorted(seen) == list(range(10))


def test_dead_worker_is_replaced_and_its_task_rerun(tmp_path):
    with WorkerPool(functools.partial(_dying_init, str(tmp_path / "m")), workers=2) as pool:
        assert pool.map(list(range(6))) == [t + 100 for t in range(6)]
    assert (tmp_path / "m").exists()  # a worker really died


def test_a_task_that_always_kills_is_an_error_not_a_hang():
    with WorkerPool(_always_die_init, workers=1, max_task_deaths=2) as pool:
        with pytest.raises(WorkerDiedError, match="task 1"):
            pool.map([0, 1, 2])
