"""Does M predict the reward? Its reward head teacher-forced on a run's own episodes.

    python experiments/reward_fit.py --run-dir runs/boxing

On Atari the dream pays M's reward head (clipped rewards, ``envs/tasks.py``). A head that explains
little of the reward's variance (``r2`` near 0) is close to a constant, and CMA-ES can add up its
small biases over a long dream into a high dream score that the real game does not pay. This runs
the run's M over every episode of its latent cache (V's mu, the rewards M learned) and reports
``r2``, the rewards' variance, each episode's real and predicted reward sums and their correlation. Results go to
``--out`` (JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from envs.episodes import atomic_write_json
from world_models.latents import load_latent_cache
from world_models.train_mdnrnn import load_mdnrnn, reward_fit


@dataclass
class Args:
    run_dir: Path
    """A run with an M (``RUN/mdnrnn``) and its latent cache (``RUN/latents``)."""
    max_episodes: int | None = None
    """Episodes of the cache to use (default: all)."""
    out: Path | None = None
    """Write the JSON here; default: ``RUN/experiments/reward_fit.json``."""


def main(args: Args) -> dict:
    torch.set_num_threads(1)
    mdnrnn, _ = load_mdnrnn(args.run_dir)
    result = {"run_dir": str(args.run_dir), **reward_fit(mdnrnn, load_latent_cache(args.run_dir), args.max_episodes)}
    out = args.out or Path(args.run_dir) / "experiments" / "reward_fit.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"M's reward head explains r2 = {result['r2']:.3f} of the reward's variance {result['variance']:.4f} "
          f"per step; its episode sums correlate {result['episode_correlation']:.2f} with the real ones "
          f"({result['episodes']} episodes); wrote {out}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
