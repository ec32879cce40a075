"""Real-env evaluation throughput: the local process pool against Ray actors, on this machine, in one run.

    python benchmarks/scale.py --env VizdoomTakeCover-v1 --workers 2 --episodes 200

Both backends play the same episodes (the same seeds, a random policy, or the run's agent with
``--run-dir``) through ``agents.evaluate.evaluate_policy``, the path of ``eval.py`` and of the
pipeline's validation. Each figure is env steps over the whole call's wall-clock, pool start-up
included (processes or actors: each env, and the models with ``--run-dir``, built once); Ray's own
start (``ray.init``, once per process or cluster) is not. The final line is JSON: both steps/s
figures and ``ray_over_local_ratio``.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from agents.evaluate import evaluate_policy
from envs.collect import named_policy_factory


@dataclass
class Args:
    env: str = "VizdoomTakeCover-v1"
    """Gymnasium id to play (with --run-dir: the run's env)."""
    workers: int = 2
    """Workers of both pools (processes or actors, one CPU each)."""
    episodes: int = 200
    """Episodes per backend (the same seeds for both)."""
    seed: int = 2000
    """First episode seed."""
    run_dir: Path | None = None
    """Play this run's agent (V + M + C on CPU in every worker) instead of random actions."""


def _factory(args: Args):
    if args.run_dir is None:
        return named_policy_factory("random")
    from agents.agent import agent_policy_factory

    return functools.partial(agent_policy_factory, str(args.run_dir), 0.0)


def measure(args: Args, backend: str) -> tuple[float, list[float], int]:
    """(seconds, returns, env steps) of ``args.episodes`` episodes on ``backend``."""
    seeds = list(range(args.seed, args.seed + args.episodes))
    start = time.perf_counter()
    result = evaluate_policy(args.env, _factory(args), seeds, args.workers, backend=backend)
    return time.perf_counter() - start, result.returns, sum(result.lengths)


def main(args: Args) -> dict:
    import ray

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        local_seconds, local_returns, steps = measure(args, "local")
        ray_seconds, ray_returns, ray_steps = measure(args, "ray")
    finally:
        ray.shutdown()
    if (ray_returns, ray_steps) != (local_returns, steps):
        raise SystemExit("the two backends played different episodes for the same seeds")
    local_rate, ray_rate = steps / local_seconds, steps / ray_seconds
    result = {
        "env": args.env,
        "policy": "agent" if args.run_dir else "random",
        "workers": args.workers,
        "episodes": args.episodes,
        "steps": steps,
        "local_steps_per_s": round(local_rate, 1),
        "ray_steps_per_s": round(ray_rate, 1),
        "local_seconds": round(local_seconds, 2),
        "ray_seconds": round(ray_seconds, 2),
        "ray_over_local_ratio": round(ray_rate / local_rate, 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
