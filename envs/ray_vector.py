"""N Gymnasium envs on N Ray actors, behind the vector-env API of ``gym.vector.SyncVectorEnv``.

Each sub-env lives in a long-lived actor (``num_cpus=1``, ``num_gpus=0``, ``CUDA_VISIBLE_DEVICES=""``)
as a size-1 ``SyncVectorEnv`` with next-step autoreset, so its resets, autoresets and seeds are
exactly SyncVectorEnv's: ``reset(seed=s)`` seeds sub-env i with ``s + i``, and a ``RayVectorEnv``
and a ``SyncVectorEnv`` of the same env fns give the same observations, rewards and dones for
the same seed and actions. Ray's actors are at-most-once, so the driver keeps the bookkeeping,
as ``envs.ray_pool.RayPool`` does:

- a step sends every actor its action and waits with ``ray.wait`` and a deadline per actor:
  ``first_timeout`` for an actor's first call (it includes the actor's start), then
  ``max(min_timeout, timeout_factor x the median step time so far)``;
- an actor that died (its process or node is gone) or missed its deadline is killed and
  replaced by a new actor whose env is reset with a seed derived from the slot's reset seed, the
  slot and its number of replacements (deterministic, and a new episode each time). For that
  step the slot returns its last observation, reward 0, ``terminated=False``, ``truncated=True``
  (the episode was cut); its next step is the autoreset step (the new actor's reset observation,
  reward 0, no done) whatever its action, so the caller sees next-step autoreset as usual. A
  reset step itself is never cut: a lost actor is replaced and the reset redone in that step;
- a slot that loses ``max_deaths`` actors in a row without a successful step in between is a
  ``WorkerDiedError``; an exception raised in a live actor's env is raised here at once.

Actions are indexed per env (``actions[i]``): Discrete, MultiDiscrete and Box action spaces.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from envs.pool import require_ray
from envs.ray_pool import NO_GPU, lost_actor_errors
from envs.workers import WorkerDiedError

NEXT_STEP = gym.vector.AutoresetMode.NEXT_STEP


def _unbatch(info: dict) -> dict:
    """Sub-env 0's own info from a size-1 vector env's info (the value at 0 wherever its mask is set)."""
    return {key: _unbatch(value) if isinstance(value, dict) else value[0] for key, value in info.items()
            if not key.startswith("_") and info.get(f"_{key}", (True,))[0]}


class _EnvActor:
    """A Ray actor holding one env as a size-1 ``SyncVectorEnv`` with next-step autoreset."""

    def __init__(self, env_fn: Callable[[], gym.Env]) -> None:
        os.environ.update(NO_GPU)  # the runtime env sets it too; this covers a worker reused without it
        self.env_fn = env_fn
        self.env: gym.vector.SyncVectorEnv | None = None

    def _vector(self) -> gym.vector.SyncVectorEnv:
        # built in the first call, not in __init__: an env that cannot be built raises in that call
        # (an error, reported at once) instead of killing the actor (which would be replaced)
        if self.env is None:
            self.env = gym.vector.SyncVectorEnv([self.env_fn], autoreset_mode=NEXT_STEP)
        return self.env

    def spaces(self) -> tuple[gym.Space, gym.Space]:
        env = self._vector()
        return env.single_observation_space, env.single_action_space

    def reset(self, seed: int | None, options: dict | None) -> tuple[Any, dict]:
        obs, info = self._vector().reset(seed=seed, options=options)
        return obs[0], _unbatch(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self._vector().step(np.asarray([action]))
        return obs[0], reward[0], terminated[0], truncated[0], _unbatch(info)


@dataclass
class _Call:
    """A call in flight on one slot's actor."""

    ref: Any  # Ray object reference of its result
    kind: str  # "spaces", "reset" or "step"
    started: float  # time.monotonic() at submission
    first: bool  # the actor's first call: its deadline includes the actor's start


class RayVectorEnv(gym.vector.VectorEnv):
    """``len(env_fns)`` envs, one per Ray actor; ``env_fns`` are picklable (``functools.partial`` of
    a module-level function such as ``envs.make.make_env``).

    Connects to Ray (``address``: ``None`` starts or reuses a local instance, ``"auto"`` joins the
    cluster of ``ray start``) unless it is already initialised; the constructor returns once every
    actor has built its env (the spaces come from them)."""

    metadata = {"autoreset_mode": NEXT_STEP}

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], address: str | None = None, max_deaths: int = 3,
                 first_timeout: float = 120.0, min_timeout: float = 30.0, timeout_factor: float = 10.0) -> None:
        self.ray = require_ray()
        if not self.ray.is_initialized():
            self.ray.init(address=address, include_dashboard=False, log_to_driver=True)
        self.env_fns = list(env_fns)
        self.num_envs = len(self.env_fns)
        self.max_deaths = max_deaths
        self.first_timeout, self.min_timeout, self.timeout_factor = first_timeout, min_timeout, timeout_factor
        self.lost_errors = lost_actor_errors(self.ray)
        self.actor_class = self.ray.remote(num_cpus=1, num_gpus=0, max_restarts=0, max_task_retries=0,
                                           runtime_env={"env_vars": NO_GPU})(_EnvActor)
        self.actors = [self.actor_class.remote(env_fn) for env_fn in self.env_fns]
        self.fresh = set(range(self.num_envs))  # slots whose actor has not answered a call yet
        self.durations: list[float] = []  # seconds of steps that were not their actor's first call
        self.deaths = [0] * self.num_envs  # actors lost in a row since the slot's last successful step
        self.replacements = [0] * self.num_envs
        self.slot_seeds: list[int | None] = [None] * self.num_envs
        self.resetting: dict[int, _Call] = {}  # a replacement's reset: the slot's next step returns it
        self.autoreset = np.zeros(self.num_envs, dtype=np.bool_)  # the slot's next step is a reset step
        self.last_obs: np.ndarray | None = None
        try:
            observation_space, action_space = self._call_all("spaces", [()] * self.num_envs)[0]
        except BaseException:
            self.close()
            raise
        self.single_observation_space, self.single_action_space = observation_space, action_space
        self.observation_space = gym.vector.utils.batch_space(observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(action_space, self.num_envs)

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Observations (N, *obs shape) and infos; an int ``seed`` seeds env i with ``seed + i``."""
        if options is not None and "reset_mask" in options:
            raise NotImplementedError("RayVectorEnv resets all its envs: options['reset_mask'] is not supported")
        if seed is None or isinstance(seed, int):
            seed = [None if seed is None else seed + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"{len(seed)} seeds for {self.num_envs} envs")
        self.slot_seeds = list(seed)
        self.resetting.clear()  # a replacement's pending reset: superseded by this one
        results = self._call_all("reset", [(slot_seed, options) for slot_seed in seed])
        self.autoreset[:] = False
        self.last_obs = np.stack([obs for obs, _ in results])
        infos: dict = {}
        for slot, (_, info) in enumerate(results):
            infos = self._add_info(infos, info, slot)
        return self.last_obs.copy(), infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Observations (N, *obs shape), rewards (N,) float64, terminated and truncated (N,) bool, infos."""
        actions = np.asarray(actions)
        busy = {slot: self.resetting.pop(slot, None) or self._submit(slot, "step", actions[slot])
                for slot in range(self.num_envs)}
        results: dict[int, tuple] = {}
        while busy:
            answered, lost = self._wait(busy)
            for slot, (call, value) in answered.items():
                results[slot] = (value[0], 0.0, False, False, value[1]) if call.kind == "reset" else value
            for slot, why in lost.items():
                self._replace(slot, why)
                self.resetting[slot] = self._submit(slot, "reset", self._replacement_seed(slot), None)
                if self.autoreset[slot]:  # a reset step: its answer must be a reset observation
                    busy[slot] = self.resetting.pop(slot)
                else:  # mid-episode: the episode is cut, and the new actor's reset is the next step
                    results[slot] = (self.last_obs[slot], 0.0, False, True, {})
        rows = [results[slot] for slot in range(self.num_envs)]
        self.last_obs = np.stack([row[0] for row in rows])
        rewards = np.array([row[1] for row in rows], dtype=np.float64)
        terminated = np.array([row[2] for row in rows], dtype=np.bool_)
        truncated = np.array([row[3] for row in rows], dtype=np.bool_)
        infos: dict = {}
        for slot, row in enumerate(rows):
            infos = self._add_info(infos, row[4], slot)
        self.autoreset = terminated | truncated
        return self.last_obs.copy(), rewards, terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors.clear()
        self.resetting.clear()

    def timeout(self, first: bool) -> float:
        """Seconds a call may run before its actor counts as stuck."""
        if first or not self.durations:
            return self.first_timeout
        return max(self.min_timeout, self.timeout_factor * statistics.median(self.durations[-1000:]))

    def _submit(self, slot: int, kind: str, *args: Any) -> _Call:
        ref = getattr(self.actors[slot], kind).remote(*args)
        return _Call(ref, kind, time.monotonic(), slot in self.fresh)

    def _call_all(self, kind: str, args: list[tuple]) -> list[Any]:
        """``kind(*args[slot])`` on every slot's actor, in slot order; a lost actor is replaced and
        the same call made on the new one."""
        busy = {slot: self._submit(slot, kind, *args[slot]) for slot in range(self.num_envs)}
        results: dict[int, Any] = {}
        while busy:
            answered, lost = self._wait(busy)
            results.update({slot: value for slot, (_, value) in answered.items()})
            for slot, why in lost.items():
                self._replace(slot, why)
                busy[slot] = self._submit(slot, kind, *args[slot])
        return [results[slot] for slot in range(self.num_envs)]

    def _wait(self, busy: dict[int, _Call]) -> tuple[dict[int, tuple[_Call, Any]], dict[int, str]]:
        """Wait once, until every call has answered or the nearest deadline (at most 5 s): the
        answers and the lost slots (with why), each taken out of ``busy``. An exception raised in a
        live actor is raised here."""
        refs = [call.ref for call in busy.values()]
        ready = set(self.ray.wait(refs, num_returns=len(refs), timeout=self._wait_seconds(busy))[0])
        now = time.monotonic()
        answered, lost = {}, {}
        for slot, call in list(busy.items()):
            if call.ref in ready:
                del busy[slot]
                try:
                    answered[slot] = (call, self.ray.get(call.ref))
                except self.lost_errors as error:
                    lost[slot] = f"died ({type(error).__name__})"
                    continue
                self._answered(slot, call, now)
            elif now - call.started > self.timeout(call.first):
                del busy[slot]
                lost[slot] = f"missed its {self.timeout(call.first):.0f}s deadline"
        return answered, lost

    def _answered(self, slot: int, call: _Call, now: float) -> None:
        if call.kind == "step":
            self.deaths[slot] = 0
            if not call.first:
                self.durations.append(now - call.started)
        self.fresh.discard(slot)

    def _wait_seconds(self, busy: dict[int, _Call]) -> float:
        now = time.monotonic()
        nearest = min(call.started + self.timeout(call.first) - now for call in busy.values())
        return min(5.0, max(0.01, nearest))

    def _replace(self, slot: int, why: str) -> None:
        """Kill the actor at ``slot`` and start a new one there (or give up on the slot)."""
        self.ray.kill(self.actors[slot], no_restart=True)
        self.deaths[slot] += 1
        self.replacements[slot] += 1
        print(f"the Ray actor of env {slot} {why}; starting a new one", flush=True)
        if self.deaths[slot] >= self.max_deaths:
            raise WorkerDiedError(f"env {slot} lost {self.deaths[slot]} Ray actors in a row; giving up on it")
        self.actors[slot] = self.actor_class.remote(self.env_fns[slot])
        self.fresh.add(slot)

    def _replacement_seed(self, slot: int) -> int | None:
        """The reset seed of the slot's new actor: a function of the slot's reset seed, the slot and
        its replacements so far (None, a random episode, after an unseeded reset)."""
        base = self.slot_seeds[slot]
        if base is None:
            return None
        state = np.random.SeedSequence([base, slot, self.replacements[slot]]).generate_state(1)[0]
        return int(state >> 1)  # below 2**31: engines such as ViZDoom take a 32-bit seed
