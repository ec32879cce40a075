"""CMA-ES trainer: it optimises, resumes bit for bit without pickle, and saves the best controller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agents.cmaes import STATE_NAME, CMAESConfig, CMAESTrainer, load_controller
from agents.controller import ControllerSpec
from envs.errors import ConfigMismatchError, CorruptFileError
from world_models.checkpoint import load_checkpoint, save_checkpoint

SPEC = ControllerSpec(feature_dim=3, action_dim=2, discrete=False)  # 8 parameters
TPA_SPEC = ControllerSpec(feature_dim=299, action_dim=1, discrete=False)  # 300: pycma switches to TPA


def target_for(spec: ControllerSpec) -> torch.Tensor:
    return torch.linspace(-0.5, 0.5, spec.num_params)


class ToyFitness:
    """-||params - target||^2 per row plus seeded noise; records every population it scores."""

    def __init__(self, spec: ControllerSpec, noise: float = 0.01) -> None:
        self.target = target_for(spec)
        self.noise = noise
        self.calls: list[tuple[torch.Tensor, int]] = []

    def __call__(self, params: torch.Tensor, seed: int) -> torch.Tensor:
        self.calls.append((params.clone(), seed))
        generator = torch.Generator().manual_seed(seed)
        noise = self.noise * torch.randn(len(params), generator=generator)
        return -((params - self.target) ** 2).sum(dim=1) + noise


def test_improves_toward_target(tmp_path: Path) -> None:
    fitness = ToyFitness(SPEC)
    config = CMAESConfig(population=16, generations=30, sigma0=0.1, eval_every=10, rollouts=4, eval_rollouts=4)
    trainer = CMAESTrainer(SPEC, config, tmp_path)
    records: list[dict] = []
    summary = trainer.train(fitness, log=records.append)

    start_distance = float(target_for(SPEC).norm())  # the search starts at zero
    final_distance = float(torch.linalg.vector_norm(torch.as_tensor(trainer.mean) - target_for(SPEC)))
    assert final_distance < 0.2 * start_distance
    assert records[-1]["best"] > records[0]["best"] + 0.5 * start_distance**2
    assert summary["generation"] == 30 and summary["best_fitness"] > -0.05 * start_distance**2


def run_in_pieces(spec: ControllerSpec, run_dir: Path, stops: list[int], generations: int,
                  population: int = 8) -> tuple[CMAESTrainer, ToyFitness]:
    """Train to each stop with a NEW trainer on the same run dir, as after an interruption."""
    fitness = ToyFitness(spec)
    config = CMAESConfig(population=population, generations=generations, eval_every=2, rollouts=4, eval_rollouts=8)
    for stop in stops:
        trainer = CMAESTrainer(spec, config, run_dir)
        trainer.train(fitness, generations=stop)
    return trainer, fitness


@pytest.mark.parametrize("spec", [SPEC, TPA_SPEC], ids=["csa", "tpa"])
def test_resume_equals_uninterrupted(tmp_path: Path, spec: ControllerSpec) -> None:
    whole, whole_fitness = run_in_pieces(spec, tmp_path / "whole", [6], generations=6)
    split, split_fitness = run_in_pieces(spec, tmp_path / "split", [3, 6], generations=6)

    assert split.resumed and not whole.resumed
    # Every population asked for (generations 4-6 come from the restored state) and every seed.
    assert len(whole_fitness.calls) == len(split_fitness.calls)
    for (a, seed_a), (b, seed_b) in zip(whole_fitness.calls, split_fitness.calls, strict=True):
        assert seed_a == seed_b and torch.equal(a, b)
    assert np.array_equal(whole.mean, split.mean)
    assert whole.sigma == split.sigma
    assert np.array_equal(whole.es.sm.C, split.es.sm.C)
    controller_a, info_a = load_controller(tmp_path / "whole")
    controller_b, info_b = load_controller(tmp_path / "split")
    assert torch.equal(controller_a.to_vector(), controller_b.to_vector())
    assert info_a["fitness"] == info_b["fitness"] and info_a["generation"] == info_b["generation"]
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    assert strip(whole.history) == strip(split.history)


def test_saved_controller_is_best_member(tmp_path: Path) -> None:
    fitness = ToyFitness(SPEC, noise=0.0)
    config = CMAESConfig(population=8, generations=1, eval_every=1, eval_mean=False, rollouts=4, eval_rollouts=4)
    CMAESTrainer(SPEC, config, tmp_path).train(fitness)

    population, _ = fitness.calls[0]
    scores = -((population - target_for(SPEC)) ** 2).sum(dim=1)
    controller, info = load_controller(tmp_path)
    assert torch.equal(controller.to_vector(), population[scores.argmax()])
    assert info["generation"] == 1 and info["source"] == "best"
    assert info["fitness"] == pytest.approx(float(scores.max()))
    assert info["spec"] == SPEC.to_dict()
    # Re-evaluation called `fitness` on the one candidate, tiled to reach eval_rollouts, with its own seed.
    params, seed = fitness.calls[1]
    assert params.shape == (1, SPEC.num_params) and seed != fitness.calls[0][1]


def test_reevaluation_tiles_candidates_without_eval_fitness(tmp_path: Path) -> None:
    fitness = ToyFitness(SPEC)
    config = CMAESConfig(population=8, generations=1, eval_every=1, rollouts=4, eval_rollouts=10)
    CMAESTrainer(SPEC, config, tmp_path).train(fitness)
    params, _ = fitness.calls[1]
    assert params.shape == (3 * 2, SPEC.num_params)  # ceil(10 / 4) copies of [best member, mean]
    assert torch.equal(params[:2], params[2:4])


def test_state_from_other_spec_is_config_mismatch(tmp_path: Path) -> None:
    config = CMAESConfig(population=8, generations=1, rollouts=4, eval_rollouts=4)
    CMAESTrainer(SPEC, config, tmp_path).train(ToyFitness(SPEC))
    other = ControllerSpec(feature_dim=4, action_dim=2, discrete=False)
    with pytest.raises(ConfigMismatchError) as caught:
        CMAESTrainer(other, config, tmp_path)
    assert "\n" not in str(caught.value) and "8 parameters" in str(caught.value)
    with pytest.raises(ConfigMismatchError):  # same controller, other search settings
        CMAESTrainer(SPEC, CMAESConfig(population=12, generations=1, rollouts=4, eval_rollouts=4), tmp_path)


def test_truncated_state_is_corrupt(tmp_path: Path) -> None:
    config = CMAESConfig(population=8, generations=1, rollouts=4, eval_rollouts=4)
    CMAESTrainer(SPEC, config, tmp_path).train(ToyFitness(SPEC))
    weights = tmp_path / f"{STATE_NAME}.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptFileError):
        CMAESTrainer(SPEC, config, tmp_path)


def test_state_whose_tensors_and_config_disagree_is_corrupt(tmp_path: Path) -> None:
    config = CMAESConfig(population=8, generations=1, rollouts=4, eval_rollouts=4)
    CMAESTrainer(SPEC, config, tmp_path).train(ToyFitness(SPEC))
    tensors, state = load_checkpoint(tmp_path, name=STATE_NAME)
    state["generation"] = 2  # as if the config were from a later generation than the tensors
    save_checkpoint(tmp_path, tensors, state, name=STATE_NAME)
    with pytest.raises(CorruptFileError, match="different generations"):
        CMAESTrainer(SPEC, config, tmp_path)


def test_log_records(tmp_path: Path) -> None:
    config = CMAESConfig(population=8, generations=4, eval_every=2, rollouts=4, eval_rollouts=4)
    records: list[dict] = []
    CMAESTrainer(SPEC, config, tmp_path).train(ToyFitness(SPEC, noise=0.5), log=records.append)

    assert [r["generation"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert r["best"] >= r["mean"] >= r["worst"] and r["best"] > r["worst"]
        assert r["sigma"] > 0 and r["seconds"] >= 0 and r["evaluations"] == 8 * r["generation"]
    assert {"eval_best", "eval_mean", "best_ever"} <= set(records[1]) and "eval_best" not in records[0]
