"""The dream env: Gymnasium conformity, seeded determinism, done/truncation/autoreset semantics,
batched rollouts and rendering through V."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from world_models.dream import DreamConfig, DreamVecEnv, SingleDreamEnv, dream_rollouts
from world_models.mdnrnn import MDNRNN
from world_models.vae import ConvVAE

Z, HIDDEN, ACTIONS = 8, 16, 3


def model(done_bias: float | None = None, discrete: bool = True) -> MDNRNN:
    torch.manual_seed(0)
    mdn = MDNRNN(Z, ACTIONS if discrete else 2, discrete, hidden=HIDDEN, mixtures=3)
    if done_bias is not None:  # p(done) ~ 1 or ~ 0 whatever the state
        with torch.no_grad():
            mdn.done_head.weight.zero_()
            mdn.done_head.bias.fill_(done_bias)
    return mdn


def dream(num_envs: int = 4, done_bias: float | None = None, seed: int = 0, vae=None, **config) -> DreamVecEnv:
    start_mu = torch.randn(10, Z, generator=torch.Generator().manual_seed(1))
    start_log_sigma = torch.full((10, Z), -2.0)
    return DreamVecEnv(model(done_bias, config.pop("discrete", True)), start_mu, start_log_sigma, num_envs,
                       DreamConfig(**config), vae=vae, seed=seed)


def test_single_dream_passes_gymnasium_env_checker() -> None:
    torch.manual_seed(0)
    env = SingleDreamEnv(dream(num_envs=1, vae=ConvVAE(z_dim=Z).eval()))
    check_env(env, skip_render_check=False)


def test_continuous_single_dream_passes_env_checker() -> None:
    check_env(SingleDreamEnv(dream(num_envs=1, discrete=False)))


def test_spaces_and_feature_layout() -> None:
    env = dream(num_envs=5, include_cell=True)
    features, _ = env.reset(seed=0)
    assert features.shape == (5, env.model.feature_dim(True)) == (5, Z + 2 * HIDDEN)
    assert env.single_action_space.n == ACTIONS and env.action_space.shape == (5,)
    np.testing.assert_array_equal(features[:, Z:], 0.0)  # zero carry at reset


def run(env: DreamVecEnv, steps: int, seed: int) -> list[np.ndarray]:
    features, _ = env.reset(seed=seed)
    actions = np.random.default_rng(0).integers(ACTIONS, size=(steps, env.num_envs))
    trace = [features]
    for a in actions:
        features, reward, terminated, truncated, _ = env.step(a)
        trace += [features, reward, terminated, truncated]
    return trace


def test_same_seed_same_dreams_other_seed_other_dreams() -> None:
    first, second = run(dream(), 20, seed=3), run(dream(), 20, seed=3)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    other = run(dream(), 20, seed=4)
    assert not np.array_equal(first[0], other[0])


def test_temperature_changes_the_spread_of_dreams() -> None:
    def spread(temperature: float) -> float:
        env = dream(num_envs=256, temperature=temperature, done_bias=-20.0)
        env.reset(seed=0)
        env.step(np.zeros(256, dtype=np.int64))  # every dream from its own start: compare one step later
        features, *_ = env.step(np.zeros(256, dtype=np.int64))
        return float(features[:, :Z].std())

    assert spread(0.05) < spread(1.0) < spread(2.0)


def test_done_head_ends_every_dream_then_next_step_autoreset() -> None:
    env = dream(num_envs=4, done_bias=20.0)
    env.reset(seed=0)
    actions = np.zeros(4, dtype=np.int64)
    _, reward, terminated, truncated, _ = env.step(actions)
    assert terminated.all() and not truncated.any() and (reward == 1).all()
    features, reward, terminated, truncated, _ = env.step(actions)  # the reset step
    assert not terminated.any() and not truncated.any() and (reward == 0).all()
    np.testing.assert_array_equal(features[:, Z:], 0.0)  # fresh carry after the reset
    _, _, terminated, _, _ = env.step(actions)
    assert terminated.all()


def test_dreams_that_never_die_are_truncated_at_max_steps() -> None:
    env = dream(num_envs=3, done_bias=-20.0, max_episode_steps=7)
    env.reset(seed=0)
    for step in range(1, 8):
        _, _, terminated, truncated, _ = env.step(np.ones(3, dtype=np.int64))
        assert not terminated.any()
        assert truncated.all() == (step == 7) and truncated.any() == (step == 7)


def test_model_reward_mode_pays_the_reward_head() -> None:
    env = dream(num_envs=2, done_bias=-20.0, reward_mode="model")
    with torch.no_grad():
        env.model.reward_head.weight.zero_()
        env.model.reward_head.bias.fill_(0.25)
    env.reset(seed=0)
    _, reward, *_ = env.step(np.zeros(2, dtype=np.int64))
    np.testing.assert_allclose(reward, 0.25)


def test_sampled_done_ends_about_p_of_the_dreams() -> None:
    env = dream(num_envs=4000, done_bias=0.0, done_mode="sample")  # p(done) = 0.5
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(np.zeros(4000, dtype=np.int64))
    assert 0.45 < terminated.mean() < 0.55


def test_sampled_done_undoes_the_weight_the_done_loss_gave_deaths() -> None:
    """M trained with pos_weight w = 10 outputs odds 10x the true ones: logit log(10 * 0.1 / 0.9)
    means p = 0.1, so dreams die at 10% a step, not at sigmoid(logit) = 53%."""
    logit = float(np.log(10 * 0.1 / 0.9))
    env = dream(num_envs=4000, done_bias=logit, done_mode="sample", done_weight=10.0)
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(np.zeros(4000, dtype=np.int64))
    assert 0.085 < terminated.mean() < 0.115


@pytest.mark.parametrize("done_bias, max_steps, expected", [(20.0, 50, 1), (-20.0, 9, 9)])
def test_dream_rollouts_return_first_episode_lengths(done_bias: float, max_steps: int, expected: int) -> None:
    env = dream(num_envs=6, done_bias=done_bias, max_episode_steps=max_steps)
    returns, lengths = dream_rollouts(env, lambda features, index: torch.zeros(len(index), dtype=torch.int64),
                                      seed=0)
    assert lengths.tolist() == [expected] * 6 and returns.tolist() == [float(expected)] * 6


class ScheduledDeaths(DreamVecEnv):
    """Dream i (original numbering) dies on its step 3 * (i + 1): known lengths to check the bookkeeping."""

    def reset_tensor(self, seed=None):
        self.ids = torch.arange(self.batch_size)
        return super().reset_tensor(seed)

    def step_tensor(self, actions):
        features, reward, _, truncated = super().step_tensor(actions)
        return features, reward, self.steps == 3 * (self.ids + 1), truncated

    def compact(self, keep):
        super().compact(keep)
        self.ids = self.ids[keep]


def test_dream_rollouts_with_uneven_deaths_count_each_dream_to_its_own_end() -> None:
    env = ScheduledDeaths(model(done_bias=-20.0), torch.zeros(1, Z), torch.zeros(1, Z), 8, seed=0)
    rows_seen = []

    def act(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        assert torch.equal(index, env.ids)  # the policy is told which dream each row is
        rows_seen.append(len(index))
        return torch.zeros(len(index), dtype=torch.int64)

    returns, lengths = dream_rollouts(env, act, seed=0)
    assert lengths.tolist() == [3, 6, 9, 12, 15, 18, 21, 24]
    torch.testing.assert_close(returns, lengths.float())
    assert min(rows_seen) < 8  # finished dreams were dropped from the batch


def test_compact_keeps_the_state_of_the_dreams_it_keeps() -> None:
    env = dream(num_envs=6, done_bias=-20.0)
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.arange(6) % ACTIONS)
    keep = torch.tensor([True, False, True, True, False, False])
    z, (h, c), steps = env.z.clone(), (part.clone() for part in env.state), env.steps.clone()
    env.compact(keep)
    assert env.num_envs == 3
    torch.testing.assert_close(env.z, z[keep])
    torch.testing.assert_close(env.state[0], h[:, keep])
    torch.testing.assert_close(env.state[1], c[:, keep])
    assert torch.equal(env.steps, steps[keep])


def mortal_model(seed: int) -> MDNRNN:
    """An M whose done head depends on the state, so its dreams die at uneven steps."""
    torch.manual_seed(seed)
    mdn = MDNRNN(Z, ACTIONS, True, hidden=HIDDEN, mixtures=3)
    with torch.no_grad():
        mdn.done_head.weight.mul_(30.0)
        mdn.done_head.bias.fill_(-3.0)
    return mdn


def first_episodes(critics: list[MDNRNN], num_envs: int = 32, seed: int = 3) -> torch.Tensor:
    start_mu = torch.randn(10, Z, generator=torch.Generator().manual_seed(1))
    env = DreamVecEnv(mortal_model(0), start_mu, torch.full((10, Z), -2.0), num_envs,
                      DreamConfig(max_episode_steps=200), seed=seed, critics=critics)
    _, lengths = dream_rollouts(env, lambda features, index: (features[:, 0] > 0).long(), seed=seed)
    return lengths


def test_a_death_critic_only_adds_deaths_to_the_same_dreams() -> None:
    alone = first_episodes([])
    assert alone.unique().numel() > 3  # uneven deaths: compaction is exercised
    assert torch.equal(first_episodes([mortal_model(0)]), alone)  # a critic equal to M changes nothing
    assert torch.equal(first_episodes([model(done_bias=-20.0)]), alone)  # a critic that never predicts death
    assert first_episodes([model(done_bias=20.0)]).tolist() == [1] * 32  # one that always does
    # one dream at a time (compaction re-deals the sampling noise): M moves z, the critic only kills
    alone, with_critic = (torch.cat([first_episodes(critics, 1, seed) for seed in range(16)])
                          for critics in ([], [mortal_model(1)]))
    assert (with_critic <= alone).all() and (with_critic < alone).any()


def test_a_death_critic_must_share_the_latent_and_action_space() -> None:
    other = MDNRNN(Z + 1, ACTIONS, True, hidden=HIDDEN, mixtures=3)
    with pytest.raises(ValueError, match="latent size and action space"):
        DreamVecEnv(model(), torch.zeros(1, Z), torch.zeros(1, Z), 2, critics=[other])


def test_render_decodes_every_dream_through_v() -> None:
    env = dream(num_envs=3, vae=ConvVAE(z_dim=Z).eval())
    env.reset(seed=0)
    frames = env.render()
    assert frames.shape == (3, 64, 64, 3) and frames.dtype == np.uint8
    assert dream(num_envs=1).render() is None
