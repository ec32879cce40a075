"""How each env's reward and termination enter M and the dream, by env family, not by name.

- ViZDoom TakeCover pays +1 per step alive and ends at death: the dream pays +1 per step
  (``survival``) and dies where M's done head says so; M's reward head is not used.
- Atari (ALE v5) pays the game's score: M learns the clipped reward sign(r) in {-1, 0, +1}
  (as DQN, SimPLe and DreamerV3 do: scores differ by orders of magnitude between games and a
  few large rewards would dominate M's reward loss), and a life lost counts as an episode end
  for M's done head, so a dream dies at M's predicted life loss (the "episodic life" rule of
  training; the real env still plays whole games at evaluation, no life-loss resets). C's dream
  return is then the clipped score of one life.
- Every other env (other ViZDoom scenarios, CarRacing): M's reward head with the raw reward,
  and the env's own termination. MyWayHome (dense and the package's sparse variant) is one:
  +1 at the vest, a -0.0001 living penalty, the 2100-step timeout a truncation; an episode is a
  success when its return passes ``success_return`` (the vest was reached).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from envs.make import ATARI, family_of

# tasks whose reward is exactly +1 per step survived: the dream pays that without M's reward head
SURVIVAL_TASKS = ("VizdoomTakeCover-v1",)
# goal tasks: an episode whose return passes this reached the goal (MyWayHome: +1 at the vest,
# at most -0.21 of living penalty over 2100 steps)
GOAL_RETURNS = {"VizdoomMyWayHome-v1": 0.5, "VizdoomMyWayHomeSparse-v0": 0.5}


@dataclass(frozen=True)
class TaskRules:
    dream_reward: str
    """survival: +1 per step in the dream | model: M's reward head."""
    clip_rewards: bool
    """M learns sign(r) instead of r."""
    life_loss_ends: bool
    """A life lost is an episode end for M's done head (and so for the dream)."""
    success_return: float | None = None
    """Goal tasks: an episode whose return passes this is a success (evaluation reports the rate)."""

    def to_dict(self) -> dict:
        return asdict(self)


def task_rules(env_id: str) -> TaskRules:
    """The rules of ``env_id``'s family (see the module docstring)."""
    if env_id in SURVIVAL_TASKS:
        return TaskRules(dream_reward="survival", clip_rewards=False, life_loss_ends=False)
    if family_of(env_id) is ATARI:
        return TaskRules(dream_reward="model", clip_rewards=True, life_loss_ends=True)
    return TaskRules(dream_reward="model", clip_rewards=False, life_loss_ends=False,
                     success_return=GOAL_RETURNS.get(env_id))
