"""The latent cache: the dataset encoded once by V, in large batches, beside the run.

``RUN/latents/latents.safetensors`` holds per-frame mu and log sigma plus the actions, rewards
and terminations M learns from; ``latents.json`` holds the key (V's weights hash and the
dataset fingerprint). A changed V or dataset invalidates the cache and it is rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from envs.episodes import atomic_write_json, load_episode
from envs.errors import UserError
from world_models.checkpoint import save_checkpoint
from world_models.data import LatentEpisodes, cache_key, dataset_files, read_cache_key
from world_models.vae import ConvVAE, frames_to_tensor

LATENT_DIR = "latents"


def latent_dir(run_dir: Path) -> Path:
    return Path(run_dir) / LATENT_DIR


@torch.no_grad()
def encode_frames(vae: ConvVAE, frames: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 64, 64, 3) uint8 -> mu, log_sigma, each (N, z) float32 on the CPU."""
    device = next(vae.parameters()).device
    mus, log_sigmas = [], []
    for start in range(0, len(frames), batch_size):
        mu, log_sigma = vae.encode(frames_to_tensor(frames[start : start + batch_size].to(device)))
        mus.append(mu.float().cpu())
        log_sigmas.append(log_sigma.float().cpu())
    return torch.cat(mus), torch.cat(log_sigmas)


def build_latent_cache(run_dir: Path, data_dir: Path, vae: ConvVAE, vae_weights: Path,
                       val_fraction: float = 0.1, progress: bool = True) -> tuple[LatentEpisodes, int]:
    """Load the cache when its key matches, else encode the dataset and save it.

    Returns the latents of all episodes (train first, then validation) and the number of
    training episodes.
    """
    train_files, val_files = dataset_files(data_dir, val_fraction)
    files = train_files + val_files
    key = cache_key(vae_weights, files) | {"num_train": len(train_files)}
    directory = latent_dir(run_dir)
    found = read_cache_key(directory)
    if found is not None and {k: found.get(k) for k in key} == key:
        tensors = load_file(str(directory / "latents.safetensors"))
        return LatentEpisodes(**tensors), len(train_files)
    latents = _encode_dataset(vae, files, progress)
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory, latents.tensors(), {"kind": "latent-cache"}, name="latents")
    atomic_write_json(directory / "latents.json", key)  # written last: it marks the cache complete
    return latents, len(train_files)


def _encode_dataset(vae: ConvVAE, files: list[Path], progress: bool) -> LatentEpisodes:
    from world_models.training import progress_bar

    parts = {name: [] for name in ("mu", "log_sigma", "actions", "rewards", "terminated")}
    lengths = []
    bar = progress_bar("encode", len(files), enabled=progress)
    for path in files:  # already checked readable by dataset_files
        episode = load_episode(path)
        mu, log_sigma = encode_frames(vae, torch.from_numpy(episode.observations))
        parts["mu"].append(mu)
        parts["log_sigma"].append(log_sigma)
        parts["actions"].append(torch.from_numpy(episode.actions))
        parts["rewards"].append(torch.from_numpy(episode.rewards))
        parts["terminated"].append(torch.from_numpy(episode.terminated))
        lengths.append(len(episode))
        bar.advance()
    bar.close()
    return LatentEpisodes.from_parts(parts, lengths)


def load_latent_cache(run_dir: Path) -> LatentEpisodes:
    """The run's latent cache as it is (no rebuild): used to seed dreams at evaluation time."""
    path = latent_dir(run_dir) / "latents.safetensors"
    if not path.exists():
        raise UserError(f"{run_dir} has no latent cache: train M with `python train.py mdnrnn --run-dir {run_dir}`")
    return LatentEpisodes(**load_file(str(path)))
