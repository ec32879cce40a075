"""Pipeline settings and named presets (recipes) that stack.

A preset is a named overlay of settings, optionally on top of base presets. ``--preset A B``
applies A's overlay (with its bases), then B's, over the neutral defaults of
``PipelineSettings``; any ``--setting VALUE`` on the command line comes last. So a recipe is a
base preset plus a few overrides (``doom-take-cover-3000``), and ``tiny`` turns any recipe into
a minutes-long smoke run of every stage. What each preset scored is in ``docs/``, not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from envs.checks import at_least, flag, in_range, one_of, positive
from envs.errors import UserError


@dataclass
class PipelineSettings:
    """Every setting of a pipeline run (collect -> V -> latent cache -> M -> C -> evaluation).

    The defaults are neutral: one pass of the World Models recipe with every optional mechanism
    off. The presets hold the values of tested recipes."""

    env: str = ""
    """Gymnasium id of the real env (ALE/<Game>-v5, Vizdoom...-v1, CarRacing-v3); a preset names it."""
    episodes: int = 300
    """Random-policy rollouts to collect (seeds seed, seed + 1, ...)."""
    vae_episodes: int = 0
    """V trains on the first this-many random rollouts only and the rest are collected after V,
    for M alone (0: V trains on all of them). V's cost grows with its data; M's done head sees
    one death per episode."""
    real_step_budget: int = 0
    """At most this many agent steps of real experience in the dataset, all collection stages
    together (Atari 100k: 100000); round k's collection fills it up to k/iterations of the budget,
    so with a budget episodes and iteration_episodes are upper bounds. 0: no budget."""
    policy: str = "held"
    """Policy of the random rollouts: random (uniform actions) | held (a random action held for
    1-10 steps, the World Models Doom policy)."""
    collect_workers: int = 2
    """Worker processes that collect episodes, each with its own env."""
    z_dim: int = 64
    """Size of V's latent z."""
    vae_epochs: int = 3
    """Epochs of V over its rollouts."""
    vae_batch: int = 100
    """Frames per V batch."""
    vae_lr: float = 1e-3
    """V's Adam learning rate."""
    vae_recon_cutoff: float = 0.0
    """V trains on the clipped per-pixel loss max(0, e - cutoff) (SimPLe) so small objects count;
    0: the plain L2 loss."""
    vae_foreground_weight: float = 1.0
    """V weighs the loss of the pixels that differ from the data's median frame (the objects on a
    fixed screen) this many times; 1: the plain L2 loss."""
    hidden: int = 256
    """LSTM units of M."""
    mixtures: int = 5
    """Gaussians per latent dimension in M's mixture."""
    seq_len: int = 200
    """Steps per M training sequence."""
    mdn_epochs: int = 30
    """Epochs of M in round 1."""
    mdn_batch: int = 32
    """Sequences per M batch."""
    mdn_lr: float = 1e-3
    """M's Adam learning rate."""
    reward_event_weight: float = 0.0
    """The memory's reward loss counts each step 1 + this * |r| times (0: plain mean squared error):
    a rare reward (MyWayHome's vest, once in ~40,000 random steps) then moves the reward head."""
    mdn_keep_best: str = ""
    """M keeps the epoch of each round with the lowest held-out loss of this name (val_loss,
    val_nll, val_done_loss or val_reward_loss); '' keeps the last epoch."""
    mdn_patience: int = 10
    """With mdn_keep_best: stop a round's M training after this many epochs without a new best."""
    memory: str = "mdnrnn"
    """The agent's memory: mdnrnn (M, the MDN-RNN) or tdvae (the TD-VAE belief: hidden sets its belief
    LSTM, and the mdn_epochs, round_mdn_epochs, mdn_batch, seq_len and late_episode_weight settings
    train it as they train M)."""
    tdvae_state_dim: int = 32
    """Size of TD-VAE's state s (C reads [z, s])."""
    tdvae_lr: float = 5e-4
    """TD-VAE's Adam learning rate."""
    tdvae_rollout: int = 8
    """TD-VAE: links of the open-loop p_T chains trained beside the ELBO (`train.py tdvae --rollout`)."""
    max_jump: int = 4
    """TD-VAE learns jumps of 1..max_jump steps."""
    dream_jump: int = 1
    """Env steps per dream decision, C's action held over them (needs memory tdvae, at most max_jump):
    a dream that many times cheaper."""
    curiosity: str = "none"
    """Intrinsic reward in C's dream returns (world_models/rewards.py): none | icm (ICM on V's latents,
    trained on each round's new real episodes; the dream pays its forward error toward the memory's
    expected next latent) | mdn (from round 2: the disagreement of the round's M and the done_critics
    earlier rounds' Ms about the next latent)."""
    curiosity_scale: float = 0.1
    """eta: the intrinsic reward's weight beside the task's."""
    icm_epochs: int = 4
    """ICM: passes over each round's new real episodes (`train.py icm --epochs`)."""
    temperature: float = 1.15
    """Dream sampling temperature tau of M's mixture (paper Doom: 1.15)."""
    done_mode: str = "threshold"
    """How a dream dies from M's done head: threshold (p > 0.5, the paper's rule) | sample
    (Bernoulli of p, calibrated for the weight M's done loss gives deaths)."""
    dream_max_steps: int = 2100
    """Dream episodes are cut here (TakeCover's real limit is 2100 steps)."""
    generations: int = 30
    """CMA-ES generations per round (round 1: first_round_generations when there are later rounds)."""
    population: int = 64
    """CMA-ES candidates per generation (pycma needs at least 4)."""
    rollouts: int = 16
    """Dream rollouts per candidate; its fitness is their mean return."""
    eval_every: int = 10
    """Re-evaluate CMA-ES's best candidate and mean every this-many generations."""
    eval_rollouts: int = 256
    """Dream rollouts of that re-evaluation."""
    include_cell: bool = False
    """Feed C the LSTM cell c as well as [z, h]."""
    eval_episodes: int = 100
    """Real episodes of the final evaluation (seeds 1,000,000+, used for nothing else)."""
    val_episodes: int = 20
    """Real episodes after every round on the validation seeds (500,000+), the scores to choose
    settings and rounds by; 0 skips them."""
    video_steps: int = 0
    """The videos stage's real episode is cut after this many steps (0: the whole episode; an Atari
    game may last 27,000 steps)."""
    workers: int = 2
    """Worker processes for real-env episodes (validation, evaluation, real-env fitness)."""
    iterations: int = 1
    """Training rounds. 1 is the paper's single pass on random data; each later round first plays
    iteration_episodes with the current agent, continues M on all the data and trains C afresh."""
    iteration_episodes: int = 100
    """Episodes collected with the current agent in each later round."""
    probe_episodes: int = 0
    """Episodes per round played with one random action held throughout (policy constant), added
    after V in round 1 and after the agent's episodes later, so that M learns where every held
    action leads (a held move M believes survives is the cheapest exploit of a dream)."""
    held_action_limit: float = 0.0
    """Adaptive probes: after each round's M, play every action held throughout in 64 dreams; while
    one lives longer than this many dream steps on average, add extra_probe_episodes probes and
    train M extra_mdn_epochs more, at most max_extra_probes times per round (0: off)."""
    extra_probe_episodes: int = 30
    """Probe episodes added by each pass of the held-action check."""
    extra_mdn_epochs: int = 10
    """Epochs M trains on all the data after each pass's extra probes."""
    max_extra_probes: int = 3
    """Passes of extra probes per round at most (C trains on the last M either way)."""
    exploration: float = 0.1
    """Probability of a random action when collecting with the agent."""
    round_mdn_epochs: int = 30
    """Epochs M trains on all the data in each later round (continuing the previous round's M)."""
    late_episode_weight: int = 1
    """M draws the sequences of the episodes collected after the random rollouts (the agent's and
    the probes') this many times per epoch, in place of as many random-rollout sequences, so an
    epoch costs the same (1: every sequence once)."""
    first_round_generations: int = 10
    """CMA-ES generations in round 1 when there are later rounds: round 1's M has seen random data
    only, so its controller mostly shows the next round's M what it exploits."""
    final_generations: int = 0
    """Extra CMA-ES generations in the last round (the same search, run longer)."""
    restarts: int = 1
    """CMA-ES runs per round (seeds seed, seed + 1, ...); the best on the validation episodes is
    kept (needs val_episodes > 0). Each restart costs the round's CMA-ES time again."""
    final_restarts: int = 0
    """Extra CMA-ES runs in the last round only, chosen among with the round's others on the
    validation episodes (the last round's M is the best-informed)."""
    done_critics: int = 0
    """A later round's dream also dies where the M of any of the previous this-many rounds predicts
    death (the largest done logit decides); each critic costs one more M step per dream step.
    Needs val_episodes > 0 (the rounds' Ms are kept after validation)."""
    select_round: bool = True
    """Deploy the round whose agent scored best on the validation seeds (each round's M and C are
    kept in RUN/rounds/K); off deploys the last round's. Needs val_episodes > 0."""
    warm_start: bool = False
    """Start each later round's CMA-ES from the current controller instead of from zero."""
    seed: int = 0
    """Seeds collection (episode seeds seed, seed + 1, ...), V, M and CMA-ES."""

    def check(self) -> None:
        """One-line UserError for the first setting out of bounds (before any work starts)."""
        from envs.make import check_env_id

        if not self.env:
            raise UserError("no env: name a preset (--preset doom-take-cover) or an --env")
        check_env_id(self.env)
        one_of("policy", self.policy, ("random", "held"))
        one_of("done_mode", self.done_mode, ("threshold", "sample"))
        one_of("mdn_keep_best", self.mdn_keep_best, ("", "val_loss", "val_nll", "val_done_loss", "val_reward_loss"))
        one_of("memory", self.memory, ("mdnrnn", "tdvae"))
        for name in ("episodes", "collect_workers", "z_dim", "vae_epochs", "vae_batch", "hidden", "mixtures",
                     "seq_len", "mdn_epochs", "mdn_batch", "generations", "rollouts", "eval_every", "eval_rollouts",
                     "eval_episodes", "workers", "iterations", "dream_max_steps", "late_episode_weight",
                     "first_round_generations", "restarts", "tdvae_state_dim", "max_jump", "dream_jump"):
            at_least(name, getattr(self, name), 1)
        for name in ("vae_episodes", "mdn_patience", "val_episodes", "iteration_episodes", "probe_episodes",
                     "held_action_limit", "extra_probe_episodes", "extra_mdn_epochs", "max_extra_probes",
                     "round_mdn_epochs", "final_generations", "final_restarts", "done_critics", "seed", "video_steps",
                     "tdvae_rollout"):
            at_least(name, getattr(self, name), 0)
        at_least("population", self.population, 4, "CMA-ES needs at least 4 candidates per generation")
        at_least("vae_recon_cutoff", self.vae_recon_cutoff, 0)
        at_least("reward_event_weight", self.reward_event_weight, 0)
        at_least("vae_foreground_weight", self.vae_foreground_weight, 1)
        at_least("real_step_budget", self.real_step_budget, 0)
        if self.real_step_budget and self.real_step_budget < self.iterations:
            raise UserError(f"--real-step-budget {self.real_step_budget} leaves no steps for some of the "
                            f"{self.iterations} rounds")
        if self.real_step_budget and self.val_episodes:
            raise UserError("--real-step-budget counts every real step the agent learns from, and validation "
                            "episodes choose rounds and restarts: set --val-episodes 0 with a budget")
        for name in ("temperature", "vae_lr", "mdn_lr", "tdvae_lr"):
            positive(name, getattr(self, name))
        self._check_memory()
        in_range("exploration", self.exploration, 0.0, 1.0)
        if self.iterations > 1 and self.iteration_episodes < 1:
            raise UserError("--iteration-episodes must be at least 1 when --iterations > 1")
        needs_validation = [flag for flag, on in (("--restarts > 1", self.restarts > 1),
                                                  ("--final-restarts", self.final_restarts > 0)) if on]
        if needs_validation and self.val_episodes < 1:
            raise UserError(f"{', '.join(needs_validation)} needs --val-episodes > 0 to choose the restart by")


    def _check_memory(self) -> None:
        if self.memory == "tdvae":
            for flag, on in (("--mdn-keep-best", self.mdn_keep_best), ("--include-cell", self.include_cell)):
                if on:
                    raise UserError(f"{flag} is an MDN-RNN setting: TD-VAE keeps its last epoch and gives C [z, s]")
        if self.dream_jump > 1 and self.memory != "tdvae":
            raise UserError(f"--dream-jump {self.dream_jump} needs --memory tdvae: an MDN-RNN predicts one "
                            "step at a time")
        if self.dream_jump > self.max_jump:
            raise UserError(f"--dream-jump {self.dream_jump} is longer than the jumps TD-VAE learns "
                            f"(--max-jump {self.max_jump})")
        if self.memory == "tdvae" and self.done_critics:
            raise UserError("--done-critics are earlier rounds' Ms (MDN-RNNs): not a setting for --memory tdvae")
        self._check_curiosity()

    def _check_curiosity(self) -> None:
        one_of("curiosity", self.curiosity, ("none", "icm", "mdn"))
        at_least("icm_epochs", self.icm_epochs, 1)
        if self.curiosity == "none":
            return
        positive("curiosity_scale", self.curiosity_scale)
        if self.dream_jump > 1:
            raise UserError(f"--curiosity {self.curiosity} rewards one-step transitions: use --dream-jump 1")
        if self.curiosity == "mdn" and (self.done_critics < 1 or self.iterations < 2):
            raise UserError("--curiosity mdn pays the disagreement of this round's M and earlier rounds' Ms "
                            "(the dream's own sample is noise, not novelty): set --done-critics >= 1 and "
                            "--iterations >= 2")


@dataclass(frozen=True)
class Preset:
    """A named overlay: its bases' settings, then its own."""

    about: str
    """One line for ``train.py presets`` and the docs."""
    settings: dict[str, Any] = field(default_factory=dict)
    bases: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    "doom-take-cover": Preset(
        "VizDoom TakeCover sized for 2 CPU cores and ~90 minutes: 300 rollouts, 5 rounds of iterative "
        "training with 90 constant-action probes per round, the round best on validation deployed",
        {"env": "VizdoomTakeCover-v1", "episodes": 300, "policy": "held", "z_dim": 64, "vae_epochs": 3,
         "vae_lr": 1e-3, "hidden": 256, "seq_len": 200, "mdn_epochs": 30, "temperature": 1.15,
         "generations": 30, "first_round_generations": 10, "population": 64, "rollouts": 16, "eval_every": 10,
         "eval_rollouts": 256, "iterations": 5, "iteration_episodes": 100, "probe_episodes": 90,
         "round_mdn_epochs": 20, "val_episodes": 20, "eval_episodes": 100}),
    "doom-take-cover-3000": Preset(
        "doom-take-cover with 10x the random rollouts (V on the first 900), M 4 epochs per round and "
        "the rounds' new episodes drawn 5x per epoch, 50 validation episodes: the recipe that solved it",
        {"episodes": 3000, "vae_episodes": 900, "vae_epochs": 1, "mdn_epochs": 4, "round_mdn_epochs": 4,
         "val_episodes": 50, "late_episode_weight": 5},
        bases=("doom-take-cover",)),
    "doom-take-cover-paper": Preset(
        "the paper's settings (Ha & Schmidhuber 2018): 10,000 rollouts, M 512 units, seq 500, C on "
        "[z, h, c], 300 generations re-evaluated on 1024 rollouts every 25, one pass",
        {"env": "VizdoomTakeCover-v1", "episodes": 10_000, "collect_workers": 64, "vae_epochs": 10,
         "vae_lr": 1e-4, "hidden": 512, "seq_len": 500, "mdn_epochs": 20, "mdn_batch": 100,
         "done_mode": "threshold", "generations": 300, "eval_every": 25, "eval_rollouts": 1024,
         "include_cell": True, "workers": 64, "iterations": 1}),
    "atari-100k": Preset(
        "any ALE/<Game>-v5 (--env) under the Atari 100k protocol: 100,000 agent steps of real experience "
        "in all, half random rollouts and half the agent's own episodes in a second round; no validation "
        "episodes (they would be experience outside the budget); 100 evaluation episodes under v5's rules",
        {"real_step_budget": 100_000, "episodes": 10_000, "iteration_episodes": 10_000, "iterations": 2,
         "policy": "held", "z_dim": 32, "vae_epochs": 3, "hidden": 256, "seq_len": 100, "mdn_epochs": 20,
         "round_mdn_epochs": 10, "temperature": 1.0, "dream_max_steps": 1000, "generations": 20,
         "first_round_generations": 10, "population": 32, "rollouts": 8, "eval_every": 5, "eval_rollouts": 64,
         "val_episodes": 0, "select_round": False, "eval_episodes": 100, "video_steps": 3000, "exploration": 0.1}),
    "doom-take-cover-tdvae": Preset(
        "doom-take-cover with the TD-VAE belief in place of M, trained half M's epochs (a TD-VAE epoch costs "
        "about two of M's: the same compute on the same data)",
        {"memory": "tdvae", "mdn_epochs": 15, "round_mdn_epochs": 10}, bases=("doom-take-cover",)),
    "my-way-home": Preset(
        "VizDoom MyWayHome for the curiosity study: --env VizdoomMyWayHome-v1 (random spawn, 'dense') or "
        "VizdoomMyWayHomeSparse-v0 (the package's fixed far start); 300,000 real steps in 3 rounds, C in the "
        "dream on M's reward head (+1 at the vest), 100 evaluation episodes; stack icm or mdn-curiosity",
        {"env": "VizdoomMyWayHome-v1", "real_step_budget": 300_000, "episodes": 10_000,
         "iteration_episodes": 10_000, "iterations": 3, "policy": "held", "z_dim": 32, "vae_epochs": 3,
         "hidden": 256, "seq_len": 200, "mdn_epochs": 20, "round_mdn_epochs": 10, "temperature": 1.0,
         "dream_max_steps": 2100, "generations": 20, "first_round_generations": 10, "population": 32,
         "rollouts": 8, "eval_every": 5, "eval_rollouts": 64, "val_episodes": 0, "select_round": False,
         "eval_episodes": 100, "exploration": 0.1, "reward_event_weight": 1000.0}),
    "keep-objects": Preset(
        "an overlay for atari-100k: V's loss weights the pixels off the median background frame 10x (the "
        "ball, the paddles, the boxers' arms) and M's reward loss weights each step with a reward 31x (a "
        "reward in ~3% of the steps then weighs about as much as the other steps together)",
        {"vae_foreground_weight": 10.0, "reward_event_weight": 30.0}),
    "icm": Preset(
        "an overlay: ICM curiosity in C's dream returns (eta 0.001; the dream's bonus at most eta times the "
        "real novelty cap), the ICM trained on each round's new real episodes",
        {"curiosity": "icm", "curiosity_scale": 0.001}),
    "mdn-curiosity": Preset(
        "an overlay: from round 2, the disagreement of the round's M and the last round's M about the "
        "next latent as curiosity (eta 1)",
        {"curiosity": "mdn", "curiosity_scale": 1.0, "done_critics": 1}),
    "tiny": Preset(
        "an overlay that shrinks any recipe to a minutes-long smoke run of every stage "
        "(stack it last: --preset doom-take-cover-3000 tiny)",
        {"episodes": 8, "collect_workers": 2, "z_dim": 16, "vae_epochs": 1, "vae_batch": 32, "hidden": 32,
         "seq_len": 50, "mdn_epochs": 2, "mdn_batch": 8, "round_mdn_epochs": 1, "dream_max_steps": 100,
         "generations": 2, "first_round_generations": 2, "population": 8, "rollouts": 2, "eval_every": 1,
         "eval_rollouts": 8, "eval_episodes": 2, "val_episodes": 1, "video_steps": 100, "workers": 1, "iterations": 1,
         "iteration_episodes": 2, "probe_episodes": 0}),
    "doom-take-cover-tiny": Preset(
        "doom-take-cover tiny: a minutes-long smoke run (tests, a first try on a new machine)",
        bases=("doom-take-cover", "tiny")),
    "my-way-home-tiny": Preset(
        "my-way-home tiny: a minutes-long smoke run (stack icm or mdn-curiosity after it)",
        {"real_step_budget": 6_000, "iterations": 2, "val_episodes": 0, "episodes": 100, "iteration_episodes": 100},
        bases=("my-way-home", "tiny")),
    "atari-100k-tiny": Preset(
        "atari-100k tiny: two rounds within a 1,500-step budget, a minutes-long smoke run (--env ALE/Pong-v5)",
        {"real_step_budget": 1_500, "iterations": 2, "val_episodes": 0, "episodes": 100, "iteration_episodes": 100},
        bases=("atari-100k", "tiny")),
}


def overlay(names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The settings of presets stacked left to right (each with its bases first)."""
    settings: dict[str, Any] = {}
    for name in names:
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)} (python train.py presets)")
        preset = PRESETS[name]
        settings.update(overlay(preset.bases))
        settings.update(preset.settings)
    return settings


def preset_settings(*names: str, **overrides: Any) -> PipelineSettings:
    """PipelineSettings of the stacked presets with ``overrides`` applied last."""
    return replace(PipelineSettings(), **{**overlay(names), **overrides})


def changed_settings(settings: PipelineSettings, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The settings that differ from the stacked presets' values (what the command line overrode)."""
    base = dataclasses.asdict(preset_settings(*names))
    return {f.name: getattr(settings, f.name) for f in fields(settings) if getattr(settings, f.name) != base[f.name]}


def describe_presets() -> list[str]:
    """Lines for ``train.py presets``: each preset, its bases and its own settings."""
    lines = []
    for name, preset in PRESETS.items():
        lines.append(f"{name}: {preset.about}")
        if preset.bases:
            lines.append(f"    = {' + '.join(preset.bases)}" + (" + these:" if preset.settings else ""))
        if preset.settings:
            lines.append("    " + " ".join(_as_flag(name, value) for name, value in preset.settings.items()))
    return lines


def _as_flag(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return flag(name) if value else flag(f"no_{name}")
    return f"{flag(name)} {value}"
