"""The whole World Models recipe as one resumable command.

    collect -> V -> latent cache + M -> C in the dream -> evaluation in the real env

Each stage records its wall-clock in ``RUN/stages.json`` when it finishes and is skipped when
the run directory already holds its finished result, so a killed pipeline resumes where it
stopped (and the stage that was running resumes from its own last checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
import sys
import time
from pathlib import Path

from agents.agent import agent_policy_factory
from agents.evaluate import evaluate_real
from agents.presets import PipelineSettings
from agents.report import learning_curve
from agents.train_controller import ControllerConfig, train_controller
from envs.collect import collect
from envs.episodes import atomic_write_json, iter_episodes
from world_models.train_mdnrnn import MDNRNNConfig, train_mdnrnn
from world_models.train_vae import VAEConfig, train_vae

STAGES_FILE = "stages.json"


class Stages:
    """Which stages a run has finished, with their wall-clock and summaries (``RUN/stages.json``)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / STAGES_FILE
        self.done: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, name: str, work, describe=lambda result: result) -> dict:
        if name in self.done:
            print(f"[{name}] already done ({self.done[name]['seconds']:.0f}s): skipped")
            return self.done[name]["summary"]
        print(f"[{name}] started", flush=True)
        start = time.perf_counter()
        summary = describe(work())
        self.done[name] = {"seconds": round(time.perf_counter() - start, 1), "summary": summary}
        atomic_write_json(self.path, self.done)
        print(f"[{name}] done in {self.done[name]['seconds']:.0f}s", flush=True)
        return summary


def run_pipeline(settings: PipelineSettings, run_dir: Path, device: str = "auto", wandb_mode: str = "disabled",
                 progress: bool = True, preset: str = "") -> dict:
    """Run (or resume) every stage; returns the final summary (also in ``RUN/summary.json``)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "pipeline_config.json", {"preset": preset, **dataclasses.asdict(settings)})
    stages = Stages(run_dir)
    data = run_dir / "data"
    common = {"device": device, "wandb_mode": wandb_mode, "progress": progress}
    s = settings
    stages.run("collect", lambda: collect(s.env, s.episodes, data, workers=s.collect_workers, seed=s.seed,
                                          policy=s.policy, progress=progress), lambda r: dataclasses.asdict(r))
    stages.run("vae", lambda: train_vae(VAEConfig(
        data=data, run_dir=run_dir, z_dim=s.z_dim, epochs=s.vae_epochs, batch_size=s.vae_batch, lr=s.vae_lr,
        seed=s.seed, **common)))
    stages.run("mdnrnn", lambda: train_mdnrnn(MDNRNNConfig(
        run_dir=run_dir, data=data, hidden=s.hidden, mixtures=s.mixtures, seq_len=s.seq_len,
        batch_size=s.mdn_batch, epochs=s.mdn_epochs, lr=s.mdn_lr, seed=s.seed, **common)))
    stages.run("controller", lambda: train_controller(ControllerConfig(
        run_dir=run_dir, algo="cmaes", where="dream", temperature=s.temperature, generations=s.generations,
        max_episode_steps=s.dream_max_steps, done_mode=s.done_mode,
        population=s.population, rollouts=s.rollouts, eval_every=s.eval_every, eval_rollouts=s.eval_rollouts,
        include_cell=s.include_cell, seed=s.seed, **common)))
    seeds = list(range(1_000_000, 1_000_000 + s.eval_episodes))  # never a collection seed
    result = stages.run("evaluate", lambda: evaluate_real(run_dir, s.env, seeds, s.workers),
                        lambda r: r.to_dict())
    for iteration in range(2, s.iterations + 1):
        result = _iterate(iteration, s, run_dir, data, stages, seeds, common, progress)
    summary = summarise(run_dir, stages, result, data)
    atomic_write_json(run_dir / "summary.json", summary)
    learning_curve(run_dir)
    return summary


def _iterate(k: int, s: PipelineSettings, run_dir: Path, data: Path, stages: Stages, seeds: list[int],
             common: dict, progress: bool) -> dict:
    """Iterative training round k: collect with the current agent (plus exploration noise),
    retrain M on all the data, retrain C in the new dream (afresh, or from the current C), evaluate."""
    factory = functools.partial(agent_policy_factory, str(run_dir), s.exploration)
    total = s.episodes + (k - 1) * s.iteration_episodes
    stages.run(f"collect_{k}", lambda: collect(s.env, total, data, workers=s.collect_workers, seed=s.seed,
                                               policy="agent", policy_factory=factory, progress=progress),
               lambda r: dataclasses.asdict(r))
    stages.run(f"mdnrnn_{k}", lambda: train_mdnrnn(MDNRNNConfig(
        run_dir=run_dir, data=data, hidden=s.hidden, mixtures=s.mixtures, seq_len=s.seq_len,
        batch_size=s.mdn_batch, epochs=s.mdn_epochs * k, lr=s.mdn_lr, seed=s.seed, **common)))
    stages.run(f"controller_{k}", lambda: train_controller(ControllerConfig(
        run_dir=run_dir, algo="cmaes", where="dream", temperature=s.temperature, generations=s.generations,
        max_episode_steps=s.dream_max_steps, done_mode=s.done_mode, population=s.population, rollouts=s.rollouts,
        eval_every=s.eval_every, eval_rollouts=s.eval_rollouts, include_cell=s.include_cell, seed=s.seed,
        state_dir=f"cmaes_dream_{k}", warm_start=s.warm_start, **common)))
    return stages.run(f"evaluate_{k}", lambda: evaluate_real(run_dir, s.env, seeds, s.workers),
                      lambda r: r.to_dict())


def summarise(run_dir: Path, stages: Stages, result: dict, data: Path) -> dict:
    real_frames = sum(len(episode) for _, episode in iter_episodes(data))
    return {
        "command": "python train.py " + shlex.join(sys.argv[1:]),
        "dream_score": stages.done[_last(stages, "controller")]["summary"].get("fitness"),
        "real_score_per_iteration": [stages.done[name]["summary"]["mean"] for name in stages.done
                                     if name.startswith("evaluate")],
        "real_mean": result["mean"], "real_std": result["std"], "real_episodes": result["episodes"],
        "real_frames_used": real_frames,
        "seconds_per_stage": {name: stage["seconds"] for name, stage in stages.done.items()},
        "seconds_total": round(sum(stage["seconds"] for stage in stages.done.values()), 1),
    }


def _last(stages: Stages, prefix: str) -> str:
    return [name for name in stages.done if name.startswith(prefix)][-1]


def summary_lines(summary: dict) -> list[str]:
    stages = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in summary["seconds_per_stage"].items())
    return [
        f"dream score {summary['dream_score']:.1f}; real score {summary['real_mean']:.1f} +- "
        f"{summary['real_std']:.1f} over {summary['real_episodes']} episodes",
        f"real frames used for training: {summary['real_frames_used']:,}",
        *([f"real score per iteration: {summary['real_score_per_iteration']}"]
          if len(summary["real_score_per_iteration"]) > 1 else []),
        f"wall-clock: {stages} (total {summary['seconds_total'] / 60:.1f} min)",
    ]
