"""Natural policy gradient (Kakade 2001) with TRPO-style step size and line search.

    g = E[grad log pi(a|s) A(s, a)],  F = E[grad log pi grad log pi^T]
    x = F^-1 g (conjugate gradient),  step = sqrt(2 delta / x^T F x) x

Fisher-vector products are Hessian-vector products of the mean KL(pi_old || pi) with
pi_old held fixed (double backprop); F is never materialised.

The policy shares :class:`agents.controller.Controller`'s parameter layout, so a trained
policy deploys as a deterministic controller (argmax / mean) via ``to_controller()``.
Continuous policies are Gaussian in the controller's *pre-tanh* output space: ``act`` and
``npg_update`` work with those raw values, ``env_action`` squashes them into the action
box. The squash is a fixed bijection, so the policy gradient in raw space is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal, kl_divergence
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from agents.controller import Controller, ControllerSpec, squash

# A line-search step is accepted when mean KL(old || new) <= KL_TOLERANCE * max_kl.
# TRPO's quadratic model of the KL is only second-order accurate, so the exact KL of the
# full step can overshoot delta a little; 1.5x is the slack used by Schulman's code.
KL_TOLERANCE = 1.5


class StochasticPolicy(nn.Module):
    """Stochastic policy on world-model features, same body as a :class:`Controller`.

    Discrete: ``Categorical(logits=body(features))``.
    Continuous: ``Independent(Normal(body(features), exp(log_std)), 1)`` in pre-tanh space,
    with a state-independent ``log_std [A]``.
    Parameter vector = controller vector ``[num_params]`` (+ ``log_std [A]`` if continuous).
    """

    def __init__(self, spec: ControllerSpec, init_log_std: float = 0.0, init_scale: float = 0.01) -> None:
        super().__init__()
        self.spec = spec
        self.body = Controller(spec)
        last = self.body.net[-1]
        with torch.no_grad():
            # Near-uniform / zero-mean start: large initial logits would make the first
            # policies nearly deterministic and their gradients vanish.
            last.weight.mul_(init_scale)
            last.bias.zero_()
        if not spec.discrete:
            # Held in a child module registered after ``body``: a module's own parameters
            # come before its children's in parameters(), which would put log_std first.
            self.noise = nn.Module()
            self.noise.log_std = nn.Parameter(torch.full((spec.action_dim,), float(init_log_std)))

    @property
    def log_std(self) -> Tensor:
        """State-independent log standard deviation ``[A]`` (continuous policies only)."""
        return self.noise.log_std

    def distribution(self, features: Tensor) -> Distribution:
        """pi(. | s) for features ``[N, F]``; batch shape ``[N]``, event ``[]`` or ``[A]``."""
        out = self.body(features)
        if self.spec.discrete:
            return Categorical(logits=out)
        return Independent(Normal(out, self.log_std.exp().expand_as(out)), 1)

    forward = distribution

    @torch.no_grad()
    def act(
        self, features: Tensor, generator: torch.Generator | None = None, deterministic: bool = False
    ) -> Tensor:
        """Sample actions: LongTensor ``[N]`` or raw (pre-tanh) float ``[N, A]``.

        ``deterministic`` gives argmax / mean, i.e. what ``to_controller()`` would do.
        ``generator`` makes sampling reproducible (torch.distributions cannot take one).
        """
        out = self.body(features)
        if self.spec.discrete:
            if deterministic:
                return out.argmax(dim=-1)
            probs = torch.softmax(out, dim=-1)
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if deterministic:
            return out
        noise = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        return out + self.log_std.exp() * noise

    def env_action(self, actions: Tensor) -> Tensor:
        """Actions for the environment: discrete unchanged, continuous squashed into the box."""
        return actions if self.spec.discrete else squash(self.spec, actions)

    def to_controller(self) -> Controller:
        """Deterministic controller (argmax / tanh(mean)) with this policy's body weights."""
        p = next(self.body.parameters())
        return Controller(self.spec).to(dtype=p.dtype, device=p.device).load_vector(self.body.to_vector())


class ValueFunction(nn.Module):
    """Small MLP baseline: features ``[N, F]`` -> values ``[N]``."""

    def __init__(self, feature_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).squeeze(-1)


def fit_value(
    value_fn: ValueFunction,
    features: Tensor,
    returns: Tensor,
    epochs: int = 5,
    lr: float = 1e-3,
    batch: int = 64,
    generator: torch.Generator | None = None,
) -> float:
    """A few Adam epochs of MSE regression of ``value_fn(features [N, F])`` on ``returns [N]``.

    Returns the mean loss of the last epoch.
    """
    opt = torch.optim.Adam(value_fn.parameters(), lr=lr)
    features, returns = features.detach(), returns.detach()
    n = features.shape[0]
    last = float("nan")
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        total = 0.0
        for idx in perm.split(batch):
            loss = nn.functional.mse_loss(value_fn(features[idx]), returns[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        last = total / n
    return last


def gae(rewards: Tensor, values: Tensor, dones: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation.

    Args:
        rewards: ``[T, N]``; values: ``[T + 1, N]`` (last row bootstraps the cut-off tail);
        dones: ``[T, N]``, a done at t means the episode ended after step t, so
        ``values[t + 1]`` (a new episode's state) is not used for step t.
    Returns:
        ``(advantages [T, N], returns [T, N])`` with ``returns = advantages + values[:-1]``.
    """
    not_done = 1.0 - dones.to(rewards.dtype)
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * values[t + 1] * not_done[t] - values[t]
        running = delta + gamma * lam * not_done[t] * running
        adv[t] = running
    return adv, adv + values[:-1]


def flat_grad(
    output: Tensor, params: Sequence[Tensor], create_graph: bool = False, retain_graph: bool | None = None
) -> Tensor:
    """Gradient of scalar ``output`` w.r.t. ``params`` as one flat vector (zeros where unused)."""
    grads = torch.autograd.grad(
        output, params, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    return parameters_to_vector(
        [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    )


def detach_distribution(dist: Distribution) -> Distribution:
    """Same distribution with its parameters cut from the graph (pi_old)."""
    if isinstance(dist, Categorical):
        return Categorical(logits=dist.logits.detach())
    if isinstance(dist, Independent) and isinstance(dist.base_dist, Normal):
        base = dist.base_dist
        return Independent(Normal(base.loc.detach(), base.scale.detach()), dist.reinterpreted_batch_ndims)
    raise TypeError(f"unsupported distribution {type(dist).__name__}")


def mean_kl(policy: StochasticPolicy, features: Tensor, old: Distribution) -> Tensor:
    """Mean over states of KL(old || policy), scalar."""
    return kl_divergence(old, policy.distribution(features)).mean()


def fisher_vector_product(policy: StochasticPolicy, features: Tensor, v: Tensor, damping: float) -> Tensor:
    """``(F + damping I) v`` for flat ``v [num_policy_params]``; F = Hessian of mean KL at pi_old.

    The KL's gradient is zero at pi_old = pi but its Hessian is the Fisher matrix, so the
    product comes from differentiating ``grad(KL) . v`` once more.
    """
    params = list(policy.parameters())
    dist = policy.distribution(features)
    kl = kl_divergence(detach_distribution(dist), dist).mean()
    g = flat_grad(kl, params, create_graph=True)
    return flat_grad(g @ v.detach(), params) + damping * v


def conjugate_gradient(
    Avp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, residual_tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for SPD A given only products ``Avp(v) = A v``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= residual_tol:
            break
        ap = Avp(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclass
class NPGConfig:
    """Step size, solver and advantage settings (defaults from TRPO/NPG practice)."""

    max_kl: float = 0.01
    cg_iters: int = 10
    damping: float = 0.1
    line_search: bool = True
    backtrack_ratio: float = 0.5
    max_backtracks: int = 10
    gamma: float = 0.99
    lam: float = 0.95
    value_epochs: int = 5
    value_lr: float = 1e-3
    value_batch: int = 64


def _set_params(policy: nn.Module, vector: Tensor) -> None:
    with torch.no_grad():
        vector_to_parameters(vector, policy.parameters())


def _surrogate(
    policy: StochasticPolicy, features: Tensor, actions: Tensor, adv: Tensor, logp_old: Tensor
) -> Tensor:
    ratio = torch.exp(policy.distribution(features).log_prob(actions) - logp_old)
    return (ratio * adv).mean()


def npg_update(
    policy: StochasticPolicy, features: Tensor, actions: Tensor, advantages: Tensor, config: NPGConfig
) -> dict[str, float]:
    """One natural-gradient step on a batch.

    Args:
        features: ``[N, F]``; actions: ``[N]`` (discrete) or raw ``[N, A]`` as from ``policy.act``;
        advantages: ``[N]`` (normalised here).
    Returns:
        dict with ``kl`` (mean KL old||new after the update), ``surrogate_improvement``,
        ``expected_improvement`` (g . full step), ``step_fraction`` (0 when the step was
        rejected and the old parameters restored) and ``grad_norm``.
    """
    features, actions = features.detach(), actions.detach()
    adv = advantages.detach()
    adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
    params = list(policy.parameters())
    old_vec = parameters_to_vector(params).detach().clone()
    with torch.no_grad():
        old_dist = detach_distribution(policy.distribution(features))
        logp_old = old_dist.log_prob(actions)

    surr_old = _surrogate(policy, features, actions, adv, logp_old)
    g = flat_grad(surr_old, params)
    surr_old = surr_old.item()
    info = {
        "kl": 0.0,
        "surrogate_improvement": 0.0,
        "expected_improvement": 0.0,
        "step_fraction": 0.0,
        "grad_norm": g.norm().item(),
    }
    if info["grad_norm"] < 1e-12:
        return info

    fvp = lambda v: fisher_vector_product(policy, features, v, config.damping)
    x = conjugate_gradient(fvp, g, config.cg_iters)
    xfx = x @ fvp(x)
    if not torch.isfinite(xfx) or xfx <= 0:
        return info
    step = torch.sqrt(2 * config.max_kl / xfx) * x
    info["expected_improvement"] = (g @ step).item()

    fractions = (
        [config.backtrack_ratio**k for k in range(config.max_backtracks)] if config.line_search else [1.0]
    )
    for frac in fractions:
        _set_params(policy, old_vec + frac * step)
        with torch.no_grad():
            kl = mean_kl(policy, features, old_dist).item()
            improve = _surrogate(policy, features, actions, adv, logp_old).item() - surr_old
        if not config.line_search or (kl <= KL_TOLERANCE * config.max_kl and improve > 0):
            info.update(kl=kl, surrogate_improvement=improve, step_fraction=frac)
            return info
    _set_params(policy, old_vec)
    return info
