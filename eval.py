"""Evaluate a trained agent (V + M + C of a run directory) in the real env or in its dream.

    python eval.py --run-dir runs/takecover --episodes 100 --workers 2 --json results/takecover.json

Prints mean +- std and writes a JSON with the command, env id, seeds and every episode's
return and length. ``--video DIR`` adds mp4s: a real episode beside V's reconstruction of
what the agent saw, and a dream episode decoded through V.
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
    device: str = "auto"
    """auto | cpu | cuda (dream evaluation)."""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(EvalArgs, args=argv, prog="eval.py")
    try:
        from agents.evaluate import run_evaluation

        command = "python eval.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        result = run_evaluation(args, command)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result.where} score over {len(result.returns)} episodes: {result.mean:.1f} +- {result.std:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
