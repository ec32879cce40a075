"""M (MDN-RNN): the mixture log-likelihood, fitting a known mixture, masking, step == forward,
temperature sampling, the done head's weighting and the log-sigma bounds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, MixtureSameFamily, Normal

from world_models.mdnrnn import LOG_SIGMA_MAX, LOG_SIGMA_MIN, MDNRNN, MDNOutput

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


def _random_output(shape: tuple[int, ...], z_dim: int, k: int, g: torch.Generator, dtype=torch.float64,
                   logit_scale: float = 1.0) -> MDNOutput:
    def randn(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    return MDNOutput(
        logit_pi=logit_scale * randn(*shape, z_dim, k),
        mu=2 * randn(*shape, z_dim, k),
        log_sigma=randn(*shape, z_dim, k).clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX),
        reward=randn(*shape),
        done_logit=randn(*shape),
    )


@pytest.mark.parametrize("logit_scale", [1.0, 30.0, 1000.0])
def test_log_prob_matches_mixture_same_family(logit_scale):
    g = torch.Generator().manual_seed(0)
    out = _random_output((4, 7), z_dim=6, k=5, g=g, logit_scale=logit_scale)
    z = 3 * torch.randn(4, 7, 6, generator=g, dtype=torch.float64)
    got = MDNRNN.log_prob(out, z)
    mixture = MDNRNN.mixture(out)
    assert isinstance(mixture, MixtureSameFamily)
    assert mixture.batch_shape == (4, 7, 6)
    expected = mixture.log_prob(z).sum(-1)
    assert got.shape == (4, 7) and got.dtype == torch.float64
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)
    # and against an explicit per-dimension sum over components
    pi = torch.softmax(out.logit_pi, -1)
    dens = (pi * Normal(out.mu, out.log_sigma.exp()).log_prob(z[..., None]).exp()).sum(-1)
    finite = dens > 1e-200
    torch.testing.assert_close(got[finite.all(-1)], dens.log().sum(-1)[finite.all(-1)], rtol=1e-10, atol=1e-10)


def test_log_prob_with_one_dominant_logit_is_that_gaussian():
    g = torch.Generator().manual_seed(1)
    out = _random_output((3,), z_dim=4, k=5, g=g)
    logits = torch.full_like(out.logit_pi, -500.0)
    logits[..., 2] = 500.0
    out = out._replace(logit_pi=logits)
    z = torch.randn(3, 4, generator=g, dtype=torch.float64)
    expected = Normal(out.mu[..., 2], out.log_sigma[..., 2].exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(MDNRNN.log_prob(out, z), expected)


def test_log_prob_when_only_an_unlikely_component_explains_the_target():
    """log pi of a component with weight e^-1000 must stay finite (log_softmax, not log(softmax))."""
    z = torch.tensor([[0.3]], dtype=torch.float64)
    out = MDNOutput(
        logit_pi=torch.tensor([[[500.0, -500.0]]], dtype=torch.float64),
        mu=torch.tensor([[[1000.0, 0.3]]], dtype=torch.float64),  # the likely component is far away
        log_sigma=torch.tensor([[[LOG_SIGMA_MIN, 0.0]]], dtype=torch.float64),
        reward=torch.zeros(1, dtype=torch.float64),
        done_logit=torch.zeros(1, dtype=torch.float64),
    )
    got = MDNRNN.log_prob(out, z)
    expected = -1000.0 - 0.5 * math.log(2 * math.pi)  # log(e^-1000) + log N(0.3; 0.3, 1)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(got, MDNRNN.mixture(out).log_prob(z).sum(-1))


# --------------------------------------------------------------------------------------------
# Fitting a known mixture


TRUE_WEIGHTS = torch.tensor([[0.3, 0.7], [0.6, 0.4]])
TRUE_MEANS = torch.tensor([[-2.0, 1.5], [1.0, -1.0]])
TRUE_SIGMAS = torch.tensor([[0.3, 0.5], [0.2, 0.6]])


def _true_mixture() -> MixtureSameFamily:
    return MixtureSameFamily(Categorical(probs=TRUE_WEIGHTS), Normal(TRUE_MEANS, TRUE_SIGMAS))


def _merged_components(weights, means, sigmas, true_means, min_weight=0.02):
    """Moment-match the learned components onto the nearest true component (order-insensitive,
    a true component split over several learned ones still counts; tiny components ignored)."""
    result = []
    nearest = (means[:, None] - true_means[None, :]).abs().argmin(1)
    for j in range(len(true_means)):
        chosen = (nearest == j) & (weights > min_weight)
        w = weights[chosen].sum()
        assert w > 0, f"no learned component near {true_means[j]}"
        mean = (weights[chosen] * means[chosen]).sum() / w
        second = (weights[chosen] * (sigmas[chosen] ** 2 + means[chosen] ** 2)).sum() / w
        result.append((w.item(), mean.item(), (second - mean**2).sqrt().item()))
    return result


def test_fits_a_known_two_component_mixture():
    torch.manual_seed(0)
    n, z_dim = 4000, 2
    z_next = _true_mixture().sample((n,))  # (n, z): dim 0 and dim 1 have different mixtures
    assert z_next.shape == (n, z_dim)
    model = MDNRNN(z_dim, action_dim=1, discrete_actions=False, hidden=16, mixtures=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    z_in, actions = torch.zeros(n, 1, z_dim), torch.zeros(n, 1, 1)  # constant inputs
    zeros, mask = torch.zeros(n, 1), torch.ones(n, 1, dtype=torch.bool)
    for _ in range(300):
        # every input is the same, so run the LSTM once and share its outputs over the batch (speed)
        out, _ = model(z_in[:1], actions[:1])
        out = MDNOutput(*(t.expand(n, *t.shape[1:]) for t in out))
        terms = model.losses(out, z_next[:, None], zeros, zeros, mask, reward_weight=0.0)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()

    with torch.no_grad():
        out, _ = model(z_in[:1], actions[:1])
        mixture = MDNRNN.mixture(MDNOutput(*(t[0, 0] for t in out)))  # one step: batch shape (z,)
        weights = mixture.mixture_distribution.probs
        means, sigmas = mixture.component_distribution.loc, mixture.component_distribution.scale
        for d in range(z_dim):
            merged = _merged_components(weights[d], means[d], sigmas[d], TRUE_MEANS[d])
            for j, (w, mean, sigma) in enumerate(merged):
                assert w == pytest.approx(TRUE_WEIGHTS[d, j].item(), abs=0.05), (d, merged)
                assert mean == pytest.approx(TRUE_MEANS[d, j].item(), abs=0.1), (d, merged)
                assert sigma == pytest.approx(TRUE_SIGMAS[d, j].item(), abs=0.06), (d, merged)

        # NLL of held-out data from the true mixture vs its entropy: the difference is KL(true || learned).
        true = _true_mixture()
        fresh = true.sample((100_000,))
        entropy = -true.log_prob(fresh).mean(0)
        cross = -mixture.log_prob(fresh).mean(0)
        assert torch.all(cross - entropy < 0.02), (cross, entropy)
        assert torch.all(cross - entropy > -0.01), (cross, entropy)
        # the training nll is the same quantity per latent dimension
        full_out, _ = model(z_in, actions)
        nll = model.losses(full_out, z_next[:, None], zeros, zeros, mask)["nll"]
        torch.testing.assert_close(nll, -mixture.log_prob(z_next).sum(-1).mean() / z_dim, rtol=1e-4, atol=1e-5)
        assert nll.item() == pytest.approx(entropy.mean().item(), abs=0.05)


# --------------------------------------------------------------------------------------------
# Masked losses


def _batch(g: torch.Generator, b=4, t=6, z_dim=3, k=4):
    out = _random_output((b, t), z_dim, k, g, dtype=torch.float32)
    z_next = torch.randn(b, t, z_dim, generator=g)
    reward = torch.randn(b, t, generator=g)
    done = torch.rand(b, t, generator=g) < 0.3
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 1:] = False
    mask[3] = False  # an all-padding row
    return out, z_next, reward, done, mask


def _model_for(z_dim=3, k=4) -> MDNRNN:
    return MDNRNN(z_dim, action_dim=2, discrete_actions=True, hidden=8, mixtures=k)


LOSS_KEYS = ("loss", "nll", "reward_loss", "done_loss", "done_accuracy", "done_precision", "done_recall")


def test_masked_positions_do_not_change_any_loss():
    g = torch.Generator().manual_seed(2)
    model = _model_for()
    out, z_next, reward, done, mask = _batch(g)
    base = model.losses(out, z_next, reward, done, mask)
    pad = ~mask

    def gradients(z, r, d):
        leaves = MDNOutput(*(t.clone().requires_grad_(True) for t in out))
        model.losses(leaves, z, r, d, mask)["loss"].backward()
        return [leaf.grad for leaf in leaves]

    base_grads = gradients(z_next, reward, done)
    for garbage in (1e6, float("nan"), float("inf")):
        z2 = torch.where(pad[..., None], torch.full_like(z_next, garbage), z_next)
        r2 = torch.where(pad, torch.full_like(reward, garbage), reward)
        d2 = torch.where(pad, ~done, done)
        changed = model.losses(out, z2, r2, d2, mask)
        for key in LOSS_KEYS:
            torch.testing.assert_close(changed[key], base[key], msg=key)
        # garbage targets must not leak into the gradients either (0 * NaN = NaN)
        for name, got, expected in zip(MDNOutput._fields, gradients(z2, r2, d2), base_grads, strict=True):
            torch.testing.assert_close(got, expected, msg=f"{name} gradient with {garbage} at padding")
    nan_done = torch.where(pad, torch.full_like(reward, float("nan")), done.float())
    for name, got, expected in zip(MDNOutput._fields, gradients(z_next, reward, nan_done), base_grads, strict=True):
        torch.testing.assert_close(got, expected, msg=f"{name} gradient with NaN done at padding")
    # the predictions at masked positions do not matter either, nor do they receive gradients
    leaves = MDNOutput(*(t.clone().requires_grad_(True) for t in out))
    noisy = MDNOutput(*(torch.where(pad.reshape(*pad.shape, *[1] * (t.dim() - 2)), 50.0 + t, t) for t in leaves))
    again = model.losses(noisy, z_next, reward, done, mask)
    for key in LOSS_KEYS:
        torch.testing.assert_close(again[key], base[key], msg=key)
    again["loss"].backward()
    for leaf in leaves:
        grad = leaf.grad.reshape(*pad.shape, -1)
        assert torch.isfinite(grad).all()
        assert torch.all(grad[pad] == 0)
        assert grad[mask].abs().sum() > 0


def test_loss_values_are_means_over_real_steps():
    g = torch.Generator().manual_seed(3)
    model = _model_for()
    out, z_next, reward, done, mask = _batch(g)
    terms = model.losses(out, z_next, reward, done, mask, done_weight=10.0, reward_weight=0.5)
    m = mask
    nll = (-MDNRNN.log_prob(out, z_next) / 3)[m].mean()
    reward_loss = ((out.reward - reward) ** 2)[m].mean()
    done_loss = F.binary_cross_entropy_with_logits(out.done_logit[m], done[m].float(), pos_weight=torch.tensor(10.0))
    torch.testing.assert_close(terms["nll"], nll)
    torch.testing.assert_close(terms["reward_loss"], reward_loss)
    torch.testing.assert_close(terms["done_loss"], done_loss)
    torch.testing.assert_close(terms["loss"], nll + 0.5 * reward_loss + done_loss)
    predicted, actual = out.done_logit[m] > 0, done[m]
    torch.testing.assert_close(terms["done_accuracy"], (predicted == actual).float().mean())


@pytest.mark.parametrize("event_weight", [3.0, 1000.0])
def test_reward_event_weight_counts_each_step_one_plus_w_abs_r_times(event_weight):
    g = torch.Generator().manual_seed(5)
    model = _model_for()
    out, z_next, _, done, mask = _batch(g)
    reward = torch.zeros_like(done, dtype=out.reward.dtype)
    reward[:, 2], reward[:, 4] = 1.0, -0.5  # rare events among zero-reward steps
    terms = model.losses(out, z_next, reward, done, mask, reward_event_weight=event_weight)
    weight = 1 + event_weight * reward.abs()
    torch.testing.assert_close(terms["reward_loss"], (weight * (out.reward - reward) ** 2)[mask].mean())
    # 0 is the plain mean squared error, bit for bit (the recipes that do not set it are unchanged)
    plain = model.losses(out, z_next, reward, done, mask)
    assert torch.equal(model.losses(out, z_next, reward, done, mask, reward_event_weight=0.0)["loss"], plain["loss"])
    torch.testing.assert_close(plain["reward_loss"], ((out.reward - reward) ** 2)[mask].mean())


def test_all_padding_rows_contribute_nothing():
    g = torch.Generator().manual_seed(4)
    model = _model_for()
    out, z_next, reward, done, mask = _batch(g)
    full = model.losses(out, z_next, reward, done, mask)
    keep = mask.any(1)
    assert not keep.all()
    trimmed = model.losses(MDNOutput(*(t[keep] for t in out)), z_next[keep], reward[keep], done[keep], mask[keep])
    for key in LOSS_KEYS:
        torch.testing.assert_close(full[key], trimmed[key], msg=key)
    # a batch of padding only: zero losses, no NaN
    empty = model.losses(out, z_next, reward, done, torch.zeros_like(mask))
    for key in LOSS_KEYS:
        assert torch.isfinite(empty[key]) and empty[key] == 0, key


# --------------------------------------------------------------------------------------------
# step == forward


@pytest.mark.parametrize("discrete", [True, False])
def test_step_t_times_equals_forward(discrete):
    torch.manual_seed(5)
    b, t, z_dim, a_dim = 3, 7, 4, 3
    model = MDNRNN(z_dim, a_dim, discrete, hidden=16, mixtures=3).double()
    z = torch.randn(b, t, z_dim, dtype=torch.float64)
    actions = torch.randint(0, a_dim, (b, t)) if discrete else torch.randn(b, t, a_dim, dtype=torch.float64)
    with torch.no_grad():
        full, full_carry = model(z, actions)
        carry = tuple(c.double() for c in model.initial_carry(b))
        steps = []
        for i in range(t):
            out, carry = model.step(z[:, i], actions[:, i], carry)
            steps.append(out)
    assert full.mu.shape == (b, t, z_dim, 3) and full.reward.shape == (b, t)
    assert steps[0].mu.shape == (b, z_dim, 3) and steps[0].reward.shape == (b,)
    for name in MDNOutput._fields:
        stacked = torch.stack([getattr(s, name) for s in steps], dim=1)
        torch.testing.assert_close(stacked, getattr(full, name), rtol=1e-10, atol=1e-12, msg=name)
    for got, expected in zip(carry, full_carry, strict=True):
        assert got.shape == (1, b, 16)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # the recurrence matters: a different first input changes later steps
    z2 = z.clone()
    z2[:, 0] += 1.0
    with torch.no_grad():
        other, _ = model(z2, actions)
    assert not torch.allclose(other.mu[:, -1], full.mu[:, -1])


def test_forward_continues_from_a_carry():
    torch.manual_seed(6)
    model = MDNRNN(4, 2, True, hidden=8, mixtures=2)
    z, actions = torch.randn(2, 6, 4), torch.randint(0, 2, (2, 6))
    with torch.no_grad():
        full, full_carry = model(z, actions)
        first, carry = model(z[:, :2], actions[:, :2])
        rest, carry = model(z[:, 2:], actions[:, 2:], carry)
    torch.testing.assert_close(torch.cat([first.mu, rest.mu], 1), full.mu)
    torch.testing.assert_close(carry[0], full_carry[0])
    torch.testing.assert_close(carry[1], full_carry[1])


# --------------------------------------------------------------------------------------------
# Sampling


def test_sample_is_reproducible_with_a_seeded_generator():
    g = torch.Generator().manual_seed(7)
    out = _random_output((5,), z_dim=6, k=5, g=g, dtype=torch.float32)
    a = MDNRNN.sample(out, 1.0, torch.Generator().manual_seed(123))
    b = MDNRNN.sample(out, 1.0, torch.Generator().manual_seed(123))
    c = MDNRNN.sample(out, 1.0, torch.Generator().manual_seed(124))
    assert a.shape == (5, 6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the global RNG plays no part when a generator is given
    torch.manual_seed(0)
    d = MDNRNN.sample(out, 1.15, torch.Generator().manual_seed(9))
    torch.manual_seed(1)
    e = MDNRNN.sample(out, 1.15, torch.Generator().manual_seed(9))
    assert torch.equal(d, e)


def test_sample_at_tiny_temperature_is_the_most_likely_components_mean():
    g = torch.Generator().manual_seed(8)
    b, z_dim, k = 50, 4, 5
    out = _random_output((b,), z_dim, k, g, dtype=torch.float32)
    out = out._replace(logit_pi=out.logit_pi * 0.1)  # modest gaps: at tau = 1 any component may be drawn
    best = out.logit_pi.argmax(-1, keepdim=True)
    expected = out.mu.gather(-1, best).squeeze(-1)
    sample = MDNRNN.sample(out, 1e-4, torch.Generator().manual_seed(0))
    sigma = out.log_sigma.gather(-1, best).squeeze(-1).exp()
    assert torch.all((sample - expected).abs() <= 6 * sigma * math.sqrt(1e-4) + 1e-5)
    warm = MDNRNN.sample(out, 1.0, torch.Generator().manual_seed(0))
    assert (warm - expected).abs().max() > 0.5


@pytest.mark.parametrize("tau", [0.25, 1.0, 1.15, 2.0])
def test_sample_variance_of_one_component_is_sigma_squared_times_tau(tau):
    n, z_dim = 20_000, 3
    log_sigma = torch.tensor([-1.0, 0.0, 0.7])
    out = MDNOutput(
        logit_pi=torch.zeros(n, z_dim, 1),
        mu=torch.tensor([0.5, -2.0, 3.0]).expand(n, z_dim)[..., None],
        log_sigma=log_sigma.expand(n, z_dim)[..., None],
        reward=torch.zeros(n),
        done_logit=torch.zeros(n),
    )
    sample = MDNRNN.sample(out, tau, torch.Generator().manual_seed(10))
    expected_var = torch.exp(2 * log_sigma) * tau
    # the sample variance has relative sd sqrt(2 / n) = 1%: allow 5%
    torch.testing.assert_close(sample.var(0), expected_var, rtol=0.05, atol=0)
    torch.testing.assert_close(sample.mean(0), torch.tensor([0.5, -2.0, 3.0]), rtol=0, atol=0.05 * math.exp(0.7))


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_sample_component_frequencies_follow_softmax_of_logits_over_tau(tau):
    n = 20_000
    logits = torch.tensor([1.0, 0.0, -1.0])
    out = MDNOutput(
        logit_pi=logits.expand(n, 1, 3),
        mu=torch.tensor([-10.0, 0.0, 10.0]).expand(n, 1, 3),
        log_sigma=torch.full((n, 1, 3), -3.0),
        reward=torch.zeros(n),
        done_logit=torch.zeros(n),
    )
    sample = MDNRNN.sample(out, tau, torch.Generator().manual_seed(11))[:, 0]
    freq = torch.stack([(sample < -5).float().mean(), (sample.abs() < 5).float().mean(), (sample > 5).float().mean()])
    torch.testing.assert_close(freq, torch.softmax(logits / tau, 0), rtol=0, atol=0.02)


def test_sample_never_draws_a_zero_weight_component():
    n = 20_000
    out = MDNOutput(
        logit_pi=torch.tensor([0.0, -float("inf"), 0.0, -float("inf")]).expand(n, 1, 4),
        mu=torch.tensor([-10.0, 0.0, 10.0, 20.0]).expand(n, 1, 4),
        log_sigma=torch.full((n, 1, 4), -3.0),
        reward=torch.zeros(n),
        done_logit=torch.zeros(n),
    )
    sample = MDNRNN.sample(out, 1.0, torch.Generator().manual_seed(12))[:, 0]
    assert not ((sample.abs() < 5) | (sample > 15)).any()  # components 1 and 3 have weight 0
    assert abs(float((sample < -5).float().mean()) - 0.5) < 0.02


# --------------------------------------------------------------------------------------------
# Done head and numerical bounds


@pytest.mark.parametrize("weight", [1.0, 3.0, 10.0])
def test_done_weight_is_bce_pos_weight(weight):
    g = torch.Generator().manual_seed(12)
    model = _model_for()
    out, z_next, reward, done, _ = _batch(g)
    mask = torch.ones_like(done)
    terms = model.losses(out, z_next, reward, done, mask, done_weight=weight)
    expected = F.binary_cross_entropy_with_logits(out.done_logit, done.float(), pos_weight=torch.tensor(weight))
    torch.testing.assert_close(terms["done_loss"], expected)
    p = torch.sigmoid(out.done_logit)
    by_hand = -(weight * done * p.log() + (~done) * (1 - p).log()).mean()
    torch.testing.assert_close(terms["done_loss"], by_hand)
    # positive steps only: exactly `weight` times the unweighted loss; negative steps: unaffected
    ones, zeros = torch.ones_like(done), torch.zeros_like(done)
    pos = model.losses(out, z_next, reward, ones, mask, done_weight=weight)["done_loss"]
    pos1 = model.losses(out, z_next, reward, ones, mask, done_weight=1.0)["done_loss"]
    torch.testing.assert_close(pos, weight * pos1)
    neg = model.losses(out, z_next, reward, zeros, mask, done_weight=weight)["done_loss"]
    neg1 = model.losses(out, z_next, reward, zeros, mask, done_weight=1.0)["done_loss"]
    torch.testing.assert_close(neg, neg1)


def test_log_sigma_is_bounded_and_nll_finite_for_huge_inputs():
    torch.manual_seed(13)
    model = MDNRNN(4, 2, False, hidden=8, mixtures=3)
    with torch.no_grad():
        model.mdn.weight.mul_(1e4)  # makes the raw log sigma enormous in both directions
        z = torch.randn(3, 5, 4) * 1e6
        actions = torch.randn(3, 5, 2) * 1e6
        out, _ = model(z, actions)
        assert out.log_sigma.min() >= LOG_SIGMA_MIN and out.log_sigma.max() <= LOG_SIGMA_MAX
        assert out.log_sigma.min() < LOG_SIGMA_MIN + 0.5 and out.log_sigma.max() > LOG_SIGMA_MAX - 0.5
        z_next = torch.randn(3, 5, 4) * 100
        terms = model.losses(out, z_next, torch.zeros(3, 5), torch.zeros(3, 5), torch.ones(3, 5))
        for key in LOSS_KEYS:
            assert torch.isfinite(terms[key]), key
        # a target exactly at a mean with the smallest sigma: the NLL is bounded below
        tight = out._replace(log_sigma=torch.full_like(out.log_sigma, LOG_SIGMA_MIN))
        at_mean = MDNRNN.log_prob(tight, tight.mu[..., 0])
        assert torch.isfinite(at_mean).all()
        assert at_mean.max() <= 4 * (-LOG_SIGMA_MIN - 0.5 * math.log(2 * math.pi)) + 1e-3


def test_log_sigma_is_zero_at_zero_pre_activation():
    model = MDNRNN(2, 1, False, hidden=4, mixtures=2)
    with torch.no_grad():
        model.mdn.weight.zero_()
        model.mdn.bias.zero_()
        out, _ = model(torch.zeros(1, 1, 2), torch.zeros(1, 1, 1))
    torch.testing.assert_close(out.log_sigma, torch.zeros_like(out.log_sigma), atol=1e-6, rtol=0)
