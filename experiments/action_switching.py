"""How often does a run's agent switch actions in the real env, and does a scripted jitter fool its M?

    python experiments/action_switching.py --run-dir runs/tc-v27 --episodes 10

A dodging TakeCover policy holds a move for many steps to cross the room; a controller that flips
between left and right every few steps barely moves and dies early. Per real episode this lists the
length, the count of each action and the mean and longest run of one action held. Then it plays a
scripted jitter (two actions alternating every ``period`` steps) in the real env and in the run's
dream (its M and the dream its C trained in), so the dream/real gap of that one behaviour is
measured directly. Discrete actions only. Everything goes to ``--out`` (JSON).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from agents.agent import agent_policy_factory, load_controller
from agents.analysis import JITTER_ACTIONS, dream_config_of, jitter_dream_length, jitter_policy, switching_stats
from agents.evaluate import evaluate_policy, load_start_latents
from envs.episodes import atomic_write_json
from world_models.train_mdnrnn import load_mdnrnn


@dataclass
class Args:
    run_dir: Path
    """A run (or exported agent) with V, M and C."""
    env: str = ""
    """Env id; empty: the run's own (its ``controller/model.json``)."""
    seed: int = 3_000_100
    """First real-env seed (keep apart from the evaluation seeds 1,000,000+)."""
    episodes: int = 10
    """Real episodes of the agent, and of each scripted jitter."""
    workers: int = 2
    """Worker processes for the real episodes."""
    periods: tuple[int, ...] = (1, 3, 6, 12, 50)
    """Scripted jitter: hold the first action, then the second, this many steps each, alternating."""
    jitter_actions: tuple[int, int] = JITTER_ACTIONS
    """The two actions the jitter alternates (TakeCover: 1 left, 2 right)."""
    dreams: int = 64
    """Dreams per period."""
    out: Path | None = None
    """Write the JSON here; default: ``RUN/experiments/action_switching.json``."""


def main(args: Args) -> dict:
    torch.set_num_threads(1)
    env_id = args.env or load_controller(args.run_dir)[1]["env_id"]
    seeds = list(range(args.seed, args.seed + args.episodes))
    played = evaluate_policy(env_id, functools.partial(agent_policy_factory, str(args.run_dir), 0.0), seeds,
                             args.workers, keep_actions=True)
    episodes = [{"seed": seed, **switching_stats(actions)} for seed, actions in
                zip(seeds, played.extra["actions"], strict=True)]
    summary = {key: float(np.mean([e[key] for e in episodes])) for key in ("length", "mean_held", "longest_held")}
    print(summary, flush=True)
    mdnrnn, mdn_config = load_mdnrnn(args.run_dir, "cpu")
    dream_config = dream_config_of(args.run_dir)
    dream_config.done_weight = mdn_config.get("done_weight", dream_config.done_weight)
    start_latents = load_start_latents(args.run_dir, "cpu")
    jitter = []
    for period in args.periods:
        real = evaluate_policy(env_id, functools.partial(jitter_policy, period, actions=args.jitter_actions), seeds,
                               args.workers)
        jitter.append({"period": period, "real_length": float(np.mean(real.lengths)),
                       "dream_length": jitter_dream_length(mdnrnn, *start_latents, dream_config, period, args.dreams,
                                                           args.seed, args.jitter_actions)})
        print(jitter[-1], flush=True)
    result = {"what": __doc__.split("\n")[0], "run_dir": str(args.run_dir), "env_id": env_id,
              "seeds": [seeds[0], seeds[-1]], "summary": summary, "episodes": episodes, "scripted_jitter": jitter}
    out = args.out or args.run_dir / "experiments" / "action_switching.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
