"""Train V, the ConvVAE, from a rollout dataset; resumable, observable.

Per step it logs loss, reconstruction, KL, mean mu and mean sigma of q(z|x), frames/s; per
epoch the validation loss and a reconstruction grid (real above, decoded below).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from envs.checks import at_least
from envs.episodes import load_metadata
from envs.errors import UserError
from world_models.checkpoint import load_checkpoint, load_module_state
from world_models.data import FrameStream, dataset_files, load_frames
from world_models.runlog import RunLogger, resolve_device
from world_models.training import (
    TrainState,
    check_finite,
    check_training,
    mixed_precision,
    progress_bar,
    report_finished,
)
from world_models.vae import ConvVAE, background_frame, frames_to_tensor, moving_pixel_error

VAE_DIR = "vae"
MOVING_FRAMES = 512  # frames of one held-out episode for the moving-pixel error, each epoch
BACKGROUND_FRAMES = 2048  # training frames whose median is the background of --foreground-weight
BACKGROUND_FILES = 64  # episodes they come from, spread over the data


@dataclass
class VAEConfig:
    """Train V, the ConvVAE, on a rollout dataset (resumes from the run's last checkpoint)."""

    data: Path
    """Rollout dataset directory (from `train.py collect`)."""
    run_dir: Path
    """Run directory: checkpoints, metrics.jsonl, images."""
    z_dim: int = 64
    """Latent size (World Models: 32 CarRacing, 64 Doom)."""
    epochs: int = 10
    """Passes over the training episodes' frames; a finished run asked for more continues."""
    batch_size: int = 100
    """Frames per batch."""
    lr: float = 1e-4
    """Adam learning rate (paper: 1e-4)."""
    kl_tolerance: float = 0.5
    """KL floor per latent dim (released code: 0.5); 0 disables it."""
    recon_cutoff: float = 0.0
    """Train on the clipped per-pixel loss max(0, e - cutoff) (SimPLe), e a pixel's squared error
    summed over channels, so that small objects count; 0: the plain L2 loss."""
    foreground_weight: float = 1.0
    """Multiply the loss of the pixels that differ from the dataset's median frame (the objects on a
    fixed screen: ball, paddles, sprites) by this weight; 1: the plain L2 loss."""
    val_fraction: float = 0.1
    """Fraction of episodes held out for the validation loss."""
    shuffle_episodes: int = 64
    """Episodes whose frames are shuffled together into batches (RAM: ~4 MB per 300-step episode,
    a few pools in flight). Fewer gives correlated batches (see ``FrameStream``); 8 was the old default."""
    seed: int = 0
    """Seeds the weights, the episode split's shuffling and the batches."""
    device: str = "auto"
    """auto | cpu | cuda"""
    log_every: int = 20
    """Steps between metric lines."""
    wandb_mode: str = "disabled"
    """online | offline | disabled"""
    progress: bool = True
    """Show a progress bar."""
    amp: bool = False
    """bfloat16 autocast on CUDA; ignored on CPU."""

    def check(self) -> None:
        """One-line UserError for the first bad setting (before any work starts)."""
        check_training(self, ("z_dim", "epochs", "batch_size", "shuffle_episodes", "log_every"))
        at_least("kl_tolerance", self.kl_tolerance, 0)
        at_least("recon_cutoff", self.recon_cutoff, 0)
        at_least("foreground_weight", self.foreground_weight, 1)


def vae_dir(run_dir: Path) -> Path:
    return Path(run_dir) / VAE_DIR


def load_vae(run_dir: Path, device: str | torch.device = "cpu") -> tuple[ConvVAE, dict]:
    """The trained V of a run, with its config."""
    tensors, config = load_checkpoint(vae_dir(run_dir), device=device, expect=("z_dim", "env_id"))
    vae = ConvVAE(z_dim=config["z_dim"]).to(device)
    load_module_state(vae, tensors, source=vae_dir(run_dir) / "model.safetensors")
    vae.eval()
    return vae, config


def reconstruction_grid(vae: ConvVAE, frames: torch.Tensor) -> np.ndarray:
    """(2*64, n*64, 3) uint8: real frames on top, their decoded reconstructions below."""
    with torch.no_grad():
        device = next(vae.parameters()).device
        x = frames_to_tensor(frames.to(device))
        mu, _ = vae.encode(x)
        decoded = (vae.decode(mu).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    top = torch.cat(list(frames.cpu()), dim=1)
    bottom = torch.cat(list(decoded), dim=1)
    return torch.cat([top, bottom], dim=0).numpy()


@torch.no_grad()
def moving_pixels(vae: ConvVAE, frames: torch.Tensor) -> dict:
    """``val_moving_mse`` / ``val_static_mse`` / ``val_moving_fraction`` of consecutive held-out
    frames (``world_models.vae.moving_pixel_error``): whether V keeps what moves."""
    vae.eval()
    x = frames_to_tensor(frames.to(next(vae.parameters()).device))
    decoded = vae.decode(vae.encode(x)[0]).clamp(0, 1)
    vae.train()
    return {f"val_{k}": v for k, v in moving_pixel_error(x, decoded).items()}


def evaluate_vae(vae: ConvVAE, files: list[Path], config: VAEConfig, device: torch.device,
                 background: torch.Tensor | None = None) -> dict:
    """Mean loss terms over held-out episodes."""
    totals, count = {}, 0
    vae.eval()
    with torch.no_grad():
        for batch in FrameStream(files, 256, seed=0, drop_last=False).epoch(0):
            x = frames_to_tensor(torch.from_numpy(batch).to(device))
            terms = vae.loss(x, config.kl_tolerance, config.recon_cutoff, background, config.foreground_weight)
            for key in ("loss", "recon", "kl", "recon_weighted"):
                if key not in terms:
                    continue
                totals[key] = totals.get(key, 0.0) + float(terms[key]) * len(batch)
            count += len(batch)
    vae.train()
    return {f"val_{k}": v / max(count, 1) for k, v in totals.items()}


def train_vae(config: VAEConfig) -> dict:
    """Train (or resume training) V; returns the final validation metrics (a finished run's own
    when it has already trained ``config.epochs`` epochs)."""
    config.check()
    device = resolve_device(config.device)
    meta = load_metadata(config.data)
    train_files, val_files = dataset_files(config.data, config.val_fraction)
    model_config = {"z_dim": config.z_dim, "env_id": meta["env_id"], "data": str(config.data)}
    torch.manual_seed(config.seed)
    vae = ConvVAE(z_dim=config.z_dim).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
    state = TrainState.resume(vae_dir(config.run_dir), vae, optimizer, model_config)
    if state.epoch >= config.epochs:
        report_finished("V", vae_dir(config.run_dir), state.epoch)
        return dict(state.metrics)
    logger = RunLogger(config.run_dir, config, "vae", config.wandb_mode)
    stream = FrameStream(train_files, config.batch_size, seed=config.seed, chunk_episodes=config.shuffle_episodes)
    grid_frames = load_frames(val_files or train_files)[:: 37][:8]
    sequence = load_frames((val_files or train_files)[:1])[:MOVING_FRAMES]  # consecutive held-out frames
    background = _background(train_files, config, device, logger)
    metrics = {}
    bar = progress_bar("V", config.epochs, state.epoch, config.progress)
    for epoch in range(state.epoch, config.epochs):
        metrics = _train_epoch(vae, optimizer, stream, epoch, state, logger, config, device, background)
        metrics.update(evaluate_vae(vae, val_files, config, device, background))
        metrics.update(moving_pixels(vae, sequence))
        logger.log(metrics, state.step)
        logger.image(f"reconstruction_epoch{epoch + 1:03d}", reconstruction_grid(vae, grid_frames), state.step)
        state.epoch, state.metrics = epoch + 1, metrics
        state.save(vae_dir(config.run_dir), vae, optimizer, model_config)
        bar.advance(f"loss {metrics['loss']:.1f} val {metrics['val_loss']:.1f} {metrics['frames_per_s']:.0f} f/s")
    bar.close()
    logger.close()
    return metrics


def _background(files: list[Path], config: VAEConfig, device: torch.device, logger: RunLogger) -> torch.Tensor | None:
    """The median frame (3, 64, 64) of up to BACKGROUND_FRAMES training frames spread over the data,
    for ``foreground_weight`` (None when it is 1); the same files give the same frame on a resume."""
    if config.foreground_weight == 1.0:
        return None
    chosen = files[:: max(1, len(files) // BACKGROUND_FILES)][:BACKGROUND_FILES]  # each file is decoded whole
    per_file = max(1, BACKGROUND_FRAMES // len(chosen))
    frames = torch.cat([load_frames([path])[:: 7][:per_file] for path in chosen])
    background = background_frame(frames_to_tensor(frames[:BACKGROUND_FRAMES]))
    logger.image("background", (background.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy(), 0)
    return background.to(device)


def _train_epoch(vae, optimizer, stream, epoch, state, logger, config, device, background=None) -> dict:
    vae.train()
    start, frames_seen, last = time.perf_counter(), 0, {}
    for batch in stream.epoch(epoch):
        x = frames_to_tensor(torch.from_numpy(batch).to(device, non_blocking=True))
        with mixed_precision(config.amp, device):
            terms = vae.loss(x, config.kl_tolerance, config.recon_cutoff, background, config.foreground_weight)
        check_finite(terms["loss"], "V", vae_dir(config.run_dir))
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        state.step += 1
        frames_seen += len(batch)
        if state.step % config.log_every == 0:
            last = {k: float(v.detach()) for k, v in terms.items()}
            last["frames_per_s"] = frames_seen / (time.perf_counter() - start)
            logger.log(last, state.step)
    if frames_seen == 0:
        raise UserError(f"the training episodes hold fewer frames than one batch ({config.batch_size})")
    last = {k: float(v.detach()) for k, v in terms.items()}
    last["frames_per_s"] = frames_seen / (time.perf_counter() - start)
    last["epoch"] = epoch + 1
    return last
