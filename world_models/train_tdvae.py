"""Train the TD-VAE memory from the latent cache of a run's V; resumable, observable.

The same sequences as M's (``train_mdnrnn.batches``: chunks of ``seq_len`` steps, z ~ N(mu,
sigma) drawn afresh, padding masked out); every position of a chunk draws its own jump.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from envs.checks import at_least, positive
from envs.episodes import load_metadata
from envs.errors import ConfigMismatchError, UserError
from world_models.checkpoint import load_checkpoint, load_module_state
from world_models.data import LatentEpisodes
from world_models.latents import build_latent_cache, cached_episode_seeds
from world_models.runlog import RunLogger, resolve_device
from world_models.tdvae import TDVAE
from world_models.train_mdnrnn import SequenceBatch, batches, late_episode_weights
from world_models.train_vae import load_vae, vae_dir
from world_models.training import (
    TrainState,
    check_finite,
    check_training,
    mixed_precision,
    progress_bar,
    report_finished,
)

TDVAE_DIR = "tdvae"
TDVAE_KEYS = ("kind", "z_dim", "action_dim", "discrete_actions", "belief", "state_dim", "hidden", "max_jump",
              "env_id", "action_space")


@dataclass
class TDVAEConfig:
    """Train the TD-VAE memory on the latent cache of the run's V (resumes from its last checkpoint)."""

    run_dir: Path
    """Run directory holding the trained V (from `train.py vae`)."""
    data: Path | None = None
    """Rollout dataset; defaults to the one V was trained on."""
    belief: int = 256
    """Belief LSTM units."""
    state_dim: int = 32
    """Size of TD-VAE's latent state s."""
    hidden: int = 256
    """Units of the hidden layers of every distribution's MLP."""
    max_jump: int = 4
    """Longest jump t2 - t1 trained (and that the dream may take): jumps are drawn from 1..max_jump."""
    seq_len: int = 100
    """Steps per training sequence."""
    batch_size: int = 32
    """Sequences per batch."""
    epochs: int = 20
    """Passes over the training sequences, counted from the first call; a finished run asked for
    more continues."""
    lr: float = 5e-4
    """Adam learning rate (the TD-VAE paper's)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    done_weight: float = 10.0
    """Weight of the jumps that end the episode in the done loss."""
    reward_weight: float = 1.0
    """Weight of the reward head's loss."""
    reward_event_weight: float = 0.0
    """Each step's reward error counts 1 + this * |r| times (0: a plain mean squared error). A reward
    met once in tens of thousands of steps (MyWayHome's vest) is otherwise invisible to the head."""
    rollout: int = 8
    """Links of the open-loop chains trained beside the ELBO: p_T chained from the belief under the
    actions taken, its decoded latents and heads fitted to what followed (a dream runs such
    chains); 0: the paper's loss alone."""
    val_fraction: float = 0.1
    """Fraction of episodes held out for the validation losses."""
    late_from_seed: int = -1
    """Episodes whose seed is at least this (in iterative training: the agent's and the probes'
    episodes, collected after the random rollouts) are drawn --late-weight times per epoch; -1: none."""
    late_weight: int = 1
    """How many times per epoch each late episode's sequences are drawn (an epoch keeps its number
    of sequences: as many of the other episodes' sequences are left out, at random)."""
    seed: int = 0
    """Seeds the weights, the batches and the jumps."""
    device: str = "auto"
    """auto | cpu | cuda"""
    wandb_mode: str = "disabled"
    """online | offline | disabled"""
    progress: bool = True
    """Show progress bars."""
    amp: bool = False
    """bfloat16 autocast on CUDA; ignored on CPU."""

    def check(self) -> None:
        """One-line UserError for the first bad setting (before any work starts)."""
        check_training(self, ("belief", "state_dim", "hidden", "max_jump", "seq_len", "batch_size", "epochs",
                              "late_weight"))
        for name in ("grad_clip", "done_weight"):
            positive(name, getattr(self, name))
        at_least("reward_weight", self.reward_weight, 0)
        at_least("reward_event_weight", self.reward_event_weight, 0)
        at_least("rollout", self.rollout, 0)
        if self.rollout > self.seq_len:
            raise UserError(f"--rollout {self.rollout} is longer than --seq-len {self.seq_len}: "
                            "no training sequence could hold such a chain")
        if self.max_jump > self.seq_len:
            raise UserError(f"--max-jump {self.max_jump} is longer than --seq-len {self.seq_len}: "
                            "no training sequence could hold such a jump")


def tdvae_dir(run_dir: Path) -> Path:
    return Path(run_dir) / TDVAE_DIR


def load_tdvae(run_dir: Path, device: str | torch.device = "cpu") -> tuple[TDVAE, dict]:
    """The trained TD-VAE of a run, with its config."""
    directory = tdvae_dir(run_dir)
    tensors, config = load_checkpoint(directory, device=device, expect=TDVAE_KEYS)
    if config["kind"] != TDVAE.kind:
        raise ConfigMismatchError(f"{directory / 'model.safetensors'} is a {config['kind']!r} checkpoint, "
                                  f"not a {TDVAE.kind!r} one (was it copied from another model?)")
    model = TDVAE(**{key: config[key] for key in ("z_dim", "action_dim", "discrete_actions", "belief",
                                                  "state_dim", "hidden", "max_jump")}).to(device)
    load_module_state(model, tensors, source=directory / "model.safetensors")
    model.eval()
    return model, config


def model_losses(model: TDVAE, batch: SequenceBatch, config: TDVAEConfig,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    return model.losses(batch, generator, done_weight=config.done_weight, reward_weight=config.reward_weight,
                        rollout=config.rollout, reward_event_weight=config.reward_event_weight)


@torch.no_grad()
def evaluate_tdvae(model: TDVAE, latents: LatentEpisodes, config: TDVAEConfig, device) -> dict:
    """Validation losses, averaged over steps, with a fixed seed for the samples and the jumps
    (comparable across epochs)."""
    model.eval()
    generator = torch.Generator().manual_seed(12345)
    totals, weight = {}, 0.0
    for batch in batches(latents, config, generator, device):
        steps = float(batch.mask.sum())
        for key, value in model_losses(model, batch, config, generator).items():
            totals[key] = totals.get(key, 0.0) + float(value) * steps
        weight += steps
    model.train()
    return {f"val_{k}": v / max(weight, 1.0) for k, v in totals.items()}


def train_tdvae(config: TDVAEConfig) -> dict:
    """Train (or resume training) the TD-VAE on the latent cache; returns the final metrics (a
    finished run's own when it has already trained ``config.epochs`` epochs)."""
    config.check()
    device = resolve_device(config.device)
    vae, vae_config = load_vae(config.run_dir, device)
    data = Path(config.data or vae_config["data"])
    meta = load_metadata(data)
    space = meta["action_space"]
    discrete = space["type"] == "discrete"
    torch.manual_seed(config.seed)
    model = TDVAE(vae_config["z_dim"], space["n"] if discrete else space["shape"][0], discrete, config.belief,
                  config.state_dim, config.hidden, config.max_jump).to(device)
    model_config = {"kind": TDVAE.kind, **model.config, "env_id": meta["env_id"], "action_space": space}
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    directory = tdvae_dir(config.run_dir)
    state = TrainState.resume(directory, model, optimizer, model_config)
    if state.epoch >= config.epochs:
        report_finished("TD-VAE", directory, state.epoch)
        return dict(state.metrics)
    latents, num_train = build_latent_cache(config.run_dir, data, vae, vae_dir(config.run_dir) / "model.safetensors",
                                            config.val_fraction, config.progress)
    weights = late_episode_weights(cached_episode_seeds(config.run_dir)[:num_train], config)
    train_latents = latents.subset(range(num_train))
    val_latents = latents.subset(range(num_train, latents.num_episodes)) if num_train < latents.num_episodes \
        else train_latents
    logger = RunLogger(config.run_dir, config, TDVAE_DIR, config.wandb_mode)
    if state.epoch == 0:
        logger.log({"epoch": 0, **evaluate_tdvae(model, val_latents, config, device)}, 0)
    metrics = {}
    bar = progress_bar("TD-VAE", config.epochs, state.epoch, config.progress)
    for epoch in range(state.epoch, config.epochs):
        metrics = _train_epoch(model, optimizer, train_latents, epoch, state, config, device, weights)
        metrics.update(evaluate_tdvae(model, val_latents, config, device))
        logger.log(metrics, state.step)
        state.epoch = epoch + 1
        state.metrics = metrics
        state.save(directory, model, optimizer, model_config, {"done_weight": config.done_weight})
        bar.advance(f"elbo {metrics['elbo_loss']:.3f} val elbo {metrics['val_elbo_loss']:.3f} "
                    f"{metrics['steps_per_s']:.0f} steps/s")
    bar.close()
    logger.close()
    return metrics


def _train_epoch(model, optimizer, latents, epoch, state, config, device, weights) -> dict:
    model.train()
    # one generator for the batches and the jumps: an epoch replays exactly when resumed
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    start, steps_seen, totals, count = time.perf_counter(), 0, {}, 0
    for batch in batches(latents, config, generator, device, weights):
        with mixed_precision(config.amp, device):
            losses = model_losses(model, batch, config, generator)
        check_finite(losses["loss"], "TD-VAE", tdvae_dir(config.run_dir))
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        state.step += 1
        steps_seen += int(batch.mask.sum())
        for key, value in losses.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach())
        count += 1
    metrics = {k: v / max(count, 1) for k, v in totals.items()}
    metrics.update(epoch=epoch + 1, steps_per_s=steps_seen / (time.perf_counter() - start))
    return metrics
