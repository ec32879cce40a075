"""Temperature study: controllers trained in the dream at several tau, scored in the dream and in
the real env, to show the dream/real gap the paper shows (low tau: the controller exploits M).

    python experiments/temperature_study.py --run-dir RUN --generations 12 --population 32 --rollouts 8
        --real-episodes 20 --workers 1

Each tau gets its own run directory ``RUN/tau_<tau>/`` sharing the run's V, M and latent cache
(symlinks), where ``train_controller`` trains its C; each C is then scored on ``dream_episodes``
dreams at its own tau (``evaluate_dream``) and on real episodes (``evaluate_real``, the env the
run's M was trained on). Results go to ``--out`` .json and .png.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from agents.agent import load_agent
from agents.evaluate import evaluate_dream, evaluate_real, load_start_latents
from agents.train_controller import ControllerConfig, train_controller
from envs.episodes import atomic_write_json
from world_models.dream import DreamConfig, DreamVecEnv


@dataclass
class Args:
    run_dir: Path
    """A run with trained V and M (e.g. a pipeline's round-1 M)."""
    temperatures: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.15, 1.3])
    """The taus to train and score a controller at."""
    generations: int = 20
    """CMA-ES generations per tau."""
    population: int = 32
    """CMA-ES population."""
    rollouts: int = 8
    """Dream rollouts per member and generation."""
    max_episode_steps: int = 2100
    """The dream's episode cap (training and scoring)."""
    real_episodes: int = 30
    """Real episodes per tau."""
    real_seed: int = 2_000_000
    """First real-env seed (apart from the evaluation seeds 1,000,000+)."""
    dream_episodes: int = 256
    """Dreams per tau for the dream score."""
    workers: int = 2
    """Worker processes for the real episodes."""
    out: Path | None = None
    """Write ``.json`` and ``.png`` here; default: ``RUN/experiments/temperature_study``."""


def study_dir(run_dir: Path, tau: float) -> Path:
    """``RUN/tau_<tau>/`` with the run's V, M and latent cache linked in: only C differs."""
    directory = run_dir / f"tau_{tau}"
    directory.mkdir(exist_ok=True)
    for part in ("vae", "mdnrnn", "latents"):
        link = directory / part
        if not link.exists():
            link.symlink_to(Path("..") / part)
    return directory


def score_temperature(args: Args, tau: float) -> dict:
    run = study_dir(args.run_dir, tau)
    train_controller(ControllerConfig(run_dir=run, temperature=tau, generations=args.generations,
                                      population=args.population, rollouts=args.rollouts,
                                      max_episode_steps=args.max_episode_steps, eval_every=args.generations,
                                      eval_rollouts=64, progress=False))
    agent, info = load_agent(run)
    dream = DreamVecEnv(agent.memory, *load_start_latents(run, "cpu"), args.dream_episodes,
                        DreamConfig(**info["dream"]), seed=7)
    dream_result = evaluate_dream(dream, agent.controller, seed=7)
    seeds = list(range(args.real_seed, args.real_seed + args.real_episodes))
    real_result = evaluate_real(run, info["env_id"], seeds, args.workers)
    return {"temperature": tau, "dream_mean": dream_result.mean, "dream_std": dream_result.std,
            "real_mean": real_result.mean, "real_std": real_result.std, "real_episodes": args.real_episodes}


def main(args: Args) -> list[dict]:
    rows = []
    for tau in args.temperatures:
        rows.append(score_temperature(args, tau))
        print(rows[-1], flush=True)
    out = args.out or args.run_dir / "experiments" / "temperature_study"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: str(value) if isinstance(value, Path) else value
                for key, value in dataclasses.asdict(args).items()}
    atomic_write_json(out.with_suffix(".json"), {"run_dir": str(args.run_dir), "rows": rows, "settings": settings})
    plot(rows, out.with_suffix(".png"))
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
    ax.set_xlabel("training temperature tau")
    ax.set_ylabel("return")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
