"""Data-collection policies. A policy is a callable ``policy(observation) -> action``.

Factories take the action space and a numpy Generator so that an episode's actions are a
function of its seed alone.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from envs.errors import UserError

Policy = Callable[[np.ndarray], object]


def _sampler(space: gym.Space, rng: np.random.Generator) -> Callable[[], object]:
    if isinstance(space, gym.spaces.Discrete):
        return lambda: int(space.start + rng.integers(space.n))
    if isinstance(space, gym.spaces.Box):
        return lambda: rng.uniform(space.low, space.high).astype(space.dtype)
    raise UserError(f"action space {space} is not supported (Discrete or Box only)")


def random_policy(space: gym.Space, rng: np.random.Generator) -> Policy:
    """Uniform random actions."""
    sample = _sampler(space, rng)
    return lambda observation: sample()


def held_policy(space: gym.Space, rng: np.random.Generator, max_hold: int = 10) -> Policy:
    """World Models' Doom policy: a random action held for a random 1-``max_hold`` steps."""
    sample = _sampler(space, rng)
    state = {"action": None, "left": 0}

    def policy(observation: np.ndarray) -> object:
        if state["left"] == 0:
            state["action"] = sample()
            state["left"] = int(rng.integers(1, max_hold + 1))
        state["left"] -= 1
        return state["action"]

    return policy


def constant_policy(space: gym.Space, rng: np.random.Generator) -> Policy:
    """One random action held for the whole episode: a probe of where each action alone leads
    (e.g. into a wall), the cheapest policy a controller can find in a dream."""
    action = _sampler(space, rng)()
    return lambda observation: action


POLICIES = {"random": random_policy, "held": held_policy, "constant": constant_policy}


def make_policy(name: str, space: gym.Space, rng: np.random.Generator) -> Policy:
    if name not in POLICIES:
        raise UserError(f"unknown policy {name!r}: choose one of {', '.join(POLICIES)}")
    return POLICIES[name](space, rng)
