"""MyWayHome dense (stock) and sparse (fixed far start, built in envs/my_way_home.py)."""

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from vizdoom import GameVariable

from envs.make import check_env_id, make_env
from envs.my_way_home import (
    DENSE_ID,
    MY_WAY_HOME_TASKS,
    SPARSE_ID,
    SPARSE_START_ANGLE,
    SPARSE_START_XY,
    SPAWN_SPOTS,
    VEST_XY,
    reached_goal,
    register_my_way_home,
)

pytestmark = pytest.mark.slow  # starts ViZDoom engines

FORWARD, TURN_RIGHT, TURN_LEFT = 3, 4, 5  # the Discrete(6) indices of the stock wrapper


def pose(env):
    game = env.unwrapped.game
    return tuple(game.get_game_variable(v) for v in (GameVariable.POSITION_X, GameVariable.POSITION_Y,
                                                      GameVariable.ANGLE))


def spot_of(x, y):
    """The map spawn spot at (x, y)."""
    (tid,) = [tid for tid, (sx, sy, _) in SPAWN_SPOTS.items() if math.hypot(sx - x, sy - y) < 1.0]
    return tid


@pytest.mark.timeout(60)
def test_sparse_starts_every_seed_at_the_same_far_pose():
    env = make_env(SPARSE_ID)
    frames, poses = [], set()
    for seed in range(6):
        observation, _ = env.reset(seed=seed)
        assert observation.shape == (64, 64, 3) and observation.dtype == np.uint8
        assert env.unwrapped.game.get_episode_time() == 10  # the agent's clock starts as the dense one's
        frames.append(observation)
        poses.add(pose(env))
    env.close()
    ((x, y, angle),) = poses
    assert (x, y) == SPARSE_START_XY and angle == pytest.approx(SPARSE_START_ANGLE, abs=1e-6)
    for frame in frames[1:]:
        np.testing.assert_array_equal(frame, frames[0])
    # the farthest of the map's spawn spots by walking distance
    assert spot_of(x, y) == max(SPAWN_SPOTS, key=lambda tid: SPAWN_SPOTS[tid][2])
    assert math.hypot(x - VEST_XY[0], y - VEST_XY[1]) > 500


@pytest.mark.timeout(60)
def test_dense_spawns_vary_with_the_seed_and_are_nearer_on_average():
    env = make_env(DENSE_ID)
    spawns = []
    for seed in range(12):
        env.reset(seed=seed)
        spawns.append(pose(env))
    env.reset(seed=3)
    assert pose(env) == spawns[3]  # the seed means something
    env.close()
    assert len({(round(x), round(y)) for x, y, _ in spawns}) >= 5
    assert len({round(angle) for _, _, angle in spawns}) >= 10
    walks = [SPAWN_SPOTS[spot_of(x, y)][2] for x, y, _ in spawns]
    sparse_walk = SPAWN_SPOTS[spot_of(*SPARSE_START_XY)][2]
    assert max(walks) <= sparse_walk and np.mean(walks) < 0.75 * sparse_walk


@pytest.mark.timeout(60)
@pytest.mark.parametrize("env_id", MY_WAY_HOME_TASKS)
def test_timeout_after_2100_steps_is_a_truncation(env_id):
    """The stock wrapper reports its cfg timeout as terminated=True *and* truncated=True; make_env's
    TimeoutIsTruncation makes it a truncation only (M's done head must not learn a death at a clock
    it cannot see); the sparse env keeps the same 2100 agent steps (its 2 setup tics are not the agent's)."""
    env = make_env(env_id)
    assert env.action_space == gym.spaces.Discrete(6) and env.spec.max_episode_steps is None
    env.reset(seed=0)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated) and steps < 2200:
        observation, reward, terminated, truncated, _ = env.step(0)
        assert observation.shape == (64, 64, 3) and observation.dtype == np.uint8
        steps += 1
    env.close()
    assert (steps, terminated, truncated) == (2100, False, True)
    assert reward == pytest.approx(-0.0001)


@pytest.mark.timeout(60)
def test_vest_is_reachable_from_the_sparse_start():
    """A waypoint walker (turn to the next room centre, else forward) gets +1 and a plain termination."""
    waypoints = [(465, -672), (465, -467), (467, -322), (464, -176), (575, -172), (687, -173), (687, -62),
                 (694, 58), (871, 55), (1043, 60), (1040, -62), (1040, -170), VEST_XY]
    env = make_env(SPARSE_ID)
    env.reset(seed=0)
    total, target = 0.0, 0
    for _ in range(2100):
        x, y, angle = pose(env)
        if math.hypot(waypoints[target][0] - x, waypoints[target][1] - y) < 20 and target < len(waypoints) - 1:
            target += 1
        heading = math.degrees(math.atan2(waypoints[target][1] - y, waypoints[target][0] - x))
        error = (heading - angle + 180) % 360 - 180
        action = TURN_LEFT if error > 6 else TURN_RIGHT if error < -6 else FORWARD
        _, reward, terminated, truncated, _ = env.step(action)
        total += reward
        if terminated or truncated:
            break
    env.close()
    assert terminated and not truncated
    assert reached_goal(total) and total == pytest.approx(1 - 0.0001 * 546, abs=0.02)


@pytest.mark.timeout(60)
def test_sparse_env_passes_gymnasium_checker():
    check_env_id(SPARSE_ID)
    env = gym.make(SPARSE_ID)
    check_env(env.unwrapped)
    env.close()


def test_registration_is_idempotent():
    register_my_way_home()
    register_my_way_home()
    assert check_env_id(SPARSE_ID).name == "vizdoom"
    assert gym.registry[SPARSE_ID].entry_point == "envs.my_way_home:MyWayHomeSparseEnv"


def test_reached_goal_threshold():
    assert not reached_goal(-0.21)  # 2100 steps of living penalty
    assert not reached_goal(0.0)
    assert reached_goal(1.0 - 0.21)  # the vest on the last step
    assert reached_goal(0.9999)
