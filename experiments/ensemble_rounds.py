"""Several rounds' agents of one pipeline run acting together in the real env, by majority vote.

    python experiments/ensemble_rounds.py --run-dir runs/tc-v14 --rounds 2 3 4 5 --seed 3000000 --out OUT.json

The run's V is shared; each round kept in ``RUN/rounds/K`` brings its own M (stepped with the
action actually taken, so every member's h follows the real history) and its own C. The action is
the majority vote of the Cs, ties broken by the mean of their softmax outputs. A one-member
ensemble is exactly that round's agent. Results (returns per seed) go to ``--out`` (JSON).
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

from agents.agent import WorldModelAgent, load_controller  # noqa: E402
from agents.pipeline import round_dir  # noqa: E402
from envs.collect import run_episode  # noqa: E402
from envs.episodes import atomic_write_json  # noqa: E402
from envs.make import make_env  # noqa: E402
from envs.workers import WorkerPool  # noqa: E402
from world_models.dream import controller_features  # noqa: E402
from world_models.train_mdnrnn import load_mdnrnn  # noqa: E402
from world_models.train_vae import load_vae  # noqa: E402


@dataclass
class Args:
    run_dir: Path
    """A pipeline run with ``rounds/K/{mdnrnn,controller}``."""
    rounds: list[int]
    """The rounds whose agents vote."""
    seed: int = 3_000_000
    """First real-env seed (keep clear of the evaluation seeds, 1,000,000+)."""
    episodes: int = 100
    workers: int = 2
    env: str = "VizdoomTakeCover-v1"
    out: Path = Path("ensemble.json")


class Ensemble:
    def __init__(self, run_dir: Path, rounds: list[int]) -> None:
        vae, _ = load_vae(run_dir, "cpu")  # one V for every member: the rounds share it
        self.members = []
        for k in rounds:
            mdnrnn, _ = load_mdnrnn(round_dir(run_dir, k), "cpu")
            controller, info = load_controller(round_dir(run_dir, k), "cpu")
            self.members.append(WorldModelAgent(vae, mdnrnn, controller, info.get("include_cell", False)))

    def policy(self):
        carries = [member.initial_carry(1) for member in self.members]

        @torch.no_grad()
        def act(observation: np.ndarray) -> int:
            z = self.members[0].encode(observation[None])
            # probs: (members, 1, A)
            probs = torch.stack([
                torch.softmax(member.controller(controller_features(z, carry, member.include_cell)), -1)
                for member, carry in zip(self.members, carries, strict=True)])
            votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).sum(0).float()
            action = (votes + 1e-3 * probs.mean(0)).argmax(-1)
            for i, member in enumerate(self.members):
                _, carries[i] = member.mdnrnn.step(z, action, carries[i])
            return int(action[0])

        return act


def _worker(run_dir: Path, rounds: list[int], env_id: str):
    torch.set_num_threads(1)
    env, ensemble = make_env(env_id), Ensemble(run_dir, rounds)
    return lambda seed: run_episode(env, ensemble.policy(), seed).total_reward


def main(args: Args) -> None:
    seeds = list(range(args.seed, args.seed + args.episodes))
    with WorkerPool(functools.partial(_worker, args.run_dir, args.rounds, args.env), args.workers) as pool:
        returns = [float(r) for r in pool.map(seeds)]
    result = {"run_dir": str(args.run_dir), "rounds": args.rounds, "seeds": [seeds[0], seeds[-1]],
              "mean": float(np.mean(returns)), "std": float(np.std(returns)), "returns": returns}
    atomic_write_json(args.out, result)
    print(f"{args.run_dir} rounds {args.rounds}: {result['mean']:.1f} +- {result['std']:.1f} "
          f"over {len(seeds)} episodes")


if __name__ == "__main__":
    main(tyro.cli(Args))
