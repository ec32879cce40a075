"""A jumpy dream against a one-step dream: CMA-ES trains C in a run's TD-VAE dream with
``--dream-jump 1`` and with each K of ``--jumps``, the same generations and population, in one run.

    python benchmarks/dream_jump.py --run-dir RUN --generations 10

Each K trains in its own copy of the run's V, TD-VAE and latents (the run's own controller is
never touched), kept in ``--out`` when given so that ``eval.py --run-dir OUT/jumpK`` can play each
K's controller in the real game, and is timed end to end. Without ``--run-dir`` an untrained TD-VAE of the given
sizes stands in, its dreams never dying (its figures say what a jump costs, not what it learns).
Every row reports the wall-clock and the best dream score; the final line is JSON with each K's
speed-up over K = 1 (``ratio``: the smallest of them, to set beside K / 2).

Training wall-clock also depends on how long the dreams live, which differs between the Ks'
dreams. So each row also times the dream alone over the same env steps: ``--step-dreams``
dreams of the run's TD-VAE with deaths switched off (threshold 1.0), stepped ``--step-env-steps``
env steps with random held actions (env_steps / K decisions). ``step_speedup`` is that cost's
ratio to K = 1: what a jump saves per env step, whatever the dreams' lengths.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

from agents.train_controller import ControllerConfig, train_controller
from world_models.checkpoint import module_state, save_checkpoint
from world_models.latents import LATENT_DIR, latent_dir
from world_models.tdvae import TDVAE
from world_models.train_tdvae import TDVAE_DIR, tdvae_dir


@dataclass
class Args:
    run_dir: Path | None = None
    """A run with a trained TD-VAE (`train.py tdvae` or a pipeline with --memory tdvae); none: an
    untrained one of the sizes below."""
    jumps: list[int] = field(default_factory=lambda: [2, 4])
    """Dream jumps K to compare with K = 1 (each at most the TD-VAE's --max-jump)."""
    generations: int = 10
    """CMA-ES generations per training."""
    eval_every: int = 10
    """Re-evaluate the best member every this many generations (and at the end)."""
    eval_rollouts: int = 256
    """Dreams of that re-evaluation."""
    population: int = 64
    """CMA-ES candidates per generation."""
    rollouts: int = 16
    """Dreams per candidate."""
    temperature: float = 1.15
    """Dream temperature."""
    max_episode_steps: int = 2100
    """Dream episodes are cut here."""
    seed: int = 0
    """CMA-ES's seed (the same for every K)."""
    step_dreams: int = 1024
    """Dreams stepped together in the per-step timing (population x rollouts by default)."""
    step_env_steps: int = 1000
    """Env steps of that timing (a multiple of every K)."""
    out: Path | None = None
    """Keep each K's run copy (with its controller) in OUT/jump<K>; none: a temporary directory."""
    z_dim: int = 64
    """Without --run-dir: the latent size."""
    belief: int = 256
    """Without --run-dir: the belief LSTM's units (and the MLPs')."""


def train_once(args: Args, jump: int, workdir: Path) -> dict:
    config = ControllerConfig(run_dir=workdir, memory="tdvae", dream_jump=jump, generations=args.generations,
                              population=args.population, rollouts=args.rollouts, eval_every=args.eval_every,
                              eval_rollouts=args.eval_rollouts, temperature=args.temperature, seed=args.seed,
                              max_episode_steps=args.max_episode_steps, device="cpu", progress=False)
    start = time.perf_counter()
    summary = train_controller(config)
    seconds = time.perf_counter() - start
    return {"jump": jump, "seconds": seconds, "best_dream_score": round(summary["fitness"], 1),
            "step_seconds": time_dream_steps(args, jump, workdir)}


@torch.no_grad()
def time_dream_steps(args: Args, jump: int, workdir: Path) -> float:
    """Seconds for ``step_dreams`` dreams to advance ``step_env_steps`` env steps (no deaths)."""
    from agents.evaluate import load_start_latents
    from world_models.dream import DreamConfig, DreamVecEnv
    from world_models.memory import load_memory

    memory, _ = load_memory(workdir, "tdvae")
    mu, log_sigma = load_start_latents(workdir, "cpu")
    config = DreamConfig(temperature=args.temperature, done_threshold=1.0, max_episode_steps=10**9, jump=jump)
    dream = DreamVecEnv(memory, mu, log_sigma, args.step_dreams, config, seed=args.seed)
    dream.reset_tensor(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    actions = torch.randint(0, memory.action_dim, (args.step_env_steps // jump, args.step_dreams), generator=generator)
    start = time.perf_counter()
    for decision in actions:
        dream.step_tensor(decision)
    return time.perf_counter() - start


def copy_run(args: Args, workdir: Path) -> None:
    if args.run_dir is None:
        untrained_run(args, workdir)
        return
    for part in (TDVAE_DIR, LATENT_DIR, "vae"):
        if (Path(args.run_dir) / part).is_dir() and not (workdir / part).exists():
            shutil.copytree(Path(args.run_dir) / part, workdir / part)


def untrained_run(args: Args, workdir: Path) -> None:
    """A TakeCover-shaped TD-VAE (3 actions, jumps up to the largest K) and 100 start latents."""
    torch.manual_seed(0)
    model = TDVAE(args.z_dim, 3, True, args.belief, hidden=args.belief, max_jump=max(args.jumps))
    with torch.no_grad():
        model.head_net[-1].bias[1] = -30.0  # the done logit: every dream runs to --max-episode-steps
    space = {"type": "discrete", "n": 3}
    save_checkpoint(tdvae_dir(workdir), module_state(model), {"kind": TDVAE.kind, **model.config,
                                                            "env_id": "VizdoomTakeCover-v1", "action_space": space})
    starts = torch.randn(100, args.z_dim)
    save_checkpoint(latent_dir(workdir), {"mu": starts, "log_sigma": torch.full_like(starts, -2.0)},
                    {"kind": "dream start latents"}, name="start")


def main(args: Args) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        rows = []
        for jump in [1, *args.jumps]:
            workdir = Path(args.out or scratch) / f"jump{jump}"
            copy_run(args, workdir)
            rows.append(train_once(args, jump, workdir))
    for row in rows:
        row["speedup"] = round(rows[0]["seconds"] / row["seconds"], 2)
        row["step_speedup"] = round(rows[0]["step_seconds"] / row["step_seconds"], 2)
    for row in rows:  # rounded for the report only after every ratio is taken
        row["seconds"], row["step_seconds"] = round(row["seconds"], 1), round(row["step_seconds"], 4)
        print(row)
    result = {"generations": args.generations, "population": args.population, "rollouts": args.rollouts,
              "step_dreams": args.step_dreams, "step_env_steps": args.step_env_steps, "results": rows,
              "ratio": min(row["speedup"] for row in rows[1:]),
              "step_ratio": min(row["step_speedup"] / row["jump"] for row in rows[1:])}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
