"""Train M, the MDN-RNN, from the latent cache of a run's V; resumable, observable.

Every batch samples z ~ N(mu, sigma) afresh from the cached encodings (as the paper does), so
M never re-encodes a frame. Episodes are cut into chunks of ``seq_len`` steps (a random
offset each epoch); shorter chunks are padded and the padding is masked out of every loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from envs.checks import at_least, positive
from envs.episodes import load_metadata
from envs.errors import UserError
from world_models.checkpoint import load_checkpoint, load_module_state, module_state, save_checkpoint
from world_models.data import LatentEpisodes
from world_models.latents import build_latent_cache, cached_episode_seeds
from world_models.mdnrnn import MDNRNN
from world_models.runlog import RunLogger, resolve_device
from world_models.train_vae import load_vae, vae_dir
from world_models.training import (
    TrainState,
    check_finite,
    check_training,
    mixed_precision,
    progress_bar,
    report_finished,
)

MDNRNN_DIR = "mdnrnn"
BEST_NAME = "best"
MDNRNN_KEYS = ("z_dim", "action_dim", "discrete_actions", "hidden", "mixtures", "env_id", "action_space")
HELD_OUT_LOSSES = ("val_loss", "val_nll", "val_done_loss", "val_reward_loss")


@dataclass
class MDNRNNConfig:
    """Train M, the MDN-RNN, on the latent cache of the run's V (resumes from its last checkpoint)."""

    run_dir: Path
    """Run directory holding the trained V (from `train.py vae`)."""
    data: Path | None = None
    """Rollout dataset; defaults to the one V was trained on."""
    hidden: int = 256
    """LSTM units (World Models: 256 CarRacing, 512 Doom)."""
    mixtures: int = 5
    """Gaussians per latent dimension."""
    seq_len: int = 100
    """Steps per training sequence (paper Doom: 500)."""
    batch_size: int = 32
    """Sequences per batch."""
    epochs: int = 20
    """Passes over the training sequences, counted from M's first call; a finished run asked for
    more continues."""
    lr: float = 1e-3
    """Adam learning rate."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    done_weight: float = 10.0
    """Weight of terminal steps in the done loss (released code: 10)."""
    reward_weight: float = 1.0
    """Weight of the reward head's loss."""
    reward_event_weight: float = 0.0
    """Each step's reward error counts 1 + this * |r| times (0: a plain mean squared error). A reward
    met once in tens of thousands of steps (MyWayHome's vest) is otherwise invisible to the head."""
    val_fraction: float = 0.1
    """Fraction of episodes held out for the validation losses."""
    late_from_seed: int = -1
    """Episodes whose seed is at least this (in iterative training: the agent's and the probes'
    episodes, collected after the random rollouts) are drawn --late-weight times per epoch; -1: none."""
    late_weight: int = 1
    """How many times per epoch each late episode's sequences are drawn. An epoch keeps its number
    of sequences (and its cost): as many of the other episodes' sequences are left out, at random.
    Beside thousands of random rollouts a round's agent episodes are ~2% of M's steps, too few
    to correct what M believes about the controller's moves."""
    keep_best: str = ""
    """Keep the epoch of this training call with the lowest held-out loss of this name (val_loss,
    val_nll, val_done_loss or val_reward_loss): its weights are exported and a later call continues
    from them. Empty keeps the last epoch. The done head overfits first (held-out done loss rises
    while val_nll still falls), hence val_done_loss in the pipeline."""
    patience: int = 0
    """With --keep-best: stop after this many epochs without a new best (0: train every epoch)."""
    seed: int = 0
    """Seeds the weights and the batches."""
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
        check_training(self, ("hidden", "mixtures", "seq_len", "batch_size", "epochs", "late_weight"))
        for name in ("grad_clip", "done_weight"):
            positive(name, getattr(self, name))
        at_least("reward_weight", self.reward_weight, 0)
        at_least("reward_event_weight", self.reward_event_weight, 0)
        at_least("patience", self.patience, 0)
        if self.keep_best and self.keep_best not in HELD_OUT_LOSSES:
            raise UserError(f"--keep-best {self.keep_best!r} is not a held-out loss: use one of "
                            f"{', '.join(HELD_OUT_LOSSES)} (or '' to keep the last epoch)")


def mdnrnn_dir(run_dir: Path) -> Path:
    return Path(run_dir) / MDNRNN_DIR


def load_mdnrnn(run_dir: Path, device: str | torch.device = "cpu") -> tuple[MDNRNN, dict]:
    """The trained M of a run, with its config."""
    tensors, config = load_checkpoint(mdnrnn_dir(run_dir), device=device, expect=MDNRNN_KEYS)
    model = MDNRNN(config["z_dim"], config["action_dim"], config["discrete_actions"], config["hidden"],
                   config["mixtures"]).to(device)
    load_module_state(model, tensors, source=mdnrnn_dir(run_dir) / "model.safetensors")
    model.eval()
    return model, config


@dataclass
class SequenceBatch:
    z: torch.Tensor  # (B, L, z) inputs z_t
    actions: torch.Tensor  # (B, L) int64 or (B, L, A)
    z_next: torch.Tensor  # (B, L, z) targets z_{t+1}
    rewards: torch.Tensor  # (B, L)
    terminated: torch.Tensor  # (B, L) float
    mask: torch.Tensor  # (B, L) bool: real steps


def epoch_chunks(latents: LatentEpisodes, seq_len: int, generator: torch.Generator,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3) rows of (episode, start, length), shuffled: every step of every episode exactly once.

    A random first cut in [1, seq_len] each epoch means sequences do not always start at reset.
    With ``weights`` ((E,) int64, per episode), see ``reweight_chunks``.
    """
    rows = []
    for episode, length in enumerate(latents.lengths().tolist()):
        first_cut = int(torch.randint(1, seq_len + 1, (1,), generator=generator))
        starts = [0, *range(first_cut, length, seq_len)] if length > seq_len else [0]
        ends = [*starts[1:], length]
        rows += [(episode, start, end - start) for start, end in zip(starts, ends, strict=True)]
    chunks = torch.tensor(rows, dtype=torch.int64)
    if weights is not None:
        chunks = reweight_chunks(chunks, weights, generator)
    return chunks[torch.randperm(len(chunks), generator=generator)]


def reweight_chunks(chunks: torch.Tensor, weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The chunks of episodes with weight w > 1 repeated w times, plus a random subset of the
    others' chunks that keeps the epoch at ``len(chunks)`` rows (it grows only when the repeated
    chunks alone exceed that)."""
    chunk_weights = weights[chunks[:, 0]]
    heavy = chunk_weights > 1
    repeated = chunks[heavy].repeat_interleave(chunk_weights[heavy], dim=0)
    others = chunks[~heavy]
    room = max(len(chunks) - len(repeated), 0)
    kept = others[torch.randperm(len(others), generator=generator)[:room]]
    return torch.cat([repeated, kept])


def late_episode_weights(seeds: list[int], config: MDNRNNConfig) -> torch.Tensor | None:
    """(E,) int64 per-episode draws per epoch from the config's late-episode rule, or None."""
    if config.late_from_seed < 0 or config.late_weight <= 1:
        return None
    return torch.tensor([config.late_weight if seed >= config.late_from_seed else 1 for seed in seeds])


def make_batch(latents: LatentEpisodes, chunks: torch.Tensor, seq_len: int,
               generator: torch.Generator) -> SequenceBatch:
    """Gather padded sequences for some chunks and sample z ~ N(mu, sigma) afresh."""
    episodes, starts, lengths = chunks.unbind(1)
    t = torch.arange(seq_len + 1)[None, :]
    mask = t[:, :seq_len] < lengths[:, None]
    # padding repeats the chunk's last frame / step: finite values that the mask then ignores
    frames = latents.offsets[episodes, None] + starts[:, None] + torch.minimum(t, lengths[:, None])
    steps = latents.step_offsets[episodes, None] + starts[:, None] + torch.minimum(
        t[:, :seq_len], lengths[:, None] - 1)
    mu, sigma = latents.mu[frames], latents.log_sigma[frames].exp()
    z = mu + sigma * torch.randn(mu.shape, generator=generator)
    return SequenceBatch(
        z=z[:, :-1], actions=latents.actions[steps], z_next=z[:, 1:], rewards=latents.rewards[steps],
        terminated=latents.terminated[steps].float(), mask=mask,
    )


def batches(latents: LatentEpisodes, config: MDNRNNConfig, generator: torch.Generator, device,
            weights: torch.Tensor | None = None):
    chunks = epoch_chunks(latents, config.seq_len, generator, weights)
    for start in range(0, len(chunks), config.batch_size):
        batch = make_batch(latents, chunks[start : start + config.batch_size], config.seq_len, generator)
        yield SequenceBatch(**{k: v.to(device) for k, v in batch.__dict__.items()})


def model_losses(model: MDNRNN, batch: SequenceBatch, config: MDNRNNConfig) -> dict[str, torch.Tensor]:
    out, _ = model(batch.z, batch.actions)
    return model.losses(out, batch.z_next, batch.rewards, batch.terminated, batch.mask,
                        done_weight=config.done_weight, reward_weight=config.reward_weight,
                        reward_event_weight=config.reward_event_weight)


@torch.no_grad()
def evaluate_mdnrnn(model: MDNRNN, latents: LatentEpisodes, config: MDNRNNConfig, device) -> dict:
    """Validation losses, averaged over steps, with a fixed sampling seed (comparable across epochs)."""
    model.eval()
    generator = torch.Generator().manual_seed(12345)
    totals, weight = {}, 0.0
    for batch in batches(latents, config, generator, device):
        steps = float(batch.mask.sum())
        for key, value in model_losses(model, batch, config).items():
            totals[key] = totals.get(key, 0.0) + float(value) * steps
        weight += steps
    model.train()
    return {f"val_{k}": v / max(weight, 1.0) for k, v in totals.items()}


def train_mdnrnn(config: MDNRNNConfig) -> dict:
    """Train (or resume training) M on the latent cache; returns the final metrics (a finished
    run's own when it has already trained ``config.epochs`` epochs)."""
    config.check()
    device = resolve_device(config.device)
    vae, vae_config = load_vae(config.run_dir, device)
    data = Path(config.data or vae_config["data"])
    meta = load_metadata(data)
    model_config = _model_config(meta, vae_config, config)
    torch.manual_seed(config.seed)
    model = MDNRNN(vae_config["z_dim"], model_config["action_dim"], model_config["discrete_actions"],
                   config.hidden, config.mixtures).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    state = TrainState.resume(mdnrnn_dir(config.run_dir), model, optimizer, model_config)
    if state.epoch >= config.epochs:
        report_finished("M", mdnrnn_dir(config.run_dir), state.epoch)
        return dict(state.metrics)
    latents, num_train = build_latent_cache(config.run_dir, data, vae, vae_dir(config.run_dir) / "model.safetensors",
                                            config.val_fraction, config.progress)
    weights = late_episode_weights(cached_episode_seeds(config.run_dir)[:num_train], config)
    train_latents = latents.subset(range(num_train))
    val_latents = latents.subset(range(num_train, latents.num_episodes)) if num_train < latents.num_episodes \
        else train_latents
    logger = RunLogger(config.run_dir, config, "mdnrnn", config.wandb_mode)
    if state.epoch == 0:
        logger.log({"epoch": 0, **evaluate_mdnrnn(model, val_latents, config, device)}, 0)
    metrics = {}
    best = BestEpoch(mdnrnn_dir(config.run_dir), config) if config.keep_best else None
    bar = progress_bar("M", config.epochs, state.epoch, config.progress)
    for epoch in range(state.epoch, config.epochs):
        metrics = _train_epoch(model, optimizer, train_latents, epoch, state, config, device, weights)
        metrics.update(evaluate_mdnrnn(model, val_latents, config, device))
        logger.log(metrics, state.step)
        state.epoch = epoch + 1
        if best is not None:
            best.offer(metrics, model)
            if state.epoch == config.epochs or best.stale(state.epoch):
                metrics = best.restore(model, state.epoch)
                state.epoch = config.epochs  # this call's training is finished
        state.metrics = metrics
        state.save(mdnrnn_dir(config.run_dir), model, optimizer, model_config,
                   {"done_weight": config.done_weight, "kind": MDNRNN.kind})
        bar.advance(f"nll {metrics['nll']:.3f} val {metrics['val_nll']:.3f} {metrics['steps_per_s']:.0f} steps/s")
        if state.epoch == config.epochs:
            break
    bar.close()
    logger.close()
    return metrics


class BestEpoch:
    """The epoch with the lowest held-out ``config.keep_best`` loss of one training call (the call
    that trains up to ``config.epochs``), its weights in ``mdnrnn/best.safetensors`` so that a
    killed call resumes with it; a call with another epoch target starts a new search."""

    def __init__(self, directory: Path, config: MDNRNNConfig) -> None:
        self.directory, self.name, self.patience = Path(directory), config.keep_best, config.patience
        self.target = config.epochs
        self.metrics: dict = {"epoch": 0, self.name: float("inf")}
        if (self.directory / f"{BEST_NAME}.json").exists():
            _, saved = load_checkpoint(self.directory, name=BEST_NAME)
            if saved.get("target_epochs") == self.target:
                self.metrics = saved["metrics"]

    def offer(self, metrics: dict, model: torch.nn.Module) -> None:
        if metrics[self.name] < self.metrics[self.name]:
            self.metrics = dict(metrics)
            config = {"metrics": self.metrics, "target_epochs": self.target}
            save_checkpoint(self.directory, module_state(model), config, name=BEST_NAME)

    def stale(self, epoch: int) -> bool:
        return self.patience > 0 and epoch - self.metrics["epoch"] >= self.patience

    def restore(self, model: torch.nn.Module, last_epoch: int) -> dict:
        """Load the best weights into ``model``; returns their metrics (``epoch`` is theirs)."""
        tensors, _ = load_checkpoint(self.directory, name=BEST_NAME, device=next(model.parameters()).device)
        load_module_state(model, tensors)
        print(f"M: kept epoch {self.metrics['epoch']} ({self.name} {self.metrics[self.name]:.4f}), "
              f"trained to epoch {last_epoch}")
        return {**self.metrics, "last_epoch": last_epoch}


def _model_config(meta: dict, vae_config: dict, config: MDNRNNConfig) -> dict:
    space = meta["action_space"]
    discrete = space["type"] == "discrete"
    return {
        "z_dim": vae_config["z_dim"], "hidden": config.hidden, "mixtures": config.mixtures,
        "discrete_actions": discrete, "action_dim": space["n"] if discrete else space["shape"][0],
        "env_id": meta["env_id"], "action_space": space,
    }


def _train_epoch(model, optimizer, latents, epoch, state, config, device, weights) -> dict:
    model.train()
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    start, steps_seen, totals, count = time.perf_counter(), 0, {}, 0
    for batch in batches(latents, config, generator, device, weights):
        with mixed_precision(config.amp, device):
            losses = model_losses(model, batch, config)
        check_finite(losses["loss"], "M", mdnrnn_dir(config.run_dir))
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


@torch.no_grad()
def reward_fit(mdnrnn: MDNRNN, episodes: LatentEpisodes, max_episodes: int | None = None) -> dict:
    """How much of the reward M's reward head predicts, teacher-forced on real episodes
    (``LatentEpisodes``, the latent cache: V's mu and the rewards M learned).

    In a dream that pays M's reward (Atari), a head that explains little of the reward is a
    near-constant whose small biases CMA-ES can add up over a long dream. Returns the per-step
    ``r2`` (1 - squared error / the rewards' variance; 0 is a constant at the mean), the rewards'
    ``variance``, per-episode ``real`` and ``predicted`` sums and their ``episode_correlation``
    (Pearson): a head can miss every step's timing (r2 ~ 0) yet rank whole episodes right, which is
    what a controller trained on dream returns needs."""
    count = episodes.num_episodes if max_episodes is None else min(max_episodes, episodes.num_episodes)
    real, predicted, errors, targets = [], [], [], []
    for e in range(count):
        episode = episodes.episode(e)
        out, _ = mdnrnn(episode.mu[None, :-1], episode.actions[None])
        reward = out.reward[0].float()
        errors.append((reward - episode.rewards).pow(2))
        targets.append(episode.rewards)
        real.append(float(episode.rewards.sum()))
        predicted.append(float(reward.sum()))
    targets, errors = torch.cat(targets), torch.cat(errors)
    variance = float(targets.var(unbiased=False))  # the mse of a constant at the mean
    ranked = count > 1 and np.std(real) > 0 and np.std(predicted) > 0  # else the correlation is undefined
    correlation = float(np.corrcoef(real, predicted)[0, 1]) if ranked else float("nan")
    return {"r2": 1 - float(errors.mean()) / variance if variance > 0 else float("nan"), "variance": variance,
            "mse": float(errors.mean()), "episode_correlation": correlation, "episodes": count, "real": real,
            "predicted": predicted}
