"""Train World Models agents from the command line.

    python train.py collect --env VizdoomTakeCover-v1 --episodes 20 --out data/takecover --workers 2
    python train.py vae --data data/takecover --run-dir runs/takecover
    python train.py mdnrnn --run-dir runs/takecover
    python train.py tdvae --run-dir runs/takecover                               # or a TD-VAE memory
    python train.py icm --run-dir runs/takecover                                 # curiosity: ICM on real episodes
    python train.py controller --run-dir runs/takecover --algo cmaes --where dream
    python train.py pipeline --preset doom-take-cover --run-dir runs/takecover   # all of the above + eval
    python train.py presets                                                      # what the presets set

Each subcommand's ``--help`` lists its options with their documentation (from the dataclasses'
field docstrings). Every config is checked before any work starts; user errors (bad values,
ids, missing data, damaged or mismatched checkpoints) print one line and exit with code 2.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from agents.presets import PRESETS, PipelineSettings, changed_settings, describe_presets, overlay, preset_settings
from agents.train_controller import ControllerConfig
from envs.checks import at_least, directory_to_write, existing_directory
from envs.errors import UserError
from world_models.train_icm import ICMConfig
from world_models.train_mdnrnn import MDNRNNConfig
from world_models.train_tdvae import TDVAEConfig
from world_models.train_vae import VAEConfig

DEFAULT_PRESET = "doom-take-cover"
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Collect:
    """Collect rollouts from a real env into a dataset directory (one file per episode)."""

    env: str
    """Gymnasium id: ALE/<Game>-v5, Vizdoom...-v1 or CarRacing-v3."""
    out: Path
    """Dataset directory; running again with the same directory resumes."""
    episodes: int = 100
    """Episodes the directory should hold in the end."""
    step_cap: int = 0
    """The directory may hold at most this many agent steps (an experience budget such as Atari
    100k): episodes are cut so the total never exceeds it, and collection stops there; 0: no cap."""
    workers: int = 1
    """Independent worker processes, each with its own env."""
    seed: int = 0
    """First episode seed; episode seeds are seed, seed+1, ..."""
    policy: Literal["random", "held", "constant"] = "random"
    """random: uniform actions; held: a random action held for 1-10 steps (World Models Doom);
    constant: one random action held for the whole episode."""
    progress: bool = True
    """Show a progress bar."""
    backend: Literal["local", "ray"] = "local"
    """local: worker processes here, each writing its episodes; ray: Ray actors (needs the ray
    extra) that send each episode back to be written here, so nodes need not share a disk."""
    ray_address: str | None = None
    """With --backend ray: the cluster to join (auto: the one `ray start` made); none starts a
    Ray instance on this machine."""

    def check(self) -> None:
        from envs.make import check_env_id
        from envs.pool import check_backend

        check_env_id(self.env)
        at_least("episodes", self.episodes, 1)
        at_least("step_cap", self.step_cap, 0)
        at_least("workers", self.workers, 1)
        at_least("seed", self.seed, 0)
        directory_to_write("out", self.out)
        check_backend(self.backend, self.ray_address)


def run_collect(args: Collect) -> None:
    from envs.collect import collect

    summary = collect(
        args.env, args.episodes, args.out, workers=args.workers, seed=args.seed,
        policy=args.policy, progress=args.progress, backend=args.backend, ray_address=args.ray_address,
        step_cap=args.step_cap or None,
    )
    print(summary.line())


def run_vae(args: VAEConfig) -> None:
    from world_models.train_vae import train_vae

    metrics = train_vae(args)
    if "val_loss" in metrics:
        print(f"V trained: val loss {metrics['val_loss']:.2f} (recon {metrics['val_recon']:.2f}, "
              f"KL {metrics['val_kl']:.2f}); mean mu {metrics['mean_mu']:.3f}, "
              f"mean sigma {metrics['mean_sigma']:.3f}")


def run_mdnrnn(args: MDNRNNConfig) -> None:
    from world_models.train_mdnrnn import train_mdnrnn

    metrics = train_mdnrnn(args)
    if "val_nll" in metrics:
        print(f"M trained: val NLL {metrics['val_nll']:.3f}, val done loss {metrics['val_done_loss']:.3f}, "
              f"done precision {metrics['val_done_precision']:.2f}")


def run_tdvae(args: TDVAEConfig) -> None:
    from world_models.train_tdvae import train_tdvae

    metrics = train_tdvae(args)
    if "val_elbo_loss" in metrics:
        print(f"TD-VAE trained: val ELBO loss {metrics['val_elbo_loss']:.3f}, val done loss "
              f"{metrics['val_done_loss']:.3f}, done precision {metrics['val_done_precision']:.2f}")


def run_icm(args: ICMConfig) -> None:
    from world_models.train_icm import train_icm

    metrics = train_icm(args)
    if metrics["transitions"]:
        print(f"ICM trained on {metrics['episodes']} new episodes ({metrics['transitions']} transitions): "
              f"novelty before {metrics['novelty']:.4f}, inverse loss {metrics['inverse_loss']:.3f}, "
              f"forward loss {metrics['forward_loss']:.4f}")


def run_controller(args: ControllerConfig) -> None:
    from agents.train_controller import train_controller

    summary = train_controller(args)
    print(f"C trained ({args.algo}, {args.where}): best fitness {summary['fitness']:.1f} "
          f"at generation {summary.get('generation')}; saved to {args.run_dir}/controller")


@dataclass
class Export:
    """Export a trained agent (V, its memory, C, dream start latents) as a small directory eval.py loads."""

    run_dir: Path
    """Trained run directory."""
    out: Path
    """Where to write it, e.g. pretrained/doom-take-cover."""

    def check(self) -> None:
        existing_directory("run_dir", self.run_dir, "a trained run directory")
        directory_to_write("out", self.out)


def run_export(args: Export) -> None:
    from agents.agent import export_agent

    files = export_agent(args.run_dir, args.out)
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"exported {len(files)} files ({size:.1f} MiB) to {args.out}")


@dataclass
class Pipeline:
    """Run collect -> V -> [M or TD-VAE -> C in the dream -> validation] x rounds -> real evaluation.

    Presets stack left to right over neutral defaults, then any --setting given here; the
    defaults shown are the chosen presets' values. Finished stages are skipped, so running the
    same command again resumes a stopped run (and reports a finished one)."""

    run_dir: Path
    """Run directory (resumes when it exists)."""
    preset: tuple[PresetName, ...] = (DEFAULT_PRESET,)
    """Named settings, stacked left to right (`python train.py presets` lists them)."""
    settings: Annotated[PipelineSettings, tyro.conf.arg(name="")] = field(default_factory=PipelineSettings)
    """Every setting of the run (flags without a prefix: --episodes, --population, ...)."""
    device: str = "auto"
    """auto | cpu | cuda: where V, M and the dream run (real-env workers stay on CPU)."""
    wandb_mode: Literal["online", "offline", "disabled"] = "disabled"
    """Mirror the run to Weights & Biases (one W&B run per run directory)."""
    progress: bool = True
    """Show progress bars."""
    backend: Literal["local", "ray"] = "local"
    """Where collection and the real-env episodes (validation, evaluation) run: local worker
    processes, or Ray actors (needs the ray extra; collected episodes come back to this machine)."""
    ray_address: str | None = None
    """With --backend ray: the cluster to join (auto: the one `ray start` made); none starts a
    Ray instance on this machine."""

    def check(self) -> None:
        from envs.pool import check_backend

        directory_to_write("run_dir", self.run_dir)
        self.settings.check()
        check_backend(self.backend, self.ray_address)


def run_pipeline_command(args: Pipeline) -> None:
    from agents.pipeline import run_pipeline, summary_lines

    summary = run_pipeline(args.settings, args.run_dir, args.device, args.wandb_mode, args.progress,
                           " ".join(args.preset), overrides=changed_settings(args.settings, args.preset),
                           backend=args.backend, ray_address=args.ray_address)
    for line in summary_lines(summary):
        print(line)


@dataclass
class Presets:
    """List the pipeline presets: what each is for, its bases and the settings it changes."""


def run_presets(args: Presets) -> None:
    print("\n".join(describe_presets()))


COMMANDS = {
    "collect": (Collect, run_collect),
    "vae": (VAEConfig, run_vae),
    "mdnrnn": (MDNRNNConfig, run_mdnrnn),
    "tdvae": (TDVAEConfig, run_tdvae),
    "icm": (ICMConfig, run_icm),
    "controller": (ControllerConfig, run_controller),
    "pipeline": (Pipeline, run_pipeline_command),
    "presets": (Presets, run_presets),
    "export": (Export, run_export),
}


def presets_named(argv: list[str]) -> tuple[str, ...]:
    """The ``--preset`` names on a pipeline command line (before tyro parses it, so that ``--help``
    and the defaults show the chosen presets' values)."""
    names: list[str] = []
    for i, token in enumerate(argv):
        if token == "--preset":
            names = _until_next_flag(argv[i + 1:])
        elif token.startswith("--preset="):
            names = [token.split("=", 1)[1], *_until_next_flag(argv[i + 1:])]
    return tuple(names) or (DEFAULT_PRESET,)


def _until_next_flag(tokens: list[str]) -> list[str]:
    taken = []
    for token in tokens:
        if token.startswith("-"):
            break
        taken.append(token)
    return taken


def parse(argv: list[str]):
    """The chosen command's config, parsed (tyro prints --help or a usage error and exits)."""
    if not argv or argv[0] not in COMMANDS:
        return tyro.extras.subcommand_cli_from_dict({name: spec for name, (spec, _) in COMMANDS.items()},
                                                    args=argv, prog="train.py")
    name, rest = argv[0], argv[1:]
    spec = COMMANDS[name][0]
    default = None
    if spec is Pipeline:
        names = presets_named(rest)
        overlay(names)  # an unknown name: one line before tyro's usage text
        default = Pipeline(run_dir=tyro.MISSING, preset=names, settings=preset_settings(*names))
    return tyro.cli(spec, args=rest, prog=f"train.py {name}", default=default)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
        runner = next(run for spec, run in COMMANDS.values() if type(args) is spec)
        if hasattr(args, "check"):
            args.check()
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
