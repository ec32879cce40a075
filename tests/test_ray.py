"""The Ray backend: the same episodes and fitness as the local pool for the same seeds, and no
hang when an actor dies, hangs, or a task keeps killing actors. One local Ray instance (2 CPUs)
serves the whole module: starting one costs ~10 s. The package is imported inside the tests, not
here: every actor imports this module for its init function, and each start should stay cheap."""

import functools
import os
import sys
import time
from pathlib import Path

import gymnasium as gym
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


class _FlakyEnv(gym.Env):
    """Uniform frames of value (offset + t) at step t of an episode (offset drawn at reset), reward
    = action, truncated at ``length``; at step ``at`` it dies (os._exit), hangs or raises: every
    time, or only the first time ever with ``directory`` (a marker file there)."""

    observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, fault: str, at: int, directory: str | None = None, length: int = 8) -> None:
        self.fault, self.at, self.directory, self.length = fault, at, directory, length
        self.t = self.offset = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.offset = 0, int(self.np_random.integers(100))
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        if self.t == self.at and self._fault_now():
            if self.fault == "die":
                os._exit(1)
            if self.fault == "hang":
                time.sleep(10**6)
            raise ValueError("the env broke")
        return self._frame(), float(action), False, self.t >= self.length, {}

    def _frame(self) -> np.ndarray:
        return np.full((64, 64, 3), self.offset + self.t, np.uint8)

    def _fault_now(self) -> bool:
        if self.directory is None:
            return True
        marker = Path(self.directory) / f"{self.fault}{self.at}"
        if marker.exists():
            return False
        marker.write_text("x")
        return True


def _fast_vector_env(env_fns, **options):
    """A RayVectorEnv with deadlines short enough for tests (steps here take milliseconds)."""
    from envs.ray_vector import RayVectorEnv

    return RayVectorEnv(env_fns, first_timeout=60.0, min_timeout=1.0, **options)


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


@pytest.mark.timeout(90)
def test_ray_vector_env_steps_like_sync_vector_env_across_episode_ends(ray_instance):
    from envs.make import make_env
    from envs.pool import make_vector_env

    env_fns = [functools.partial(make_env, "VizdoomTakeCover-v1", max_episode_steps=20)] * 2
    envs = {backend: make_vector_env(backend, env_fns) for backend in ("local", "ray")}
    try:
        first = {backend: env.reset(seed=11)[0] for backend, env in envs.items()}
        assert np.array_equal(first["local"], first["ray"]) and first["ray"].shape == (2, 64, 64, 3)
        actions = np.random.default_rng(0).integers(0, 3, size=(45, 2))
        ends = 0
        for t, action in enumerate(actions):
            local, ray = envs["local"].step(action), envs["ray"].step(action)
            for a, b in zip(local[:4], ray[:4], strict=True):
                assert a.dtype == b.dtype and np.array_equal(a, b), t
            ends += int((local[2] | local[3]).sum())
        assert ends >= 2  # every env crossed an episode end (at most 20 steps each), and its autoreset
    finally:
        for env in envs.values():
            env.close()


@pytest.mark.timeout(120)
def test_npg_in_the_real_env_trains_the_same_on_both_backends(tiny_run, tmp_path, monkeypatch, ray_instance,
                                                              one_thread):
    import json
    import shutil

    import agents.train_controller as train_controller_module
    from agents.agent import load_controller
    from agents.train_controller import ControllerConfig, train_controller
    from envs.make import make_env
    from world_models.runlog import read_metrics

    # 50-step episodes: every env ends one in each 60-step iteration, so returns are logged and C saved
    monkeypatch.setattr(train_controller_module, "make_env", functools.partial(make_env, max_episode_steps=50))
    records, summaries, params = {}, {}, {}
    for backend in ("local", "ray"):
        run_dir = tmp_path / backend
        shutil.copytree(tiny_run, run_dir)
        config = ControllerConfig(run_dir=run_dir, algo="npg", where="real", generations=2, npg_horizon=60,
                                  workers=2, eval_every=1, progress=False, backend=backend)
        summaries[backend] = {k: v for k, v in train_controller(config).items() if k != "seconds"}
        records[backend] = [{k: v for k, v in r.items() if k != "time"}
                            for r in read_metrics(run_dir, "controller_npg_real")]
        params[backend] = load_controller(run_dir)[0].to_vector()
    assert json.dumps(records["local"], sort_keys=True) == json.dumps(records["ray"], sort_keys=True)
    returns = [r["mean_return"] for r in records["ray"] if "mean_return" in r]
    assert len(returns) == 2 and all(np.isfinite(returns)), returns
    assert summaries["local"] == summaries["ray"] and summaries["ray"]["generation"] >= 1  # an NPG policy was saved
    assert params["local"].equal(params["ray"])


@pytest.mark.timeout(90)
def test_a_dead_and_a_stuck_env_actor_cut_their_episode_and_the_envs_play_on(tmp_path, ray_instance, capsys):
    env_fns = [functools.partial(_FlakyEnv, "die", 3, str(tmp_path)), functools.partial(_FlakyEnv, "hang", 5,
                                                                                        str(tmp_path))]
    envs = _fast_vector_env(env_fns)
    try:
        obs, _ = envs.reset(seed=0)
        ones = np.ones(2, dtype=np.int64)
        steps = [envs.step(ones) for _ in range(14)]
    finally:
        envs.close()
    assert (tmp_path / "die3").exists() and (tmp_path / "hang5").exists()  # an actor really died, one hung
    for slot, cut in ((0, 2), (1, 4)):  # steps 3 and 5 (indices 2 and 4) lost their actor
        frames, rewards, terminated, truncated, _ = (np.stack([s[i] for s in steps]) for i in range(5))
        previous = steps[cut - 1][0][slot]
        assert truncated[cut, slot] and not terminated[cut, slot] and rewards[cut, slot] == 0
        assert np.array_equal(frames[cut, slot], previous)  # the cut step repeats the last frame
        assert rewards[cut + 1, slot] == 0 and not (terminated | truncated)[cut + 1, slot]  # the autoreset step
        assert frames[cut + 1, slot].min() == frames[cut + 1, slot].max()  # a reset frame: t = 0
        assert (rewards[cut + 2:cut + 9, slot] == 1).all()  # then a whole new episode (8 steps) plays
        assert truncated[cut + 9, slot]
    assert capsys.readouterr().out.count("starting a new one") == 2


@pytest.mark.timeout(60)
def test_an_env_that_always_kills_its_actor_is_an_error_and_an_env_error_is_raised_at_once(ray_instance):
    from envs.workers import WorkerDiedError

    envs = _fast_vector_env([functools.partial(_FlakyEnv, "die", 1)], max_deaths=2)
    try:
        envs.reset(seed=0)
        with pytest.raises(WorkerDiedError, match="env 0"):
            for _ in range(5):  # dies, is cut; the reset step; dies again: 2 in a row without a step
                envs.step(np.ones(1, dtype=np.int64))
    finally:
        envs.close()
    envs = _fast_vector_env([functools.partial(_FlakyEnv, "raise", 1)])
    try:
        envs.reset(seed=0)
        with pytest.raises(ValueError, match="the env broke"):
            envs.step(np.ones(1, dtype=np.int64))
        assert envs.replacements == [0]  # a live actor's error is not a lost actor
    finally:
        envs.close()
