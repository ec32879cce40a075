"""Build docs/images/overview.png: real frames, V's reconstructions of them, and dream frames.

    python docs/make_overview.py [--run-dir pretrained/doom-take-cover] [--seed 1000000]

Plays one real VizDoom TakeCover episode with the shipped agent, decodes V's latent of a few of
its frames, then plays one dream of the agent's M (decoded through V) and stacks three rows:
the real frames, V's reconstructions under them, and dream frames. 64x64 frames are upscaled
by nearest neighbour so they are visible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from agents.agent import load_agent
from agents.evaluate import load_start_latents
from envs.collect import run_episode
from envs.make import make_env
from world_models.dream import DreamConfig, DreamVecEnv

ROWS = ("real frame", "V's reconstruction", "dream (M + V)")


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def real_and_reconstructed(run_dir: Path, seed: int, steps: list[int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Frames of one real episode at ``steps`` (clipped to its length) and V's decoding of them."""
    agent, info = load_agent(run_dir)
    env = make_env(info["env_id"])
    episode = run_episode(env, agent.policy(), seed)
    env.close()
    index = [min(step, len(episode.observations) - 1) for step in steps]
    frames = episode.observations[index]
    return frames, _to_uint8(agent.vae.decode(agent.encode(frames))), len(episode.observations) - 1


@torch.no_grad()
def dream_frames(run_dir: Path, seed: int, steps: list[int]) -> np.ndarray:
    """Frames of one dream of the agent's M, decoded through V, at ``steps`` (clipped to its length)."""
    agent, info = load_agent(run_dir)
    start_mu, start_log_sigma = load_start_latents(run_dir, "cpu")
    dream = DreamVecEnv(agent.mdnrnn, start_mu, start_log_sigma, 1, DreamConfig(**info.get("dream", {})),
                        vae=agent.vae, seed=seed)
    features = dream.reset_tensor(seed)
    frames, done = [dream.render()[0]], False
    while not done and len(frames) <= max(steps):
        features, _, terminated, truncated = dream.step_tensor(agent.controller.act(features))
        frames.append(dream.render()[0])
        done = bool(terminated[0] or truncated[0])
    return np.stack([frames[min(step, len(frames) - 1)] for step in steps])


def label(text: str, height: int, width: int) -> np.ndarray:
    """A white tile with ``text`` written on it, as (height, width, 3) uint8 RGB."""
    tile = np.full((height, width, 3), 255, dtype=np.uint8)
    cv2.putText(tile, text, (8, height // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def compose(rows: list[np.ndarray], scale: int, gap: int = 4, label_width: int = 170) -> np.ndarray:
    """Rows of (N, 64, 64, 3) frames -> one labelled RGB image, frames upscaled ``scale`` x (nearest)."""
    size = 64 * scale
    lines = []
    for name, frames in zip(ROWS, rows, strict=True):
        tiles = [label(name, size, label_width)]
        for frame in frames:
            tiles += [frame.repeat(scale, axis=0).repeat(scale, axis=1),
                      np.full((size, gap, 3), 255, dtype=np.uint8)]
        lines += [np.concatenate(tiles[:-1], axis=1)]
        lines += [np.full((gap, lines[-1].shape[1], 3), 255, dtype=np.uint8)]
    return np.concatenate(lines[:-1], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("pretrained/doom-take-cover"))
    parser.add_argument("--seed", type=int, default=1_000_000, help="seed of the real episode and the dream")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 60, 120, 180, 240])
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/images/overview.png"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    real, reconstructed, length = real_and_reconstructed(args.run_dir, args.seed, args.steps)
    dream = dream_frames(args.run_dir, args.seed, args.steps)
    image = compose([real, reconstructed, dream], args.scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB; real episode of {length} steps, "
          f"frames at steps {args.steps})")


if __name__ == "__main__":
    main()
