"""Natural policy gradient training of C on a batched feature env: the dream, or real envs.

A feature env has ``reset_tensor(seed) -> features (N, F)`` and ``step_tensor(actions) ->
(features, reward, terminated, truncated)`` with next-step autoreset: the step after an
episode ends is a reset step whose action is ignored. ``DreamVecEnv`` is one; ``RealFeatureEnv``
wraps N real envs with V and M to make another, so one loop trains in both worlds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from agents.controller import ControllerSpec
from agents.npg import NPGConfig, StochasticPolicy, ValueFunction, fit_value, gae, npg_update
from world_models.rewards import Curiosity


@dataclass
class Batch:
    features: torch.Tensor  # (T, N, F)
    actions: torch.Tensor  # (T, N) or (T, N, A), raw policy actions
    rewards: torch.Tensor  # (T, N)
    dones: torch.Tensor  # (T, N): the episode ended at this step
    valid: torch.Tensor  # (T, N): a real decision (not the ignored action of a reset step)
    last_features: torch.Tensor  # (N, F) for bootstrapping
    episode_returns: list[float]


class EpisodeTracker:
    """Sum rewards per env and report whole-episode returns as they finish."""

    def __init__(self, num_envs: int) -> None:
        self.running = torch.zeros(num_envs)
        self.finished: list[float] = []

    def update(self, reward: torch.Tensor, done: torch.Tensor, valid: torch.Tensor) -> None:
        self.running += torch.where(valid, reward.float().cpu(), torch.zeros_like(self.running))
        for index in torch.nonzero(done.cpu()).flatten().tolist():
            self.finished.append(float(self.running[index]))
            self.running[index] = 0.0

    def pop(self) -> list[float]:
        finished, self.finished = self.finished, []
        return finished


def collect_batch(env, policy: StochasticPolicy, features: torch.Tensor, valid_now: torch.Tensor,
                  horizon: int, tracker: EpisodeTracker, generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
    """``horizon`` steps of every env with the stochastic policy; returns the batch and validity."""
    steps = {"features": [], "actions": [], "rewards": [], "dones": [], "valid": []}
    for _ in range(horizon):
        actions = policy.act(features, generator=generator)
        next_features, reward, terminated, truncated = env.step_tensor(policy.env_action(actions))
        done = terminated | truncated
        for key, value in zip(steps, (features, actions, reward.float(), done, valid_now), strict=True):
            steps[key].append(value)
        tracker.update(reward, done, valid_now)
        valid_now = ~done  # the step after a done is a reset step
        features = next_features
    stacked = {k: torch.stack(v) for k, v in steps.items()}
    return Batch(**stacked, last_features=features, episode_returns=tracker.pop()), valid_now


def npg_iteration(batch: Batch, policy: StochasticPolicy, value_fn: ValueFunction, config: NPGConfig,
                  generator: torch.Generator) -> dict:
    """GAE advantages from the value baseline, one natural-gradient step, one value fit."""
    with torch.no_grad():
        values = torch.cat([value_fn(batch.features), value_fn(batch.last_features)[None]])
    # a reset step carries no decision: cut bootstrapping into it and leave it out of the losses
    dones = batch.dones | ~torch.roll(batch.valid, -1, dims=0)
    advantages, returns = gae(batch.rewards, values, dones.float(), config.gamma, config.lam)
    valid = batch.valid
    info = npg_update(policy, batch.features[valid], batch.actions[valid], advantages[valid], config)
    info["value_loss"] = fit_value(value_fn, batch.features[valid], returns[valid], config.value_epochs,
                                   config.value_lr, config.value_batch, generator)
    return info


def train_npg(env, spec: ControllerSpec, config: NPGConfig, iterations: int, horizon: int, seed: int,
              log: Callable[[dict], None], on_iteration: Callable[[int, StochasticPolicy], None] | None = None,
              ) -> StochasticPolicy:
    """Train a stochastic policy for ``iterations`` batches of ``horizon`` steps of every env."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    policy = StochasticPolicy(spec)
    value_fn = ValueFunction(spec.feature_dim)
    features = env.reset_tensor(seed).cpu()
    valid = torch.ones(len(features), dtype=torch.bool)
    tracker = EpisodeTracker(len(features))
    for iteration in range(iterations):
        batch, valid = collect_batch(_CpuView(env), policy, features, valid, horizon, tracker, generator)
        features = batch.last_features
        info = npg_iteration(batch, policy, value_fn, config, generator)
        returns = batch.episode_returns
        info.update(iteration=iteration + 1, episodes=len(returns),
                    mean_return=float(np.mean(returns)) if returns else float("nan"),
                    max_return=float(np.max(returns)) if returns else float("nan"))
        log(info)
        if on_iteration is not None:
            on_iteration(iteration + 1, policy)
    return policy


class _CpuView:
    """Runs the env on its device but hands CPU tensors to the (tiny) policy."""

    def __init__(self, env) -> None:
        self.env = env
        self.device = getattr(env, "device", torch.device("cpu"))

    def step_tensor(self, actions: torch.Tensor):
        return tuple(t.cpu() for t in self.env.step_tensor(actions.to(self.device)))


class RealFeatureEnv:
    """N real envs seen through V and a memory: the feature-env interface over the real world.

    ``envs`` is a Gymnasium vector env with next-step autoreset whose observations are
    (N, 64, 64, 3) uint8 frames: a ``SyncVectorEnv`` (the envs step in this process) or a
    ``RayVectorEnv`` (one Ray actor each), see ``envs.pool.make_vector_env``. All N frames are
    encoded in one batch per step. ``close()`` closes ``envs``.

    ``curiosity``: the reward hook adds its intrinsic reward to each step's (none on a reset step:
    its frame starts a new episode) and learns from every ``learn_every`` real transitions.
    """

    def __init__(self, envs, vae, memory, include_cell: bool = False, curiosity: Curiosity | None = None,
                 learn_every: int = 1024) -> None:
        self.envs = envs
        self.vae, self.memory, self.include_cell = vae, memory, include_cell
        self.device = next(memory.parameters()).device
        self.state = self.z = None
        self.ended = np.zeros(envs.num_envs, dtype=bool)
        self.curiosity, self.learn_every = curiosity, learn_every
        self._transitions: list[tuple[torch.Tensor, ...]] = []
        self.learnt: dict = {}  # the hook's last learning metrics

    @torch.no_grad()
    def _observe(self, frames: np.ndarray) -> torch.Tensor:
        from world_models.vae import frames_to_tensor

        self.z, _ = self.vae.encode(frames_to_tensor(torch.as_tensor(frames, device=self.device)))
        self.state = self.memory.observe(self.z, self.state)
        return self.memory.features(self.z, self.state, self.include_cell)

    def reset_tensor(self, seed: int | None = None) -> torch.Tensor:
        frames, _ = self.envs.reset(seed=seed)
        self.state = self.memory.initial_state(len(frames), self.device)
        self.ended[:] = False
        return self._observe(frames)

    @torch.no_grad()
    def step_tensor(self, actions: torch.Tensor):
        actions = actions.to(self.device)
        prediction, self.state = self.memory.step(self.z, actions, self.state)
        frames, reward, terminated, truncated, _ = self.envs.step(actions.cpu().numpy())
        # envs that were reset this step start from an empty memory
        resetting = torch.as_tensor(self.ended, device=self.device)
        self.state = self.memory.reset(self.state, resetting)
        self.ended = terminated | truncated
        as_tensor = lambda x: torch.as_tensor(x, device=self.device)  # noqa: E731
        z = self.z
        features, reward = self._observe(frames), as_tensor(reward)
        if self.curiosity is not None:
            reward = reward + self._bonus(z, actions, prediction, resetting)
        return features, reward, as_tensor(terminated), as_tensor(truncated)

    def _bonus(self, z: torch.Tensor, actions: torch.Tensor, prediction, resetting: torch.Tensor) -> torch.Tensor:
        bonus = self.curiosity.real(z, actions, self.z, prediction)
        real = ~resetting
        self._transitions.append((z[real], actions[real], self.z[real]))
        if sum(len(part[0]) for part in self._transitions) >= self.learn_every:
            self.learnt = self.curiosity.learn(*(torch.cat(parts) for parts in zip(*self._transitions, strict=True)))
            self._transitions = []
        return torch.where(resetting, torch.zeros_like(bonus), bonus)

    def close(self) -> None:
        self.envs.close()
