"""Reward and termination rules come from the env family: TakeCover's dream pays +1 per step as
before, Atari's M learns clipped rewards and a lost life as an episode end."""

import numpy as np
import pytest
import torch

from agents.train_controller import ControllerConfig, dream_config
from envs.collect import run_episode
from envs.episodes import Episode, load_episode, save_episode
from envs.make import make_env
from envs.policies import make_policy
from envs.tasks import task_rules
from world_models.latents import TargetRules, _encode_episode
from world_models.vae import ConvVAE


@pytest.mark.parametrize(("env_id", "reward", "clip", "life"), [
    ("VizdoomTakeCover-v1", "survival", False, False),
    ("VizdoomMyWayHome-v1", "model", False, False),
    ("ALE/Breakout-v5", "model", True, True),
    ("ALE/Pong-v5", "model", True, True),
    ("CarRacing-v3", "model", False, False),
])
def test_rules_by_family(env_id, reward, clip, life):
    rules = task_rules(env_id)
    assert (rules.dream_reward, rules.clip_rewards, rules.life_loss_ends) == (reward, clip, life)


def test_takecover_dream_is_unchanged_and_atari_dreams_pay_ms_reward():
    config = ControllerConfig(run_dir="unused")
    take_cover = dream_config(config, {"env_id": "VizdoomTakeCover-v1", "done_weight": 10.0})
    assert (take_cover.reward_mode, take_cover.done_weight, take_cover.temperature) == ("survival", 10.0, 1.15)
    assert dream_config(config, {"env_id": "ALE/Boxing-v5"}).reward_mode == "model"


@pytest.mark.timeout(120)
def test_a_real_atari_game_records_every_lost_life(tmp_path):
    env = make_env("ALE/Breakout-v5")
    episode = run_episode(env, make_policy("random", env.action_space, np.random.default_rng(0)), seed=0)
    env.close()
    assert episode.life_lost is not None and int(episode.life_lost.sum()) == 5  # 5 lives, the last one ends it
    assert episode.terminated[-1] and episode.life_lost[-1] and not episode.terminated[:-1].any()
    save_episode(tmp_path / "ep.npz.zst", episode)
    assert np.array_equal(load_episode(tmp_path / "ep.npz.zst").life_lost, episode.life_lost)


def test_an_env_without_lives_writes_the_episode_format_as_before(tmp_path):
    env = make_env("VizdoomTakeCover-v1")
    episode = run_episode(env, make_policy("random", env.action_space, np.random.default_rng(0)), seed=0)
    env.close()
    assert episode.life_lost is None
    save_episode(tmp_path / "ep.npz.zst", episode)
    assert load_episode(tmp_path / "ep.npz.zst").life_lost is None


def test_m_learns_clipped_rewards_and_lost_lives_as_episode_ends(tmp_path):
    steps = 6
    episode = Episode(
        observations=np.zeros((steps + 1, 64, 64, 3), np.uint8), actions=np.zeros(steps, np.int64),
        rewards=np.array([0, 4, -2, 0, 1, 0], np.float32), terminated=np.array([0, 0, 0, 0, 0, 1], bool),
        truncated=np.zeros(steps, bool), life_lost=np.array([0, 0, 1, 0, 0, 1], bool))
    path = tmp_path / "ep.npz.zst"
    save_episode(path, episode)
    vae = ConvVAE(z_dim=4)
    atari = _encode_episode(vae, path, TargetRules(clip_rewards=True, life_loss_ends=True))
    assert atari.rewards.tolist() == [0, 1, -1, 0, 1, 0]
    assert atari.terminated.tolist() == [False, False, True, False, False, True]
    raw = _encode_episode(vae, path)  # the identity rules: what every TakeCover cache holds
    assert torch.equal(raw.rewards, torch.from_numpy(episode.rewards))
    assert torch.equal(raw.terminated, torch.from_numpy(episode.terminated))


@pytest.mark.timeout(60)
def test_breakout_serves_each_life_with_fire_and_games_without_lives_are_untouched():
    from envs.make import FireToStart

    breakout = make_env("ALE/Breakout-v5")
    assert isinstance(breakout.env, FireToStart)
    right = breakout.unwrapped.get_action_meanings().index("RIGHT")
    episode = run_episode(breakout, lambda observation: right, seed=0)  # a policy that never serves
    breakout.close()
    assert episode.terminated[-1] and len(episode) < 2_000  # not the 27,000-step frame cap
    fire = [step for step, action in enumerate(episode.actions) if action != right]
    lives_start = [0] + [step + 1 for step in np.flatnonzero(episode.life_lost)[:-1]]
    assert fire == lives_start and len(fire) == 5  # FIRE recorded as the first step of each of 5 lives
    for env_id in ("ALE/Pong-v5", "ALE/Boxing-v5", "ALE/Freeway-v5"):
        env = make_env(env_id)
        assert not any(isinstance(layer, FireToStart) for layer in _layers(env)), env_id
        env.close()


def _layers(env):
    while hasattr(env, "env"):
        yield env
        env = env.env
