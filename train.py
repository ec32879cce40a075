"""Train World Models agents from the command line.

    python train.py collect --env VizdoomTakeCover-v1 --episodes 20 --out data/takecover --workers 2
    python train.py vae --data data/takecover --run-dir runs/takecover
    python train.py mdnrnn --run-dir runs/takecover
    python train.py controller --run-dir runs/takecover --algo cmaes --where dream
    python train.py pipeline --preset doom-take-cover --run-dir runs/takecover   # all of the above + eval

Each subcommand's ``--help`` lists its options (generated from the dataclasses below). User
errors (bad ids, missing data, mismatched checkpoints) print one line and exit with code 2.
"""

from __future__ import annotations

import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from agents.train_controller import ControllerConfig
from envs.errors import UserError
from world_models.train_mdnrnn import MDNRNNConfig
from world_models.train_vae import VAEConfig


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
    policy: Literal["random", "held", "constant"] = "random"
    """random: uniform actions; held: a random action held for 1-10 steps (World Models Doom);
    constant: one random action held for the whole episode."""
    progress: bool = True
    """Show a progress bar."""


def run_collect(args: Collect) -> None:
    from envs.collect import collect

    summary = collect(
        args.env, args.episodes, args.out, workers=args.workers, seed=args.seed,
        policy=args.policy, progress=args.progress,
    )
    print(summary.line())


def run_vae(args: VAEConfig) -> None:
    from world_models.train_vae import train_vae

    metrics = train_vae(args)
    print(f"V trained: val loss {metrics['val_loss']:.2f} (recon {metrics['val_recon']:.2f}, "
          f"KL {metrics['val_kl']:.2f}); mean mu {metrics['mean_mu']:.3f}, mean sigma {metrics['mean_sigma']:.3f}")


def run_mdnrnn(args: MDNRNNConfig) -> None:
    from world_models.train_mdnrnn import train_mdnrnn

    metrics = train_mdnrnn(args)
    print(f"M trained: val NLL {metrics['val_nll']:.3f}, val done loss {metrics['val_done_loss']:.3f}, "
          f"done precision {metrics['val_done_precision']:.2f}")


def run_controller(args: ControllerConfig) -> None:
    from agents.train_controller import train_controller

    summary = train_controller(args)
    print(f"C trained ({args.algo}, {args.where}): best fitness {summary['fitness']:.1f} "
          f"at generation {summary.get('generation')}; saved to {args.run_dir}/controller")


@dataclass
class Export:
    """Export a trained agent (V, M, C, dream start latents) as a small directory eval.py loads."""

    run_dir: Path
    """Trained run directory."""
    out: Path
    """Where to write it, e.g. pretrained/doom-take-cover."""


def run_export(args: Export) -> None:
    from agents.agent import export_agent

    files = export_agent(args.run_dir, args.out)
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"exported {len(files)} files ({size:.1f} MiB) to {args.out}")


def _pipeline_args():
    """``train.py pipeline`` options: a preset name, a run dir, and an override for every setting."""
    import dataclasses

    from agents.presets import PRESETS, PipelineSettings

    default = PRESETS["doom-take-cover"]
    types = typing.get_type_hints(PipelineSettings)
    overrides = [
        (f.name, Annotated[types[f.name] | None, tyro.conf.arg(help=f"override the preset (doom-take-cover: "
                                                         f"{getattr(default, f.name)})")], None)
        for f in dataclasses.fields(PipelineSettings)
    ]
    return dataclasses.make_dataclass("Pipeline", [
        ("run_dir", Annotated[Path, tyro.conf.arg(help="run directory (resumes when it exists)")]),
        ("preset", Annotated[Literal[tuple(PRESETS)], tyro.conf.arg(help="named settings")], "doom-take-cover"),
        ("device", Annotated[str, tyro.conf.arg(help="auto | cpu | cuda")], "auto"),
        ("wandb_mode", Annotated[str, tyro.conf.arg(help="online | offline | disabled")], "disabled"),
        ("progress", Annotated[bool, tyro.conf.arg(help="show progress bars")], True),
        *overrides,
    ], namespace={"__doc__": "Run collect -> V -> M -> C (dream) -> real evaluation; skips finished stages."})


Pipeline = _pipeline_args()


def run_pipeline_command(args) -> None:
    import dataclasses

    from agents.pipeline import run_pipeline, summary_lines
    from agents.presets import resolve

    settings = resolve(args.preset, dataclasses.asdict(args))
    summary = run_pipeline(settings, args.run_dir, args.device, args.wandb_mode, args.progress, args.preset)
    for line in summary_lines(summary):
        print(line)


COMMANDS = {
    "collect": (Collect, run_collect),
    "vae": (VAEConfig, run_vae),
    "mdnrnn": (MDNRNNConfig, run_mdnrnn),
    "controller": (ControllerConfig, run_controller),
    "pipeline": (Pipeline, run_pipeline_command),
    "export": (Export, run_export),
}


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
