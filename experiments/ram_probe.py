"""Does V's z know where the objects are? Probes from V's mu to positions read from the emulator's RAM.

    python experiments/ram_probe.py --run-dir runs/pong

The held-out moving-pixel error (V's ``val_moving_mse``) says V draws the ball badly; it cannot say
whether z still knows where the ball is. This plays ``steps`` steps of a uniform random policy in the
run's game (seeds apart from training and evaluation), encodes each frame with the run's V, and fits
two probes from mu to each annotated object's RAM position (``envs/atari_ram.py``): ridge regression
(linear, the S-RL Toolbox's ground-truth regression) and a small MLP (position may be a nonlinear
function of z). Each is scored by R^2 on the last ``test_fraction`` of the steps (whole later episodes,
never seen by the probe): ~1 means z locates the object, ~0 that it does not. RAM bytes of an object
off screen (Pong's ball between points) are kept: they lower every probe alike. Results go to
``--out`` (JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from envs.atari_ram import RAM_OBJECTS, game_of, ram_objects
from envs.episodes import atomic_write_json
from envs.make import make_env
from world_models.train_vae import load_vae
from world_models.vae import frames_to_tensor


@dataclass
class Args:
    run_dir: Path
    """A run with a trained V (``RUN/vae``) of an annotated Atari game."""
    steps: int = 6000
    """Random-policy steps to play, probe's training and test steps together."""
    test_fraction: float = 0.25
    """The last part of the steps, held out to score the probes."""
    seed: int = 3_000_000
    """The probe episodes' first seed: apart from training (0+) and evaluation (1,000,000+) seeds."""
    out: Path | None = None
    """Write the JSON here; default: ``RUN/experiments/ram_probe.json``."""


def play(env_id: str, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, 64, 64, 3) uint8 frames and (steps, objects) RAM positions of a uniform random policy."""
    game, env = game_of(env_id), make_env(env_id)
    frames, positions, episode = [], [], 0
    observation, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    while len(frames) < steps:
        frames.append(observation)
        positions.append(ram_objects(env, game))
        observation, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            episode += 1
            observation, _ = env.reset(seed=seed + episode)
    env.close()
    return np.stack(frames), np.stack(positions)


@torch.no_grad()
def encode(run_dir: Path, frames: np.ndarray) -> torch.Tensor:
    """V's mu (steps, z_dim) of each frame."""
    vae, _ = load_vae(run_dir)
    batches = torch.from_numpy(frames).split(500)
    return torch.cat([vae.encode(frames_to_tensor(batch))[0] for batch in batches])


def r2(predicted: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Held-out R^2 per column: 1 - squared error / the targets' variance around their own mean."""
    residual = (predicted - target).pow(2).sum(0)
    total = (target - target.mean(0)).pow(2).sum(0).clamp_min(1e-12)
    return (1 - residual / total).tolist()


def ridge_probe(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, penalty: float = 1e-2) -> torch.Tensor:
    """Predictions for x_test of the ridge regression y ~ x (features standardised on x, with a bias)."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    design = torch.nn.functional.pad((x - mean) / std, (0, 1), value=1.0).double()
    gram = design.T @ design + penalty * len(x) * torch.eye(design.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, design.T @ y.double())
    test = torch.nn.functional.pad((x_test - mean) / std, (0, 1), value=1.0).double()
    return (test @ weights).float()


def mlp_probe(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, epochs: int = 500, seed: int = 0) -> torch.Tensor:
    """Predictions for x_test of a 2x64 tanh MLP fitted to y ~ x (full batch Adam, standardised data)."""
    torch.manual_seed(seed)
    x_mean, x_std = x.mean(0), x.std(0).clamp_min(1e-6)
    y_mean, y_std = y.mean(0), y.std(0).clamp_min(1e-6)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                              torch.nn.Tanh(), torch.nn.Linear(64, y.shape[1]))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    inputs, targets = (x - x_mean) / x_std, (y - y_mean) / y_std
    for _ in range(epochs):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(inputs), targets).backward()
        optimizer.step()
    with torch.no_grad():
        return net((x_test - x_mean) / x_std) * y_std + y_mean


def probe(z: torch.Tensor, positions: torch.Tensor, test_fraction: float) -> dict[str, list[float]]:
    """Held-out R^2 of both probes per object, trained on the first steps and scored on the rest."""
    split = int(len(z) * (1 - test_fraction))
    x, y, x_test, y_test = z[:split], positions[:split], z[split:], positions[split:]
    return {"ridge": r2(ridge_probe(x, y, x_test), y_test), "mlp": r2(mlp_probe(x, y, x_test), y_test)}


def vae_settings(run_dir: Path, config: dict) -> dict:
    """What V was trained with: its size, and the loss settings of ``RUN/config_vae.json`` when kept."""
    path = run_dir / "config_vae.json"
    training = json.loads(path.read_text()) if path.exists() else {}
    return {"z_dim": config["z_dim"], **{key: training.get(key) for key in ("epochs", "foreground_weight",
                                                                           "recon_cutoff")}}


def main(args: Args) -> dict:
    torch.set_num_threads(1)
    _, config = load_vae(args.run_dir)
    frames, positions = play(config["env_id"], args.steps, args.seed)
    fits = probe(encode(args.run_dir, frames), torch.from_numpy(positions), args.test_fraction)
    names = list(RAM_OBJECTS[game_of(config["env_id"])])
    result = {"what": "held-out R^2 of probes from V's mu to RAM object positions", "run_dir": str(args.run_dir),
              "env_id": config["env_id"], "steps": args.steps, "test_fraction": args.test_fraction,
              "seed": args.seed, "vae": vae_settings(Path(args.run_dir), config),
              "r2": {name: {kind: round(fits[kind][i], 3) for kind in fits} for i, name in enumerate(names)}}
    out = args.out or Path(args.run_dir) / "experiments" / "ram_probe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(" ".join(f"{name}: ridge {fit['ridge']:.2f} mlp {fit['mlp']:.2f}" for name, fit in result["r2"].items()))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
