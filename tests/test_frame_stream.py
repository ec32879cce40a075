"""FrameStream, V's batches read from episode files: coverage, mixing, reproducibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from envs.episodes import Episode, episode_path, save_episode
from world_models.data import FrameStream

EPISODES, STEPS = 40, 24  # 25 frames per episode, 1,000 frames in all


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """Episodes whose every pixel holds the episode's index, so a frame tells where it came from."""
    directory = tmp_path_factory.mktemp("frames")
    paths = []
    for index in range(EPISODES):
        path = episode_path(directory, index)
        save_episode(path, Episode(
            observations=np.full((STEPS + 1, 64, 64, 3), index, np.uint8),
            actions=np.zeros(STEPS, np.int64), rewards=np.ones(STEPS, np.float32),
            terminated=np.zeros(STEPS, bool), truncated=np.zeros(STEPS, bool)))
        paths.append(path)
    return paths


def sources(batch: np.ndarray) -> np.ndarray:
    return batch[:, 0, 0, 0]


def test_an_epoch_yields_every_frame_once(files: list[Path]) -> None:
    batches = list(FrameStream(files, 64, seed=3, drop_last=False).epoch(0))
    counts = np.bincount(np.concatenate([sources(b) for b in batches]), minlength=EPISODES)
    assert counts.tolist() == [STEPS + 1] * EPISODES


def test_default_batches_mix_many_episodes(files: list[Path]) -> None:
    # A batch drawn from a pool of 8 episodes holds at most 16 of them (correlated gradients).
    mixed = [len(np.unique(sources(b))) for b in FrameStream(files, 64, seed=3).epoch(0)]
    narrow = [len(np.unique(sources(b))) for b in FrameStream(files, 64, seed=3, chunk_episodes=8).epoch(0)]
    assert max(narrow) <= 16  # its 8, plus the remainder carried over from the previous pool
    assert min(mixed) > 20


def test_the_order_is_a_function_of_seed_and_epoch(files: list[Path]) -> None:
    def order(seed: int, epoch: int) -> np.ndarray:
        return np.concatenate([sources(b) for b in FrameStream(files, 50, seed=seed).epoch(epoch)])

    np.testing.assert_array_equal(order(1, 2), order(1, 2))
    assert not np.array_equal(order(1, 2), order(1, 3))
    assert not np.array_equal(order(1, 2), order(2, 2))
