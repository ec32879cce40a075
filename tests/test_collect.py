"""Rollout collection: parallel workers, the episode format, resume, corrupt files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from envs.collect import collect, plan_seeds
from envs.episodes import (
    Episode,
    episode_files,
    iter_episodes,
    load_episode,
    load_metadata,
    require_episodes,
    save_episode,
    seed_of,
)
from envs.errors import CorruptFileError, UserError

pytestmark = pytest.mark.slow  # starts processes (CLI runs, worker pools, env engines)

ROOT = Path(__file__).resolve().parents[1]


def check_episode(episode: Episode) -> None:
    steps = len(episode)
    assert episode.observations.shape == (steps + 1, 64, 64, 3)
    assert episode.observations.dtype == np.uint8
    assert episode.rewards.shape == episode.terminated.shape == episode.truncated.shape == (steps,)
    assert episode.terminated[-1] or episode.truncated[-1]
    assert not (episode.terminated[:-1] | episode.truncated[:-1]).any()


@pytest.mark.parametrize("env_id,policy", [("VizdoomTakeCover-v1", "held"), ("ALE/Pong-v5", "random")])
def test_two_workers_write_loadable_episodes(tmp_path, env_id, policy):
    limit = None if env_id.startswith("Vizdoom") else 1
    episodes = 4 if limit is None else 2
    if env_id == "ALE/Pong-v5":
        # a full Pong episode is ~800 agent steps: fine, but keep the test short with 2 episodes
        pass
    summary = collect(env_id, episodes, tmp_path, workers=2, seed=5, policy=policy, progress=False)
    files = episode_files(tmp_path)
    assert [seed_of(f) for f in files] == list(range(5, 5 + episodes))
    loaded = [load_episode(f) for f in files]
    for episode in loaded:
        check_episode(episode)
    assert summary.steps == sum(len(e) for e in loaded)
    meta = load_metadata(tmp_path)
    assert meta["env_id"] == env_id and meta["policy"] == policy and meta["frame"] == [64, 64, 3]


def test_held_policy_holds_actions(tmp_path):
    collect("VizdoomTakeCover-v1", 1, tmp_path, policy="held", progress=False)
    (_, episode), = iter_episodes(tmp_path)
    changes = np.count_nonzero(np.diff(episode.actions)) + 1
    assert changes < len(episode) / 2  # random 1-10 step holds change ~every 5.5 steps


def test_constant_policy_holds_one_random_action_per_episode():
    from envs.policies import make_policy

    space = gym.spaces.Discrete(3)
    episodes = [make_policy("constant", space, np.random.default_rng(seed)) for seed in range(30)]
    actions = [{policy(np.zeros(1)) for _ in range(50)} for policy in episodes]
    assert all(len(held) == 1 for held in actions)  # one action for the whole episode
    assert set().union(*actions) == {0, 1, 2}  # which one is random per episode


def test_rerun_resumes_without_repeating_seeds(tmp_path):
    collect("VizdoomTakeCover-v1", 2, tmp_path, workers=2, progress=False)
    before = {f: f.stat().st_mtime_ns for f in episode_files(tmp_path)}
    summary = collect("VizdoomTakeCover-v1", 5, tmp_path, workers=2, progress=False)
    assert summary.episodes_new == 3 and summary.episodes_total == 5
    assert [seed_of(f) for f in episode_files(tmp_path)] == [0, 1, 2, 3, 4]
    assert all(f.stat().st_mtime_ns == t for f, t in before.items())  # nothing re-collected


def test_killed_collection_resumes(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "collect", "--env", "VizdoomTakeCover-v1",
               "--episodes", "12", "--out", str(tmp_path), "--workers", "2", "--no-progress"]
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    deadline = time.time() + 120
    while len(episode_files(tmp_path)) < 3 and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # the whole group, as a machine losing power would
    process.wait()
    survivors = episode_files(tmp_path)
    assert 3 <= len(survivors) < 12
    for path in survivors:
        load_episode(path)  # every file on disk is whole: writes are atomic
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [seed_of(f) for f in episode_files(tmp_path)] == list(range(12))
    assert not list(tmp_path.glob(".*.tmp"))


def _die_once_factory(marker, space, rng):
    from envs.policies import random_policy

    if not os.path.exists(marker):
        Path(marker).write_text("died")
        os._exit(17)  # a worker crashing mid-episode
    return random_policy(space, rng)


def test_dead_worker_is_replaced_and_its_episode_rerun(tmp_path):
    import functools

    factory = functools.partial(_die_once_factory, str(tmp_path / "marker"))
    out = tmp_path / "data"
    summary = collect("VizdoomTakeCover-v1", 3, out, workers=2, policy_factory=factory, progress=False)
    assert summary.episodes_total == 3
    assert [seed_of(f) for f in episode_files(out)] == [0, 1, 2]


def test_corrupt_file_is_reported_and_skipped(tmp_path, caplog):
    collect("VizdoomTakeCover-v1", 3, tmp_path, progress=False)
    victim = episode_files(tmp_path)[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(CorruptFileError):
        load_episode(victim)
    readable = [path for path, _ in iter_episodes(tmp_path)]
    assert victim not in readable and len(readable) == 2
    assert any("corrupt episode file" in r.message for r in caplog.records)
    assert len(require_episodes(tmp_path)) == 2
    # collecting again replaces the corrupt episode
    summary = collect("VizdoomTakeCover-v1", 3, tmp_path, progress=False)
    assert summary.episodes_new == 1
    load_episode(victim)


def test_garbage_and_inconsistent_episodes_are_rejected(tmp_path):
    (tmp_path / "ep_0000000000.npz.zst").write_bytes(b"not an episode")
    with pytest.raises(CorruptFileError):
        load_episode(tmp_path / "ep_0000000000.npz.zst")
    bad = Episode(np.zeros((3, 64, 64, 3), np.uint8), np.zeros(5, np.int64), np.zeros(5, np.float32),
                  np.zeros(5, bool), np.zeros(5, bool))
    with pytest.raises(CorruptFileError, match="observations"):
        save_episode(tmp_path / "ep_0000000001.npz.zst", bad)


def test_empty_or_foreign_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a rollout dataset"):
        require_episodes(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"env_id": "VizdoomTakeCover-v1"}))
    with pytest.raises(UserError, match="no readable episodes"):
        require_episodes(tmp_path)
    with pytest.raises(UserError, match="VizdoomTakeCover-v1"):
        collect("ALE/Pong-v5", 1, tmp_path, progress=False)


def test_plan_seeds_skips_done():
    assert plan_seeds({0, 2}, 5, 0) == [1, 3, 4]
    assert plan_seeds({0, 1, 2}, 2, 0) == []
