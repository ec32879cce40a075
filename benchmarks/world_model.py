"""World-model training throughput, each figure against its alternative, both measured in one run.

    python benchmarks/world_model.py [--data DIR]

V:  training frames/s reading batches from the on-disk episodes (``FrameStream``, what
    ``train.py vae`` does) vs from an in-memory uint8 tensor of the same frames; same model,
    same batch size.
M:  training sequence-steps/s from the latent cache (what ``train.py mdnrnn`` does) vs
    re-encoding every batch's frames with V (what the public code does).
The final line is JSON with every figure and the two ratios.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from envs.collect import collect
from envs.episodes import load_episode, load_metadata, require_episodes
from world_models.data import FrameStream, LatentEpisodes, load_frames
from world_models.latents import encode_frames
from world_models.mdnrnn import MDNRNN
from world_models.train_mdnrnn import MDNRNNConfig, batches
from world_models.vae import ConvVAE, frames_to_tensor


@dataclass
class Args:
    data: Path | None = None
    """Episode directory; default: collect ``--episodes`` episodes of ``--env`` into a temp dir."""
    env: str = "VizdoomTakeCover-v1"
    """Env to collect from when no ``--data`` is given."""
    episodes: int = 12
    """Episodes to collect (held random actions) when no ``--data`` is given."""
    workers: int = 2
    """Collection worker processes."""
    batch_size: int = 100
    """V's batch size."""
    z_dim: int = 64
    """Latent size of V and M."""
    v_steps: int = 40
    """V training steps per measurement (after 2 warm-up steps)."""
    hidden: int = 256
    """M's LSTM size."""
    seq_len: int = 100
    """M's training sequence length."""
    m_batch: int = 16
    """M's batch size."""
    m_steps: int = 6
    """M training steps per measurement."""


def v_step(vae: ConvVAE, optimizer, frames: torch.Tensor) -> None:
    loss = vae.loss(frames_to_tensor(frames))["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def v_rate(batches_iter, z_dim: int, steps: int) -> float:
    torch.manual_seed(0)
    vae = ConvVAE(z_dim)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-4)
    frames, start = 0, None
    for i, batch in enumerate(batches_iter):
        if i == 2:  # warm-up steps excluded
            start, frames = time.perf_counter(), 0
        batch = torch.from_numpy(batch) if not isinstance(batch, torch.Tensor) else batch
        v_step(vae, optimizer, batch)
        frames += len(batch)
        if i + 1 == steps + 2:
            break
    return frames / (time.perf_counter() - start)


def disk_batches(files, batch_size):
    epoch = 0
    while True:
        yield from FrameStream(files, batch_size, seed=0).epoch(epoch)
        epoch += 1


def memory_batches(frames: torch.Tensor, batch_size: int):
    generator = torch.Generator().manual_seed(0)
    while True:
        order = torch.randperm(len(frames), generator=generator)
        for start in range(0, len(frames) - batch_size + 1, batch_size):
            yield frames[order[start : start + batch_size]]


def latents_for(files, vae) -> LatentEpisodes:
    parts = {name: [] for name in ("mu", "log_sigma", "actions", "rewards", "terminated")}
    lengths = []
    for path in files:
        episode = load_episode(path)
        mu, log_sigma = encode_frames(vae, torch.from_numpy(episode.observations))
        for name, value in (("mu", mu), ("log_sigma", log_sigma), ("actions", torch.from_numpy(episode.actions)),
                            ("rewards", torch.from_numpy(episode.rewards)),
                            ("terminated", torch.from_numpy(episode.terminated))):
            parts[name].append(value)
        lengths.append(len(episode))
    return LatentEpisodes.from_parts(parts, lengths)


def m_rates(files, space: dict, args: Args) -> tuple[float, float]:
    vae = ConvVAE(args.z_dim).eval()
    latents = latents_for(files, vae)
    frames = load_frames(files)
    discrete = space["type"] == "discrete"  # the dataset's action space (metadata.json)
    model = MDNRNN(args.z_dim, space["n"] if discrete else space["shape"][0], discrete, args.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    config = MDNRNNConfig(run_dir=Path("."), seq_len=args.seq_len, batch_size=args.m_batch)

    def train(reencode: bool) -> float:
        generator = torch.Generator().manual_seed(0)
        steps, start = 0, time.perf_counter()
        for i, batch in enumerate(batches(latents, config, generator, "cpu")):
            if reencode:  # the public code's way: every frame of the batch through V again
                with torch.no_grad():
                    idx = _frame_indices(latents, batch)
                    mu, log_sigma = vae.encode(frames_to_tensor(frames[idx.flatten()]))
                    z = (mu + log_sigma.exp() * torch.randn_like(mu)).view(*idx.shape, -1)
                batch.z, batch.z_next = z[:, :-1], z[:, 1:]
            out, _ = model(batch.z, batch.actions)
            loss = model.losses(out, batch.z_next, batch.rewards, batch.terminated, batch.mask)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += int(batch.mask.sum())
            if i + 1 == args.m_steps:
                break
        return steps / (time.perf_counter() - start)

    return train(False), train(True)


def _frame_indices(latents: LatentEpisodes, batch) -> torch.Tensor:
    # the frames a batch covers: nearest rows of mu (exact indices are irrelevant for timing)
    b, t = batch.z.shape[:2]
    return torch.randint(len(latents.mu), (b, t + 1))


def main(args: Args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            collect(args.env, args.episodes, data, workers=args.workers, policy="held", progress=False)
        files = require_episodes(data)
        frames = load_frames(files)
        disk = v_rate(disk_batches(files, args.batch_size), args.z_dim, args.v_steps)
        memory = v_rate(memory_batches(frames, args.batch_size), args.z_dim, args.v_steps)
        cache, reencode = m_rates(files, load_metadata(data)["action_space"], args)
    result = {
        "v_disk_frames_per_s": round(disk, 1), "v_memory_frames_per_s": round(memory, 1),
        "v_disk_over_memory_ratio": round(disk / memory, 3),
        "m_cache_steps_per_s": round(cache, 1), "m_reencode_steps_per_s": round(reencode, 1),
        "m_cache_over_reencode_ratio": round(cache / reencode, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
