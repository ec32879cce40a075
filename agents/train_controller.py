"""Train C for a run's V and memory (M or TD-VAE): CMA-ES or natural policy gradient, in the
dream or the real env.

The dream is the batched ``DreamVecEnv`` (whole population x rollouts in one program); the
real env runs in worker processes (CMA-ES) or as a vector of envs seen through V and the memory (NPG).
The best controller so far is always saved to ``RUN/controller`` for ``eval.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from agents.agent import load_controller, save_controller
from agents.controller import Controller, ControllerSpec
from agents.evaluate import load_start_latents
from agents.fitness import DreamFitness, RealFitness
from agents.npg import NPGConfig
from agents.npg_train import RealFeatureEnv, train_npg
from envs.checks import at_least, directory_to_write, existing_directory, in_range, positive
from envs.errors import UserError
from envs.make import make_env
from envs.pool import check_backend, make_vector_env
from envs.tasks import task_rules
from world_models.dream import DreamConfig, DreamVecEnv, dream_rollouts
from world_models.mdnrnn import MDNRNN
from world_models.memory import Memory, load_memory
from world_models.rewards import check_curiosity, icm_dir, make_curiosity
from world_models.runlog import RunLogger, check_wandb_mode, resolve_device
from world_models.train_mdnrnn import load_mdnrnn
from world_models.train_vae import load_vae
from world_models.training import progress_bar


@dataclass
class ControllerConfig:
    """Train C with CMA-ES or natural policy gradient, in the dream or the real env."""

    run_dir: Path
    """Run directory with trained V and memory."""
    memory: Literal["mdnrnn", "tdvae"] = "mdnrnn"
    """The memory C reads and dreams in: mdnrnn (M, `train.py mdnrnn`) or tdvae (the TD-VAE belief,
    `train.py tdvae`; C reads [z, s], s its state estimate)."""
    dream_jump: int = 1
    """Env steps per dream decision, C's action held over them: a dream that many times cheaper.
    > 1 needs --memory tdvae, up to its --max-jump; the dream pays the jump's predicted reward."""
    algo: Literal["cmaes", "npg"] = "cmaes"
    """cmaes: evolution strategy (paper); npg: natural policy gradient with Fisher-vector products."""
    where: Literal["dream", "real"] = "dream"
    """Train inside M's dream or in the real env."""
    temperature: float = 1.15
    """Dream sampling temperature tau (paper Doom: 1.15)."""
    generations: int = 100
    """CMA-ES generations, or NPG iterations."""
    population: int = 64
    """CMA-ES candidates per generation (pycma needs at least 4)."""
    rollouts: int = 16
    """Rollouts per member; fitness is their mean return."""
    sigma0: float = 0.1
    """CMA-ES initial step size."""
    eval_every: int = 25
    """Re-evaluate the best member every K generations."""
    eval_rollouts: int = 256
    """Rollouts for that re-evaluation (paper: 1024)."""
    workers: int = 1
    """Real-env workers (--where real): CMA-ES's worker processes (or Ray actors); NPG's envs
    stepped together (with --backend ray, one actor each)."""
    hidden: int = 0
    """0: linear controller (paper); >0: one tanh hidden layer of that size."""
    include_cell: bool = False
    """Feed the LSTM cell c to C as well as h."""
    done_mode: Literal["threshold", "sample"] = "threshold"
    """How a dream ends from M's done probability p: threshold (p > done_threshold, paper) or sample
    (Bernoulli of p calibrated for the weight M's done loss gave deaths: a per-step hazard, so a death
    that M cannot time precisely still happens in the dream about as often as in reality)."""
    done_threshold: float = 0.5
    """With done_mode threshold: a dream dies when M's p(done) exceeds this."""
    done_critics: tuple[Path, ...] = ()
    """Run (or round) directories whose M also decides deaths in the dream: a dream dies where the
    most pessimistic of them and the run's M predicts death, so C cannot live on one M's missed
    deaths. They must share the run's V (e.g. an earlier round's M, ``RUN/rounds/K``)."""
    max_episode_steps: int = 2100
    """Dream episodes are cut here (TakeCover's real limit is 2100 steps)."""
    npg_envs: int = 256
    """NPG: parallel envs per batch (dream) — real uses --workers envs."""
    npg_horizon: int = 128
    """NPG: steps per env per iteration."""
    max_kl: float = 0.01
    """NPG: the trust region, mean KL between old and new policy per update."""
    damping: float = 0.1
    """NPG: damping added to the Fisher-vector products (F + damping * I)."""
    state_dir: str | None = None
    """Subdirectory of the run for the CMA-ES search state (default cmaes_<where>, plus _tdvae and
    _jump<K> for those settings: each kind of search resumes its own)."""
    warm_start: bool = False
    """Start CMA-ES from the run's current controller (iterative training)."""
    seed: int = 0
    """Seeds CMA-ES's sampler, the NPG policy and every rollout."""
    device: str = "auto"
    """auto | cpu | cuda (dream)."""
    wandb_mode: str = "disabled"
    """online | offline | disabled"""
    progress: bool = True
    """Show progress bars."""
    backend: Literal["local", "ray"] = "local"
    """Where the real env runs (--where real): local (CMA-ES's rollouts in worker processes, NPG's
    envs one after another in this process) or ray (Ray actors, one CPU each; needs the ray extra)."""
    ray_address: str | None = None
    """With --backend ray: the cluster to join (auto: the one `ray start` made here); none starts
    a Ray instance on this machine."""
    curiosity: Literal["none", "icm", "mdn"] = "none"
    """Intrinsic reward added to every return (world_models/rewards.py): icm (ICM's forward error on
    V's latents; in the real env it learns online from C's episodes, in the dream it needs
    `train.py icm` first) or mdn (the memory's surprise above its usual; in the dream, the
    disagreement of the memory and --done-critics)."""
    curiosity_scale: float = 0.1
    """eta: the intrinsic reward's weight beside the task's."""

    def check(self) -> None:
        """One-line UserError for the first bad setting (before any work starts)."""
        for name in ("generations", "rollouts", "eval_every", "eval_rollouts", "workers", "max_episode_steps",
                     "npg_envs", "npg_horizon"):
            at_least(name, getattr(self, name), 1)
        at_least("population", self.population, 4, "CMA-ES needs at least 4 candidates per generation")
        at_least("hidden", self.hidden, 0)
        at_least("seed", self.seed, 0)
        at_least("dream_jump", self.dream_jump, 1)
        self._check_memory()
        for name in ("temperature", "sigma0", "max_kl"):
            positive(name, getattr(self, name))
        at_least("damping", self.damping, 0)
        in_range("done_threshold", self.done_threshold, 0.0, 1.0)
        resolve_device(self.device)
        check_wandb_mode(self.wandb_mode)
        directory_to_write("run_dir", self.run_dir)
        for directory in self.done_critics:
            existing_directory("done_critics", directory, "a run or round directory with an M")
        check_backend(self.backend, self.ray_address)

    def _check_memory(self) -> None:
        if self.dream_jump > 1 and self.memory != "tdvae":
            raise UserError(f"--dream-jump {self.dream_jump} needs --memory tdvae: an MDN-RNN predicts one "
                            "step at a time")
        if self.dream_jump > 1 and self.where != "dream":
            raise UserError(f"--dream-jump {self.dream_jump} is for --where dream (the real env steps one step "
                            "at a time)")
        if self.memory == "tdvae" and (self.include_cell or self.done_critics):
            raise UserError("--include-cell and --done-critics are MDN-RNN options: TD-VAE gives C [z, s], "
                            "and a critic is an M")
        check_curiosity(self.curiosity, self.curiosity_scale)
        if self.curiosity != "none" and self.dream_jump > 1:
            raise UserError(f"--curiosity {self.curiosity} rewards one-step transitions: use --dream-jump 1")
        if self.curiosity == "mdn" and self.where == "dream" and not self.done_critics:
            raise UserError("--curiosity mdn in the dream pays the disagreement of Ms about the next latent (the "
                            "dream's own sample is noise, not novelty): give other Ms of this V with --done-critics")
        trained_icm = (icm_dir(self.run_dir) / "model.safetensors").exists()
        if self.curiosity == "icm" and self.where == "dream" and not trained_icm:
            raise UserError(f"--curiosity icm in the dream needs an ICM trained on real episodes: run "
                            f"`python train.py icm --run-dir {self.run_dir}` first")


def controller_spec(memory: Memory, memory_config: dict, config: ControllerConfig) -> ControllerSpec:
    space = memory_config["action_space"]
    bounds = {} if space["type"] == "discrete" else {"action_low": tuple(space["low"]),
                                                     "action_high": tuple(space["high"])}
    return ControllerSpec(memory.feature_dim(config.include_cell), memory.action_dim, memory.discrete_actions,
                          config.hidden, **bounds)


def check_jump(memory: Memory, config: ControllerConfig) -> None:
    if config.dream_jump > memory.max_jump:
        raise UserError(f"--dream-jump {config.dream_jump}: {config.run_dir}'s TD-VAE was trained for jumps "
                        f"up to {memory.max_jump} (train it with --max-jump {config.dream_jump})")


def dream_config(config: ControllerConfig, mdn_config: dict) -> DreamConfig:
    reward_mode = task_rules(mdn_config["env_id"]).dream_reward  # by env family (envs/tasks.py)
    # an M saved before its config recorded done_weight was trained with the default, 10
    return DreamConfig(temperature=config.temperature, done_mode=config.done_mode,
                       done_threshold=config.done_threshold, done_weight=mdn_config.get("done_weight", 10.0),
                       reward_mode=reward_mode,
                       max_episode_steps=config.max_episode_steps, include_cell=config.include_cell,
                       jump=config.dream_jump)


def load_critic(directory: Path, mdn_config: dict, device) -> MDNRNN:
    """The M of ``directory`` as a death critic for a dream of the M with ``mdn_config``."""
    critic, critic_config = load_mdnrnn(directory, device)  # a missing M is a UserError there
    same = ("env_id", "z_dim", "action_dim", "discrete_actions")
    if any(critic_config.get(key) != mdn_config.get(key) for key in same):
        raise UserError(f"--done-critics {directory}: its M is for another env or latent size "
                        f"({', '.join(f'{k}={critic_config.get(k)}' for k in same)}); use an M of this run's V")
    return critic


def train_controller(config: ControllerConfig) -> dict:
    """Train C; returns a summary with the best fitness and where the controller was saved."""
    config.check()
    device = resolve_device(config.device) if config.where == "dream" else torch.device("cpu")
    memory, memory_config = load_memory(config.run_dir, config.memory, device)
    check_jump(memory, config)
    spec = controller_spec(memory, memory_config, config)
    dream = dream_config(config, memory_config)
    start_mu, start_log_sigma = load_start_latents(config.run_dir, device)
    critics = [load_critic(Path(directory), memory_config, device) for directory in config.done_critics]
    curiosity = make_curiosity(config.curiosity, config.curiosity_scale, config.run_dir, memory, device, config.seed)

    def make_dream(num_envs: int, seed: int = config.seed) -> DreamVecEnv:
        return DreamVecEnv(memory, start_mu, start_log_sigma, num_envs, dream, seed=seed, critics=critics,
                           curiosity=curiosity)

    info = {"env_id": memory_config["env_id"], "memory": config.memory, "algo": config.algo, "where": config.where,
            "include_cell": config.include_cell, "dream": dataclasses.asdict(dream),
            "done_critics": [str(directory) for directory in config.done_critics],
            **({"curiosity": config.curiosity, "curiosity_scale": config.curiosity_scale} if curiosity else {})}
    logger = RunLogger(config.run_dir, config, f"controller_{config.algo}_{config.where}", config.wandb_mode)
    try:
        if config.algo == "cmaes":
            summary = _train_cmaes(config, spec, make_dream, info, logger, curiosity)
        else:
            summary = _train_npg(config, spec, make_dream, memory, info, logger, curiosity)
    finally:
        logger.close()
        if curiosity is not None and config.where == "real":
            curiosity.save(config.run_dir)  # what the ICM learnt from C's episodes
    return summary


def _train_cmaes(config, spec, make_dream, info, logger, curiosity=None) -> dict:
    from agents.cmaes import CMAESConfig, CMAESTrainer
    from agents.cmaes import load_controller as load_cmaes_controller

    cma_config = CMAESConfig(population=config.population, rollouts=config.rollouts, sigma0=config.sigma0,
                             generations=config.generations, eval_every=config.eval_every,
                             eval_rollouts=config.eval_rollouts, seed=config.seed)
    if config.where == "dream":
        fitness = DreamFitness(make_dream, spec, config.rollouts)
        eval_fitness = DreamFitness(make_dream, spec, config.eval_rollouts)
    else:
        fitness = RealFitness(config.run_dir, info["env_id"], spec, config.rollouts, config.workers,
                              config.include_cell, config.backend, config.ray_address, config.memory, curiosity)
        eval_fitness = None
    x0 = load_controller(config.run_dir)[0].to_vector() if config.warm_start else None
    trainer = CMAESTrainer(spec, cma_config, Path(config.run_dir) / (config.state_dir or _state_dir(config)), x0)
    if trainer.generation >= config.generations:
        print(f"C's CMA-ES in {trainer.run_dir} has finished its {trainer.generation} generations: nothing to do "
              "(ask for more --generations to continue it)")
    bar = progress_bar("C (CMA-ES)", config.generations, enabled=config.progress)

    def log(record: dict) -> None:
        if isinstance(fitness, RealFitness):
            record = {**record, **fitness.last}  # the generation's intrinsic return, the ICM's losses
        logger.log(record, record["generation"])
        bar.advance(f"best {record['best']:.1f} mean {record['mean']:.1f}")

    try:
        result = trainer.train(fitness, eval_fitness=eval_fitness, log=log)
    finally:
        bar.close()
        if isinstance(fitness, RealFitness):
            fitness.close()
    controller, best = load_cmaes_controller(trainer.run_dir)
    save_controller(config.run_dir, controller, {**info, "fitness": best["fitness"],
                                                 "generation": best["generation"], "source": best["source"]})
    return {**result, "fitness": best["fitness"], "generation": best["generation"]}


def _state_dir(config: ControllerConfig) -> str:
    memory = "" if config.memory == "mdnrnn" else f"_{config.memory}"
    jump = "" if config.dream_jump == 1 else f"_jump{config.dream_jump}"
    return f"cmaes_{config.where}{memory}{jump}"


def _train_npg(config, spec, make_dream, memory, info, logger, curiosity=None) -> dict:
    npg = NPGConfig(max_kl=config.max_kl, damping=config.damping)
    if config.where == "dream":
        env = make_dream(config.npg_envs)
    else:
        vae, _ = load_vae(config.run_dir)
        env_fns = [functools.partial(make_env, info["env_id"])] * config.workers  # picklable, for Ray actors
        env = RealFeatureEnv(make_vector_env(config.backend, env_fns, config.ray_address), vae, memory,
                             config.include_cell, curiosity)
    best = {"fitness": -math.inf}
    bar = progress_bar("C (NPG)", config.generations, enabled=config.progress)
    start = time.perf_counter()

    def log(record: dict) -> None:
        logger.log(record, record["iteration"])
        bar.advance(f"return {record['mean_return']:.1f}")

    def checkpoint(iteration: int, policy) -> None:
        if iteration % config.eval_every and iteration != config.generations:
            return
        controller = policy.to_controller()
        score = _dream_score(controller, make_dream, config) if config.where == "dream" else _recent(logger)
        logger.log({"iteration": iteration, "eval_fitness": score}, iteration)
        if score > best["fitness"]:
            best.update(fitness=score, generation=iteration)
            save_controller(config.run_dir, controller, {**info, **best})

    try:
        train_npg(env, spec, npg, config.generations, config.npg_horizon, config.seed, log, checkpoint)
    finally:
        bar.close()
        if isinstance(env, RealFeatureEnv):
            env.close()  # the envs' engines, or their Ray actors
    return {"best_fitness": best["fitness"], "seconds": time.perf_counter() - start, **best}


def _dream_score(controller: Controller, make_dream, config: ControllerConfig) -> float:
    dream = make_dream(config.eval_rollouts, seed=config.seed + 999)
    controller = controller.to(dream.device)
    returns, _ = dream_rollouts(dream, lambda features, _: controller.act(features), seed=config.seed + 999)
    return float(returns.mean())


def _recent(logger: RunLogger) -> float:
    from world_models.runlog import read_metrics

    records = [r for r in read_metrics(logger.run_dir, logger.stage) if "mean_return" in r]
    return records[-1]["mean_return"] if records else -math.inf
