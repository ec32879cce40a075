"""Temperature study: controllers trained in the dream at several tau, scored in the dream and in
the real env, to show the dream/real gap the paper shows (low tau: the controller exploits M).

    python experiments/temperature_study.py --run-dir runs/doom-take-cover

Each tau gets its own run directory RUN/tau_<tau>/ sharing the run's V, M and latent cache
(symlinks); results go to results/temperature_study.json and .png.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.agent import load_agent  # noqa: E402
from agents.evaluate import evaluate_dream, evaluate_real, load_start_latents  # noqa: E402
from agents.train_controller import ControllerConfig, train_controller  # noqa: E402
from envs.episodes import atomic_write_json  # noqa: E402
from world_models.dream import DreamConfig, DreamVecEnv  # noqa: E402


@dataclass
class Args:
    run_dir: Path
    """Run with trained V and M (e.g. from the pipeline)."""
    temperatures: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.15, 1.3])
    generations: int = 20
    population: int = 32
    rollouts: int = 8
    real_episodes: int = 30
    dream_episodes: int = 256
    workers: int = 2
    out: Path = Path("results/temperature_study")


def study_dir(run_dir: Path, tau: float) -> Path:
    directory = run_dir / f"tau_{tau}"
    directory.mkdir(exist_ok=True)
    for part in ("vae", "mdnrnn", "latents"):
        link = directory / part
        if not link.exists():
            link.symlink_to(Path("..") / part)
    return directory


def main(args: Args) -> list[dict]:
    rows = []
    seeds = list(range(2_000_000, 2_000_000 + args.real_episodes))
    for tau in args.temperatures:
        run = study_dir(args.run_dir, tau)
        train_controller(ControllerConfig(run_dir=run, temperature=tau, generations=args.generations,
                                          population=args.population, rollouts=args.rollouts,
                                          eval_every=args.generations, eval_rollouts=64, progress=False))
        agent, info = load_agent(run)
        start_mu, start_log_sigma = load_start_latents(run, "cpu")
        dream = DreamVecEnv(agent.mdnrnn, start_mu, start_log_sigma, args.dream_episodes,
                            DreamConfig(**info["dream"]), seed=7)
        dream_result = evaluate_dream(dream, agent.controller, seed=7)
        real_result = evaluate_real(run, info["env_id"], seeds, args.workers)
        rows.append({"temperature": tau, "dream_mean": dream_result.mean, "dream_std": dream_result.std,
                     "real_mean": real_result.mean, "real_std": real_result.std,
                     "real_episodes": args.real_episodes})
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), {"run_dir": str(args.run_dir), "rows": rows,
                                                       "settings": json.loads(json.dumps(vars(args), default=str))})
    plot(rows, args.out.with_suffix(".png"))
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = [row["temperature"] for row in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("dream", "dream score"), ("real", "real score")):
        ax.errorbar(taus, [r[f"{key}_mean"] for r in rows], yerr=[r[f"{key}_std"] for r in rows], marker="o",
                    capsize=3, label=label)
    ax.axhline(750, color="grey", linestyle="--", linewidth=1, label="solved (750)")
    ax.set_xlabel("training temperature tau")
    ax.set_ylabel("steps survived")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main(tyro.cli(Args))
