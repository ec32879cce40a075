"""Evaluate a trained agent (V + M + C of a run directory) in the real env or in its dream.

    python eval.py --run-dir runs/takecover --episodes 100 --workers 2 --json results/takecover.json

Prints mean +- std and writes a JSON with the command, env id, seeds and every episode's
return and length. ``--video DIR`` adds mp4s: a real episode beside V's reconstruction of
what the agent saw, and a dream episode decoded through V. ``--wandb-mode online|offline`` logs
the episodes, mean, std and videos to a W&B run of its own (see ``_log_to_wandb``).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from envs.errors import UserError


@dataclass
class EvalArgs:
    run_dir: Path
    """Run directory with trained V, M and controller (or a pretrained/ directory)."""
    episodes: int = 100
    """Episodes to play."""
    where: Literal["real", "dream"] = "real"
    """real: the actual env; dream: inside M."""
    seed: int = 1_000_000
    """First episode seed (seeds are seed, seed+1, ...); kept apart from training seeds."""
    workers: int = 1
    """Worker processes for real episodes."""
    temperature: float | None = None
    """Dream temperature (default: the one the controller was trained at)."""
    video: Path | None = None
    """Write mp4s of one real and one dream episode into this directory."""
    json: Path | None = None
    """Write every episode's return and length to this JSON file."""
    latent: Literal["mean", "sample"] = "mean"
    """Real episodes: the agent acts on z = mu(V(frame)) (mean) or on z ~ N(mu, sigma) (sample, as M
    was trained), the noise seeded by each episode's seed."""
    device: str = "auto"
    """auto | cpu | cuda (dream evaluation)."""
    wandb_mode: Literal["online", "offline", "disabled"] = "disabled"
    """W&B: online | offline logs this evaluation as a run named RUN_NAME-eval (files in RUN/wandb)."""
    backend: Literal["local", "ray"] = "local"
    """Real episodes: in local worker processes, or in Ray actors (needs the ray extra; on a cluster
    every node must read the run directory at the same path)."""
    ray_address: str | None = None
    """With --backend ray: the cluster to join (auto: the one `ray start` made); none starts a
    Ray instance on this machine."""

    def check(self) -> None:
        """One-line UserError for the first bad option (before any episode is played)."""
        from envs.checks import at_least, directory_to_write, existing_directory, file_to_write, positive
        from envs.pool import check_backend
        from world_models.runlog import resolve_device

        existing_directory("run_dir", self.run_dir, "a trained run directory (or a pretrained/ one)")
        at_least("episodes", self.episodes, 1)
        at_least("workers", self.workers, 1)
        at_least("seed", self.seed, 0)
        if self.temperature is not None:
            positive("temperature", self.temperature)
        directory_to_write("video", self.video)
        file_to_write("json", self.json)
        resolve_device(self.device)
        check_backend(self.backend, self.ray_address)


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(EvalArgs, args=argv, prog="eval.py")
    try:
        args.check()
        from agents.evaluate import run_evaluation

        command = "python eval.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        result = run_evaluation(args, command)
        if args.wandb_mode != "disabled":
            _log_to_wandb(args, result)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result.where} score over {len(result.returns)} episodes: {result.mean:.1f} +- {result.std:.1f}")
    if "success_rate" in result.extra:
        print(f"success rate (goal reached): {result.extra['success_rate']:.0%}")
    return 0


def _log_to_wandb(args: EvalArgs, result) -> None:
    """A W&B run per evaluation (a fresh id each time: other seeds or episodes are another
    evaluation), grouped with the run directory's name: every episode's seed, return and length
    as the table ``eval/episodes``, ``eval/mean`` and ``eval/std`` in its summary, and the videos
    with ``--video``."""
    from world_models.runlog import WandbRun, to_jsonable

    run_dir = Path(args.run_dir)
    config = to_jsonable({**vars(args), "command": result.extra["command"], "env_id": result.extra["env_id"]})
    run = WandbRun.open(run_dir, args.wandb_mode, f"{run_dir.name}-eval", None, config, group=run_dir.name)
    try:
        rows = [list(row) for row in zip(result.seeds, result.returns, result.lengths, strict=True)]
        run.table("eval/episodes", ["seed", "return", "length"], rows)
        run.summary({"eval/mean": result.mean, "eval/std": result.std, "eval/episodes_played": len(rows),
                     "eval/where": result.where})
        for path in result.extra.get("videos", []):
            run.video(f"videos/{Path(path).stem}", Path(path))
    finally:
        run.finish()


if __name__ == "__main__":
    sys.exit(main())
