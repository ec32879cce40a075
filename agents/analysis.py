"""Looking into a trained run beyond its score: how its agent switches actions, and how long M lets
a scripted action sequence live in the dream (one action held throughout, or two alternating).

A controller can score well in the dream by an exploit of M, then fail in the real env: a held move
that M lets live (TakeCover: into a wall, dead at ~170 real steps), or a left/right jitter. These
functions measure both sides of that gap; the scripts in ``experiments/`` are thin over them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agents.evaluate import load_start_latents
from agents.pipeline import round_dir, stage_name
from envs.policies import Policy
from world_models.dream import DreamConfig, DreamVecEnv, dream_rollouts, held_action_lengths
from world_models.memory import MEMORY_KINDS, Memory, load_memory

JITTER_ACTIONS = (1, 2)  # TakeCover: move left, move right


def held_runs(actions: Sequence[int] | np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of one action held, in order: [1, 1, 2, 1] -> [2, 1, 1]."""
    actions = np.asarray(actions)
    if len(actions) == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(np.diff(actions) != 0)
    return np.diff(np.r_[0, change + 1, len(actions)])


def switching_stats(actions: Sequence[int] | np.ndarray) -> dict:
    """One episode's discrete actions -> length, count of each action, mean and longest run held."""
    runs = held_runs(actions)
    counts = Counter(int(a) for a in np.asarray(actions).tolist())
    return {"length": len(actions), "action_counts": dict(sorted(counts.items())),
            "mean_held": float(runs.mean()) if len(runs) else 0.0, "longest_held": int(runs.max(initial=0))}


def jitter_action(step: int, period: int, actions: tuple[int, int] = JITTER_ACTIONS) -> int:
    """The scripted jitter: ``actions[0]`` for ``period`` steps, then ``actions[1]``, alternating."""
    return actions[(step // period) % 2]


def jitter_policy(period: int, space: gym.Space, rng: np.random.Generator,
                  actions: tuple[int, int] = JITTER_ACTIONS) -> Policy:
    """``envs.collect``'s factory signature; picklable as ``functools.partial(jitter_policy, period)``.
    Open loop: it ignores what it sees."""
    step = [0]

    def policy(observation: np.ndarray) -> int:
        step[0] += 1
        return jitter_action(step[0] - 1, period, actions)

    return policy


@torch.no_grad()
def jitter_dream_length(memory: Memory, start_mu: torch.Tensor, start_log_sigma: torch.Tensor,
                        config: DreamConfig, period: int, dreams: int = 64, seed: int = 1,
                        actions: tuple[int, int] = JITTER_ACTIONS) -> float:
    """Mean dream length of ``jitter_policy(period)``: the dream side of the real episodes' length."""
    dream = DreamVecEnv(memory, start_mu, start_log_sigma, dreams, config, seed=seed)
    step = [0]  # every dream starts together and only its first episode counts: one clock for all

    def act(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        step[0] += 1
        return torch.full((len(features),), jitter_action(step[0] - 1, period, actions), dtype=torch.long,
                          device=features.device)

    _, lengths = dream_rollouts(dream, act, seed=seed)
    return float(lengths.float().mean())


def dream_config_of(directory: Path) -> DreamConfig:
    """The dream a controller trained in (its ``controller/model.json``), with M's done weight."""
    info = json.loads((Path(directory) / "controller" / "model.json").read_text())
    return DreamConfig(**info.get("dream", {}))


def kept_rounds(run_dir: Path) -> list[int]:
    """The pipeline rounds whose memory is kept in ``RUN/rounds/K/<mdnrnn or tdvae>``, in order."""
    rounds, k = [], 1
    while round_memory(round_dir(run_dir, k)):
        rounds.append(k)
        k += 1
    return rounds


def round_memory(directory: Path) -> str | None:
    """The kind of memory kept in a round directory (None: none)."""
    return next((kind for kind in MEMORY_KINDS if (Path(directory) / kind).is_dir()), None)


def held_actions_per_round(run_dir: Path, dreams: int = 64, seed: int = 1,
                           rules: Sequence[str] = ("threshold", "sample")) -> list[dict]:
    """For each kept round of a pipeline run: the mean dream length of every discrete action held
    throughout, under each death rule, at the temperature the round's C trained at, beside the
    round's validation score (``stages.json``; None where not recorded)."""
    run_dir = Path(run_dir)
    stages_file = run_dir / "stages.json"
    stages = json.loads(stages_file.read_text()) if stages_file.exists() else {}
    start_latents = load_start_latents(run_dir, "cpu")  # one latent cache per run, shared by its rounds
    rows = []
    for k in kept_rounds(run_dir):
        directory = round_dir(run_dir, k)
        memory, memory_config = load_memory(directory, round_memory(directory), "cpu")
        config = dream_config_of(directory if (directory / "controller").is_dir() else run_dir)
        config.done_weight = memory_config.get("done_weight", config.done_weight)
        row = {"round": k, "temperature": config.temperature,
               "validation_mean": stages.get(stage_name("validate", k), {}).get("summary", {}).get("mean")}
        for rule in rules:
            config.done_mode = rule
            row[f"dream_length_{rule}"] = held_action_lengths(memory, *start_latents, config, dreams, seed)
        rows.append(row)
    return rows
