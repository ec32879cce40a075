"""Collection throughput against its ceiling, measured in one run.

    python benchmarks/collect.py --env VizdoomTakeCover-v1 --workers 2

collect:  the real ``train.py collect`` path (worker processes, policy, episode files on disk).
ceiling:  W processes that only step the same env over the same seeds, resize the frame the same
          way and keep it in memory.
Both include process start-up. The final line is JSON: both steps/s figures and their ratio.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from envs.collect import collect
from envs.make import make_env
from envs.policies import random_policy


@dataclass
class Args:
    env: str = "VizdoomTakeCover-v1"
    """Gymnasium id to benchmark."""
    workers: int = 2
    """Worker processes for both measurements."""
    episodes: int = 40
    """Episodes per measurement (same seeds for both)."""
    seed: int = 1000
    """First episode seed."""


def _ceiling_worker(env_id: str, seeds: list[int], results) -> None:
    env = make_env(env_id)
    steps = 0
    for seed in seeds:
        observation, _ = env.reset(seed=seed)
        policy = random_policy(env.action_space, np.random.default_rng(seed))
        frames, done = [observation], False
        while not done:
            observation, _, terminated, truncated, _ = env.step(policy(observation))
            frames.append(observation)
            done = terminated or truncated
        steps += len(frames) - 1
    results.put(steps)


def ceiling(env_id: str, seeds: list[int], workers: int) -> tuple[int, float]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start = time.perf_counter()
    processes = [
        ctx.Process(target=_ceiling_worker, args=(env_id, seeds[w::workers], results)) for w in range(workers)
    ]
    for process in processes:
        process.start()
    steps = sum(results.get() for _ in processes)
    for process in processes:
        process.join()
    return steps, time.perf_counter() - start


def main(args: Args) -> dict:
    seeds = list(range(args.seed, args.seed + args.episodes))
    ceiling_steps, ceiling_seconds = ceiling(args.env, seeds, args.workers)
    with tempfile.TemporaryDirectory() as out:
        summary = collect(args.env, args.episodes, Path(out), workers=args.workers, seed=args.seed,
                          progress=False)
    result = {
        "env": args.env,
        "workers": args.workers,
        "collect_steps_per_s": round(summary.steps_per_second, 1),
        "ceiling_steps_per_s": round(ceiling_steps / ceiling_seconds, 1),
        "ratio": round(summary.steps_per_second / (ceiling_steps / ceiling_seconds), 3),
        "steps": summary.steps,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
