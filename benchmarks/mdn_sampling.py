"""Drawing z_{t+1} from M's mixture, as the dream does every step: one component per latent
dimension by inverse CDF (``MDNRNN.sample``) vs ``torch.multinomial`` of the softmax (the way
it was drawn before), then the dream step as a whole with each.

    python benchmarks/mdn_sampling.py

A CMA-ES generation steps 64 x 16 = 1024 dreams with z 64 and 5 components: 65,536 mixtures per
step. Final line: JSON with both ratios.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from unittest import mock

import torch
import torch.nn.functional as F
import tyro

# a sibling script: Python puts a script's own folder (benchmarks/) first on sys.path
from dream import make_model, step_rate

from agents.controller import ControllerPopulation, ControllerSpec
from world_models import mdnrnn


@dataclass
class Args:
    dreams: int = 1024
    """Dreams stepped together (a CMA-ES generation: 64 x 16)."""
    population: int = 64
    """Controllers among the dreams (each plays dreams / population of them)."""
    z_dim: int = 64
    """Latent size: mixtures drawn per dream and step."""
    hidden: int = 256
    """M's LSTM size (the dream-step measurement)."""
    mixtures: int = 5
    """Mixture components per latent dimension."""
    repeats: int = 100
    """Timed calls (component draws or dream steps) per way."""


def multinomial_component(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The previous way: softmax, then ``torch.multinomial`` over the flattened mixtures."""
    probs = F.softmax(logits, dim=-1)
    k = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return k.view(*probs.shape[:-1], 1)


def seconds_per_call(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def dream_step_seconds(args: Args) -> float:
    """Seconds per step of ``args.dreams`` dreams, timed by ``benchmarks/dream.py``."""
    model = make_model(args.z_dim, args.hidden, 3)
    spec = ControllerSpec(model.feature_dim(), 3, discrete=True)
    params = 0.1 * torch.randn(args.population, spec.num_params, generator=torch.Generator().manual_seed(0))
    population = ControllerPopulation(spec, params)
    rollouts = max(1, args.dreams // args.population)
    return population.size * rollouts / step_rate(model, population, rollouts, args.repeats, args.z_dim)


def main(args: Args) -> dict:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(args.dreams, args.z_dim, args.mixtures, generator=generator) / 1.15
    draw = {"inverse_cdf": lambda: mdnrnn._sample_component(logits, generator),
            "multinomial": lambda: multinomial_component(logits, generator)}
    draw_s = {name: seconds_per_call(fn, args.repeats) for name, fn in draw.items()}
    step_s = {"inverse_cdf": dream_step_seconds(args)}
    with mock.patch.object(mdnrnn, "_sample_component", multinomial_component):
        step_s["multinomial"] = dream_step_seconds(args)
    result = {"dreams": args.dreams, "z": args.z_dim, "mixtures": args.mixtures,
              "draw_ms": {k: round(v * 1e3, 2) for k, v in draw_s.items()},
              "dream_step_ms": {k: round(v * 1e3, 2) for k, v in step_s.items()},
              "draw_ratio": round(draw_s["multinomial"] / draw_s["inverse_cdf"], 2),
              "dream_step_ratio": round(step_s["multinomial"] / step_s["inverse_cdf"], 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
