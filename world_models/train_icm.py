"""Train the run's ICM (curiosity, ``world_models/curiosity.py``) online: each call learns the real
episodes of the latent cache it has not learnt yet (the agent's own experience, round by round),
and records which those were, so a call after the next collection learns only what is new.

    python train.py icm --run-dir RUN

Before learning, the mean intrinsic reward of the new transitions is logged (``novelty``): how
new the round's experience was to the ICM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from envs.checks import at_least, positive
from envs.episodes import atomic_write_json
from envs.errors import CorruptFileError, UserError
from world_models.curiosity import ICM, ICMLearner, episodes_transitions
from world_models.latents import cached_episode_seeds, load_latent_cache
from world_models.rewards import icm_dir
from world_models.runlog import RunLogger, check_wandb_mode, resolve_device

SEEN_FILE = "episodes_seen.json"


@dataclass
class ICMConfig:
    """Train the run's ICM on the cached real episodes it has not learnt yet (resumable, online)."""

    run_dir: Path
    """Run directory with V and a latent cache (`train.py mdnrnn` or `tdvae` builds it)."""
    epochs: int = 4
    """Passes over the new transitions."""
    feature_dim: int = 64
    """Size of ICM's features phi (the first call fixes the architecture)."""
    hidden: int = 256
    """Units of the hidden layers of phi, the inverse and the forward model."""
    beta: float = 0.2
    """Weight of the forward loss: (1 - beta) L_I + beta L_F (the ICM paper's 0.2)."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 256
    """Transitions per update."""
    seed: int = 0
    """Seeds the weights and the minibatch order."""
    device: str = "auto"
    """auto | cpu | cuda"""
    wandb_mode: str = "disabled"
    """online | offline | disabled"""

    def check(self) -> None:
        for name in ("epochs", "feature_dim", "hidden", "batch_size"):
            at_least(name, getattr(self, name), 1)
        at_least("seed", self.seed, 0)
        positive("lr", self.lr)
        if not 0.0 <= self.beta <= 1.0:
            raise UserError(f"--beta must be in [0, 1], got {self.beta}")
        resolve_device(self.device)
        check_wandb_mode(self.wandb_mode)


def load_or_create(config: ICMConfig, z_dim: int, action_dim: int, discrete: bool, device) -> ICMLearner:
    directory = icm_dir(config.run_dir)
    if (directory / "model.safetensors").exists():
        return ICMLearner.load(directory, device)
    torch.manual_seed(config.seed)
    icm = ICM(z_dim, action_dim, discrete, config.feature_dim, config.hidden, config.beta).to(device)
    return ICMLearner(icm, lr=config.lr, seed=config.seed)


def seen_seeds(run_dir: Path) -> set[int]:
    path = icm_dir(run_dir) / SEEN_FILE
    if not path.exists():
        return set()
    try:
        return set(json.loads(path.read_text())["seeds"])
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptFileError(f"{path} is damaged ({error}): delete RUN/icm to learn every episode again") from None


def train_icm(config: ICMConfig) -> dict:
    """Learn the new episodes; returns the metrics (nothing to learn: an empty update's)."""
    config.check()
    device = resolve_device(config.device)
    latents = load_latent_cache(config.run_dir)
    seeds = cached_episode_seeds(config.run_dir)
    seen = seen_seeds(config.run_dir)
    new = [e for e, seed in enumerate(seeds) if seed not in seen]
    if not new:
        print(f"ICM in {icm_dir(config.run_dir)} has learnt all {len(seeds)} episodes: nothing to do")
        return {"episodes": 0, "transitions": 0}
    z, actions, z_next = episode_transitions(latents, new, device)
    action_dim, discrete = action_space_of(config.run_dir)
    learner = load_or_create(config, z.shape[1], action_dim, discrete, device)
    metrics = {"episodes": len(new), "transitions": len(z),
               **learner.update(z, actions, z_next, epochs=config.epochs, batch_size=config.batch_size),
               "novelty_cap": learner.novelty_cap}
    learner.save(icm_dir(config.run_dir))
    atomic_write_json(icm_dir(config.run_dir) / SEEN_FILE, {"seeds": sorted(seen | {seeds[e] for e in new})})
    logger = RunLogger(config.run_dir, config, "icm", config.wandb_mode)
    logger.log(metrics, learner.updates)
    logger.close()
    return metrics


def action_space_of(run_dir: Path) -> tuple[int, bool]:
    """(action_dim, discrete) of the env V's dataset was collected in."""
    from envs.episodes import load_metadata
    from world_models.train_vae import load_vae

    _, vae_config = load_vae(run_dir)
    space = load_metadata(Path(vae_config["data"]))["action_space"]
    discrete = space["type"] == "discrete"
    return (space["n"] if discrete else space["shape"][0]), discrete


def episode_transitions(latents, episodes: list[int], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_t, a_t, z_t+1) of the given episodes of a latent cache, V's mean latents."""
    chosen = (latents.episode(e) for e in episodes)
    return tuple(part.to(device) for part in episodes_transitions((ep.mu, ep.actions) for ep in chosen))
