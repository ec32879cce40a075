"""Rollout collection: W independent worker processes (``envs.workers.WorkerPool``), each with its
own env, each writing its own episode files. The only inter-process traffic is one small message
per episode (no per-step IPC), so throughput stays at what the emulators allow.

A killed run loses at most the episodes in flight; running again with the same ``out``
directory resumes up to the requested count without repeating a seed. A worker that dies is
replaced and its episode re-run, so collection never hangs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from envs.episodes import (
    METADATA_FILE,
    Episode,
    atomic_write_bytes,
    atomic_write_json,
    encode_episode,
    episode_path,
    iter_episodes,
    load_metadata,
    save_episode,
    seed_of,
)
from envs.errors import UserError
from envs.make import env_info, make_env
from envs.policies import Policy, make_policy
from envs.pool import make_pool, workers_share_disk
from envs.version import package_version

PolicyFactory = Callable[[gym.Space, np.random.Generator], Policy]


def run_episode(env: gym.Env, policy: Policy, seed: int, max_steps: int | None = None) -> Episode:
    """Play one episode from ``env.reset(seed=seed)`` until it terminates or is truncated (by the
    env's limit, or after ``max_steps`` steps: a step budget's share)."""
    observation, info = env.reset(seed=seed)
    observations, actions, rewards, terminated, truncated, life_lost = [observation], [], [], [], [], []
    lives = info.get("lives")  # ALE reports lives; an env without them never loses one
    done = False
    while not done:
        action = policy(observation)
        observation, reward, term, trunc, info = env.step(action)
        observations.append(observation)
        actions.append(info.get("action", action))  # an env may override it (FireToStart)
        rewards.append(reward)
        terminated.append(term)
        truncated.append(trunc or (max_steps is not None and len(actions) >= max_steps and not term))
        life_lost.append(lives is not None and info.get("lives", lives) < lives)
        lives = info.get("lives", lives)
        done = term or truncated[-1]
    return Episode(
        observations=np.stack(observations),
        actions=np.asarray(actions, dtype=np.float32 if isinstance(actions[0], np.ndarray) else np.int64),
        rewards=np.asarray(rewards, dtype=np.float32),
        terminated=np.asarray(terminated, dtype=bool),
        truncated=np.asarray(truncated, dtype=bool),
        life_lost=np.asarray(life_lost, dtype=bool) if any(life_lost) else None,
    )


def named_policy_factory(name: str) -> PolicyFactory:
    """A picklable factory for one of the built-in policies (``random``, ``held``)."""
    make_policy(name, gym.spaces.Discrete(2), np.random.default_rng(0))  # fail early on a bad name
    return functools.partial(make_policy, name)


def _episode_writer(env_id: str, out: str, policy_factory: PolicyFactory):
    """Worker set-up: one env for the worker's life; each task is a (seed, step limit or None) to
    play and save."""
    env = make_env(env_id)

    def play(task: tuple[int, int | None]) -> tuple[int, float]:
        seed, max_steps = task
        episode = run_episode(env, policy_factory(env.action_space, np.random.default_rng(seed)), seed, max_steps)
        save_episode(episode_path(Path(out), seed), episode)
        return len(episode), episode.total_reward

    return play


@dataclass
class CollectSummary:
    episodes_new: int
    episodes_total: int
    steps: int
    seconds: float
    mean_return: float
    steps_total: int = 0  # agent steps of every episode in the dataset, old and new
    step_cap: int | None = None  # the most agent steps the dataset may hold (None: no cap)

    @property
    def steps_per_second(self) -> float:
        return self.steps / max(self.seconds, 1e-9)

    def line(self) -> str:
        return (
            f"collected {self.episodes_new} new episodes ({self.episodes_total} in total), "
            f"{self.steps} env steps in {self.seconds:.1f}s = {self.steps_per_second:,.0f} steps/s, "
            f"mean return {self.mean_return:.2f}"
            + (f"; the dataset holds {self.steps_total:,} of its {self.step_cap:,} agent steps"
               if self.step_cap is not None else "")
        )


def plan_seeds(done_seeds: set[int], episodes: int, base_seed: int) -> list[int]:
    """The seeds still to collect: the first free seeds from ``base_seed`` up to ``episodes`` in all."""
    needed = max(0, episodes - len(done_seeds))
    seeds, candidate = [], base_seed
    while len(seeds) < needed:
        if candidate not in done_seeds:
            seeds.append(candidate)
        candidate += 1
    return seeds


def _prepare_out(out: Path, env_id: str, policy_name: str, base_seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".ep_*.tmp"):  # left by a run killed mid-write; never a whole episode
        stale.unlink(missing_ok=True)
    if (out / METADATA_FILE).exists():
        meta = load_metadata(out)
        if meta.get("env_id") != env_id:
            raise UserError(
                f"{out} holds {meta.get('env_id')} episodes, not {env_id}: use another --out"
            )
        return meta
    meta = env_info(env_id)
    meta.update(policy=policy_name, base_seed=base_seed, package_version=package_version())
    atomic_write_json(out / METADATA_FILE, meta)
    return meta


def collect(
    env_id: str,
    episodes: int,
    out: Path,
    workers: int = 1,
    seed: int = 0,
    policy: str = "random",
    policy_factory: PolicyFactory | None = None,
    progress: bool = True,
    backend: str = "local",
    ray_address: str | None = None,
    step_cap: int | None = None,
) -> CollectSummary:
    """Collect up to ``episodes`` episodes of ``env_id`` into ``out`` with ``workers`` processes.

    ``policy_factory(action_space, rng) -> policy`` overrides the named ``policy`` (it must be
    picklable: the workers are spawned processes). ``backend``: ``local`` worker processes, or
    ``ray`` actors (on the Ray cluster at ``ray_address``; see ``envs.pool``).

    ``step_cap``: the dataset in ``out`` (every episode in it, whoever played it) may hold at most
    this many agent steps. Episodes are then played in waves of ``workers``, each cut at an equal
    share of the steps left, until ``episodes`` episodes are in ``out`` or the cap is reached, so
    an experience budget (Atari 100k) holds exactly and the last episodes end truncated.
    """
    if episodes < 1 or workers < 1:
        raise UserError("--episodes and --workers must be at least 1")
    if step_cap is not None and step_cap < 1:
        raise UserError("--step-cap must be at least 1")
    out = Path(out)
    factory = policy_factory or named_policy_factory(policy)
    _prepare_out(out, env_id, policy, seed)
    lengths = {seed_of(path): len(episode) for path, episode in iter_episodes(out)}
    done = set(lengths)
    before = sum(lengths.values())
    start = time.perf_counter()
    seeds = plan_seeds(done, episodes, seed)
    init = functools.partial(_episode_writer if workers_share_disk(backend) else _episode_player, env_id,
                             str(out), factory)
    steps, returns = 0, []
    if seeds and (step_cap is None or step_cap > before):  # nothing to play starts no workers
        bar = _progress_bar(len(seeds), progress)
        try:
            with make_pool(backend, init, min(workers, len(seeds)), ray_address) as pool:
                if step_cap is None:
                    steps, returns = _play(pool, [(s, None) for s in seeds], out, bar, backend)
                else:
                    steps, returns = _play_capped(pool, seeds, step_cap - before, out, bar, backend)
        finally:
            bar.close()
    return CollectSummary(
        episodes_new=len(returns),
        episodes_total=len(done) + len(returns),
        steps=steps,
        seconds=time.perf_counter() - start,
        mean_return=float(np.mean(returns)) if returns else float("nan"),
        steps_total=before + steps,
        step_cap=step_cap,
    )


def _play_capped(pool, seeds: list[int], steps_left: int, out: Path, bar: _progress_bar,
                 backend: str) -> tuple[int, list[float]]:
    """Play ``seeds`` in waves of ``pool.size`` whose episodes each get an equal share of
    ``steps_left``, until the seeds or the steps run out; a wave's unused share goes to the next."""
    steps, returns, seeds = 0, [], list(seeds)
    while seeds and steps_left - steps >= 1:
        wave_size = min(pool.size, len(seeds), steps_left - steps)
        wave, seeds = seeds[:wave_size], seeds[wave_size:]
        share = (steps_left - steps) // wave_size
        wave_steps, wave_returns = _play(pool, [(s, share) for s in wave], out, bar, backend)
        steps += wave_steps
        returns += wave_returns
    return steps, returns


def _play(pool, tasks: list[tuple[int, int | None]], out: Path, bar: _progress_bar,
          backend: str) -> tuple[int, list[float]]:
    """Play ``(seed, step limit)`` tasks on ``pool``. Local workers write their episode files
    themselves; Ray actors send each episode back and the driver writes it (``_episode_player``)."""
    local_disk = workers_share_disk(backend)

    def advance(index: int, result) -> None:
        if not local_disk:  # written as each arrives: a killed run keeps every episode returned so far
            payload = result.pop()  # and not held until the map ends (10,000 episodes would be GBs)
            atomic_write_bytes(episode_path(out, tasks[index][0]), lambda file: file.write(payload))
        bar.add(result[0])

    results = pool.map(tasks, on_result=advance)
    return sum(result[0] for result in results), [result[1] for result in results]


def _episode_player(env_id: str, out: str, policy_factory: PolicyFactory):
    """Ray actor set-up: like ``_episode_writer``, but each task returns (length, return, the
    episode file's bytes) for the driver to write. A cluster's nodes need not share a disk with
    the driver, and an episode file is small next to the time it takes to play: ~3 KB a frame at
    zstd level 1 (TakeCover: ~1 MB for a random episode of ~300 steps, ~7 MB at the 2,100-step
    limit), against ~12 KB a frame raw."""
    env = make_env(env_id)

    def play(task: tuple[int, int | None]) -> list:  # a list: the driver pops the bytes off once written
        seed, max_steps = task
        episode = run_episode(env, policy_factory(env.action_space, np.random.default_rng(seed)), seed, max_steps)
        return [len(episode), episode.total_reward, encode_episode(episode, str(episode_path(Path(out), seed)))]

    return play


class _progress_bar:
    """Episodes, env steps/s and ETA, with rich; silent when ``enabled`` is false. ``total`` is the
    episodes asked for (under a step cap, the most there can be)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.start = time.perf_counter()
        self.steps = self.episodes = 0
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("collect"), BarColumn(), MofNCompleteColumn(), TextColumn("episodes"),
                TextColumn("{task.fields[rate]} steps/s"), TimeRemainingColumn(),
            )
            self.progress.start()
            self.task = self.progress.add_task("collect", total=total, rate="-")

    def add(self, steps: int) -> None:
        """One more episode of ``steps`` steps."""
        self.steps += steps
        self.episodes += 1
        if self.progress:
            rate = self.steps / max(time.perf_counter() - self.start, 1e-9)
            self.progress.update(self.task, completed=self.episodes, rate=f"{rate:,.0f}")

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
