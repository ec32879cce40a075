"""Dream steps/s: a CMA-ES generation's 64 x 16 rollouts stepped as one batched program vs one
rollout at a time, with the same M and the same (linear) controllers.

    python benchmarks/dream.py

For M hidden 256 and 512 and z 32 and 64. The one-at-a-time figure is measured on a sample of
the rollouts (its rate per dream step does not depend on how many are run). Both ways are
measured in this run; the final line is JSON with every row's ratio and ``ratio``, the smallest.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch
import tyro

from agents.controller import ControllerPopulation, ControllerSpec
from agents.fitness import population_policy
from world_models.dream import DreamConfig, DreamVecEnv
from world_models.mdnrnn import MDNRNN


@dataclass
class Args:
    population: int = 64
    """Controllers (a CMA-ES generation)."""
    rollouts: int = 16
    """Dreams per controller."""
    steps: int = 100
    """Dream steps per measurement."""
    sequential_rollouts: int = 4
    """Rollouts stepped one at a time (a sample of the population's)."""
    hiddens: list[int] = field(default_factory=lambda: [256, 512])
    """M's LSTM sizes to measure."""
    z_dims: list[int] = field(default_factory=lambda: [32, 64])
    """Latent sizes to measure."""
    actions: int = 3
    """Discrete actions (TakeCover: 3)."""


def make_model(z_dim: int, hidden: int, actions: int) -> MDNRNN:
    torch.manual_seed(0)
    model = MDNRNN(z_dim, actions, True, hidden)
    with torch.no_grad():
        model.done_head.bias.fill_(-30.0)  # no episode ends: every step is a full step
    return model.eval()


def step_rate(model, population: ControllerPopulation, rollouts: int, steps: int, z_dim: int) -> float:
    config = DreamConfig(max_episode_steps=10**9)
    starts = torch.randn(100, z_dim)
    dream = DreamVecEnv(model, starts, torch.full_like(starts, -2.0), population.size * rollouts, config, seed=0)
    act = population_policy(population, rollouts)
    features = dream.reset_tensor(0)
    index = torch.arange(dream.num_envs)
    start = time.perf_counter()
    for _ in range(steps):
        features, *_ = dream.step_tensor(act(features, index))
    return dream.num_envs * steps / (time.perf_counter() - start)


def measure(args: Args, hidden: int, z_dim: int) -> dict:
    model = make_model(z_dim, hidden, args.actions)
    spec = ControllerSpec(model.feature_dim(), args.actions, discrete=True)
    params = 0.1 * torch.randn(args.population, spec.num_params, generator=torch.Generator().manual_seed(0))
    batched = step_rate(model, ControllerPopulation(spec, params), args.rollouts, args.steps, z_dim)
    one_at_a_time_steps, seconds = 0, 0.0
    for member in range(args.sequential_rollouts):
        single = ControllerPopulation(spec, params[member : member + 1])
        rate = step_rate(model, single, 1, args.steps, z_dim)
        one_at_a_time_steps += args.steps
        seconds += args.steps / rate
    sequential = one_at_a_time_steps / seconds
    return {"hidden": hidden, "z": z_dim, "batched_steps_per_s": round(batched), "one_at_a_time_steps_per_s":
            round(sequential), "ratio": round(batched / sequential, 1)}


def main(args: Args) -> dict:
    rows = [measure(args, hidden, z_dim) for hidden in args.hiddens for z_dim in args.z_dims]
    for row in rows:
        print(row)
    result = {"population": args.population, "rollouts": args.rollouts, "results": rows,
              "ratio": min(r["ratio"] for r in rows)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
