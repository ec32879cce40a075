"""The whole World Models recipe as one resumable command.

    collect -> V -> [latent cache + memory -> C in the dream -> validation] x rounds -> selection -> evaluation

The memory is M (the MDN-RNN) or TD-VAE (``--memory``); "M" below stands for either.

Round 1 trains on random rollouts; each later round adds the current agent's own episodes
(iterative training). With ``probe_episodes`` every round also adds episodes of one random action
held throughout, so that no held move looks safe in the dream. After every round the agent plays
``val_episodes`` real episodes on the validation seeds (500,000+): those are the scores to compare
settings by, and the round with the best one is the agent deployed (its M and C are kept in
``RUN/rounds/K``). The final score is ``eval_episodes`` real episodes on the evaluation seeds
(1,000,000+), played once at the end.

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

from agents.agent import CONTROLLER_DIR, agent_policy_factory, copy_weights
from agents.evaluate import episode_videos, evaluate_real, load_start_latents
from agents.presets import PipelineSettings
from agents.report import learning_curve
from agents.train_controller import ControllerConfig, dream_config, train_controller
from envs.collect import collect
from envs.episodes import atomic_write_json, iter_episodes, load_metadata
from envs.errors import CorruptFileError, UserError
from envs.tasks import task_rules
from world_models.dream import held_action_lengths
from world_models.latents import load_latent_cache
from world_models.memory import load_memory
from world_models.runlog import WandbRun, pipeline_wandb, resolve_device, set_pipeline_stage, to_jsonable
from world_models.train_icm import ICMConfig, train_icm
from world_models.train_mdnrnn import MDNRNNConfig, load_mdnrnn, reward_fit, train_mdnrnn
from world_models.train_tdvae import TDVAEConfig, train_tdvae
from world_models.train_vae import VAEConfig, train_vae

STAGES_FILE = "stages.json"
UNFINISHED_FILE = "stages_unfinished.json"  # wall-clock of stage invocations that did not finish
ROUNDS_DIR = "rounds"
VIDEOS_DIR = "videos"  # RUN/videos/{real,dream}_episode.mp4, written by the final ``videos`` stage
VALIDATION_SEED = 500_000  # per-round real scores, the ones to look at when choosing settings
EVAL_SEED = 1_000_000  # the final evaluation: never a collection or validation seed


class Stages:
    """Which stages a run has finished, with their wall-clock and summaries (``RUN/stages.json``).

    A stage's ``seconds`` is its whole wall-clock: the time of invocations that stopped on an
    exception (Ctrl-C included) is kept in ``RUN/stages_unfinished.json`` and added when the stage
    finishes, so a resumed run does not under-report. A process killed outright (SIGKILL) cannot
    record its time."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / STAGES_FILE
        self.unfinished_path = Path(run_dir) / UNFINISHED_FILE
        self.done: dict = _read_json(self.path)
        self.unfinished: dict = _read_json(self.unfinished_path)

    def run(self, name: str, work, describe=lambda result: result) -> dict:
        if name in self.done:
            print(f"[{name}] already done ({self.done[name]['seconds']:.0f}s): skipped")
            return self.done[name]["summary"]
        set_pipeline_stage(name)  # a later round's stage logs into W&B namespaces of its own
        earlier = self.unfinished.get(name, 0.0)
        print(f"[{name}] started" + (f" (again; {earlier:.0f}s spent before)" if earlier else ""), flush=True)
        start = time.perf_counter()
        try:
            summary = describe(work())
        except BaseException:
            self.unfinished[name] = round(earlier + time.perf_counter() - start, 1)
            atomic_write_json(self.unfinished_path, self.unfinished)
            raise
        self.done[name] = {"seconds": round(earlier + time.perf_counter() - start, 1), "summary": summary}
        if earlier:
            self.done[name]["seconds_before_resume"] = earlier
        atomic_write_json(self.path, self.done)
        print(f"[{name}] done in {self.done[name]['seconds']:.0f}s", flush=True)
        return summary


def _read_json(path: Path) -> dict:
    """A bookkeeping file ({} when absent); CorruptFileError, one line naming it, when damaged."""
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"corrupt {path}: {error} (restore it, or remove it to run every stage again)") from None
    if not isinstance(value, dict):
        raise CorruptFileError(f"corrupt {path}: expected a JSON object")
    return value


def run_pipeline(settings: PipelineSettings, run_dir: Path, device: str = "auto", wandb_mode: str = "disabled",
                 progress: bool = True, preset: str = "", overrides: dict | None = None, backend: str = "local",
                 ray_address: str | None = None) -> dict:
    """Run (or resume) every stage; returns the final summary (also in ``RUN/summary.json``).

    ``preset`` and ``overrides`` (the settings the command line changed) are recorded in
    ``RUN/pipeline_config.json`` beside the resolved settings. ``backend`` (``local`` or ``ray``,
    at ``ray_address``) runs collection and the real-env episodes (``envs.pool``)."""
    settings.check()  # every bound before any work: a bad value never costs a collection
    common = {"device": device, "wandb_mode": wandb_mode, "progress": progress, "backend": backend,
              "ray_address": ray_address}
    _stage_configs(settings, Path(run_dir), common)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = to_jsonable({"preset": preset, "overrides": overrides or {}, **dataclasses.asdict(settings)})
    atomic_write_json(run_dir / "pipeline_config.json", config)
    with pipeline_wandb(run_dir, wandb_mode, config) as wandb_run:  # one W&B run, resumed with the pipeline
        summary = _run_stages(settings, run_dir, common)
        if wandb_run is not None:
            _log_results(wandb_run, run_dir)
    return summary


def _run_stages(s: PipelineSettings, run_dir: Path, common: dict) -> dict:
    """Every stage in order, the finished ones skipped; writes ``RUN/summary.json`` and the learning
    curve. ``common``: the device, W&B mode, progress bars and worker pool every stage gets."""
    stages = Stages(run_dir)
    data = run_dir / "data"
    progress = common["progress"]

    def collect_random(total: int):
        return lambda: collect(s.env, total, data, workers=s.collect_workers, seed=s.seed, policy=s.policy,
                               progress=progress, step_cap=step_cap(s, 1), **_pool(common))

    for_vae = min(s.vae_episodes, s.episodes) if s.vae_episodes else s.episodes
    stages.run("collect", collect_random(for_vae), dataclasses.asdict)
    stages.run("vae", lambda: train_vae(_vae_config(s, run_dir, common)))
    if for_vae < s.episodes:  # the rest of the random rollouts, for M only
        stages.run("collect_rest", collect_random(s.episodes), dataclasses.asdict)
    for k in range(1, s.iterations + 1):
        _train_round(k, s, run_dir, data, stages, common, progress)
    _select_round(stages, s, run_dir)
    result = _play_real(stages, stage_name("evaluate", s.iterations), s, run_dir, EVAL_SEED, s.eval_episodes,
                        pool=_pool(common))
    stages.run("videos", lambda: _videos(run_dir, s.env, s.video_steps or None))
    summary = summarise(run_dir, stages, result, data, s.real_step_budget or None)
    atomic_write_json(run_dir / "summary.json", summary)
    learning_curve(run_dir)
    return summary


def step_cap(s: PipelineSettings, k: int) -> int | None:
    """The agent steps the dataset may hold once round k has collected (random rollouts in round 1,
    the agent's episodes and probes later): k/iterations of the real-step budget; None without one."""
    return s.real_step_budget * k // s.iterations if s.real_step_budget else None


def stage_name(stage: str, k: int) -> str:
    """Stage names of round k: ``mdnrnn``, ``controller``, ... in round 1, ``mdnrnn_2``, ... later."""
    return stage if k == 1 else f"{stage}_{k}"


def _train_round(k: int, s: PipelineSettings, run_dir: Path, data: Path, stages: Stages, common: dict,
                 progress: bool) -> None:
    """Training round k. Round 1 learns M and C from the random rollouts; a later round first
    collects with the current agent (plus exploration noise), so that M sees what C's favourite
    moves really lead to, continues M on all the data and trains C afresh (or from the current C)
    in the new dream. With ``probe_episodes``, every round also adds episodes of one action held
    throughout; with ``held_action_limit``, more of them until M lets no held action live long.
    Every round ends with a real-env score on the validation seeds."""
    def collect_to(total: int, **policy):
        return lambda: collect(s.env, total, data, workers=s.collect_workers, seed=s.seed, progress=progress,
                               step_cap=step_cap(s, k), **_pool(common), **policy)

    def train_m():  # epochs count from M's first round, so a round continues the last one's M
        return train_memory(_memory_config(s, run_dir, common, _mdn_epochs(s, k, stages)))

    if k > 1:
        factory = functools.partial(agent_policy_factory, str(run_dir), s.exploration)
        stages.run(stage_name("collect", k), collect_to(_collected(s, k, stages) - s.probe_episodes, policy="agent",
                                                   policy_factory=factory), dataclasses.asdict)
    if s.probe_episodes:
        stages.run(stage_name("probe", k), collect_to(_collected(s, k, stages), policy="constant"),
                   dataclasses.asdict)
    stages.run(stage_name(s.memory, k), train_m)
    if s.held_action_limit:
        _close_held_actions(k, s, run_dir, stages, common, collect_to, train_m)
    if s.curiosity == "icm":  # the round's new real episodes (the probes' too), learnt once each
        stages.run(stage_name("icm", k), lambda: train_icm(ICMConfig(
            run_dir=run_dir, epochs=s.icm_epochs, seed=s.seed, device=common["device"],
            wandb_mode=common["wandb_mode"])))
    if task_rules(s.env).dream_reward == "model" and s.memory == "mdnrnn":  # a diagnostic of M's reward head
        stages.run(stage_name("reward_fit", k), lambda: _reward_fit(k, run_dir))
    last = k == s.iterations
    generations = s.first_round_generations if k == 1 and not last else s.generations
    def keep_round():  # RUN/rounds/K: for choosing the deployed round, and as later rounds' critics
        copy_weights(run_dir, round_dir(run_dir, k), (s.memory, CONTROLLER_DIR))

    def train_c():
        summary = _train_controllers(k, s, run_dir, generations + (s.final_generations if last else 0),
                                     s.restarts + (s.final_restarts if last else 0), common)
        if not s.val_episodes:
            keep_round()
        return summary

    stages.run(stage_name("controller", k), train_c)
    if s.val_episodes:
        _play_real(stages, stage_name("validate", k), s, run_dir, VALIDATION_SEED, s.val_episodes, pool=_pool(common),
                   then=keep_round)


def _close_held_actions(k: int, s: PipelineSettings, run_dir: Path, stages: Stages, common: dict, collect_to,
                        train_m) -> None:
    """Adaptive probes: while M lets a held action live longer than ``held_action_limit`` dream
    steps, add ``extra_probe_episodes`` probes and continue M (at most ``max_extra_probes`` times).
    Each measurement is a stage of its own, the last one that of the M the controller trains in."""
    for passes in range(s.max_extra_probes + 1):
        longest = _held_actions(k, passes, s, run_dir, stages, common)["longest"]
        if longest <= s.held_action_limit or passes == s.max_extra_probes:
            return
        stages.run(stage_name(f"probe_extra{passes + 1}", k),
                   collect_to(_collected(s, k, stages) + s.extra_probe_episodes, policy="constant"),
                   dataclasses.asdict)
        stages.run(stage_name(f"{s.memory}_extra{passes + 1}", k), train_m)


def _held_actions(k: int, passes: int, s: PipelineSettings, run_dir: Path, stages: Stages, common: dict) -> dict:
    """Stage: how long the current M lets each action held throughout live (mean dream steps)."""
    def measure() -> dict:
        device = resolve_device(common["device"])
        memory, memory_config = load_memory(run_dir, s.memory, device)
        if not memory.discrete_actions:
            raise UserError("--held-action-limit needs an env with discrete actions; set it to 0")
        dream = dream_config(_controller_config(s, run_dir, common), memory_config)  # the dream C will train in
        lengths = held_action_lengths(memory, *load_start_latents(run_dir, device), dream, seed=s.seed)
        print(f"round {k}: held actions live {lengths} dream steps (limit {s.held_action_limit:g})", flush=True)
        return {"dream_length_per_action": lengths, "longest": max(lengths)}

    return stages.run(stage_name(f"held_actions{passes}", k), measure)


# Below this correlation of M's per-episode reward sums with the real ones, the dream's reward is
# mostly M's noise (Boxing under atari-100k: 0.21, C exploited it; Freeway: 0.99, C learned the game).
REWARD_FIT_WARNING = 0.5


def _reward_fit(k: int, run_dir: Path) -> dict:
    """Stage, where the dream pays M's reward: how much of it M predicts on the data it learned from
    (``world_models.train_mdnrnn.reward_fit``); warns when its episode sums barely track the real ones."""
    mdnrnn, _ = load_mdnrnn(run_dir, "cpu")
    fit = reward_fit(mdnrnn, load_latent_cache(run_dir))
    summary = {key: fit[key] for key in ("r2", "variance", "episode_correlation", "episodes")}
    line = (f"round {k}: M's reward head: r2 {fit['r2']:.3f} per step, its episode sums correlate "
            f"{fit['episode_correlation']:.2f} with the real ones")
    if not fit["episode_correlation"] >= REWARD_FIT_WARNING:  # NaN too: nothing to rank by
        line += "; the dream's reward is mostly M's noise, and C may learn to exploit it"
    print(line, flush=True)
    return summary


def _extra_probe_passes(stages: Stages) -> int:
    return sum(name.startswith("probe_extra") for name in stages.done)


def _mdn_epochs(s: PipelineSettings, k: int, stages: Stages) -> int:
    """M's epoch target: its first round's, each later round's and each extra-probe pass's epochs."""
    return s.mdn_epochs + (k - 1) * s.round_mdn_epochs + _extra_probe_passes(stages) * s.extra_mdn_epochs


def _collected(s: PipelineSettings, k: int, stages: Stages) -> int:
    """Episodes in the dataset once round k has collected: the random rollouts, the agent's
    episodes of rounds 2..k, every round's probes and the extra probes added so far."""
    return (s.episodes + (k - 1) * s.iteration_episodes + k * s.probe_episodes
            + _extra_probe_passes(stages) * s.extra_probe_episodes)


def _stage_configs(s: PipelineSettings, run_dir: Path, common: dict) -> None:
    """Check the configs every stage will get (device, paths, bounds) before the first stage runs."""
    _vae_config(s, run_dir, common).check()
    _memory_config(s, run_dir, common, s.mdn_epochs).check()
    _controller_config(s, run_dir, common, generations=s.generations).check()


POOL_KEYS = ("backend", "ray_address")  # of ``common``: where real-env work runs (``envs.pool``)


def _pool(common: dict) -> dict:
    """The worker-pool entries of ``common``, for ``collect`` and ``evaluate_real``."""
    return {key: common[key] for key in POOL_KEYS}


def _training(common: dict) -> dict:
    """``common`` without the pool entries, for V's and M's configs (they train in this process)."""
    return {key: value for key, value in common.items() if key not in POOL_KEYS}


def _vae_config(s: PipelineSettings, run_dir: Path, common: dict) -> VAEConfig:
    return VAEConfig(data=run_dir / "data", run_dir=run_dir, z_dim=s.z_dim, epochs=s.vae_epochs,
                     batch_size=s.vae_batch, lr=s.vae_lr, recon_cutoff=s.vae_recon_cutoff,
                     foreground_weight=s.vae_foreground_weight, seed=s.seed,
                     **_training(common))


def _mdn_config(s: PipelineSettings, run_dir: Path, common: dict, epochs: int) -> MDNRNNConfig:
    """M's config; ``epochs`` counts from M's first round (a later round continues the last one's M)."""
    return MDNRNNConfig(
        run_dir=run_dir, data=run_dir / "data", hidden=s.hidden, mixtures=s.mixtures, seq_len=s.seq_len,
        batch_size=s.mdn_batch, epochs=epochs, lr=s.mdn_lr, keep_best=s.mdn_keep_best, patience=s.mdn_patience,
        reward_event_weight=s.reward_event_weight, late_from_seed=s.seed + s.episodes,
        late_weight=s.late_episode_weight, seed=s.seed, **_training(common))


def _tdvae_config(s: PipelineSettings, run_dir: Path, common: dict, epochs: int) -> TDVAEConfig:
    """TD-VAE's config, M's settings where they have a TD-VAE meaning (the belief LSTM's units, the
    sequences, the epochs counted from its first round)."""
    return TDVAEConfig(
        run_dir=run_dir, data=run_dir / "data", belief=s.hidden, state_dim=s.tdvae_state_dim, max_jump=s.max_jump,
        seq_len=s.seq_len, batch_size=s.mdn_batch, epochs=epochs, lr=s.tdvae_lr, rollout=s.tdvae_rollout,
        reward_event_weight=s.reward_event_weight, late_from_seed=s.seed + s.episodes,
        late_weight=s.late_episode_weight, seed=s.seed, **_training(common))


MEMORY_CONFIGS = {"mdnrnn": _mdn_config, "tdvae": _tdvae_config}


def _memory_config(s: PipelineSettings, run_dir: Path, common: dict, epochs: int) -> MDNRNNConfig | TDVAEConfig:
    return MEMORY_CONFIGS[s.memory](s, run_dir, common, epochs)


def train_memory(config: MDNRNNConfig | TDVAEConfig) -> dict:
    return train_tdvae(config) if isinstance(config, TDVAEConfig) else train_mdnrnn(config)


def _controller_config(s: PipelineSettings, run_dir: Path, common: dict, **overrides) -> ControllerConfig:
    """CMA-ES in the dream with the run's settings (the dream's temperature, death rule and length)."""
    return ControllerConfig(
        run_dir=run_dir, algo="cmaes", where="dream", temperature=s.temperature, max_episode_steps=s.dream_max_steps,
        done_mode=s.done_mode, population=s.population, rollouts=s.rollouts, eval_every=s.eval_every,
        eval_rollouts=s.eval_rollouts, include_cell=s.include_cell, memory=s.memory, dream_jump=s.dream_jump,
        **common, **overrides)


def _train_controllers(k: int, s: PipelineSettings, run_dir: Path, generations: int, restarts: int,
                       common: dict) -> dict:
    """C of round k: ``restarts`` CMA-ES runs in the same dream (seeds seed, seed + 1, ...). With
    more than one, each plays the validation episodes, its weights are kept in
    ``RUN/rounds/K/restartR`` and the best one on validation becomes the round's controller."""
    runs, validation_seeds = [], _seeds(VALIDATION_SEED, s.val_episodes)
    critics = tuple(round_dir(run_dir, k - j) for j in range(1, min(s.done_critics, k - 1) + 1))
    # mdn pays the Ms' disagreement: round 1 has no earlier M to disagree with, and learns the task alone
    curiosity = "none" if s.curiosity == "mdn" and not critics else s.curiosity
    for r in range(restarts):
        summary = train_controller(_controller_config(
            s, run_dir, common, generations=generations, seed=s.seed + r, done_critics=critics,
            curiosity=curiosity, curiosity_scale=s.curiosity_scale,
            state_dir=stage_name("cmaes_dream", k) + (f"_restart{r}" if r else ""),
            warm_start=s.warm_start and k > 1))
        if restarts == 1:
            return summary
        summary["validation"] = evaluate_real(run_dir, s.env, validation_seeds, s.workers, **_pool(common)).mean
        copy_weights(run_dir, round_dir(run_dir, k) / f"restart{r}", (CONTROLLER_DIR,))
        runs.append(summary)
    best = max(range(len(runs)), key=lambda r: runs[r]["validation"])
    copy_weights(round_dir(run_dir, k) / f"restart{best}", run_dir, (CONTROLLER_DIR,))
    print(f"round {k}: kept CMA-ES restart {best} (validation means {[round(x['validation'], 1) for x in runs]})")
    return {**runs[best], "restart": best, "restarts": runs}


def _play_real(stages: Stages, name: str, s: PipelineSettings, run_dir: Path, first_seed: int,
               episodes: int, then=lambda: None, pool: dict | None = None) -> dict:
    """A stage of ``episodes`` real-env episodes with the current agent, seeds ``first_seed``+
    (``then`` runs inside the stage, after them; ``pool``: ``_pool(common)``)."""
    seeds = _seeds(first_seed, episodes)

    def play():
        result = evaluate_real(run_dir, s.env, seeds, s.workers, **(pool or {}))
        then()
        return result

    return stages.run(name, play, lambda r: r.to_dict())


def _videos(run_dir: Path, env_id: str, max_steps: int | None) -> dict:
    """Stage: ``RUN/videos/real_episode.mp4`` (the env's frames beside V's reconstruction) and
    ``RUN/videos/dream_episode.mp4`` (a dream decoded through V), one episode each on the first
    evaluation seed, with W&B on or off. Paths in the summary are relative to the run directory."""
    videos = episode_videos(run_dir, env_id, EVAL_SEED, run_dir / VIDEOS_DIR, max_steps=max_steps)
    return {**videos, **{key: str(Path(videos[key]).relative_to(run_dir)) for key in ("real", "dream")}}


def _log_results(run: WandbRun, run_dir: Path) -> None:
    """The pipeline's results in its W&B run: each round's validation score (``validate/mean`` at
    ``validate/step`` = round) and episodes (a table), the final evaluation's episodes, the summary
    values, the learning curve and the videos. A resumed pipeline logs them again (every stage
    skipped): cheap, and a run killed after its last stage still gets them."""
    stages = Stages(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    columns = ["seed", "return", "length"]
    validation = []
    for k, name in enumerate([name for name in stages.done if name.startswith("validate")], start=1):
        result = stages.done[name]["summary"]
        run.log("validate", {"mean": result["mean"], "std": result["std"]}, step=k)
        validation += [[k, *row] for row in _episode_rows(result)]
    if validation:
        run.table("validate/episodes", ["round", *columns], validation)
    run.table("evaluate/episodes", columns, _episode_rows(stages.done[_last(stages, "evaluate")]["summary"]))
    keys = ("real_mean", "real_std", "real_episodes", "dream_score", "deployed_round", "real_steps_used",
            "real_frames_used", "seconds_total")
    run.summary({f"evaluate/{key}": summary[key] for key in keys}
                | {f"seconds/{name}": seconds for name, seconds in summary["seconds_per_stage"].items()})
    if (run_dir / "images" / "learning_curve.png").exists():
        run.image("report/learning_curve", run_dir / "images" / "learning_curve.png")
    videos = stages.done["videos"]["summary"]
    for which in ("real", "dream"):
        run.video(f"videos/{which}_episode", run_dir / videos[which])


def _episode_rows(result: dict) -> list[list]:
    return [list(row) for row in zip(result["seeds"], result["returns"], result["lengths"], strict=True)]


def _seeds(first: int, episodes: int) -> list[int]:
    return list(range(first, first + episodes))


def round_dir(run_dir: Path, k: int) -> Path:
    """Where round k's memory and C are kept (``RUN/rounds/K/{mdnrnn or tdvae,controller}``)."""
    return Path(run_dir) / ROUNDS_DIR / str(k)


def _select_round(stages: Stages, s: PipelineSettings, run_dir: Path) -> None:
    """Deploy (copy into ``RUN/<memory>`` and ``RUN/controller``) the round whose agent scored best on
    the validation seeds; the evaluation seeds never enter the choice. Ties go to the later round."""
    if not (s.select_round and s.val_episodes and s.iterations > 1):
        return

    def select() -> dict:
        scores = [stages.done[stage_name("validate", k)]["summary"]["mean"] for k in range(1, s.iterations + 1)]
        best = max(range(len(scores)), key=lambda i: (scores[i], i)) + 1
        copy_weights(round_dir(run_dir, best), run_dir, (s.memory, CONTROLLER_DIR))
        print(f"deploying round {best} of {s.iterations} (validation means {[round(x, 1) for x in scores]})")
        return {"round": best, "validation_means": scores}

    stages.run(stage_name("select", s.iterations), select)


def summarise(run_dir: Path, stages: Stages, result: dict, data: Path, budget: int | None = None) -> dict:
    real_steps = sum(len(episode) for _, episode in iter_episodes(data))
    selected = [stage["summary"]["round"] for name, stage in stages.done.items() if name.startswith("select")]
    deployed = selected[-1] if selected else None
    controller = stage_name("controller", deployed) if deployed else _last(stages, "controller")
    return {
        "command": "python train.py " + shlex.join(sys.argv[1:]),
        "deployed_round": deployed,
        "dream_score": stages.done[controller]["summary"].get("fitness"),
        "validation_score_per_round": [stage["summary"]["mean"] for name, stage in stages.done.items()
                                       if name.startswith("validate")],
        "real_mean": result["mean"], "real_std": result["std"], "real_episodes": result["episodes"],
        "real_seeds": [result["seeds"][0], result["seeds"][-1]],
        "real_steps_used": real_steps,  # agent steps of every episode M, V and C learned from
        "real_step_budget": budget,
        "real_frames_used": real_steps * load_metadata(data).get("frameskip", 1),
        "seconds_per_stage": {name: stage["seconds"] for name, stage in stages.done.items()},
        "seconds_total": round(sum(stage["seconds"] for stage in stages.done.values()), 1),
    }


def _experience(summary: dict) -> str:
    steps, frames, budget = summary["real_steps_used"], summary["real_frames_used"], summary["real_step_budget"]
    return (f"{steps:,} agent steps" + (f" of the {budget:,}-step budget" if budget else "")
            + (f" ({frames:,} frames)" if frames != steps else ""))


def _last(stages: Stages, prefix: str) -> str:
    return [name for name in stages.done if name.startswith(prefix)][-1]


def summary_lines(summary: dict) -> list[str]:
    stages = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in summary["seconds_per_stage"].items())
    first, last = summary["real_seeds"]
    return [
        f"dream score {summary['dream_score']:.1f}; real score {summary['real_mean']:.1f} +- "
        f"{summary['real_std']:.1f} over {summary['real_episodes']} episodes (seeds {first}-{last})",
        f"real experience used for training: {_experience(summary)}",
        *([f"real score per round (validation seeds): {[round(x, 1) for x in summary['validation_score_per_round']]}"
           + (f"; deployed round {summary['deployed_round']}" if summary.get("deployed_round") else "")]
          if summary["validation_score_per_round"] else []),
        f"wall-clock: {stages} (total {summary['seconds_total'] / 60:.1f} min)",
    ]
