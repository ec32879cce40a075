"""Every env family steps and yields the frames the models expect."""

import gymnasium as gym
import numpy as np
import pytest

from envs.errors import UserError
from envs.make import ATARI, env_info, make_env, preprocess_frame

FAMILIES = [
    "ALE/Pong-v5",
    "VizdoomTakeCover-v1",
    pytest.param("CarRacing-v3", marks=pytest.mark.skipif(
        __import__("importlib").util.find_spec("Box2D") is None, reason="box2d extra not installed")),
]


@pytest.mark.parametrize("env_id", FAMILIES)
def test_env_steps_and_yields_64x64x3_uint8(env_id):
    env = make_env(env_id)
    observation, _ = env.reset(seed=0)
    assert observation.shape == (64, 64, 3) and observation.dtype == np.uint8
    assert env.observation_space.contains(observation)
    frames = [observation]
    for _ in range(20):
        observation, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert observation.shape == (64, 64, 3) and observation.dtype == np.uint8
        frames.append(observation)
    assert np.std(np.stack(frames).astype(float)) > 1.0  # a real picture, not a blank frame
    env.close()


def test_protocols():
    doom = make_env("VizdoomTakeCover-v1")
    assert doom.spec.max_episode_steps == 2100
    assert doom.action_space == gym.spaces.Discrete(3)
    pong = make_env("ALE/Pong-v5")
    assert pong.unwrapped._frameskip == 4
    kwargs = pong.spec.kwargs
    assert kwargs["repeat_action_probability"] == 0.25
    assert kwargs["max_num_frames_per_episode"] == 108_000
    info = env_info("VizdoomTakeCover-v1")
    assert info["action_space"] == {"type": "discrete", "n": 3}


def test_same_seed_same_frames():
    def first_frames(seed):
        env = make_env("VizdoomTakeCover-v1")
        observation, _ = env.reset(seed=seed)
        frames = [observation] + [env.step(1)[0] for _ in range(10)]
        env.close()
        return np.stack(frames)

    np.testing.assert_array_equal(first_frames(3), first_frames(3))


def test_preprocess_resizes_any_frame():
    frame = np.random.default_rng(0).integers(0, 255, (210, 160, 3), dtype=np.uint8)
    assert preprocess_frame(frame, ATARI).shape == (64, 64, 3)


@pytest.mark.parametrize("env_id", ["Foo-v1", "ALE/NoSuchGame-v5", "VizdoomNoSuchMap-v1"])
def test_unknown_ids_give_one_line(env_id):
    with pytest.raises(UserError) as error:
        make_env(env_id)
    assert "\n" not in str(error.value) and env_id in str(error.value)


def test_missing_family_package_names_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_box2d(name, *args, **kwargs):
        if name == "Box2D":
            raise ImportError("No module named 'Box2D'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_box2d)
    with pytest.raises(UserError, match="box2d"):
        make_env("CarRacing-v3")


def test_vizdoom_dir_is_made_before_any_game_starts(tmp_path, monkeypatch):
    """Worker processes starting ViZDoom at once raced to create ./_vizdoom/ and one crashed
    (SIGSEGV); make_env creates it first, even when no game starts (here: an unknown map)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError):
        make_env("VizdoomNoSuchMap-v1")
    assert (tmp_path / "_vizdoom").is_dir()
