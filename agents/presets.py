"""Named pipeline presets: documented settings for a whole run, any field overridable.

``doom-take-cover`` is sized for one 2-core machine and ~90 minutes; ``doom-take-cover-paper``
holds the paper's settings (Ha & Schmidhuber 2018) for users with more hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass
class PipelineSettings:
    """Every setting of a pipeline run (collect -> V -> latent cache -> M -> C -> evaluation)."""

    env: str = "VizdoomTakeCover-v1"
    episodes: int = 300
    """Random-policy rollouts to collect."""
    vae_episodes: int = 0
    """V trains on the first this-many random rollouts only; the rest are collected after V, for M
    (0 = V trains on all of them). V's cost grows with its data, M's done head (one death per
    episode) needs many episodes, and collecting one costs ~0.1 s on 2 cores."""
    policy: str = "held"
    """Collection policy: random | held."""
    collect_workers: int = 2
    z_dim: int = 64
    vae_epochs: int = 3
    vae_batch: int = 100
    vae_lr: float = 1e-3
    hidden: int = 256
    mixtures: int = 5
    seq_len: int = 200
    mdn_epochs: int = 30
    mdn_batch: int = 32
    mdn_lr: float = 1e-3
    mdn_keep_best: str = ""
    """M keeps the epoch of each round with the lowest held-out loss of this name, e.g.
    val_done_loss ('' keeps the last epoch). Continued training overfits M's done head (held-out
    done loss 0.077 -> 0.120 over five rounds while val_nll still fell); keeping the best epoch
    holds it at ~0.075, but two runs with it scored no better (182, 193), so it is off."""
    mdn_patience: int = 10
    """With mdn_keep_best: stop a round's M training after this many epochs without a new best."""
    temperature: float = 1.15
    done_mode: str = "threshold"
    """How a dream dies from M's done head: threshold (p > 0.5, the paper's rule) | sample
    (Bernoulli of p, calibrated for the done loss's weight on deaths). On one M, sampled deaths
    gave real 379 against 268 for the threshold rule (50 validation episodes), but a whole
    pipeline run with them stayed at the random policy's level (182), so threshold stays."""
    dream_max_steps: int = 2100
    """Dream episodes are cut here (the real env's 2100-step limit)."""
    generations: int = 30
    population: int = 64
    rollouts: int = 16
    eval_every: int = 10
    eval_rollouts: int = 256
    include_cell: bool = False
    eval_episodes: int = 100
    """Real episodes of the final evaluation (seeds 1,000,000+)."""
    val_episodes: int = 20
    """Real episodes after every round on the validation seeds (500,000+); 0 skips them."""
    workers: int = 2
    """Worker processes for real-env evaluation (and real-env training)."""
    iterations: int = 5
    """Iterative training rounds (1 = the paper's single pass on random data). Each later round
    collects with the agent, so M learns what the controller's favourite moves really lead to.
    A later round costs ~7-30 min on 2 cores, mostly CMA-ES in the dream, whose cost is the dream's
    length (an exploited dream runs to the 2100-step cap)."""
    iteration_episodes: int = 100
    """Episodes collected with the current agent in each later round."""
    probe_episodes: int = 0
    """Episodes per round played with one random action held throughout (policy ``constant``),
    added to the data after V in round 1 and after the agent's episodes in later rounds. The
    cheapest exploit of a dream is a constant action that M believes survives (running into a
    wall); the agent's own episodes teach M only about the action it used, and another one opens."""
    held_action_limit: float = 0.0
    """Adaptive probes: after each round's M, play every action held throughout in 64 dreams (the
    round's temperature and death rule, ~10 s); while one lives longer than this many dream steps
    on average, add ``extra_probe_episodes`` probes and train M ``extra_mdn_epochs`` more, at most
    ``max_extra_probes`` times per round (0 turns the check off). In the real env a held action
    dies at ~164 steps; a round whose M let one live ~900 steps trained a controller on that
    exploit, while every round at <= 260 steps that found a policy found a real one. Off in the
    preset: one run with 300 (seed 6) closed the exploit in every round but scored 526.5, against
    634.2 without it, because CMA-ES then rarely found a long-surviving policy in the dream."""
    extra_probe_episodes: int = 30
    """Probe episodes added by each pass of the held-action check."""
    extra_mdn_epochs: int = 10
    """Epochs M trains on all the data after each pass's extra probes."""
    max_extra_probes: int = 3
    """Passes of extra probes per round at most (the controller trains on the last M either way)."""
    exploration: float = 0.1
    """Probability of a random action when collecting with the agent."""
    round_mdn_epochs: int = 30
    """Epochs M trains on all the data in each later round (continuing the previous round's M)."""
    late_episode_weight: int = 1
    """M draws the sequences of the episodes collected after the random rollouts (the agent's and
    the probes') this many times per epoch, in place of as many random-rollout sequences (an epoch
    costs the same). With 3,000 random rollouts a round's agent episodes are ~2% of M's steps
    (~11% with the preset's 300), so M hardly learns where the controller's moves really lead.
    A fixed multiple grows with the data: with 5 (`tc-v28`, solved) those episodes were 8% of M's
    draws in round 1 and 94% in round 5."""
    first_round_generations: int = 10
    """CMA-ES generations in round 1 when there are later rounds. Round 1's dream (M on random
    data only) is long and exploitable, so its generations cost the most and its controller
    mostly serves to show M its exploit; later rounds use ``generations``."""
    final_generations: int = 0
    """Extra CMA-ES generations in the last round (the same search, run longer)."""
    restarts: int = 1
    """CMA-ES runs per round (seeds seed, seed + 1, ...), the best on the validation episodes kept
    (needs val_episodes > 0; the round's validation score is then that of the best restart).
    Measured on one M: three restarts scored 268 / 359 / 888 on 50 validation episodes, and the
    best 752 on the evaluation episodes; each restart costs a round's CMA-ES time again."""
    final_restarts: int = 0
    """Extra CMA-ES runs in the last round only (seeds seed + restarts, ...), chosen among with the
    round's others on the validation episodes: the last round's M is the best-informed, so a
    restart there costs one round's CMA-ES time instead of ``iterations`` times it."""
    done_critics: int = 0
    """C of a later round also dies in the dream where the M of any of the previous this-many rounds
    predicts death (each round's M is kept in ``RUN/rounds/K``; the most pessimistic done logit
    decides), so it cannot live on the current M's missed deaths. Costs one more M step per dream
    step per critic. Needs ``val_episodes`` > 0 (the rounds are kept after validation). Off in the
    preset: on one M, two CMA-ES runs with the previous round's M as critic scored dream 1338 / 1405
    and real 664 / 698 (200 episodes each) against 1592 / 1590 and 683 / 730 without it."""
    select_round: bool = True
    """Deploy the round whose agent scored best on the validation seeds (each round's M and C are
    kept in ``RUN/rounds/K``); off deploys the last round's. Needs ``val_episodes`` > 0."""
    warm_start: bool = False
    """Start each later round's CMA-ES from the current controller. Off by default: a warm start
    (sigma0 0.1) stays in the previous round's exploit even after M has learned that it kills."""
    seed: int = 0


PRESETS: dict[str, PipelineSettings] = {
    # One CPU, ~90 min: fewer rollouts than the paper, a smaller M, short CMA-ES runs, and
    # iterative training to close the exploits a random-data M leaves open (wall hugging), with
    # 90 constant-action probes per round so that no held action survives in the dream.
    # M continues 20 epochs per round (not 30) to keep the larger dataset within the budget.
    "doom-take-cover": PipelineSettings(probe_episodes=90, round_mdn_epochs=20),
    # The paper's settings (REFERENCE.md section 1): 10,000 rollouts, M 512, seq 500, batch 100,
    # V lr 1e-4, population 64 x 16 rollouts, re-evaluation on 1024 rollouts every 25 generations.
    "doom-take-cover-paper": PipelineSettings(
        episodes=10_000, collect_workers=64, vae_epochs=10, vae_lr=1e-4, hidden=512, seq_len=500,
        mdn_epochs=20, mdn_batch=100, done_mode="threshold", generations=300, eval_every=25,
        eval_rollouts=1024, include_cell=True, workers=64, iterations=1,
    ),
    # A minutes-long smoke run of the whole pipeline (tests, first try on a new machine).
    "doom-take-cover-tiny": PipelineSettings(
        episodes=8, collect_workers=2, z_dim=16, vae_epochs=1, vae_batch=32, hidden=32, seq_len=50,
        mdn_epochs=2, mdn_batch=8, dream_max_steps=100,
        generations=2, first_round_generations=2, population=8, rollouts=2, eval_every=1, eval_rollouts=8,
        eval_episodes=2, val_episodes=1, workers=1, iterations=1, iteration_episodes=2,
    ),
}


def resolve(preset: str, overrides: dict) -> PipelineSettings:
    """The preset with every non-None override applied."""
    base = PRESETS[preset]
    names = {f.name for f in fields(PipelineSettings)}
    return replace(base, **{k: v for k, v in overrides.items() if k in names and v is not None})
