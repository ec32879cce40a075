"""How often does a run's agent switch actions in the real env, and how long does it live?

    python experiments/action_switching.py --run-dir runs/tc-v27 --episodes 10

A dodging TakeCover policy holds a move for many steps to cross the room; a controller that
flips between left and right every few steps barely moves and dies at ~300 steps. When such a
controller scores well in the dream, M believes the jitter survives: a dream exploit that the
constant-action probes (one action held throughout) do not cover. Per real episode this lists
the length, the count of each action and the mean and longest run of one action held. Then it
plays a scripted jitter (actions 1 and 2 alternating every ``period`` steps) for a few periods in
the real env and in the run's dream (its M, temperature and death rule), so the dream/real gap
of that one behaviour is measured directly. Everything goes to ``--out`` (JSON).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.agent import load_agent  # noqa: E402
from agents.evaluate import load_start_latents  # noqa: E402
from envs.collect import run_episode  # noqa: E402
from envs.episodes import atomic_write_json  # noqa: E402
from envs.make import make_env  # noqa: E402
from world_models.dream import DreamConfig, DreamVecEnv, dream_rollouts  # noqa: E402
from world_models.train_mdnrnn import load_mdnrnn  # noqa: E402


@dataclass
class Args:
    run_dir: Path
    """A run (or exported agent) with V, M and C and its ``pipeline_config.json``."""
    env_id: str = ""
    """Env id; empty: the run's own (``pipeline_config.json``)."""
    seed: int = 3_000_100
    """First real-env seed (keep apart from the evaluation seeds 1,000,000+)."""
    episodes: int = 10
    periods: tuple[int, ...] = (1, 3, 6, 12, 50)
    """Scripted jitter: hold action 1, then 2, for this many steps each, alternating."""
    dreams: int = 64
    """Dreams per period."""
    out: Path = Path("results/action_switching.json")


def held_runs(actions: list[int]) -> np.ndarray:
    """Lengths of the maximal runs of one action held: [1, 1, 2, 1] -> [2, 1, 1]."""
    change = np.flatnonzero(np.diff(np.asarray(actions)) != 0)
    edges = np.r_[0, change + 1, len(actions)]
    return np.diff(edges)


def play(agent, env, seed: int) -> dict:
    actions = run_episode(env, agent.policy(), seed).actions.tolist()
    runs = held_runs(actions)
    return {"seed": seed, "length": len(actions), "action_counts": dict(sorted(Counter(actions).items())),
            "mean_held": float(runs.mean()), "longest_held": int(runs.max())}


def jitter_action(step: int, period: int) -> int:
    return 1 if (step // period) % 2 == 0 else 2


class Jitter:
    """``policy(observation) -> action`` that ignores what it sees: actions 1, 2 alternating."""

    def __init__(self, period: int) -> None:
        self.period, self.step = period, 0

    def __call__(self, observation) -> int:
        self.step += 1
        return jitter_action(self.step - 1, self.period)


def real_jitter_length(env, period: int, seeds: range) -> float:
    return float(np.mean([len(run_episode(env, Jitter(period), seed).actions) for seed in seeds]))


@torch.no_grad()
def dream_jitter_length(mdnrnn, start_latents, config: DreamConfig, period: int, dreams: int, seed: int) -> float:
    dream = DreamVecEnv(mdnrnn, *start_latents, dreams, config, seed=seed)
    step = [0]

    def act(features, index):
        step[0] += 1
        return torch.full((len(features),), jitter_action(step[0] - 1, period), dtype=torch.long)

    _, lengths = dream_rollouts(dream, act, seed=seed)
    return float(lengths.float().mean())


def main(args: Args) -> None:
    torch.set_num_threads(1)
    config_file = args.run_dir / "pipeline_config.json"  # an exported agent has none: the preset's dream
    settings = json.loads(config_file.read_text()) if config_file.exists() else {
        "env": args.env_id, "temperature": 1.15, "done_mode": "threshold"}
    env_id = args.env_id or settings["env"]
    agent, _ = load_agent(args.run_dir)
    env = make_env(env_id)
    seeds = range(args.seed, args.seed + args.episodes)
    episodes = []
    for seed in seeds:
        episodes.append(play(agent, env, seed))
        print(episodes[-1])
    summary = {key: float(np.mean([e[key] for e in episodes])) for key in ("length", "mean_held", "longest_held")}
    print(summary)
    mdnrnn, mdn_config = load_mdnrnn(args.run_dir, "cpu")  # once: every period dreams with the same M
    dream_config = DreamConfig(temperature=settings["temperature"], done_mode=settings["done_mode"],
                               done_weight=mdn_config.get("done_weight", 10.0))
    start_latents = load_start_latents(args.run_dir, "cpu")
    jitter = [{"period": period, "real_length": real_jitter_length(env, period, seeds),
               "dream_length": dream_jitter_length(mdnrnn, start_latents, dream_config, period, args.dreams,
                                                   args.seed)}
              for period in args.periods]
    for row in jitter:
        print(row)
    atomic_write_json(args.out, {"what": __doc__.split("\n")[0], "run_dir": str(args.run_dir), "env_id": env_id,
                                 "seeds": [args.seed, args.seed + args.episodes - 1], "summary": summary,
                                 "episodes": episodes, "scripted_jitter": jitter})


if __name__ == "__main__":
    main(tyro.cli(Args))
