"""The latent cache: the dataset encoded once by V, in large batches, beside the run.

``RUN/latents/latents.safetensors`` holds per-frame mu and log sigma plus the actions, rewards
and terminations M learns from; ``latents.json`` holds the key (V's weights hash, the dataset
fingerprint and one stamp per episode file). A changed V rebuilds the cache; a changed dataset
re-encodes only its new or rewritten episodes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from envs.episodes import Episode, atomic_write_json, load_episode, load_metadata, seed_of
from envs.errors import CorruptFileError, UserError
from envs.tasks import task_rules
from world_models.checkpoint import load_checkpoint, save_checkpoint
from world_models.data import (
    LatentEpisodes,
    cache_key,
    dataset_files,
    dataset_fingerprint,
    episode_stamp,
    read_cache_key,
)
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

    When V is unchanged, the episodes the existing cache already holds (same file stamp) are
    reused and only new or rewritten ones are encoded: a round of iterative training that adds a
    few hundred episodes to thousands then costs seconds instead of minutes. Each episode is
    encoded on its own, so the result is the same as encoding everything afresh.

    Returns the latents of all episodes (train first, then validation) and the number of
    training episodes.
    """
    train_files, val_files = dataset_files(data_dir, val_fraction)
    files = train_files + val_files
    targets = TargetRules.of(data_dir)
    key = cache_key(vae_weights, files) | {"num_train": len(train_files), "targets": targets.to_dict()}
    directory = latent_dir(run_dir)
    found = read_cache_key(directory)
    if found is not None and {k: found.get(k) for k in key} == key:
        try:
            return _read_cache(directory), len(train_files)
        except CorruptFileError as error:  # a cache can always be rebuilt
            print(f"{error}: encoding the dataset again")
            found = None
    cached = _reusable_episodes(directory, found, key, Path(data_dir))
    latents = _encode_dataset(vae, files, key["episode_stamps"], progress, cached, targets)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latents.json").unlink(missing_ok=True)  # until the new cache is whole
    save_checkpoint(directory, latents.tensors(), {"kind": "latent-cache"}, name="latents")
    atomic_write_json(directory / "latents.json", key)  # written last: it marks the cache complete
    return latents, len(train_files)


def cached_episode_seeds(run_dir: Path) -> list[int]:
    """Seeds of the latent cache's episodes, in its order (train first, then validation)."""
    found = read_cache_key(latent_dir(run_dir)) or {}
    return [seed_of(Path(stamp.split(":")[0])) for stamp in found.get("episode_stamps", [])]


def _reusable_episodes(directory: Path, found: dict | None, key: dict,
                       data_dir: Path) -> dict[str, LatentEpisodes]:
    """The existing cache's episodes by file stamp, if the same V encoded them under the same
    reward and done rules (a cache from before the rules were recorded had the identity ones)."""
    path = directory / "latents.safetensors"
    if found is None or found.get("vae_sha256") != key["vae_sha256"] or not path.exists():
        return {}
    if found.get("targets", TargetRules().to_dict()) != key["targets"]:
        return {}
    stamps = found.get("episode_stamps") or _stamps_of_unchanged_files(found, data_dir)
    if stamps is None:
        return {}
    try:
        old = _read_cache(directory)
    except CorruptFileError:
        return {}
    if old.num_episodes != len(stamps):
        return {}
    return {stamp: old.episode(e) for e, stamp in enumerate(stamps)}


def _stamps_of_unchanged_files(found: dict, data_dir: Path) -> list[str] | None:
    """A cache written before per-episode stamps were kept: its files' stamps, if none changed."""
    paths = [data_dir / name for name in found.get("episodes", [])]
    if not paths or not all(p.exists() for p in paths):
        return None
    stamps = [episode_stamp(p) for p in paths]
    return stamps if dataset_fingerprint(stamps) == found.get("dataset") else None


def _encode_dataset(vae: ConvVAE, files: list[Path], stamps: list[str], progress: bool,
                    cached: dict[str, LatentEpisodes], targets: TargetRules) -> LatentEpisodes:
    from world_models.training import progress_bar

    bar = progress_bar("encode", len(files), enabled=progress)
    episodes = []
    for path, stamp in zip(files, stamps, strict=True):  # already checked readable by dataset_files
        episodes.append(cached[stamp] if stamp in cached else _encode_episode(vae, path, targets))
        bar.advance()
    bar.close()
    return LatentEpisodes.concat(episodes)


@dataclass(frozen=True)
class TargetRules:
    """What M learns as reward and episode end, from the dataset's env (``envs.tasks``)."""

    clip_rewards: bool = False
    """M's reward target is sign(r)."""
    life_loss_ends: bool = False
    """M's done target is set where the episode lost a life as well as where it terminated."""

    @classmethod
    def of(cls, data_dir: Path) -> TargetRules:
        rules = task_rules(load_metadata(data_dir)["env_id"])
        return cls(clip_rewards=rules.clip_rewards, life_loss_ends=rules.life_loss_ends)

    def to_dict(self) -> dict:
        return asdict(self)

    def rewards(self, episode: Episode) -> torch.Tensor:
        rewards = torch.from_numpy(episode.rewards)
        return torch.sign(rewards) if self.clip_rewards else rewards

    def terminated(self, episode: Episode) -> torch.Tensor:
        ended = torch.from_numpy(episode.terminated)
        if self.life_loss_ends and episode.life_lost is not None:
            ended = ended | torch.from_numpy(episode.life_lost)
        return ended


def _encode_episode(vae: ConvVAE, path: Path, targets: TargetRules = TargetRules()) -> LatentEpisodes:
    """One episode file encoded by V, as a one-episode ``LatentEpisodes`` with M's targets."""
    episode = load_episode(path)
    mu, log_sigma = encode_frames(vae, torch.from_numpy(episode.observations))
    parts = {"mu": [mu], "log_sigma": [log_sigma], "actions": [torch.from_numpy(episode.actions)],
             "rewards": [targets.rewards(episode)], "terminated": [targets.terminated(episode)]}
    return LatentEpisodes.from_parts(parts, [len(episode)])


def load_latent_cache(run_dir: Path) -> LatentEpisodes:
    """The run's latent cache as it is (no rebuild): used to seed dreams at evaluation time."""
    path = latent_dir(run_dir) / "latents.safetensors"
    if not path.exists():
        raise UserError(f"{run_dir} has no latent cache: train M with `python train.py mdnrnn --run-dir {run_dir}`")
    return _read_cache(latent_dir(run_dir))


def _read_cache(directory: Path) -> LatentEpisodes:
    """The cache's tensors; CorruptFileError (one line naming the file) when it cannot be read."""
    tensors, _ = load_checkpoint(directory, name="latents")
    try:
        return LatentEpisodes(**tensors)
    except TypeError:  # other tensors than a latent cache's
        raise CorruptFileError(f"corrupt latent cache {directory / 'latents.safetensors'}: "
                               f"unexpected tensors {sorted(tensors)[:4]}") from None
