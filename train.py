"""Train World Models agents from the command line.

    python train.py collect --env VizdoomTakeCover-v1 --episodes 20 --out data/takecover --workers 2

Each subcommand's ``--help`` lists its options (generated from the dataclasses below). User
errors (bad ids, missing data, mismatched checkpoints) print one line and exit with code 2.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from envs.errors import UserError


@dataclass
class Collect:
    """Collect rollouts from a real env into a dataset directory (one file per episode)."""

    env: str
    """Gymnasium id: ALE/<Game>-v5, Vizdoom...-v1 or CarRacing-v3."""
    out: Path
    """Dataset directory; running again with the same directory resumes."""
    episodes: int = 100
    """Episodes the directory should hold in the end."""
    workers: int = 1
    """Independent worker processes, each with its own env."""
    seed: int = 0
    """First episode seed; episode seeds are seed, seed+1, ..."""
    policy: Literal["random", "held"] = "random"
    """random: uniform actions; held: a random action held for 1-10 steps (World Models Doom)."""
    progress: bool = True
    """Show a progress bar."""


def run_collect(args: Collect) -> None:
    from envs.collect import collect

    summary = collect(
        args.env, args.episodes, args.out, workers=args.workers, seed=args.seed,
        policy=args.policy, progress=args.progress,
    )
    print(summary.line())


COMMANDS = {"collect": (Collect, run_collect)}


def main(argv: list[str] | None = None) -> int:
    args = tyro.extras.subcommand_cli_from_dict(
        {name: spec for name, (spec, _) in COMMANDS.items()}, args=argv, prog="train.py"
    )
    runner = next(run for spec, run in COMMANDS.values() if isinstance(args, spec))
    try:
        runner(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
