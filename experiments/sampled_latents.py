"""Does the agent act better on z sampled from V's posterior than on its mean?

    python experiments/sampled_latents.py --run-dir runs/tc-v22 --seed 3000000 --episodes 100

The package's agent feeds M and C the posterior mean mu(V(frame)). M was trained on z drawn
afresh from N(mu, sigma) (as in the released code), and the released code's agent also acts on a
sample, so M's state h in the real env may sit apart from what it learned. This plays the run's
agent on the same real episodes both ways (``evaluate_real(..., latent=...)``; the sampled noise
is a function of the episode's seed) and writes both scores to ``--out`` (JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from agents.agent import load_controller
from agents.evaluate import evaluate_real
from envs.episodes import atomic_write_json


@dataclass
class Args:
    run_dir: Path
    """A run (or exported agent) with V, M and C."""
    env: str = ""
    """Env id; empty: the run's own (its ``controller/model.json``)."""
    seed: int = 3_000_000
    """First real-env seed (keep apart from the evaluation seeds 1,000,000+)."""
    episodes: int = 100
    """Real episodes, the same seeds for both ways."""
    workers: int = 2
    """Worker processes for the real episodes."""
    out: Path | None = None
    """Write the JSON here; default: ``RUN/experiments/sampled_latents.json``."""


def main(args: Args) -> dict:
    env_id = args.env or load_controller(args.run_dir)[1]["env_id"]
    seeds = list(range(args.seed, args.seed + args.episodes))
    result = {"what": __doc__.split("\n")[0], "run_dir": str(args.run_dir), "env_id": env_id,
              "seeds": [seeds[0], seeds[-1]]}
    for name, latent in (("mean", "mean"), ("sampled", "sample")):
        played = evaluate_real(args.run_dir, env_id, seeds, args.workers, latent=latent)
        result[name] = {"mean": played.mean, "std": played.std, "returns": played.returns}
        print(f"z = {name}: {played.mean:.1f} +- {played.std:.1f}", flush=True)
    out = args.out or args.run_dir / "experiments" / "sampled_latents.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
