"""ICM: its losses and reward against hand-written formulas, an inverse model that learns the
actions of a synthetic task, a reward that falls on repeated transitions and stays high on new
ones, the forward loss's stop-gradient (features that do not collapse), checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from envs.errors import ConfigMismatchError, UserError
from world_models.checkpoint import load_checkpoint, save_checkpoint
from world_models.curiosity import ICM, ICMLearner, transitions

Z, ACTIONS = 8, 4


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every tensor here is tiny: one intra-op thread (conftest's fixture) for every test."""


def tiny_icm(discrete: bool = True, beta: float = 0.2, seed: int = 0, action_dim: int = ACTIONS) -> ICM:
    torch.manual_seed(seed)
    return ICM(Z, action_dim, discrete, feature_dim=16, hidden=32, beta=beta)


def displacement_task(n: int, g: torch.Generator, displacements: torch.Tensor, offset: float = 0.0,
                      noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z ~ N(offset, 1) and z' = z + displacements[a] + noise, a uniform over the displacements' rows."""
    z = torch.randn(n, Z, generator=g) + offset
    a = torch.randint(0, len(displacements), (n,), generator=g)
    return z, a, z + displacements[a] + noise * torch.randn(n, Z, generator=g)


def box_task(n: int, g: torch.Generator, mixing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z' = z + a @ mixing + noise with a ~ N(0, I) continuous: a is recoverable from z' - z."""
    z, a = torch.randn(n, Z, generator=g), torch.randn(n, mixing.shape[0], generator=g)
    return z, a, z + a @ mixing + 0.05 * torch.randn(n, Z, generator=g)


def half_squared_norm(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x * x).sum(-1)


# ---- the formulas -------------------------------------------------------------------------------
@pytest.mark.timeout(20)
def test_discrete_losses_and_reward_are_the_hand_written_formulas():
    icm = tiny_icm(beta=0.3)
    g = torch.Generator().manual_seed(1)
    z, z_next = torch.randn(6, Z, generator=g), torch.randn(6, Z, generator=g)
    a = torch.tensor([0, 1, 2, 3, 1, 0])
    losses = icm.losses(z, a, z_next)
    with torch.no_grad():
        phi, phi_next = icm.encoder(z), icm.encoder(z_next)
        logits = icm.inverse_net(torch.cat([phi, phi_next], -1))
        log_p = logits - logits.exp().sum(-1, keepdim=True).log()  # log-softmax, written out
        inverse = -log_p[torch.arange(6), a].mean()
        predicted = icm.forward_net(torch.cat([phi, torch.eye(ACTIONS)[a]], -1))
        per_step = half_squared_norm(predicted - phi_next)
        accuracy = (logits.argmax(-1) == a).float().mean()
    torch.testing.assert_close(losses["inverse_loss"], inverse)
    torch.testing.assert_close(losses["forward_loss"], per_step.mean())
    torch.testing.assert_close(losses["loss"], 0.7 * inverse + 0.3 * per_step.mean())
    torch.testing.assert_close(losses["inverse_accuracy"], accuracy)
    reward = icm.intrinsic(z, a, z_next)
    assert reward.shape == (6,) and not reward.requires_grad
    torch.testing.assert_close(reward, per_step)  # eta-free: the caller scales it


@pytest.mark.timeout(20)
def test_box_losses_and_reward_are_the_hand_written_formulas():
    icm = tiny_icm(discrete=False, action_dim=3)
    g = torch.Generator().manual_seed(2)
    z, z_next, a = torch.randn(5, Z, generator=g), torch.randn(5, Z, generator=g), torch.randn(5, 3, generator=g)
    losses = icm.losses(z, a, z_next)
    assert "inverse_accuracy" not in losses
    with torch.no_grad():
        phi, phi_next = icm.encoder(z), icm.encoder(z_next)
        inverse = half_squared_norm(icm.inverse_net(torch.cat([phi, phi_next], -1)) - a).mean()
        per_step = half_squared_norm(icm.forward_net(torch.cat([phi, a], -1)) - phi_next)
    torch.testing.assert_close(losses["inverse_loss"], inverse)
    torch.testing.assert_close(losses["forward_loss"], per_step.mean())
    torch.testing.assert_close(losses["loss"], 0.8 * inverse + 0.2 * per_step.mean())
    torch.testing.assert_close(icm.intrinsic(z, a, z_next), per_step)


@pytest.mark.timeout(20)
def test_encode_action_features_and_transitions_shapes():
    icm = tiny_icm()
    assert torch.equal(icm.encode_action(torch.tensor([[2, 0]])), torch.tensor([[[0., 0, 1, 0], [1, 0, 0, 0]]]))
    assert icm.features(torch.zeros(3, 2, Z)).shape == (3, 2, 16)
    box = tiny_icm(discrete=False, action_dim=3)
    actions = torch.randn(4, 3)
    assert torch.equal(box.encode_action(actions), actions)
    z = torch.randn(5, Z)
    z_t, a_t, z_next = transitions(z, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(z_t, z[:4]) and torch.equal(z_next, z[1:]) and a_t.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="T\\+1 latents"):
        transitions(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="transitions must be"):
        ICMLearner(icm).update(z, torch.tensor([0, 1]), z)


# ---- learning -----------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_inverse_model_learns_discrete_actions_on_held_out_transitions():
    g = torch.Generator().manual_seed(0)
    displacements = torch.randn(ACTIONS, Z, generator=g)
    learner = ICMLearner(tiny_icm(), lr=3e-3)
    with torch.no_grad():
        before = learner.icm.losses(*displacement_task(1000, g, displacements))["inverse_accuracy"]
    for _ in range(300):
        learner.update(*displacement_task(128, g, displacements), batch_size=128)
    with torch.no_grad():  # transitions never trained on
        after = learner.icm.losses(*displacement_task(1000, g, displacements))["inverse_accuracy"]
    assert before < 0.5 < 0.9 < after, (before, after)  # chance is 0.25


@pytest.mark.timeout(30)
def test_inverse_model_learns_box_actions():
    g = torch.Generator().manual_seed(3)
    mixing = torch.randn(3, Z, generator=g)
    learner = ICMLearner(tiny_icm(discrete=False, action_dim=3), lr=3e-3)
    held_out = box_task(1000, g, mixing)
    with torch.no_grad():
        before = learner.icm.losses(*held_out)["inverse_loss"]
    for _ in range(300):
        learner.update(*box_task(128, g, mixing), batch_size=128)
    with torch.no_grad():
        after = learner.icm.losses(*held_out)["inverse_loss"]
    assert after < before / 20, (before, after)  # ~1.5 at the start (1/2 E||a||^2 = 1.5)


@pytest.mark.timeout(30)
def test_reward_falls_on_repeated_transitions_and_stays_high_on_new_ones():
    g = torch.Generator().manual_seed(0)
    known, other = torch.randn(ACTIONS, Z, generator=g), torch.randn(ACTIONS, Z, generator=g)
    seen = displacement_task(256, g, known)
    new_region = displacement_task(256, g, other, offset=3.0)  # new states, new dynamics
    new_dynamics = displacement_task(256, g, other)  # the same states, other moves
    learner = ICMLearner(tiny_icm(), lr=3e-3)
    start = float(learner.intrinsic(*seen).mean())
    for _ in range(300):
        learner.update(*seen, batch_size=256)  # the same transitions again and again
    repeated = float(learner.intrinsic(*seen).mean())
    assert repeated < start / 5, (start, repeated)
    for novel in (new_region, new_dynamics):
        assert float(learner.intrinsic(*novel).mean()) > 20 * repeated


# ---- the stop-gradient --------------------------------------------------------------------------
def encoder_grads(icm: ICM, loss: torch.Tensor) -> list[torch.Tensor]:
    return torch.autograd.grad(loss, list(icm.encoder.parameters()))


@pytest.mark.timeout(20)
def test_forward_loss_reaches_phi_only_through_the_forward_models_input():
    icm = tiny_icm()
    g = torch.Generator().manual_seed(4)
    z, z_next, a = torch.randn(16, Z, generator=g), torch.randn(16, Z, generator=g), torch.randint(0, 4, (16,))
    grads = encoder_grads(icm, icm.losses(z, a, z_next)["forward_loss"])
    target = icm.features(z_next).detach().clone()  # a constant: no path into phi at all
    input_path = encoder_grads(icm, half_squared_norm(icm.forward_prediction(icm.features(z), a) - target).mean())
    both_paths = encoder_grads(icm, half_squared_norm(icm.forward_prediction(icm.features(z), a)
                                                      - icm.features(z_next)).mean())
    for grad, expected in zip(grads, input_path, strict=True):
        torch.testing.assert_close(grad, expected)
    assert any(not torch.allclose(grad, other) for grad, other in zip(grads, both_paths, strict=True))


@pytest.mark.timeout(30)
def test_forward_loss_alone_does_not_collapse_the_features():
    """beta = 1: only L_F trains phi. Chasing its own target would shrink phi to a constant
    (trained without the stop-gradient, the features' spread falls ~8x in these 400 updates)."""
    g = torch.Generator().manual_seed(0)
    displacements = torch.randn(ACTIONS, Z, generator=g)
    learner = ICMLearner(tiny_icm(beta=1.0), lr=3e-3)
    probe = torch.randn(500, Z, generator=g)
    with torch.no_grad():
        spread = float(learner.icm.features(probe).std(0).mean())
    for _ in range(400):
        metrics = learner.update(*displacement_task(128, g, displacements), batch_size=128)
    with torch.no_grad():
        after = float(learner.icm.features(probe).std(0).mean())
    assert metrics["loss"] == pytest.approx(metrics["forward_loss"])
    assert after > spread / 2, (spread, after)


# ---- checkpoints --------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_save_load_round_trip_continues_bit_for_bit(tmp_path):
    g = torch.Generator().manual_seed(5)
    displacements = torch.randn(ACTIONS, Z, generator=g)
    learner = ICMLearner(tiny_icm(), lr=2e-3, seed=7)
    learner.update(*displacement_task(200, g, displacements), epochs=2, batch_size=64)  # Adam has state
    learner.save(tmp_path / "icm")
    config = json.loads((tmp_path / "icm" / "model.json").read_text())
    assert config["kind"] == "icm" and config["z_dim"] == Z and config["lr"] == 2e-3
    assert (tmp_path / "icm" / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "icm").iterdir()) == ["model.json", "model.safetensors"]

    loaded = ICMLearner.load(tmp_path / "icm")
    assert loaded.icm.config == learner.icm.config and loaded.updates == learner.updates == 8
    probe = displacement_task(50, g, displacements)
    assert torch.equal(loaded.intrinsic(*probe), learner.intrinsic(*probe))
    batch = displacement_task(200, g, displacements)
    # several epochs of minibatches smaller than the batch: the shuffling generator must be restored too
    assert loaded.update(*batch, epochs=3, batch_size=64) == learner.update(*batch, epochs=3, batch_size=64)
    for (name, mine), theirs in zip(learner.icm.state_dict().items(), loaded.icm.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name
    assert torch.equal(loaded.intrinsic(*probe), learner.intrinsic(*probe))


@pytest.mark.timeout(20)
def test_novelty_cap_is_the_highest_99th_percentile_of_real_batches_before_learning(tmp_path):
    g = torch.Generator().manual_seed(6)
    displacements = torch.randn(ACTIONS, Z, generator=g)
    learner = ICMLearner(tiny_icm(), seed=1)
    assert learner.novelty_cap is None
    first = displacement_task(300, g, displacements)
    expected = float(torch.quantile(learner.intrinsic(*first), 0.99))
    learner.update(*first, epochs=3)
    assert learner.novelty_cap == pytest.approx(expected)
    learner.update(*first, epochs=1)  # a familiar batch now: lower novelty does not lower the cap
    assert learner.novelty_cap == pytest.approx(expected)
    learner.save(tmp_path / "icm")
    assert ICMLearner.load(tmp_path / "icm").novelty_cap == learner.novelty_cap


@pytest.mark.timeout(20)
def test_load_refuses_what_is_not_an_icm_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        ICMLearner.load(tmp_path / "nothing")
    save_checkpoint(tmp_path / "m", {"w": torch.zeros(2)}, {"kind": "mdnrnn", "z_dim": Z})
    with pytest.raises(ConfigMismatchError, match="not a m checkpoint"):
        ICMLearner.load(tmp_path / "m")
    ICMLearner(tiny_icm()).save(tmp_path / "icm")
    tensors, config = load_checkpoint(tmp_path / "icm")
    save_checkpoint(tmp_path / "icm", tensors, {**config, "kind": "tdvae"})
    with pytest.raises(ConfigMismatchError, match="'tdvae' checkpoint, not an ICM's"):
        ICMLearner.load(tmp_path / "icm")
    save_checkpoint(tmp_path / "icm", tensors, {**config, "kind": "icm", "hidden": 64})  # other weights' shapes
    with pytest.raises(ConfigMismatchError, match="does not fit ICM"):
        ICMLearner.load(tmp_path / "icm")
