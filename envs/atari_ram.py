"""Where Atari games keep their objects' positions in the emulator's 128-byte RAM.

Addresses from AtariARI's annotations (Anand et al. 2019, ``atariari/benchmark/ram_annotations.py``)
for the four games of the Atari 100k study here. They are ground truth for probes: a regression
from V's z to, say, Pong's ball position tells a V that blurs the ball from one that drops it.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs.errors import UserError

RAM_OBJECTS: dict[str, dict[str, int]] = {
    "Pong": {"player_y": 51, "enemy_y": 50, "ball_x": 49, "ball_y": 54},
    "Breakout": {"player_x": 72, "ball_x": 99, "ball_y": 101},
    "Boxing": {"player_x": 32, "player_y": 34, "enemy_x": 33, "enemy_y": 35},
    "Freeway": {"player_y": 14},
}


def game_of(env_id: str) -> str:
    """``ALE/Pong-v5`` -> ``Pong``; a one-line UserError for a game without annotations."""
    game = env_id.removeprefix("ALE/").split("-")[0]
    if not env_id.startswith("ALE/") or game not in RAM_OBJECTS:
        raise UserError(f"no RAM annotations for {env_id!r}: annotated games are "
                        + ", ".join(f"ALE/{name}-v5" for name in RAM_OBJECTS))
    return game


def ram_objects(env: gym.Env, game: str) -> np.ndarray:
    """The annotated objects' RAM bytes (in ``RAM_OBJECTS[game]`` order) of an ALE env, as float32."""
    ram = env.unwrapped.ale.getRAM()
    return np.array([ram[address] for address in RAM_OBJECTS[game].values()], dtype=np.float32)
