"""Does the agent act better on z sampled from V's posterior than on its mean?

    python experiments/sampled_latents.py --run-dir runs/tc-v22 --seed 3000000 --episodes 100

The package's agent feeds M and C the posterior mean mu(V(frame)). M was trained on z drawn
afresh from N(mu, sigma) (as in the released code), and the released code's agent also acts on a
sample, so M's state h in the real env may sit apart from what it learned. This plays the run's
agent on the same real episodes both ways (the sampled noise seeded by the episode's seed) and
writes both scores to ``--out`` (JSON).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.agent import load_agent  # noqa: E402
from envs.collect import run_episode  # noqa: E402
from envs.episodes import atomic_write_json  # noqa: E402
from envs.make import make_env  # noqa: E402
from envs.workers import WorkerPool  # noqa: E402
from world_models.train_vae import load_vae  # noqa: E402
from world_models.vae import frames_to_tensor  # noqa: E402


@dataclass
class Args:
    run_dir: Path
    """A run (or exported agent) with V, M and C."""
    seed: int = 3_000_000
    """First real-env seed (keep apart from the evaluation seeds 1,000,000+)."""
    episodes: int = 100
    workers: int = 2
    out: Path = Path("results/sampled_latents.json")


def _worker(run_dir: str, env_id: str, sample: bool):
    torch.set_num_threads(1)
    env = make_env(env_id)
    agent, _ = load_agent(Path(run_dir))
    generator = torch.Generator()

    @torch.no_grad()
    def encode_sample(frames):  # z ~ N(mu, sigma) instead of the package's z = mu
        mu, log_sigma = agent.vae.encode(frames_to_tensor(torch.as_tensor(frames)))
        return mu + log_sigma.exp() * torch.randn(mu.shape, generator=generator)

    if sample:
        agent.encode = encode_sample

    def play(seed: int) -> float:
        generator.manual_seed(seed)  # the noise is fixed by the episode's seed
        return run_episode(env, agent.policy(), seed).total_reward

    return play


def play(args: Args, env_id: str, sample: bool) -> list[float]:
    seeds = list(range(args.seed, args.seed + args.episodes))
    with WorkerPool(functools.partial(_worker, str(args.run_dir), env_id, sample), args.workers) as pool:
        return [float(r) for r in pool.map(seeds)]


def main(args: Args) -> dict:
    env_id = load_vae(args.run_dir)[1]["env_id"]
    result = {"what": __doc__.split("\n")[0], "run_dir": str(args.run_dir),
              "seeds": [args.seed, args.seed + args.episodes - 1]}
    for name, sample in (("mean", False), ("sampled", True)):
        returns = play(args, env_id, sample)
        result[name] = {"mean": float(np.mean(returns)), "std": float(np.std(returns)), "returns": returns}
        print(f"z = {name}: {result[name]['mean']:.1f} +- {result[name]['std']:.1f}", flush=True)
    atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
