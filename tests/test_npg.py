"""Natural policy gradient: Fisher products against explicit Fisher matrices, CG, GAE, KL bound."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import kl_divergence
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from agents.controller import ControllerSpec
from agents.npg import (
    KL_TOLERANCE,
    NPGConfig,
    StochasticPolicy,
    ValueFunction,
    conjugate_gradient,
    detach_distribution,
    fisher_vector_product,
    fit_value,
    gae,
    npg_update,
)

DAMPING = 0.1


def _policy(spec: ControllerSpec, seed: int = 0) -> StochasticPolicy:
    torch.manual_seed(seed)
    # init_scale 1 so the policy is far from uniform and F is not a multiple of I.
    policy = StochasticPolicy(spec, init_log_std=-0.3, init_scale=1.0).double()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


def _explicit_categorical_fisher(policy: StochasticPolicy, features: torch.Tensor) -> torch.Tensor:
    """F = mean_s sum_a pi(a|s) grad log pi(a|s) grad log pi(a|s)^T, enumerating actions."""
    params = list(policy.parameters())
    n_params = sum(p.numel() for p in params)
    fisher = torch.zeros(n_params, n_params, dtype=torch.float64)
    for s in range(features.shape[0]):
        dist = policy.distribution(features[s : s + 1])
        for a in range(policy.spec.action_dim):
            logp = dist.log_prob(torch.tensor([a]))[0]
            g = parameters_to_vector(torch.autograd.grad(logp, params, retain_graph=True))
            fisher += dist.probs[0, a].detach() * torch.outer(g, g)
    return fisher / features.shape[0]


def _kl_hessian(policy: StochasticPolicy, features: torch.Tensor) -> torch.Tensor:
    """Hessian of mean KL(pi_old || pi_theta) w.r.t. the flat theta, at theta = theta_old."""
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for _, p in policy.named_parameters()]
    theta0 = parameters_to_vector(policy.parameters()).detach()
    old = detach_distribution(policy.distribution(features))

    def kl(theta: torch.Tensor) -> torch.Tensor:
        chunks = theta.split([s.numel() for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return kl_divergence(old, functional_call(policy, params, (features,))).mean()

    return torch.autograd.functional.hessian(kl, theta0)


@pytest.mark.parametrize("hidden", [0, 4])
def test_fvp_matches_explicit_categorical_fisher(hidden: int) -> None:
    spec = ControllerSpec(feature_dim=3, action_dim=4, discrete=True, hidden=hidden)
    policy = _policy(spec)
    features = torch.randn(6, 3, dtype=torch.float64)
    fisher = _explicit_categorical_fisher(policy, features)
    v = torch.randn(fisher.shape[0], dtype=torch.float64)
    fvp = fisher_vector_product(policy, features, v, DAMPING)
    torch.testing.assert_close(fvp, fisher @ v + DAMPING * v, atol=1e-5, rtol=1e-5)
    # Also equals the KL Hessian, and is not the identity (the public-port bug).
    torch.testing.assert_close(fvp, _kl_hessian(policy, features) @ v + DAMPING * v, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fvp, v, atol=1e-3)
    assert not torch.allclose(fvp, (1 + DAMPING) * v, atol=1e-3)


def test_fvp_matches_analytic_gaussian_fisher() -> None:
    # Linear Gaussian: mean = W x + b, state-independent log_std. Analytic Fisher:
    # mean block = mean_s J_s^T diag(1/sigma^2) J_s, log_std block = 2 I, no cross terms.
    spec = ControllerSpec(feature_dim=3, action_dim=2, discrete=False)
    policy = _policy(spec)
    features = torch.randn(7, 3, dtype=torch.float64)
    n_body = spec.num_params
    inv_var = torch.exp(-2 * policy.log_std.detach())
    fisher = torch.zeros(n_body + 2, n_body + 2, dtype=torch.float64)
    for x in features:
        # d mean / d [W (row-major [A, F]), b]
        jac = torch.cat([torch.kron(torch.eye(2, dtype=torch.float64), x.unsqueeze(0)), torch.eye(2)], dim=1)
        fisher[:n_body, :n_body] += jac.T @ torch.diag(inv_var) @ jac / len(features)
    fisher[n_body:, n_body:] = 2 * torch.eye(2)
    v = torch.randn(n_body + 2, dtype=torch.float64)
    fvp = fisher_vector_product(policy, features, v, DAMPING)
    torch.testing.assert_close(fvp, fisher @ v + DAMPING * v, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fvp, v, atol=1e-3)


def test_fvp_matches_kl_hessian_gaussian_hidden() -> None:
    spec = ControllerSpec(feature_dim=3, action_dim=2, discrete=False, hidden=4)
    policy = _policy(spec, seed=3)
    features = torch.randn(5, 3, dtype=torch.float64)
    hessian = _kl_hessian(policy, features)
    v = torch.randn(hessian.shape[0], dtype=torch.float64)
    torch.testing.assert_close(
        fisher_vector_product(policy, features, v, DAMPING), hessian @ v + DAMPING * v, atol=1e-5, rtol=1e-5
    )


def test_conjugate_gradient_solves_spd_system() -> None:
    torch.manual_seed(0)
    m = torch.randn(6, 6, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=20)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), atol=1e-8, rtol=1e-8)


def test_gae_hand_computed_with_done() -> None:
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5], [2.0]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    # Step 2: bootstraps from values[3]. Step 1: done, values[2] unused. Step 0: normal.
    d2 = 3.0 + 0.9 * 2.0 - 1.5
    d1 = 2.0 - 1.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a2 = d2
    a1 = d1  # the done stops the advantage recursion too
    a0 = d0 + gamma * lam * a1
    adv, ret = gae(rewards, values, dones, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor([[a0], [a1], [a2]]))
    torch.testing.assert_close(ret, adv + values[:-1])


def test_fit_value_reduces_loss() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0])
    vf = ValueFunction(4, hidden=32)
    before = torch.mean((vf(x) - y) ** 2).item()
    fit_value(vf, x, y, epochs=30, lr=1e-2, batch=64)
    assert torch.mean((vf(x) - y) ** 2).item() < 0.3 * before


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
# Small damping with a hidden layer (seed 2) makes the quadratic KL model overshoot the
# full step several-fold, so only the line search keeps these within the bound.
@pytest.mark.parametrize(("max_kl", "damping"), [(0.01, 0.1), (0.1, 1e-3)])
def test_npg_update_respects_kl_bound(discrete: bool, seed: int, max_kl: float, damping: float) -> None:
    spec = ControllerSpec(feature_dim=4, action_dim=3, discrete=discrete, hidden=5 if seed == 2 else 0)
    torch.manual_seed(seed)
    # Full-size initial weights: a far-from-uniform policy, where the KL is least quadratic.
    policy = StochasticPolicy(spec, init_scale=1.0)
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(128, 4)
    actions = policy.act(features, generator=gen)
    advantages = torch.randn(128) + features[:, 0]
    config = NPGConfig(max_kl=max_kl, damping=damping)
    before = parameters_to_vector(policy.parameters()).clone()
    info = npg_update(policy, features, actions, advantages, config)
    assert info["grad_norm"] > 0
    assert 0 < info["step_fraction"] <= 1
    assert info["kl"] <= KL_TOLERANCE * config.max_kl
    assert info["surrogate_improvement"] > 0
    # The reported KL is the KL of the parameters actually left in the policy.
    old = StochasticPolicy(spec, init_scale=1.0)
    torch.nn.utils.vector_to_parameters(before, old.parameters())
    with torch.no_grad():
        kl = kl_divergence(old.distribution(features), policy.distribution(features)).mean().item()
    assert kl == pytest.approx(info["kl"], rel=1e-4, abs=1e-7)


def test_npg_update_restores_when_no_step_is_acceptable() -> None:
    spec = ControllerSpec(feature_dim=4, action_dim=3, discrete=True)
    torch.manual_seed(0)
    policy = StochasticPolicy(spec)
    features = torch.randn(64, 4)
    actions = policy.act(features)
    before = parameters_to_vector(policy.parameters()).clone()
    # No step size is allowed to be tried, so the update must leave the policy untouched.
    info = npg_update(policy, features, actions, torch.randn(64), NPGConfig(max_backtracks=0))
    assert info["step_fraction"] == 0 and info["kl"] == 0
    assert torch.equal(parameters_to_vector(policy.parameters()), before)


def test_npg_learns_contextual_bandit() -> None:
    torch.manual_seed(0)
    feature_dim, n_actions, batch = 5, 3, 512
    w_true = torch.randn(feature_dim, n_actions)
    spec = ControllerSpec(feature_dim=feature_dim, action_dim=n_actions, discrete=True)
    policy = StochasticPolicy(spec)
    gen = torch.Generator().manual_seed(0)
    eval_x = torch.randn(2048, feature_dim)
    best = (eval_x @ w_true).argmax(-1)

    def expected_reward() -> float:
        with torch.no_grad():
            return policy.distribution(eval_x).probs.gather(1, best[:, None]).mean().item()

    start = expected_reward()
    config = NPGConfig(max_kl=0.05)
    for _ in range(15):
        x = torch.randn(batch, feature_dim, generator=gen)
        a = policy.act(x, generator=gen)
        r = (a == (x @ w_true).argmax(-1)).float()
        npg_update(policy, x, a, r - r.mean(), config)
    end = expected_reward()
    assert start < 0.45
    assert end > start + 0.3
    # Deployed as a deterministic controller, it picks the best action most of the time.
    assert (policy.to_controller().act(eval_x) == best).float().mean() > 0.8


def test_stochastic_policy_deploys_as_controller() -> None:
    for spec in [
        ControllerSpec(feature_dim=4, action_dim=3, discrete=True, hidden=3),
        ControllerSpec(
            feature_dim=4, action_dim=2, discrete=False, action_low=(-2.0, 0.0), action_high=(2.0, 1.0)
        ),
    ]:
        policy = StochasticPolicy(spec, init_scale=1.0)
        x = torch.randn(10, 4)
        ctrl = policy.to_controller()
        vec = parameters_to_vector(policy.parameters())
        assert vec.numel() == spec.num_params + (0 if spec.discrete else spec.action_dim)
        assert torch.equal(vec[: spec.num_params], ctrl.to_vector())
        mode = policy.act(x, deterministic=True)
        torch.testing.assert_close(policy.env_action(mode), ctrl.act(x))
        sample = policy.act(x, generator=torch.Generator().manual_seed(1))
        again = policy.act(x, generator=torch.Generator().manual_seed(1))
        assert torch.equal(sample, again)
