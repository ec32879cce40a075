"""The dream: a batched Gymnasium ``VectorEnv`` stepped entirely by the learned models.

Each of the ``num_envs`` dreams starts from the latent of a real frame (sampled from the
latent cache), steps the memory (``world_models.memory.Memory``: the MDN-RNN or TD-VAE) with the
controller's actions, samples z_{t+1} at temperature tau, ends an episode from the memory's done
head (threshold or sampled), and pays the task's reward (``survival``: +1 per step, as TakeCover;
``model``: the memory's reward head). One tensor program steps all dreams at once, on the chosen
device, with all randomness from its own seeded generator.

With ``jump`` K > 1 (a memory that predicts K steps ahead: TD-VAE) every decision advances the
dream K steps with the action held over them: the reward is the memory's prediction of the K
steps' total (survival: K), done says the episode ends within the K steps, and the episode's
step count (its truncation) advances by K. A dream then costs one model step per K env steps;
an episode that ends inside a jump is counted to the jump's end (at most K - 1 steps too many).

The observation a controller sees is the memory's feature vector: [z_t, h_t] (optionally also
c_t) for the MDN-RNN, where h_t is M's state after (z_{t-1}, a_{t-1}): the World Models controller
input; [z_t, s_t] for TD-VAE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from world_models.memory import Memory
from world_models.rewards import Curiosity


@dataclass
class DreamConfig:
    temperature: float = 1.15
    """Sampling temperature tau of M's mixture (paper Doom: 1.15)."""
    done_mode: str = "threshold"
    """threshold: done when p(done) > done_threshold; sample: done ~ Bernoulli(p), p calibrated."""
    done_threshold: float = 0.5
    done_weight: float = 1.0
    """The weight M's done loss gave terminal steps. A BCE with pos_weight w learns the odds of
    death times w, so sampling undoes it: p = sigmoid(logit - log w). Uncorrected, a dream with
    w = 10 dies about ten times too often."""
    reward_mode: str = "survival"
    """survival: +1 per step (TakeCover); model: M's reward head."""
    max_episode_steps: int = 2100
    include_cell: bool = False
    """Give the controller the LSTM cell c as well as h."""
    jump: int = 1
    """Env steps per decision (the action held over them); > 1 needs a memory that jumps (TD-VAE)."""


class DreamVecEnv(VectorEnv):
    """``num_envs`` dreams stepped as one batched program (Gymnasium VectorEnv, next-step autoreset).

    ``step_tensor`` / ``reset_tensor`` are the torch-native fast path used by the trainers; the
    Gymnasium ``step`` / ``reset`` wrap them with numpy conversion.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": ["rgb_array"], "render_fps": 35}

    def __init__(self, memory: Memory, start_mu: torch.Tensor, start_log_sigma: torch.Tensor, num_envs: int,
                 config: DreamConfig | None = None, vae=None, seed: int | None = None,
                 render_mode: str | None = None, critics: Sequence[Memory] = (),
                 curiosity: Curiosity | None = None) -> None:
        """``critics``: more memories (same V, same actions) stepped alongside on the dream's own z
        and actions; a dream dies where the most pessimistic of them and the memory says so
        (largest done logit), so a controller cannot live on one model's missed deaths. The memory
        alone moves z and feeds C. ``curiosity``: the reward hook's intrinsic reward added to every
        step's (``world_models.rewards``: from the models' predictions, never the dream's sample)."""
        self.model = memory.eval()
        self.critics = [critic.eval() for critic in critics]
        self.config = config or DreamConfig()
        self.curiosity = curiosity
        _check_models(memory, self.critics, self.config.jump, curiosity)
        self.device = next(memory.parameters()).device
        self.start_mu = start_mu.to(self.device)
        self.start_sigma = start_log_sigma.exp().to(self.device)
        self.num_envs = self.batch_size = num_envs
        self.vae = vae
        self.render_mode = render_mode
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0 if seed is None else seed)
        self.discrete = memory.discrete_actions
        self.single_feature_dim = memory.feature_dim(self.config.include_cell)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (self.single_feature_dim,), np.float32)
        self.single_action_space = (gym.spaces.Discrete(memory.action_dim) if self.discrete else
                                    gym.spaces.Box(-1.0, 1.0, (memory.action_dim,), np.float32))
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._needs_reset = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self.z = self.state = self.steps = None
        self.critic_states: list = []

    # ---- torch-native API -------------------------------------------------------------
    @torch.no_grad()
    def reset_tensor(self, seed: int | None = None) -> torch.Tensor:
        """Start every dream afresh; returns features (num_envs, F)."""
        if seed is not None:
            self.generator.manual_seed(seed)
        self.num_envs = self.batch_size  # undo any compact()
        self._needs_reset = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.z = self._start_latents(self.num_envs)
        self.state = self.model.observe(self.z, self.model.initial_state(self.num_envs, self.device))
        self.critic_states = [critic.observe(self.z, critic.initial_state(self.num_envs, self.device))
                              for critic in self.critics]
        self.steps = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        return self.features()

    def features(self) -> torch.Tensor:
        return self.model.features(self.z, self.state, self.config.include_cell)

    @torch.no_grad()
    def step_tensor(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every dream one decision (``jump`` steps): returns features, reward, terminated,
        truncated (each batched).

        Dreams that ended on the previous step are reset first (next-step autoreset): their
        action is ignored, their reward is 0 and their new features are the reset ones.
        """
        resetting = self._needs_reset.clone()
        jump = self.config.jump
        imagined = self.model.imagine(self.z, actions, self.state, self.config.temperature, self.generator, jump)
        self.state = imagined.state
        critic_predictions = self._step_critics(actions)
        done_logit = imagined.done_logit
        for prediction in critic_predictions:  # the most pessimistic model decides a death
            done_logit = torch.maximum(done_logit, prediction.done_logit)
        if self.config.done_mode == "sample":
            p_done = torch.sigmoid(done_logit - math.log(self.config.done_weight))
            terminated = torch.rand(p_done.shape, generator=self.generator, device=self.device) < p_done
        else:
            terminated = torch.sigmoid(done_logit) > self.config.done_threshold
        survival = self.config.reward_mode == "survival"
        reward = torch.full_like(imagined.done_logit, jump) if survival else imagined.reward
        if self.curiosity is not None:
            predictions = [(self.model, imagined.prediction), *zip(self.critics, critic_predictions, strict=True)]
            reward = reward + self.curiosity.dream(self.z, actions, predictions)
        self.z = imagined.z
        self.steps += jump
        truncated = (self.steps >= self.config.max_episode_steps) & ~terminated
        if resetting.any():
            self._reset_some(resetting)
            reward = torch.where(resetting, torch.zeros_like(reward), reward)
            terminated, truncated = terminated & ~resetting, truncated & ~resetting
        self._needs_reset = terminated | truncated
        return self.features(), reward, terminated, truncated

    def _step_critics(self, actions: torch.Tensor) -> list:
        """Every critic's prediction for the step (z_t, a_t), its state advanced."""
        predictions = []
        for i, critic in enumerate(self.critics):
            prediction, self.critic_states[i] = critic.step(self.z, actions, self.critic_states[i])
            predictions.append(prediction)
        return predictions

    def compact(self, keep: torch.Tensor) -> None:
        """Drop the dreams where ``keep`` is False (their state is discarded; ``num_envs`` shrinks)."""
        self.z = self.z[keep]
        self.state = self.model.select(self.state, keep)
        self.critic_states = [critic.select(state, keep) for critic, state in zip(self.critics, self.critic_states,
                                                                                   strict=True)]
        self.steps = self.steps[keep]
        self._needs_reset = self._needs_reset[keep]
        self.num_envs = int(keep.sum())

    def _start_latents(self, n: int) -> torch.Tensor:
        index = torch.randint(len(self.start_mu), (n,), generator=self.generator, device=self.device)
        noise = torch.randn((n, self.start_mu.shape[1]), generator=self.generator, device=self.device)
        return self.start_mu[index] + self.start_sigma[index] * noise

    def _reset_some(self, mask: torch.Tensor) -> None:
        n = int(mask.sum())
        self.z[mask] = self._start_latents(n)
        self.state = self.model.observe(self.z, self.model.reset(self.state, mask), mask)
        self.critic_states = [critic.observe(self.z, critic.reset(state, mask), mask)
                              for critic, state in zip(self.critics, self.critic_states, strict=True)]
        self.steps[mask] = 0

    # ---- Gymnasium VectorEnv API -------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self.reset_tensor(seed).cpu().numpy(), {}

    def step(self, actions):
        actions = torch.as_tensor(np.asarray(actions), device=self.device)
        actions = actions.long() if self.discrete else actions.float()
        features, reward, terminated, truncated = self.step_tensor(actions)
        return (features.cpu().numpy(), reward.float().cpu().numpy(), terminated.cpu().numpy(),
                truncated.cpu().numpy(), {})

    @torch.no_grad()
    def render(self) -> np.ndarray | None:
        """Decoded frames of all dreams through V: (num_envs, 64, 64, 3) uint8."""
        if self.vae is None or self.z is None:
            return None
        frames = self.vae.decode(self.z).clamp(0, 1)
        return (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class SingleDreamEnv(gym.Env):
    """A single dream as a plain ``gymnasium.Env`` (for ``check_env`` and one-off use)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 35}

    def __init__(self, dream: DreamVecEnv) -> None:
        assert dream.num_envs == 1
        self.dream = dream
        self.observation_space = dream.single_observation_space
        self.action_space = dream.single_action_space
        self.render_mode = "rgb_array" if dream.vae is not None else None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        features = self.dream.reset_tensor(seed)
        return features[0].cpu().numpy(), {}

    def step(self, action):
        action = torch.as_tensor(np.asarray(action)[None], device=self.dream.device)
        action = action.long() if self.dream.discrete else action.float()
        features, reward, terminated, truncated = self.dream.step_tensor(action)
        return (features[0].cpu().numpy(), float(reward[0]), bool(terminated[0]), bool(truncated[0]), {})

    def render(self):
        frames = self.dream.render()
        return None if frames is None else frames[0]


@torch.no_grad()
def dream_rollouts(dream: DreamVecEnv, act, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Play the first episode of every dream: returns and lengths (env steps), each (num_envs,).

    ``act(features (B, F), index (B,)) -> actions`` is the batched policy; ``index`` says which
    of the original dreams each row is. Finished dreams stop counting at once and are dropped
    from the batch (``compact``) once they are half of it, so a few long episodes do not keep
    the whole population's cost.
    """
    features = dream.reset_tensor(seed)
    index = torch.arange(dream.num_envs, device=dream.device)
    alive = torch.ones(dream.num_envs, dtype=torch.bool, device=dream.device)
    returns = torch.zeros(dream.num_envs, device=dream.device)
    lengths = torch.zeros(dream.num_envs, dtype=torch.int64, device=dream.device)
    while alive.any():
        features, reward, terminated, truncated = dream.step_tensor(act(features, index))
        returns[index] += torch.where(alive, reward.float(), torch.zeros_like(reward, dtype=torch.float32))
        lengths[index] += alive.long() * dream.config.jump  # env steps, whole jumps
        alive &= ~(terminated | truncated)
        if int(alive.sum()) <= len(index) // 2:
            dream.compact(alive)
            index, features, alive = index[alive], features[alive], alive[alive]
    return returns, lengths


def _check_models(memory: Memory, critics: Sequence[Memory], jump: int, curiosity: Curiosity | None = None) -> None:
    if curiosity is not None and jump > 1:
        raise ValueError("curiosity rewards one-step transitions: a jumpy dream has none to reward")
    if curiosity is not None and curiosity.kind == "mdn" and not critics:
        raise ValueError("mdn curiosity in a dream pays the models' disagreement: it needs critics (other Ms)")
    if not 1 <= jump <= memory.max_jump:
        raise ValueError(f"a dream jump of {jump} steps needs a memory that predicts that far ahead "
                         f"(this {memory.kind} predicts up to {memory.max_jump})")
    if critics and jump > 1:
        raise ValueError("death critics step one env step at a time: they cannot follow a jumpy dream")
    for critic in critics:
        if (critic.z_dim, critic.action_dim, critic.discrete_actions) != \
                (memory.z_dim, memory.action_dim, memory.discrete_actions):
            raise ValueError("a death critic must share the memory's latent size and action space")


@torch.no_grad()
def held_action_lengths(memory: Memory, start_mu: torch.Tensor, start_log_sigma: torch.Tensor,
                        config: DreamConfig, dreams: int = 64, seed: int = 1) -> list[float]:
    """Mean dream length of each discrete action held throughout (``dreams`` dreams per action).

    A held action is the cheapest policy CMA-ES can find; in TakeCover it dies at ~170 real steps,
    so an M under which one lives far longer is an M whose dream rewards that exploit.
    """
    lengths = []
    for action in range(memory.action_dim):
        dream = DreamVecEnv(memory, start_mu, start_log_sigma, dreams, config, seed=seed)
        _, length = dream_rollouts(dream, lambda features, index, a=action: torch.full(
            (len(features),), a, dtype=torch.long, device=features.device), seed=seed)
        lengths.append(round(float(length.float().mean()), 1))
    return lengths
