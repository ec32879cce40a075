"""ViZDoom MyWayHome, dense and sparse, for the curiosity study (Pathak et al. 2017, ICM).

- Dense: the stock ``VizdoomMyWayHome-v1`` (``scenarios/my_way_home.cfg``): skill 5, living reward
  -0.0001, +1 at the green armor (the vest), 2100-tic timeout, frame skip 1, Discrete(6)
  (no-op, MOVE_RIGHT, MOVE_LEFT, MOVE_FORWARD, TURN_RIGHT, TURN_LEFT). The map's ACS ENTER script
  puts the player on one of 17 map spots (tids 10..26) with a uniform random angle, from the game's
  RNG, which the wrapper seeds from ``reset(seed=...)``; the ICM paper calls this setting "dense".
- Sparse: ``VizdoomMyWayHomeSparse-v0``, registered here (no official id exists). Same wad, cfg,
  rewards, buttons and 2100-step limit; every episode starts at one fixed far spot and angle.

The map (TEXTMAP of ``my_way_home.wad``, read with a small UDMF parser): the vest is thing tid 22,
type 2018, at (1040, -352), at the end of a dead-end corridor south of the north-east room. The 17
spawn spots (type 9001) were confirmed by 200 seeded resets of the dense env: exactly those 17
positions, each 2.5-9.5% of the time. Walking distance to the vest (shortest 8-connected paths on a
4-unit grid of the map, walls inflated by the player's 16-unit radius; ``SPAWN_SPOTS`` below):
spot 15 (543.986, -672.089), at the far end of the L-shaped dead-end room at the bottom of the
south-west wing, is the farthest, about 1,520 map units; next come spot 14 (~1,410, the same
room), 13 (~1,280, the room above) and 10 (~1,260, the west room); the dense spawns average
~880. Euclidean distance would pick spot 10 instead (819 units against 590): a poor proxy here,
since the way to the vest goes through the northern rooms. So the sparse start is

    SPARSE_START = (544, -672), angle 180 degrees (facing west, along the room toward its exit)

(``warp`` takes whole map units). The ICM paper's "sparse" start is its room 13, ~270 steps at
action repeat 4 from the vest (its "very sparse" is room 17); its room numbering is not in the
wad, so this is the farthest room by construction, not a reproduction of either.

How the player is moved (found empirically on ViZDoom 1.3.2): at every reset, after the stock
wrapper's own reset (its ``set_seed`` from the Gymnasium seed, ``new_episode``; the ACS script has
already placed the player randomly), two setup tics run inside ``reset``:

1. ``warp 544 -672`` (a ZDoom cheat command: the game is started with ``+sv_cheats 1
   +viz_nocheat 0``; without both it is silently ignored), and a turn of exactly the missing angle:
   ``turnspeeds N N N N`` makes one tic of TURN_LEFT (or TURN_RIGHT) rotate by N/65536 of a turn,
   and the ACS angle is a multiple of 1/65536 turn, so the result is exactly 180.0 degrees.
2. a no-op tic with the turn speeds back at ZDoom's defaults (640 1280 320 320, i.e. 3.52 and
   1.76 degrees a tic, measured); it also resets the engine's slow-turn counter.

Before/after (POSITION_X, POSITION_Y, ANGLE), e.g. seed 0: (686.6, -62.4, 266.9) -> (544.0,
-672.0, 180.0). To keep the agent's clock identical to the dense env, the cfg's
``episode_start_time`` 10 becomes 8 and ``episode_timeout`` (which counts from the start time)
2100 becomes 2102: the first observation is at tic 10 and the episode times out after 2100 agent
steps, as in the dense env. The setup tics' living reward (-0.0002) is not reported. ``reset``
checks the position and angle and raises if the move did not happen. The seed still seeds the
game's RNG (it only drives the spawn in this map, so the sparse env is deterministic given the
actions).

Termination (the stock wrapper's convention, which the sparse env inherits unchanged; measured):
the step that touches the vest has reward 1 - 0.0001 and is not yet terminal; the next step (the
map's ``Exit_Normal``) has reward -0.0001 and ``terminated=True, truncated=False``. The 2100th step
gives ``terminated=True`` *and* ``truncated=True`` (``is_episode_finished`` is true at a timeout
too). Terminal steps carry an all-zero frame. There is no Gymnasium TimeLimit
(``max_episode_steps`` is None): the cfg's timeout is the limit.

A scripted waypoint walker (turn toward the next room centre, else forward) from the sparse start
reaches the vest in 546 of the 2100 steps (frame skip 1), i.e. ~137 steps at ICM's action repeat 4.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.utils import EzPickle
from vizdoom import Button, GameVariable
from vizdoom.gymnasium_wrapper.gymnasium_env_defns import VizdoomScenarioEnv

from envs.tasks import GOAL_RETURNS

DENSE_ID = "VizdoomMyWayHome-v1"
SPARSE_ID = "VizdoomMyWayHomeSparse-v0"
MY_WAY_HOME_TASKS = (DENSE_ID, SPARSE_ID)

VEST_XY = (1040.0, -352.0)  # the green armor, tid 22 in the map
# The map's spawn spots (tid: x, y, walking distance to the vest in map units, see above).
SPAWN_SPOTS = {
    10: (240.0, -176.0, 1260), 11: (464.0, -176.0, 1040), 12: (470.331, -321.672, 1130),
    13: (466.983, -466.749, 1280), 14: (460.326, -596.12, 1410), 15: (543.986, -672.089, 1520),
    16: (575.372, -171.77, 930), 17: (686.83, -173.247, 860), 18: (686.646, -62.382, 750),
    19: (464.098, -60.496, 970), 20: (460.326, 56.436, 930), 21: (571.6, 54.55, 820),
    22: (694.19, 58.322, 700), 23: (871.474, 54.55, 520), 24: (1043.1, 60.208, 410),
    25: (1039.737, -61.676, 290), 26: (1039.328, -169.884, 180),
}
SPARSE_START_XY = (544, -672)  # map spot 15, the farthest from the vest by walking distance
SPARSE_START_ANGLE = 180.0  # degrees, 0 = east, counterclockwise
GOAL_THRESHOLD = GOAL_RETURNS[DENSE_ID]  # the living penalty over 2100 steps is only -0.21; the vest is +1

SETUP_TICS = 2
_UNITS = 65536  # ZDoom turn speeds: 1/65536 of a full turn per tic
_DEFAULT_TURNSPEEDS = "turnspeeds 640 1280 320 320"  # ZDoom's angleturn[] defaults


def reached_goal(total_reward: float) -> bool:
    """Whether an episode of MyWayHome (dense or sparse) reached the vest before the time limit."""
    return total_reward > GOAL_THRESHOLD


class MyWayHomeSparseEnv(VizdoomScenarioEnv):
    """Stock MyWayHome, every episode started at ``SPARSE_START_XY`` facing ``SPARSE_START_ANGLE``."""

    def __init__(
        self,
        frame_skip: int = 1,
        max_buttons_pressed: int = 1,
        render_mode: str | None = None,
        treat_episode_timeout_as_truncation: bool = True,
        use_multi_binary_action_space: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            "my_way_home.cfg",
            frame_skip=frame_skip,
            max_buttons_pressed=max_buttons_pressed,
            render_mode=render_mode,
            treat_episode_timeout_as_truncation=treat_episode_timeout_as_truncation,
            use_multi_binary_action_space=use_multi_binary_action_space,
            **kwargs,
        )
        EzPickle.__init__(
            self,
            frame_skip,
            max_buttons_pressed,
            render_mode,
            treat_episode_timeout_as_truncation,
            use_multi_binary_action_space,
            **kwargs,
        )
        game = self.game
        game.add_game_args("+sv_cheats 1 +viz_nocheat 0")  # `warp` is a cheat
        game.set_episode_start_time(game.get_episode_start_time() - SETUP_TICS)
        game.set_episode_timeout(game.get_episode_timeout() + SETUP_TICS)
        self._setup_buttons = list(game.get_available_buttons())

    def _press(self, button: Button | None) -> None:
        action = [0.0] * len(self._setup_buttons)
        if button is not None:
            action[self._setup_buttons.index(button)] = 1.0
        self.game.make_action(action, 1)

    def _pose(self) -> tuple[float, float, float]:
        return tuple(
            self.game.get_game_variable(v)
            for v in (GameVariable.POSITION_X, GameVariable.POSITION_Y, GameVariable.ANGLE)
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed, options=options)
        _, _, angle = self._pose()
        turn = (round((SPARSE_START_ANGLE - angle) / 360 * _UNITS)) % _UNITS
        if turn > _UNITS // 2:
            turn -= _UNITS
        x, y = SPARSE_START_XY
        self.game.send_game_command(f"warp {x} {y}")
        self.game.send_game_command(f"turnspeeds {abs(turn)} {abs(turn)} {abs(turn)} {abs(turn)}")
        self._press(None if turn == 0 else Button.TURN_LEFT if turn > 0 else Button.TURN_RIGHT)
        self.game.send_game_command(_DEFAULT_TURNSPEEDS)
        self._press(None)
        pose = self._pose()
        if not np.allclose(pose, (x, y, SPARSE_START_ANGLE), atol=1e-3) or self.game.is_episode_finished():
            raise RuntimeError(f"{SPARSE_ID}: could not move the player to {(x, y, SPARSE_START_ANGLE)}: {pose}")
        self.state = self.game.get_state()
        return self._VizdoomEnv__collect_observations(), {}  # the stock wrapper's private helper


class TimeoutIsTruncation(gym.Wrapper):
    """ViZDoom reports its cfg timeout as terminated *and* truncated; Gymnasium's convention (and
    M's done head, which must not learn a death at the clock it cannot see) wants a truncation."""

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, reward, terminated and not truncated, truncated, info


def register_my_way_home() -> None:
    """Register ``VizdoomMyWayHomeSparse-v0`` with Gymnasium (a no-op when it already is)."""
    if SPARSE_ID not in gym.registry:
        gym.register(id=SPARSE_ID, entry_point="envs.my_way_home:MyWayHomeSparseEnv")
