"""TD-VAE: its loss against hand-written Gaussians and a loop over positions, causality, padding,
a partially observed task it must beat simple predictors on, the memory interface, training."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch.distributions import Independent, Normal, kl_divergence

from envs.errors import ConfigMismatchError, UserError
from world_models.memory import Memory, load_memory
from world_models.tdvae import ELBO_TERMS, TDVAE, TDVAEState, jumpy_predictions
from world_models.train_mdnrnn import SequenceBatch


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every tensor here is tiny: one intra-op thread (conftest's fixture) for every test."""


def tiny_model(discrete: bool = True, seed: int = 0, max_jump: int = 3) -> TDVAE:
    torch.manual_seed(seed)
    return TDVAE(3, 2, discrete, belief=8, state_dim=4, hidden=8, max_jump=max_jump)


def random_actions(discrete: bool, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if discrete:
        return torch.randint(0, 2, shape, generator=generator)
    return torch.randn(*shape, 2, generator=generator)


def random_batch(discrete: bool, lengths: list[int], seq_len: int, terminated_rows: tuple[int, ...] = (),
                 seed: int = 0) -> SequenceBatch:
    """Chunks of the given lengths, padded as make_batch pads (repeating the last real values)."""
    g = torch.Generator().manual_seed(seed)
    rows = len(lengths)
    n = torch.tensor(lengths)[:, None]
    mask = torch.arange(seq_len)[None] < n
    frames = torch.randn(rows, seq_len + 1, 3, generator=g)
    terminated = torch.zeros(rows, seq_len)
    for row in terminated_rows:
        terminated[row, lengths[row] - 1] = 1.0
    return SequenceBatch(z=frames[:, :-1], actions=random_actions(discrete, (rows, seq_len), g), z_next=frames[:, 1:],
                         rewards=torch.randn(rows, seq_len, generator=g), terminated=terminated, mask=mask)


# ---- the loss -----------------------------------------------------------------------------------
def log_normal(x, mu, sigma):
    """log N(x; mu, sigma^2) summed over the last dim, written out."""
    return (-0.5 * ((x - mu) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def kl_normal(mu1, sigma1, mu2, sigma2):
    """KL(N(mu1, sigma1^2) || N(mu2, sigma2^2)) of diagonal Gaussians, closed form, summed."""
    return (torch.log(sigma2 / sigma1) + (sigma1**2 + (mu1 - mu2) ** 2) / (2 * sigma2**2) - 0.5).sum(-1)


def params(dist):
    return dist.base_dist.loc, dist.base_dist.scale


@pytest.mark.timeout(20)
def test_elbo_terms_are_the_hand_written_gaussian_densities_and_kl():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    b1, b2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    z2, abar = torch.randn(5, 3, generator=g), torch.rand(5, 2, generator=g)
    delta = torch.tensor([1, 2, 3, 1, 2])
    noise2, noise1 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    with torch.no_grad():
        terms = model.elbo_terms(z2, b1, b2, delta, abar, noise2, noise1)
        mu_b2, sigma_b2 = params(model.belief_dist(b2))
        s2 = mu_b2 + sigma_b2 * noise2
        mu_q, sigma_q = params(model.smoothing_dist(s2, b1, b2))
        s1 = mu_q + sigma_q * noise1
        mu_b1, sigma_b1 = params(model.belief_dist(b1))
        mu_t, sigma_t = params(model.transition_dist(s1, delta, abar))
        mu_d, sigma_d = params(model.decoder_dist(s2))
        residual = model.transition_net(torch.cat([s1, torch.eye(3)[delta - 1], abar], -1)).chunk(2, -1)[0]
    torch.testing.assert_close(mu_t, s1 + residual)  # p_T's mean is a residual on s1
    torch.testing.assert_close(terms["decoder_nll"], -log_normal(z2, mu_d, sigma_d))
    torch.testing.assert_close(terms["kl"], kl_normal(mu_q, sigma_q, mu_b1, sigma_b1))
    torch.testing.assert_close(terms["belief_log_prob"], log_normal(s2, mu_b2, sigma_b2))
    torch.testing.assert_close(terms["transition_nll"], -log_normal(s2, mu_t, sigma_t))
    assert (sigma_b1 > 0).all() and (sigma_b1 <= math.exp(2.0)).all()  # bounded as M's sigmas


def reference_losses(model: TDVAE, batch: SequenceBatch, seed: int, done_weight: float, reward_weight: float):
    """``TDVAE.losses`` written as a loop over rows and positions, from its documented draws."""
    g = torch.Generator().manual_seed(seed)
    rows, length = batch.mask.shape
    delta = torch.randint(1, model.max_jump + 1, (rows, length), generator=g)
    noise2, noise1, noise_head = (torch.randn(rows, length, model.state_dim, generator=g) for _ in range(3))
    elbo = {name: [] for name in ELBO_TERMS}
    reward_sq, bce = [], []
    for row in range(rows):
        n = int(batch.mask[row].sum())
        frames = torch.cat([batch.z[row, :1], batch.z_next[row, :n]])  # frames 0..n
        actions = batch.actions[row, :n]
        beliefs = model.beliefs(frames[None], torch.cat([actions, actions[-1:]])[None])[0]
        encoded = model.encode_action(actions)
        ends_episode = bool(batch.terminated[row, n - 1] > 0.5)
        for t1 in range(n):
            d = int(delta[row, t1])
            t2 = t1 + d
            end = min(t2, n)
            abar = encoded[t1:end].mean(0)
            if t2 <= n:
                p_b2 = Independent(Normal(*params(model.belief_dist(beliefs[t2]))), 1)
                s2 = p_b2.base_dist.loc + p_b2.base_dist.scale * noise2[row, t1]
                q = Independent(Normal(*params(model.smoothing_dist(s2, beliefs[t1], beliefs[t2]))), 1)
                s1 = q.base_dist.loc + q.base_dist.scale * noise1[row, t1]
                p_b1 = Independent(Normal(*params(model.belief_dist(beliefs[t1]))), 1)
                p_t = Independent(Normal(*params(model.transition_dist(s1, torch.tensor(d), abar))), 1)
                p_d = Independent(Normal(*params(model.decoder_dist(s2))), 1)
                elbo["decoder_nll"].append(-p_d.log_prob(frames[t2]))
                elbo["kl"].append(kl_divergence(q, p_b1))
                elbo["belief_log_prob"].append(p_b2.log_prob(s2))
                elbo["transition_nll"].append(-p_t.log_prob(s2))
            if t2 <= n or ends_episode:
                mu, sigma = params(model.belief_dist(beliefs[t1]))
                reward, logit = model.heads(mu + sigma * noise_head[row, t1], torch.tensor(d), abar)
                done = float(batch.terminated[row, t1:end].sum() > 0)
                reward_sq.append((reward - batch.rewards[row, t1:end].sum()) ** 2)
                weight = done_weight if done else 1.0
                bce.append(-weight * (done * torch.nn.functional.logsigmoid(logit)
                                      + (1 - done) * torch.nn.functional.logsigmoid(-logit)))
    out = {name: torch.stack(values).mean() / model.z_dim for name, values in elbo.items()}
    out["elbo_loss"] = sum(out.values())
    out["reward_loss"], out["done_loss"] = torch.stack(reward_sq).mean(), torch.stack(bce).mean()
    out["loss"] = out["elbo_loss"] + reward_weight * out["reward_loss"] + out["done_loss"]
    return out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("discrete", [True, False])
def test_losses_equal_a_loop_over_positions_with_the_same_draws(discrete):
    model = tiny_model(discrete)
    # a full chunk, one that ends its episode (jumps past its end train the heads only), one cut short
    batch = random_batch(discrete, [7, 5, 2], 7, terminated_rows=(1,), seed=2)
    with torch.no_grad():
        losses = model.losses(batch, torch.Generator().manual_seed(3), done_weight=4.0, reward_weight=0.5)
        expected = reference_losses(model, batch, 3, done_weight=4.0, reward_weight=0.5)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, msg=name)


@pytest.mark.timeout(20)
def test_done_targets_and_metrics_count_the_jumps_that_end_the_episode():
    model = tiny_model(max_jump=2)
    batch = random_batch(True, [4], 4, terminated_rows=(0,), seed=5)
    with torch.no_grad():  # a done head sure of "done" everywhere: precision = the share of done jumps
        model.head_net[-1].bias.copy_(torch.tensor([0.0, 50.0]))
        losses = model.losses(batch, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    delta = torch.randint(1, 3, (1, 4), generator=g)[0]
    # positions 0..3: the jump ends the episode when it reaches step 3; all four train the heads
    done = [t1 + int(delta[t1]) > 3 for t1 in range(4)]
    assert float(losses["done_recall"]) == 1.0
    assert float(losses["done_precision"]) == pytest.approx(sum(done) / 4)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("discrete", [True, False])
def test_padding_never_changes_a_loss_or_a_gradient(discrete):
    clean = random_batch(discrete, [6, 3, 1], 6, terminated_rows=(1,), seed=4)
    pad = ~clean.mask
    poisoned = SequenceBatch(
        z=torch.where(pad[..., None], torch.tensor(float("nan")), clean.z),
        actions=torch.where(pad, 10**6, clean.actions) if discrete
        else torch.where(pad[..., None], torch.tensor(float("nan")), clean.actions),
        z_next=torch.where(pad[..., None], torch.tensor(1e30), clean.z_next),
        rewards=torch.where(pad, torch.tensor(float("nan")), clean.rewards),
        terminated=torch.where(pad, torch.tensor(float("nan")), clean.terminated), mask=clean.mask)
    results = []
    for batch in (clean, poisoned):
        model = tiny_model(discrete)
        losses = model.losses(batch, torch.Generator().manual_seed(7))
        losses["loss"].backward()
        results.append((losses, [p.grad.clone() for p in model.parameters()]))
    (clean_losses, clean_grads), (poisoned_losses, poisoned_grads) = results
    for name, value in clean_losses.items():
        assert torch.isfinite(poisoned_losses[name]), name
        torch.testing.assert_close(poisoned_losses[name], value, msg=name)
    for clean_grad, poisoned_grad in zip(clean_grads, poisoned_grads, strict=True):
        torch.testing.assert_close(poisoned_grad, clean_grad)


# ---- filtering ----------------------------------------------------------------------------------
@pytest.mark.timeout(20)
@pytest.mark.parametrize("discrete", [True, False])
def test_beliefs_are_causal_and_observe_steps_through_them(discrete):
    model = tiny_model(discrete).eval()
    g = torch.Generator().manual_seed(0)
    z, actions = torch.randn(2, 8, 3, generator=g), random_actions(discrete, (2, 8), g)
    with torch.no_grad():
        beliefs = model.beliefs(z, actions)
        t = 4
        changed_z, changed_actions = z.clone(), actions.clone()
        changed_z[:, t + 1 :] += 5.0
        changed_actions[:, t:] = 1 - actions[:, t:] if discrete else actions[:, t:] + 3.0  # a_t enters at t+1
        after = model.beliefs(changed_z, changed_actions)
        torch.testing.assert_close(after[:, : t + 1], beliefs[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(model.beliefs(z, changed_actions)[:, t + 1], beliefs[:, t + 1])  # a_t is read

        state, steps, estimates = model.initial_state(2), [], []
        for step in range(8):
            state = model.observe(z[:, step], state)
            steps.append(state.h[0])
            estimates.append(state.s)
            _, state = model.step(z[:, step], actions[:, step], state)
        torch.testing.assert_close(torch.stack(steps, 1), beliefs)
        torch.testing.assert_close(torch.stack(estimates, 1), model.belief_dist(beliefs).mean)


def sprites(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1-D sprite at a hidden constant velocity, seen through noise: (true positions, z), each
    (batch, length + 1, 1). Copying the last z misses the motion; extrapolating two noisy z's
    amplifies their noise; only a belief that averages the past gets both right."""
    start = torch.rand(batch, 1, generator=generator) * 2 - 1
    velocity = (torch.rand(batch, 1, generator=generator) * 2 - 1) * 0.3
    position = start + velocity * torch.arange(length + 1)[None]
    z = position + 0.1 * torch.randn(position.shape, generator=generator)
    return position[..., None], z[..., None]


def full_batch(z: torch.Tensor) -> SequenceBatch:
    rows, length = z.shape[0], z.shape[1] - 1
    zeros = torch.zeros(rows, length)
    return SequenceBatch(z=z[:, :-1], actions=zeros.long(), z_next=z[:, 1:], rewards=zeros, terminated=zeros,
                         mask=torch.ones(rows, length, dtype=torch.bool))


@pytest.mark.timeout(90)
def test_jumpy_predictions_of_a_hidden_velocity_beat_copying_and_extrapolating():
    torch.manual_seed(0)
    model = TDVAE(1, 1, True, belief=32, state_dim=4, hidden=32, max_jump=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    elbo = []
    for _ in range(400):
        losses = model.losses(full_batch(sprites(32, 20, g)[1]), g)
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        elbo.append(float(losses["elbo_loss"].detach()))
    assert sum(elbo[-20:]) < 0.5 * sum(elbo[:20])

    position, z = sprites(256, 20, torch.Generator().manual_seed(99))
    actions = torch.zeros(256, 20, dtype=torch.long)
    errors = {delta: torch.zeros(3) for delta in range(1, 5)}  # TD-VAE, copy the last z, linear extrapolation
    for t in range(8, 16):  # after a few observations, so the velocity can be known
        for delta, predicted in jumpy_predictions(model.eval(), z, actions, t, range(1, 5)).items():
            true = position[:, t + delta]
            guesses = (predicted, z[:, t], z[:, t] + delta * (z[:, t] - z[:, t - 1]))
            errors[delta] += torch.stack([(guess - true).pow(2).mean() for guess in guesses])
    # one step ahead copying is nearly as good (the sprite moves <= 0.3 against noise 0.1): better is
    # the claim there, and by 20% where the hidden velocity carries the jump (the margin at one step
    # was 0.81 on one CPU and 0.79 on another: float kernels differ, the training trajectory with them)
    for delta, (tdvae, copy, linear) in errors.items():
        assert tdvae < (0.8 if delta > 1 else 0.95) * min(copy, linear), (delta, errors)


# ---- the memory interface -----------------------------------------------------------------------
@pytest.mark.timeout(20)
@pytest.mark.parametrize("discrete", [True, False])
def test_memory_interface_shapes_bounds_reset_and_select(discrete):
    model = tiny_model(discrete, max_jump=3)
    g = torch.Generator().manual_seed(0)
    z, action = torch.randn(4, 3, generator=g), random_actions(discrete, (4,), g)
    assert isinstance(model, Memory) and model.kind == "tdvae"
    with torch.no_grad():
        state = model.observe(z, model.initial_state(4))
        assert model.features(z, state).shape == (4, model.feature_dim()) == (4, 3 + 4)
        with pytest.raises(ValueError, match="include-cell"):
            model.features(z, state, include_cell=True)
        with pytest.raises(ValueError, match="include-cell"):
            model.feature_dim(include_cell=True)

        prediction, stepped = model.step(z, action, state)
        assert prediction.reward.shape == prediction.done_logit.shape == (4,)
        torch.testing.assert_close(stepped.action, model.encode_action(action))
        assert torch.equal(stepped.s, state.s) and torch.equal(stepped.h, state.h)
        drawn = [model.sample(prediction, 0.5, torch.Generator().manual_seed(5)) for _ in range(2)]
        assert drawn[0].shape == (4, 3) and torch.equal(drawn[0], drawn[1])  # seeded

        for jump in (1, 3):
            imagined = model.imagine(z, action, state, 1.0, torch.Generator().manual_seed(1), jump=jump)
            assert imagined.z.shape == (4, 3) and imagined.reward.shape == imagined.done_logit.shape == (4,)
            assert imagined.state.s.shape == (4, 4) and torch.equal(imagined.state.h, state.h)  # no observe
        one = model.imagine(z, action, state, 1.0, torch.Generator().manual_seed(1), jump=1)
        torch.testing.assert_close(one.reward, prediction.reward)
        torch.testing.assert_close(one.z, model.sample(prediction, 1.0, torch.Generator().manual_seed(1)))
        for jump in (0, 4):
            with pytest.raises(ValueError, match="jump"):
                model.imagine(z, action, state, 1.0, None, jump=jump)

        mask = torch.tensor([True, False, True, False])
        partly = model.observe(z + 1.0, state, mask)
        assert torch.equal(partly.s[~mask], state.s[~mask]) and not torch.equal(partly.s[mask], state.s[mask])
        reset = model.reset(stepped, mask)
        fresh = model.initial_state(4)
        for part, old, zero in zip(reset, stepped, fresh, strict=True):
            rows = (slice(None), mask) if part.dim() == 3 else (mask,)
            others = (slice(None), ~mask) if part.dim() == 3 else (~mask,)
            assert torch.equal(part[rows], zero[rows]) and torch.equal(part[others], old[others])
        assert not torch.equal(stepped.s, fresh.s)  # reset returned a new state, the old one is intact
        kept = model.select(stepped, mask)
        assert isinstance(kept, TDVAEState) and kept.h.shape == (1, 2, 8)
        torch.testing.assert_close(kept.s, stepped.s[mask])
        torch.testing.assert_close(kept.action, stepped.action[mask])

        with pytest.raises(ValueError, match="delta"):
            jumpy_predictions(model, z[:, None], action[:, None].expand(4, 8, *action.shape[1:]), 0, [4])


# ---- training -----------------------------------------------------------------------------------
def train(run_dir, epochs: int) -> dict:
    from world_models.train_tdvae import TDVAEConfig, train_tdvae

    return train_tdvae(TDVAEConfig(run_dir=run_dir, belief=16, state_dim=4, hidden=16, seq_len=20, batch_size=8,
                                   epochs=epochs, device="cpu", progress=False))


def reference_rollout(model: TDVAE, batch: SequenceBatch, seed: int, links: int, done_weight: float):
    """``TDVAE.rollout_losses`` as a loop over rows, chains and links, from its documented draws."""
    g = torch.Generator().manual_seed(seed)
    rows, length = batch.mask.shape
    torch.randint(1, model.max_jump + 1, (rows, length), generator=g)
    noise_head = [torch.randn(rows, length, model.state_dim, generator=g) for _ in range(3)][2]
    starts = list(range(0, length, links))
    noise = [torch.randn(rows, len(starts), model.state_dim, generator=g) for _ in range(links)]
    nll, reward_sq, bce = [], [], []
    for row in range(rows):
        n = int(batch.mask[row].sum())
        frames = torch.cat([batch.z[row, :1], batch.z_next[row, :n]])
        actions = batch.actions[row, :n]
        beliefs = model.beliefs(frames[None], torch.cat([actions, actions[-1:]])[None])[0]
        encoded = model.encode_action(actions)
        for c, start in enumerate(starts):
            if start >= n:
                continue
            mu, sigma = params(model.belief_dist(beliefs[start]))
            s = mu + sigma * noise_head[row, start]
            for j in range(start, min(start + links, n)):
                reward, logit = model.heads(s, torch.tensor(1), encoded[j])
                done = float(batch.terminated[row, j])
                reward_sq.append((reward - batch.rewards[row, j]) ** 2)
                weight = done_weight if done else 1.0
                bce.append(-weight * (done * torch.nn.functional.logsigmoid(logit)
                                      + (1 - done) * torch.nn.functional.logsigmoid(-logit)))
                mu_t, sigma_t = params(model.transition_dist(s, torch.tensor(1), encoded[j]))
                s = mu_t + sigma_t * noise[j - start][row, c]
                p_d = Independent(Normal(*params(model.decoder_dist(s))), 1)
                nll.append(-p_d.log_prob(frames[j + 1]) / model.z_dim)
    return {"rollout_nll": torch.stack(nll).mean(), "rollout_reward_loss": torch.stack(reward_sq).mean(),
            "rollout_done_loss": torch.stack(bce).mean()}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("discrete", [True, False])
def test_rollout_losses_equal_a_loop_over_open_loop_chains(discrete):
    model = tiny_model(discrete)
    batch = random_batch(discrete, [7, 5, 2], 7, terminated_rows=(1,), seed=2)
    with torch.no_grad():
        plain = model.losses(batch, torch.Generator().manual_seed(3), done_weight=4.0, reward_weight=0.5)
        losses = model.losses(batch, torch.Generator().manual_seed(3), done_weight=4.0, reward_weight=0.5, rollout=3)
        expected = reference_rollout(model, batch, 3, links=3, done_weight=4.0)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, msg=name)
    torch.testing.assert_close(losses["loss"], plain["loss"] + expected["rollout_nll"] + expected["rollout_done_loss"]
                               + 0.5 * expected["rollout_reward_loss"])


@pytest.mark.timeout(180)  # run alone, it also builds the session's tiny_run (~50 s)
def test_train_tdvae_checkpoints_resumes_bit_for_bit_and_loads(tiny_run, tmp_path, capsys):
    from world_models.train_tdvae import TDVAEConfig, load_tdvae

    first, whole = tmp_path / "first", tmp_path / "whole"
    shutil.copytree(tiny_run, first)
    shutil.copytree(tiny_run, whole)
    with pytest.raises(UserError, match="no checkpoint"):
        load_tdvae(first)

    metrics = train(first, 1)
    for key in ("loss", "elbo_loss", *ELBO_TERMS, "reward_loss", "done_loss", "done_accuracy", "val_loss",
                "val_elbo_loss", "steps_per_s"):
        assert math.isfinite(metrics[key]), key
    assert metrics["epoch"] == 1
    model, config = load_tdvae(first)
    saved = json.loads((first / "tdvae" / "model.json").read_text())
    assert saved["kind"] == config["kind"] == "tdvae" and saved["env_id"] == "VizdoomTakeCover-v1"
    assert model.config == {key: saved[key] for key in model.config} and model.z_dim == 8
    assert {"action_space", "done_weight"} <= set(saved)
    assert isinstance(load_memory(first, "tdvae")[0], TDVAE)

    weights = (first / "tdvae" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert train(first, 1) == json.loads(json.dumps(metrics))  # finished: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    assert (first / "tdvae" / "model.safetensors").read_bytes() == weights

    train(first, 2)
    train(whole, 2)
    resumed, uninterrupted = (load_file(str(d / "tdvae" / "model.safetensors")) for d in (first, whole))
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key

    shutil.copytree(whole / "mdnrnn", tmp_path / "other" / "tdvae")  # M's weights where TD-VAE's should be
    with pytest.raises(ConfigMismatchError, match="tdvae"):
        load_tdvae(tmp_path / "other")
    for bad in ({"max_jump": 0}, {"max_jump": 30, "seq_len": 20}, {"done_weight": 0.0}, {"rollout": -1},
                {"rollout": 30, "seq_len": 20}):
        with pytest.raises(UserError):
            TDVAEConfig(run_dir=tmp_path / "x", **bad).check()
