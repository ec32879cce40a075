"""The worker pool: results in order, dead workers replaced, hopeless tasks reported."""

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envs.workers import WorkerDiedError, WorkerPool

pytestmark = pytest.mark.slow  # starts processes (worker pools, env engines)


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


def _engine_init():
    """A worker holding a ViZDoom env whose engine (a child process) is running."""
    from envs.make import make_env

    env = make_env("VizdoomTakeCover-v1")
    env.reset(seed=0)
    return lambda task: (os.getpid(), env.spec.id)  # the closure keeps env (and its engine) alive


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def _engines_of(worker_pids: list[int]) -> list[int]:
    return [child for pid in worker_pids for child in _children(pid)
            if "vizdoom" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")]


def _gone(pids: list[int], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                 and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
        if not alive:
            return True
        time.sleep(0.2)
    return False


needs_proc = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")


@needs_proc
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_env_engine_dies_with_its_worker_killed_outright():
    with WorkerPool(_engine_init, workers=1) as pool:
        [(worker, _)] = pool.map([0])
        engines = _engines_of([worker])
        assert engines, "the ViZDoom engine should be a child of its worker"
        os.kill(worker, signal.SIGKILL)
        assert _gone(engines), f"engine {engines} outlived its worker"
        assert pool.map([1])[0][0] != worker  # a fresh worker took its place


PARENT = """
import sys
from envs.workers import WorkerPool
from tests.test_workers import _engine_init
pool = WorkerPool(_engine_init, workers=2)
print(" ".join(str(pid) for pid, _ in pool.map([0, 1])), flush=True)
sys.stdin.read()
"""


@needs_proc
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_and_engines_die_with_a_parent_killed_outright():
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=root, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        engines = _engines_of(workers)
        assert len(set(workers)) == 2 and engines
        parent.kill()
        parent.wait()
        assert _gone(workers + engines), "a worker or its engine outlived the pool's parent"
    finally:
        parent.kill()
