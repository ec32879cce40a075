"""How long M believes one action held throughout survives, round by round of a pipeline run.

    python experiments/constant_actions.py --run-dirs runs/tc-v6 runs/tc-v8

A constant action is the cheapest policy CMA-ES can find in a dream. In TakeCover it runs the
agent into a wall (or leaves it standing) and dies at ~170 steps in the real env; a round whose M
lets one such action survive for hundreds of dream steps is a round whose controller learns that
exploit. For each round kept in ``RUN/rounds/K``, this plays ``dreams`` dreams per action at the
run's temperature with both death rules and lists the mean dream length beside the round's real
validation score (``stages.json``). Results go to ``--out`` (JSON).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.evaluate import load_start_latents  # noqa: E402
from agents.pipeline import round_dir, stage_name  # noqa: E402
from envs.episodes import atomic_write_json  # noqa: E402
from world_models.dream import DreamConfig, held_action_lengths  # noqa: E402
from world_models.train_mdnrnn import load_mdnrnn  # noqa: E402


@dataclass
class Args:
    run_dirs: list[Path]
    """Pipeline runs with ``rounds/K/mdnrnn`` (one M per round)."""
    dreams: int = 64
    """Dreams per action and death rule."""
    seed: int = 1
    out: Path = Path("results/constant_actions.json")


def constant_action_lengths(mdn_dir: Path, start_latents: tuple[torch.Tensor, torch.Tensor], temperature: float,
                            dreams: int, seed: int) -> dict:
    """Mean dream length of each action held throughout, for both death rules: {rule: [per action]}."""
    mdnrnn, config = load_mdnrnn(mdn_dir, "cpu")
    return {rule: held_action_lengths(mdnrnn, *start_latents, DreamConfig(
        temperature=temperature, done_mode=rule, done_weight=config.get("done_weight", 10.0)), dreams, seed)
        for rule in ("threshold", "sample")}


def study_run(run_dir: Path, dreams: int, seed: int) -> list[dict]:
    settings = json.loads((run_dir / "pipeline_config.json").read_text())
    stages = json.loads((run_dir / "stages.json").read_text())
    start_latents = load_start_latents(run_dir, "cpu")  # shared by every round: one latent cache per run
    rows = []
    for k in range(1, settings["iterations"] + 1):
        if not (round_dir(run_dir, k) / "mdnrnn").is_dir():
            break
        validation = stages.get(stage_name("validate", k), {}).get("summary", {}).get("mean")
        lengths = constant_action_lengths(round_dir(run_dir, k), start_latents, settings["temperature"], dreams, seed)
        rows.append({"round": k, "validation_mean": validation, "dream_length_threshold": lengths["threshold"],
                     "dream_length_sample": lengths["sample"]})
        print(f"{run_dir.name} round {k}: validation {validation}, dream length per constant action "
              f"(threshold) {lengths['threshold']}, (sampled) {lengths['sample']}", flush=True)
    return rows


def main(args: Args) -> dict:
    torch.set_num_threads(1)
    result = {"what": __doc__.split("\n")[0], "dreams_per_action": args.dreams, "seed": args.seed,
              "runs": {str(run): study_run(run, args.dreams, args.seed) for run in args.run_dirs}}
    atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
