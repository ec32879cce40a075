"""The Ray backend: the same episodes and fitness as the local pool for the same seeds, and no
hang when an actor dies, hangs, or a task keeps killing actors. One local Ray instance (2 CPUs)
serves the whole module: starting one costs ~10 s. The package is imported inside the tests, not
here: every actor imports this module for its init function, and each start should stay cheap."""

import functools
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # starts Ray, actors and env engines


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _fast_pool(init, workers=2, **options):
    """A Ray pool with deadlines short enough for tests (tasks here take milliseconds)."""
    from envs.ray_pool import RayPool

    return RayPool(init, workers, first_timeout=60.0, min_timeout=1.0, **options)


def _shared_init():
    def run(shared_task):
        shared, task = shared_task
        return float(shared[task]), os.environ.get("CUDA_VISIBLE_DEVICES")

    return run


def _die_once_init(marker: str):
    def run(task):
        if task == 3 and not Path(marker).exists():
            Path(marker).write_text("x")
            os._exit(1)
        return task + 100

    return run


def _die_once_and_hang_once_init(directory: str):
    """Task 3 kills its actor (os._exit) and task 6 hangs, each the first time it runs."""
    def run(task):
        marker = Path(directory) / f"ran{task}"
        if task in (3, 6) and not marker.exists():
            marker.write_text("x")
            if task == 3:
                os._exit(1)
            time.sleep(10**6)
        return task + 100

    return run


def _always_die_init():
    def run(task):
        if task == 1:
            os._exit(1)
        return task

    return run


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_shared_value_reaches_every_task_and_workers_see_no_gpu(backend, ray_instance):
    from envs.pool import make_pool

    values = np.arange(5, dtype=np.float32) * 2
    with make_pool(backend, _shared_init, 2) as pool:
        assert pool.map(list(range(5)), shared=values) == [(2.0 * i, "") for i in range(5)]
        assert pool.map([1, 0], shared=values + 1) == [(3.0, ""), (1.0, "")]  # a new map, a new value


@pytest.mark.timeout(90)
def test_collection_gives_the_same_episodes_on_both_backends(tmp_path, ray_instance):
    from envs.collect import collect
    from envs.episodes import FIELDS, episode_files, load_episode

    for backend in ("local", "ray"):
        collect("VizdoomTakeCover-v1", 2, tmp_path / backend, workers=2, seed=7, policy="held", progress=False,
                backend=backend)
    local, ray = episode_files(tmp_path / "local"), episode_files(tmp_path / "ray")
    assert [p.name for p in local] == [p.name for p in ray] and len(local) == 2
    for a, b in zip(local, ray, strict=True):
        episode_a, episode_b = load_episode(a), load_episode(b)
        for name in FIELDS:
            left, right = getattr(episode_a, name), getattr(episode_b, name)
            assert left.dtype == right.dtype and np.array_equal(left, right), name
    assert not list((tmp_path / "ray").glob(".*tmp"))  # written atomically by the driver


@pytest.mark.timeout(120)
def test_real_env_fitness_is_the_same_on_both_backends(tiny_run, ray_instance):
    import torch

    from agents.agent import load_controller
    from agents.fitness import RealFitness

    controller, info = load_controller(tiny_run)
    best = controller.to_vector()
    params = torch.stack([best, best + 0.3 * torch.randn(len(best), generator=torch.Generator().manual_seed(1))])
    scores = {}
    for backend in ("local", "ray"):
        fitness = RealFitness(tiny_run, info["env_id"], controller.spec, rollouts=1, workers=2,
                              include_cell=info.get("include_cell", False), backend=backend)
        try:
            scores[backend] = fitness(params, seed=3)
        finally:
            fitness.close()
    assert torch.equal(scores["local"], scores["ray"]), scores


@pytest.mark.timeout(90)
def test_a_dead_and_a_stuck_actor_are_replaced_and_their_tasks_rerun(tmp_path, ray_instance):
    start = time.monotonic()
    with _fast_pool(functools.partial(_die_once_and_hang_once_init, str(tmp_path))) as pool:
        assert pool.map(list(range(10))) == [t + 100 for t in range(10)]
    assert (tmp_path / "ran3").exists() and (tmp_path / "ran6").exists()  # an actor really died, one hung
    assert time.monotonic() - start < 45  # the hang cost its deadline (1 s here), not the test's timeout


@pytest.mark.timeout(90)
def test_a_task_that_always_kills_its_actor_is_an_error_not_a_hang(ray_instance):
    from envs.workers import WorkerDiedError

    with _fast_pool(_always_die_init, workers=1, max_task_deaths=2) as pool:
        with pytest.raises(WorkerDiedError, match="task 1"):
            pool.map([0, 1, 2])


@pytest.mark.timeout(30)
def test_a_missing_ray_is_one_line_naming_the_fix(monkeypatch, tmp_path, capsys):
    import train
    from envs.errors import UserError
    from envs.pool import RAY_FIX, check_backend

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(UserError, match=r"world-models-rl\[ray\]"):
        check_backend("ray")
    assert train.main(["collect", "--env", "VizdoomTakeCover-v1", "--out", str(tmp_path / "d"),
                       "--backend", "ray"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and RAY_FIX in error
    assert not (tmp_path / "d").exists()  # checked before any work
