"""The reward hook: what a return adds to the task's reward, in one place.

Every return the package computes (a dream step, CMA-ES's and NPG's real-env returns, the
agent's collected episodes) is the task's reward plus, with curiosity on, eta times an
intrinsic reward of the transition (z_t, a_t, z_t+1) in V's latent space:

- ``icm``: 1/2 ||f(phi(z_t), a_t) - phi(z_t+1)||^2, the forward error of ICM
  (``world_models/curiosity.py``), trained online from the agent's real transitions. phi sits on
  V's latent, not on frames: V has already squeezed each frame into the z that C reads, and an
  ICM over 32 numbers trains in seconds on CPU beside the agent.
- ``mdn``: the memory's surprise -log p(z_t+1 | state_t) per latent dimension above its mean on
  the run's own data, max(0, surprise / z_dim - baseline): "more surprising than usual" pays,
  familiar transitions pay nothing (a negative bonus would pay for ending episodes early).

In a dream z_t+1 is the memory's own sample, so a prediction error against it is the dream's
sampling noise: novelty the dream made up (Burda et al. 2018: prediction-error curiosity is
drawn to stochastic sources). The dream's bonus therefore never looks at the sample:

- ``icm`` measures ICM's forward error against the memory's expected next latent E[z_t+1], capped
  at the novelty of real transitions (``ICMLearner.novelty_cap``, the 99th percentile of what the
  ICM met in real episodes): off the data, E[z_t+1] is the memory's extrapolation, and an error
  against it hundreds of times any real one pays C for finding the memory's mistakes;
- ``mdn`` pays the disagreement of the memory and the dream's critics (other Ms of the same V)
  about E[z_t+1]: the variance across models, averaged over latent dims. Models that learnt the
  same transitions agree on them whatever their noise; they disagree where data was missing.

With curiosity off no hook exists and no code path changes: results stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from envs.errors import UserError
from world_models.memory import Memory

CURIOSITY_KINDS = ("none", "icm", "mdn")
ICM_DIR = "icm"  # RUN/icm: the ICM the agent's real transitions train online
ICM_EPOCHS = 4  # passes over each new batch of real transitions: they are few, and seen once


class Curiosity(Protocol):
    kind: str
    scale: float  # eta

    def real(self, z: torch.Tensor, actions: torch.Tensor, z_next: torch.Tensor,
             prediction: Any = None) -> torch.Tensor:
        """eta * intrinsic reward of real transitions (B,): z, z_next (B, z); ``prediction`` the
        memory's ``step`` prediction of z_next (the mdn kind needs it)."""

    def episode(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``real`` at every step of one real episode: z (T+1, z) V's latents, actions (T,) -> (T,)."""

    def dream(self, z: torch.Tensor, actions: torch.Tensor, predictions: Sequence[tuple[Memory, Any]]) -> torch.Tensor:
        """eta * intrinsic reward of a dream step (B,) from the models' predictions of z_t+1, never
        from the sample: (memory, prediction) pairs, the dreaming memory's first, its critics' after."""

    def learn(self, z: torch.Tensor, actions: torch.Tensor, z_next: torch.Tensor) -> dict:
        """Train on the agent's real transitions (online); metrics of the update."""

    def save(self, run_dir: Path) -> None:
        """Keep what was learnt in the run directory (a later stage resumes it)."""


def check_curiosity(kind: str, scale: float) -> None:
    if kind not in CURIOSITY_KINDS:
        raise UserError(f"--curiosity {kind!r}: use one of {', '.join(CURIOSITY_KINDS)}")
    if kind != "none" and not scale > 0:
        raise UserError(f"--curiosity-scale must be > 0 with --curiosity {kind}, got {scale}")


class ICMCuriosity:
    """``icm``: eta/2 ||f(phi(z_t), a_t) - phi(z_t+1)||^2 (real) or, in the dream, against E[z_t+1]
    and at most eta times the real novelty cap."""

    kind = "icm"

    def __init__(self, learner, scale: float) -> None:
        self.learner, self.scale = learner, scale

    def learn(self, z, actions, z_next) -> dict:
        return self.learner.update(z, actions, z_next, epochs=ICM_EPOCHS)

    def save(self, run_dir: Path) -> None:
        self.learner.save(icm_dir(run_dir))

    def real(self, z, actions, z_next, prediction=None) -> torch.Tensor:
        return self.scale * self.learner.intrinsic(z, actions, z_next)

    def episode(self, z, actions) -> torch.Tensor:
        return self.real(z[:-1], actions, z[1:])

    def dream(self, z, actions, predictions) -> torch.Tensor:
        memory, prediction = predictions[0]
        novelty = self.learner.intrinsic(z, actions, memory.expected_next(prediction).to(z.dtype))
        if self.learner.novelty_cap is not None:
            novelty = novelty.clamp(max=self.learner.novelty_cap)
        return self.scale * novelty


class SurpriseCuriosity:
    """``mdn``: eta * max(0, surprise / z_dim - baseline) (real); critics' disagreement (dream)."""

    kind = "mdn"

    def __init__(self, memory: Memory, scale: float, baseline: float) -> None:
        self.memory, self.scale, self.baseline = memory, scale, baseline

    def real(self, z, actions, z_next, prediction=None) -> torch.Tensor:
        if prediction is None:
            raise ValueError("mdn curiosity needs the memory's prediction of z_next")
        return self._pay(self.memory.surprise(prediction, z_next))

    def episode(self, z, actions) -> torch.Tensor:
        return self._pay(episode_surprises(self.memory, z, actions))

    def _pay(self, surprise: torch.Tensor) -> torch.Tensor:
        return self.scale * (surprise / self.memory.z_dim - self.baseline).clamp(min=0)

    def learn(self, z, actions, z_next) -> dict:
        return {}  # the memory learns the agent's transitions in its own stage (train.py mdnrnn)

    def save(self, run_dir: Path) -> None:
        pass

    def dream(self, z, actions, predictions) -> torch.Tensor:
        if len(predictions) < 2:
            raise ValueError("mdn curiosity in a dream needs critics: models to disagree with")
        means = torch.stack([memory.expected_next(prediction).float() for memory, prediction in predictions])
        return self.scale * means.var(0, unbiased=False).mean(-1)


@torch.no_grad()
def episode_surprises(memory: Memory, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """-log p(z_t+1 | state after z_0..t) at every step of one real episode, the memory stepped as
    the acting agent steps it: z (T+1, z), actions (T,) or (T, A) -> (T,)."""
    state = memory.initial_state(1, z.device)
    surprises = []
    for t in range(len(actions)):
        state = memory.observe(z[t : t + 1], state)
        prediction, state = memory.step(z[t : t + 1], actions[t : t + 1], state)
        surprises.append(memory.surprise(prediction, z[t + 1 : t + 2]))
    return torch.cat(surprises) if surprises else torch.zeros(0)


def surprise_baseline(memory: Memory, episodes, limit: int = 32) -> float:
    """The memory's mean surprise per latent dim on up to ``limit`` of a run's episodes
    (``world_models.data.LatentEpisodes``, V's mean latents): what "usual" means for ``mdn``."""
    surprises = [episode_surprises(memory, episode.mu, episode.actions)
                 for episode in map(episodes.episode, range(min(limit, episodes.num_episodes)))]
    steps = sum(len(part) for part in surprises)
    if not steps:
        raise UserError("mdn curiosity needs episodes in the run's latent cache to measure the memory's "
                        "usual surprise; collect and train V first")
    return float(sum(float(part.sum()) for part in surprises)) / (steps * memory.z_dim)


def icm_dir(run_dir: Path) -> Path:
    return Path(run_dir) / ICM_DIR


def make_curiosity(kind: str, scale: float, run_dir: Path, memory: Memory, device: str | torch.device = "cpu",
                   seed: int = 0) -> Curiosity | None:
    """The hook for ``--curiosity kind --curiosity-scale scale`` (None for none). icm resumes
    ``RUN/icm`` when it exists, else starts a fresh ICM for the run's V and actions; mdn measures
    the memory's usual surprise on the run's latent cache."""
    check_curiosity(kind, scale)
    if kind == "none":
        return None
    if kind == "mdn":
        from world_models.latents import load_latent_cache

        return SurpriseCuriosity(memory, scale, surprise_baseline(memory, load_latent_cache(run_dir)))
    from world_models.train_icm import ICMConfig, load_or_create  # it imports this module

    learner = load_or_create(ICMConfig(run_dir=run_dir, seed=seed), memory.z_dim, memory.action_dim,
                             memory.discrete_actions, device)
    return ICMCuriosity(learner, scale)
