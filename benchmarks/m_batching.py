"""M training throughput: batches of similar-length chunks vs. every chunk padded to seq_len.

    python benchmarks/m_batching.py [--run-dir RUN] [--seq-len 200]

Both ways train the same M on the same chunks of one epoch (``epoch_chunks``) and count only real
(unpadded) sequence-steps. "padded" is the earlier batching: chunks in random order, every batch
padded to ``seq_len``; "bucketed" is what ``train.py mdnrnn`` does now (``length_buckets``: each
batch padded to its own longest chunk). With ``--run-dir`` the run's latent cache is used,
otherwise synthetic latents whose episode lengths follow a TakeCover run (mostly random-policy
deaths at ~150-300 steps, some agent episodes up to 2100). The final line is JSON with the ratio.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world_models.data import LatentEpisodes  # noqa: E402
from world_models.mdnrnn import MDNRNN  # noqa: E402
from world_models.train_mdnrnn import epoch_chunks, length_buckets, make_batch  # noqa: E402


@dataclass
class Args:
    run_dir: Path | None = None
    """Run whose latent cache (RUN/latents) to train on; default: synthetic TakeCover-like lengths."""
    seq_len: int = 200
    batch_size: int = 32
    hidden: int = 256
    z_dim: int = 64
    max_steps: int = 60_000
    """Real sequence-steps trained per way (the first chunks of the epoch up to this many)."""


def synthetic_latents(z_dim: int, generator: torch.Generator) -> LatentEpisodes:
    random_lengths = torch.randint(120, 320, (400,), generator=generator)
    agent_lengths = torch.randint(300, 2100, (60,), generator=generator)
    lengths = torch.cat([random_lengths, agent_lengths]).tolist()
    parts = {"mu": [], "log_sigma": [], "actions": [], "rewards": [], "terminated": []}
    for length in lengths:
        parts["mu"].append(torch.randn(length + 1, z_dim, generator=generator))
        parts["log_sigma"].append(torch.full((length + 1, z_dim), -2.0))
        parts["actions"].append(torch.randint(0, 3, (length,), generator=generator))
        parts["rewards"].append(torch.ones(length))
        parts["terminated"].append(torch.arange(length) == length - 1)
    return LatentEpisodes.from_parts(parts, lengths)


def padded_batches(chunks: torch.Tensor, batch_size: int, seq_len: int):
    return [(group, seq_len) for group in torch.split(chunks, batch_size)]


def bucketed_batches(chunks: torch.Tensor, batch_size: int, generator: torch.Generator):
    return [(group, int(group[:, 2].max())) for group in length_buckets(chunks, batch_size, generator)]


def steps_per_s(latents: LatentEpisodes, plan, args: Args) -> float:
    torch.manual_seed(0)
    model = MDNRNN(latents.mu.shape[-1], 3, True, args.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    steps, start = 0, time.perf_counter()
    for group, width in plan:
        batch = make_batch(latents, group, width, generator)
        out, _ = model(batch.z, batch.actions)
        loss = model.losses(out, batch.z_next, batch.rewards, batch.terminated, batch.mask)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += int(batch.mask.sum())
    return steps / (time.perf_counter() - start)


def main(args: Args) -> dict:
    generator = torch.Generator().manual_seed(0)
    if args.run_dir is not None:
        latents = LatentEpisodes(**load_file(str(args.run_dir / "latents" / "latents.safetensors")))
    else:
        latents = synthetic_latents(args.z_dim, generator)
    chunks = epoch_chunks(latents, args.seq_len, generator)
    chunks = chunks[: int((chunks[:, 2].cumsum(0) <= args.max_steps).sum())]  # same chunks both ways
    padded = steps_per_s(latents, padded_batches(chunks, args.batch_size, args.seq_len), args)
    bucketed = steps_per_s(latents, bucketed_batches(chunks, args.batch_size, generator), args)
    result = {"data": str(args.run_dir or "synthetic"), "seq_len": args.seq_len, "chunks": len(chunks),
              "padded_steps_per_s": round(padded, 1), "bucketed_steps_per_s": round(bucketed, 1),
              "bucketed_over_padded": round(bucketed / padded, 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
