"""M: an LSTM over [z_t, a_t] with a mixture-density head, a reward head and a done head.

For every latent dimension i, p(z_{t+1, i} | h_t) = sum_k pi_ik N(mu_ik, sigma_ik^2) (K Gaussians).
One module serves sequence training (``forward``) and batched single-step use in the dream and
the agent (``step``), with the same weights; the recurrent state ``carry = (h, c)`` is passed
explicitly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, MixtureSameFamily, Normal

# log sigma is kept in [-5, 2] with a smooth bound: an unbounded sigma lets the NLL of a
# near-constant latent dimension run to hugely negative values (then NaN), the instability
# users of the public code reported.
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -5.0, 2.0

Carry = tuple[torch.Tensor, torch.Tensor]


class MDNOutput(NamedTuple):
    """Head outputs; leading dims (B, T) from ``forward``, (B,) from ``step``."""

    logit_pi: torch.Tensor  # (..., z, K)
    mu: torch.Tensor  # (..., z, K)
    log_sigma: torch.Tensor  # (..., z, K)
    reward: torch.Tensor  # (...)
    done_logit: torch.Tensor  # (...)


class MDNRNN(nn.Module):
    def __init__(self, z_dim: int, action_dim: int, discrete_actions: bool, hidden: int = 256,
                 mixtures: int = 5) -> None:
        super().__init__()
        self.z_dim, self.action_dim, self.discrete_actions = z_dim, action_dim, discrete_actions
        self.hidden, self.mixtures = hidden, mixtures
        self.lstm = nn.LSTM(z_dim + action_dim, hidden, batch_first=True)
        self.mdn = nn.Linear(hidden, 3 * z_dim * mixtures)
        self.reward_head = nn.Linear(hidden, 1)
        self.done_head = nn.Linear(hidden, 1)

    @property
    def config(self) -> dict:
        return {"z_dim": self.z_dim, "action_dim": self.action_dim, "discrete_actions": self.discrete_actions,
                "hidden": self.hidden, "mixtures": self.mixtures}

    def initial_carry(self, batch: int, device: torch.device | str = "cpu") -> Carry:
        zeros = torch.zeros(1, batch, self.hidden, device=device)
        return zeros, zeros.clone()

    def _encode_action(self, actions: torch.Tensor) -> torch.Tensor:
        if self.discrete_actions:
            return F.one_hot(actions.long(), self.action_dim).float()
        return actions.float()

    def _heads(self, h: torch.Tensor) -> MDNOutput:
        params = self.mdn(h).view(*h.shape[:-1], self.z_dim, 3, self.mixtures)
        logit_pi, mu, raw_log_sigma = params.unbind(-2)
        span = LOG_SIGMA_MAX - LOG_SIGMA_MIN
        log_sigma = LOG_SIGMA_MIN + span * torch.sigmoid(raw_log_sigma + math.log(-LOG_SIGMA_MIN / LOG_SIGMA_MAX))
        return MDNOutput(logit_pi, mu, log_sigma, self.reward_head(h).squeeze(-1), self.done_head(h).squeeze(-1))

    def forward(self, z: torch.Tensor, actions: torch.Tensor, carry: Carry | None = None) -> tuple[MDNOutput, Carry]:
        """z (B, T, z), actions (B, T) or (B, T, A) -> predictions for step t+1 at every t, final carry."""
        h, carry = self.lstm(torch.cat([z, self._encode_action(actions)], dim=-1), carry)
        return self._heads(h), carry

    def step(self, z: torch.Tensor, actions: torch.Tensor, carry: Carry) -> tuple[MDNOutput, Carry]:
        """One step for a batch: z (B, z), actions (B,) or (B, A) -> outputs with shapes (B, ...)."""
        out, carry = self.forward(z[:, None], actions[:, None], carry)
        return MDNOutput(*(t.squeeze(1) for t in out)), carry

    @staticmethod
    def log_prob(out: MDNOutput, z_next: torch.Tensor) -> torch.Tensor:
        """log p(z_next) summed over latent dims, by log-sum-exp over the K components: (...)."""
        log_pi = F.log_softmax(out.logit_pi, dim=-1)
        log_normal = Normal(out.mu, out.log_sigma.exp()).log_prob(z_next.unsqueeze(-1))
        return torch.logsumexp(log_pi + log_normal, dim=-1).sum(-1)

    @staticmethod
    def mixture(out: MDNOutput) -> MixtureSameFamily:
        """The same per-dimension mixtures as a torch.distributions object (batch shape (..., z))."""
        return MixtureSameFamily(Categorical(logits=out.logit_pi), Normal(out.mu, out.log_sigma.exp()))

    @staticmethod
    def sample(out: MDNOutput, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """z_{t+1} at temperature tau: logits / tau and sigma * sqrt(tau); all randomness from ``generator``."""
        probs = F.softmax(out.logit_pi / temperature, dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        k = torch.multinomial(flat, 1, generator=generator).view(*probs.shape[:-1], 1)
        mu = out.mu.gather(-1, k).squeeze(-1)
        sigma = out.log_sigma.gather(-1, k).squeeze(-1).exp() * math.sqrt(temperature)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + sigma * noise

    def losses(self, out: MDNOutput, z_next: torch.Tensor, reward: torch.Tensor, done: torch.Tensor,
               mask: torch.Tensor, done_weight: float = 10.0, reward_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Masked losses over (B, T): padding (mask False) never enters any of them.

        nll: -log p(z_{t+1}) per latent dim; reward: MSE; done: BCE with terminal steps
        weighted by ``done_weight``; loss = nll + reward_weight * reward + done.
        """
        mask = mask.bool()
        steps = mask.sum().clamp(min=1)
        masked_mean = lambda x: torch.where(mask, x, torch.zeros_like(x)).sum() / steps  # noqa: E731
        safe_z = torch.where(mask[..., None], z_next, torch.zeros_like(z_next))
        nll = masked_mean(-self.log_prob(out, safe_z) / self.z_dim)
        reward_loss = masked_mean((out.reward - torch.where(mask, reward, 0.0)) ** 2)
        target = torch.where(mask, done.float(), 0.0)
        pos_weight = torch.tensor(done_weight, device=target.device)
        done_loss = masked_mean(F.binary_cross_entropy_with_logits(out.done_logit, target, pos_weight=pos_weight,
                                                                   reduction="none"))
        predicted = (out.done_logit > 0) & mask
        actual = (target > 0.5) & mask
        true_positive = (predicted & actual).sum()
        return {
            "loss": nll + reward_weight * reward_loss + done_loss,
            "nll": nll.detach(),
            "reward_loss": reward_loss.detach(),
            "done_loss": done_loss.detach(),
            "done_accuracy": ((predicted == actual) & mask).sum() / steps,
            "done_precision": true_positive / predicted.sum().clamp(min=1),
            "done_recall": true_positive / actual.sum().clamp(min=1),
        }
