"""How long the memory (M or TD-VAE) believes one action held throughout survives, round by round.

    python experiments/constant_actions.py --run-dirs runs/tc-v6 runs/tc-v8

A constant action is the cheapest policy CMA-ES can find in a dream. In TakeCover it runs the
agent into a wall (or leaves it standing) and dies at ~170 steps in the real env; a round whose M
lets one such action survive for hundreds of dream steps is a round whose controller learns that
exploit. For each round kept in ``RUN/rounds/K``, this plays ``dreams`` dreams per action at the
temperature that round's C trained at, with both death rules, beside the round's real validation
score (``stages.json``). The pipeline's ``--held-action-limit`` measures the same during a run (its
``held_actions`` stages); this measures finished runs. Results go to ``--out`` (JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from agents.analysis import held_actions_per_round
from envs.episodes import atomic_write_json


@dataclass
class Args:
    run_dirs: list[Path]
    """Pipeline runs with ``rounds/K/mdnrnn`` or ``rounds/K/tdvae`` (one memory per round)."""
    dreams: int = 64
    """Dreams per action and death rule."""
    seed: int = 1
    """The dreams' seed (the same for every round, action and rule)."""
    out: Path | None = None
    """Write the JSON here; default: ``RUN/experiments/constant_actions.json`` of the first run."""


def main(args: Args) -> dict:
    torch.set_num_threads(1)
    runs = {}
    for run_dir in args.run_dirs:
        runs[str(run_dir)] = held_actions_per_round(run_dir, args.dreams, args.seed)
        for row in runs[str(run_dir)]:
            print(f"{run_dir.name} round {row['round']}: validation {row['validation_mean']}, dream length per "
                  f"constant action (threshold) {row['dream_length_threshold']}, "
                  f"(sampled) {row['dream_length_sample']}", flush=True)
    result = {"what": __doc__.split("\n")[0], "dreams_per_action": args.dreams, "seed": args.seed, "runs": runs}
    out = args.out or args.run_dirs[0] / "experiments" / "constant_actions.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
