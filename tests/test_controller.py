"""Controller C: parameter counts, vector layout, batched population == single controllers."""

from __future__ import annotations

import json

import pytest
import torch

from agents.controller import Controller, ControllerPopulation, ControllerSpec

SPECS = [
    ControllerSpec(feature_dim=7, action_dim=3, discrete=True),
    ControllerSpec(feature_dim=7, action_dim=3, discrete=True, hidden=5),
    ControllerSpec(
        feature_dim=6, action_dim=2, discrete=False, action_low=(-1.0, 0.0), action_high=(1.0, 2.0)
    ),
    ControllerSpec(feature_dim=6, action_dim=2, discrete=False, hidden=4),
]


def test_num_params_formulas() -> None:
    # CarRacing in the paper: z 32 + h 256 -> 3 actions, 867 parameters.
    assert ControllerSpec(feature_dim=32 + 256, action_dim=3, discrete=False).num_params == 867
    assert ControllerSpec(feature_dim=10, action_dim=3, discrete=True).num_params == (10 + 1) * 3
    spec = ControllerSpec(feature_dim=10, action_dim=3, discrete=True, hidden=8)
    assert spec.num_params == (10 + 1) * 8 + (8 + 1) * 3
    for spec in SPECS:
        assert Controller(spec).to_vector().numel() == spec.num_params


@pytest.mark.parametrize("spec", SPECS)
def test_vector_round_trip(spec: ControllerSpec) -> None:
    torch.manual_seed(0)
    v = torch.randn(spec.num_params)
    c = Controller(spec).load_vector(v)
    assert torch.equal(c.to_vector(), v)
    other = Controller(spec).load_vector(c.to_vector())
    x = torch.randn(4, spec.feature_dim)
    assert torch.equal(other(x), c(x))


@pytest.mark.parametrize("spec", SPECS)
def test_population_matches_single_controllers(spec: ControllerSpec) -> None:
    torch.manual_seed(1)
    pop_size, n = 5, 9
    params = torch.randn(pop_size, spec.num_params, dtype=torch.float64)
    features = torch.randn(pop_size, n, spec.feature_dim, dtype=torch.float64)
    pop = ControllerPopulation(spec, params)
    outs, acts = pop.outputs(features), pop.act(features)
    assert outs.shape == (pop_size, n, spec.action_dim)
    assert acts.shape == ((pop_size, n) if spec.discrete else (pop_size, n, spec.action_dim))
    for i in range(pop_size):
        c = Controller(spec).double().load_vector(params[i])
        torch.testing.assert_close(outs[i], c(features[i]), atol=1e-6, rtol=0)
        if spec.discrete:
            assert acts.dtype == torch.long
            assert torch.equal(acts[i], c.act(features[i]))
        else:
            torch.testing.assert_close(acts[i], c.act(features[i]), atol=1e-6, rtol=0)


def test_population_shared_features_broadcast() -> None:
    spec = SPECS[1]
    params = torch.randn(3, spec.num_params)
    features = torch.randn(4, spec.feature_dim)
    pop = ControllerPopulation(spec, params)
    expected = pop.outputs(features.unsqueeze(0).expand(3, -1, -1))
    torch.testing.assert_close(pop.outputs(features), expected)


def test_population_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        ControllerPopulation(SPECS[0], torch.zeros(2, SPECS[0].num_params + 1))


@pytest.mark.parametrize("spec", [s for s in SPECS if not s.discrete])
def test_continuous_actions_within_bounds(spec: ControllerSpec) -> None:
    torch.manual_seed(2)
    # Huge weights saturate the tanh, the hardest case for staying inside the box.
    c = Controller(spec).load_vector(100 * torch.randn(spec.num_params))
    a = c.act(10 * torch.randn(256, spec.feature_dim))
    low = torch.tensor(spec.action_low) if spec.action_low else -torch.ones(spec.action_dim)
    high = torch.tensor(spec.action_high) if spec.action_high else torch.ones(spec.action_dim)
    assert a.dtype == torch.float32 and a.shape == (256, spec.action_dim)
    assert (a >= low).all() and (a <= high).all()
    # The full range is used: saturated outputs reach both ends of every dimension.
    torch.testing.assert_close(a.min(0).values, low, atol=1e-3, rtol=0)
    torch.testing.assert_close(a.max(0).values, high, atol=1e-3, rtol=0)


def test_discrete_act_is_argmax() -> None:
    spec = SPECS[0]
    c = Controller(spec)
    x = torch.randn(20, spec.feature_dim)
    assert torch.equal(c.act(x), c(x).argmax(-1))


@pytest.mark.parametrize("spec", SPECS)
def test_spec_json_round_trip(spec: ControllerSpec) -> None:
    assert ControllerSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        ControllerSpec(feature_dim=4, action_dim=2, discrete=False, action_low=(0.0,), action_high=(1.0,))
    with pytest.raises(ValueError):
        ControllerSpec(
            feature_dim=4, action_dim=2, discrete=True, action_low=(0.0, 0.0), action_high=(1.0, 1.0)
        )


def test_the_dream_undoes_the_done_weight_m_was_trained_with() -> None:
    from pathlib import Path

    from agents.train_controller import ControllerConfig, dream_config

    config = ControllerConfig(run_dir=Path("run"), done_mode="sample")
    assert dream_config(config, {"env_id": "VizdoomTakeCover-v1", "done_weight": 3.0}).done_weight == 3.0
    assert dream_config(config, {"env_id": "VizdoomTakeCover-v1"}).done_weight == 10.0  # an M saved before the key
