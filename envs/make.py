"""Build real environments from standard Gymnasium ids, all with one preprocessing path.

Every env made here yields observations of shape (64, 64, 3) uint8, whatever its family:

- Atari ``ALE/<Game>-v5``: 210x160x3 frame, no crop (the score is part of the state); v5
  defaults kept: sticky actions 0.25, frameskip 4, 108,000-frame cap.
- ViZDoom ``Vizdoom...-v1``: the Dict's ``screen``, 240x320x3, no crop (take_cover draws no
  HUD); frame skip 1; TakeCover capped at 2100 steps (the World Models protocol).
- Box2D ``CarRacing-v3`` (``box2d`` extra): 96x96x3, the bottom 12 rows (dashboard) cropped.

Resizing uses ``cv2.INTER_LINEAR``: ~25 us/frame against ~150 us for INTER_AREA, which
matters when collection runs at thousands of steps per second.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import cv2
import gymnasium as gym
import numpy as np

from envs.errors import UserError

FRAME_SIZE = 64
OBS_SHAPE = (FRAME_SIZE, FRAME_SIZE, 3)

# World Models' Doom protocol: episodes end at 2100 steps (take_cover.cfg has no timeout).
WORLD_MODELS_DOOM_LIMITS = {"VizdoomTakeCover-v1": 2100}
VIZDOOM_DIR = "_vizdoom"  # relative to the working directory, where ViZDoom puts it


@dataclass(frozen=True)
class Family:
    """How one env family is imported, cropped and described."""

    name: str
    module: str
    install_hint: str
    crop_top: int = 0
    crop_bottom: int = 0


ATARI = Family("atari", "ale_py", "pip install ale-py")
VIZDOOM = Family("vizdoom", "vizdoom", "pip install vizdoom")
BOX2D = Family("box2d", "Box2D", 'pip install "world-models-rl[box2d]"', crop_bottom=12)


def family_of(env_id: str) -> Family:
    """The family of a Gymnasium id; a one-line UserError for ids we do not support."""
    if env_id.startswith("ALE/"):
        return ATARI
    if env_id.startswith("Vizdoom"):
        return VIZDOOM
    if env_id.startswith("CarRacing"):
        return BOX2D
    raise UserError(
        f"unknown env id {env_id!r}: use an Atari id such as ALE/Pong-v5, a ViZDoom id such as "
        "VizdoomTakeCover-v1, or CarRacing-v3"
    )


def _import_family(family: Family) -> None:
    try:
        module = importlib.import_module(family.module)
    except ImportError as error:
        raise UserError(
            f"{family.name} environments need the {family.module!r} package ({error}): "
            f"run `{family.install_hint}`"
        ) from None
    if family is ATARI:
        gym.register_envs(module)
    elif family is VIZDOOM:
        importlib.import_module("vizdoom.gymnasium_wrapper")
        from envs.my_way_home import register_my_way_home  # needs vizdoom: imported here, not at the top

        register_my_way_home()  # VizdoomMyWayHomeSparse-v0
        # Each DoomGame writes into ./_vizdoom/ and creates it when missing; two worker processes
        # racing to create it crash one of them (SIGSEGV, "Failed to create ./_vizdoom/"), so it
        # is made here first (exist_ok: safe when workers do it at once).
        os.makedirs(VIZDOOM_DIR, exist_ok=True)


def preprocess_frame(frame: np.ndarray, family: Family) -> np.ndarray:
    """Crop a raw RGB frame (H, W, 3) uint8 for its family and resize it to (64, 64, 3) uint8."""
    height = frame.shape[0]
    frame = frame[family.crop_top : height - family.crop_bottom]
    return cv2.resize(frame, (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_LINEAR)


class FrameObservation(gym.ObservationWrapper):
    """Turn any family's observation into the (64, 64, 3) uint8 frame the models see."""

    def __init__(self, env: gym.Env, family: Family) -> None:
        super().__init__(env)
        self.family = family
        self.observation_space = gym.spaces.Box(0, 255, OBS_SHAPE, np.uint8)

    def observation(self, observation):
        frame = observation["screen"] if isinstance(observation, dict) else observation
        return preprocess_frame(frame, self.family)


class FireToStart(gym.Wrapper):
    """On Atari games with lives whose action set has FIRE, the first step of each life presses FIRE.

    Breakout (and games like it) wait for FIRE to serve the ball after the start and after every
    lost life. A controller trained in a dream that ends at a lost life learns that not serving is
    safe; in the real game it then plays the whole 108,000-frame cap without a point. This is the
    FireResetEnv of OpenAI Baselines and Stable-Baselines3, applied to every life rather than only
    at reset, since evaluation plays whole games without life-loss resets. The overridden step is
    still one agent step (the budget counts it), and ``info["action"]`` says which action ran, so
    the episode files record FIRE there. Games without lives (Pong, Boxing, Freeway) are untouched.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.fire = env.unwrapped.get_action_meanings().index("FIRE")
        self.serve = False

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self.serve = info.get("lives", 0) > 0
        return observation, info

    def step(self, action):
        if self.serve:
            action = self.fire
        lives = self.env.unwrapped.ale.lives()
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.serve = 0 < info.get("lives", 0) < lives
        return observation, reward, terminated, truncated, {**info, "action": action}


def _needs_serve(env: gym.Env) -> bool:
    """An ALE game with lives and a FIRE action (Breakout: yes; Pong, Boxing, Freeway: no)."""
    unwrapped = env.unwrapped
    return "FIRE" in unwrapped.get_action_meanings() and unwrapped.ale.lives() > 0


def check_env_id(env_id: str) -> Family:
    """The family of an id that Gymnasium can make here; a one-line UserError otherwise (unknown
    id, family package missing). Cheap: it builds no env, so commands call it before any work."""
    family = family_of(env_id)
    _import_family(family)
    if env_id not in gym.registry:
        raise UserError(f"unknown env id {env_id!r}: {family.name} has no such environment")
    return family


def make_env(
    env_id: str,
    render_mode: str | None = None,
    max_episode_steps: int | None = None,
    **kwargs,
) -> gym.Env:
    """Make a real env whose observations are (64, 64, 3) uint8 frames.

    ``max_episode_steps`` overrides the protocol's step limit (TakeCover: 2100). Extra keyword
    arguments go to ``gymnasium.make``. Works headless: no display is ever opened.
    """
    family = check_env_id(env_id)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # CarRacing's pygame, headless
    if max_episode_steps is None:
        max_episode_steps = WORLD_MODELS_DOOM_LIMITS.get(env_id)
    env = gym.make(env_id, render_mode=render_mode, max_episode_steps=max_episode_steps, **kwargs)
    if family is VIZDOOM:
        from envs.my_way_home import MY_WAY_HOME_TASKS, TimeoutIsTruncation

        if env_id in MY_WAY_HOME_TASKS:
            env = TimeoutIsTruncation(env)
    if family is ATARI and _needs_serve(env):
        env = FireToStart(env)
    return FrameObservation(env, family)


def _frameskip(spec: gym.envs.registration.EnvSpec | None) -> int:
    """Emulator frames per agent step (ALE v5: 4; ViZDoom and CarRacing here: 1)."""
    frames = spec.kwargs.get("frameskip", 1) if spec else 1
    return frames if isinstance(frames, int) else 1  # a (low, high) range is not used here


def env_info(env_id: str) -> dict:
    """JSON-able description of an env's preprocessing and action space (for metadata files)."""
    family = family_of(env_id)
    env = make_env(env_id)
    try:
        space = env.action_space
        action = (
            {"type": "discrete", "n": int(space.n)}
            if isinstance(space, gym.spaces.Discrete)
            else {"type": "box", "shape": list(space.shape), "low": space.low.tolist(),
                  "high": space.high.tolist()}
        )
        return {
            "env_id": env_id,
            "family": family.name,
            "frame": list(OBS_SHAPE),
            "crop_top": family.crop_top,
            "crop_bottom": family.crop_bottom,
            "resize": "cv2.INTER_LINEAR",
            "max_episode_steps": env.spec.max_episode_steps if env.spec else None,
            "frameskip": _frameskip(env.spec),
            "action_space": action,
            "fire_to_start": isinstance(env.env, FireToStart),
        }
    finally:
        env.close()
