"""M: an LSTM over [z_t, a_t] with a mixture-density head, a reward head and a done head.

For every latent dimension i, with h_t = LSTM([z_t, a_t], carry):

    p(z_{t+1, i} | h_t) = sum_k pi_ik N(z_{t+1, i}; mu_ik, sigma_ik^2),   pi_i = softmax(logit_pi_i)
    log p(z_{t+1} | h_t) = sum_i logsumexp_k ( log pi_ik + log N(z_{t+1, i}; mu_ik, sigma_ik^2) )

One module serves sequence training (``forward``) and batched single-step use in the dream and
the agent (``step``), with the same weights; the recurrent state ``carry = (h, c)`` is passed
explicitly so that many dreams can run side by side. It is a ``world_models.memory.Memory``: the
controller reads [z_t, h_t] (``features``), and a dream steps it one step at a time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, MixtureSameFamily, Normal

from world_models.memory import Imagined

# log sigma is kept in [-6, 2] by a smooth bound. Unbounded, a near-constant latent dimension
# drives sigma -> 0 and its NLL to hugely negative values and then NaN: the MDN instability
# users of the public code reported. sigma >= e^-6 ~ 0.0025 is far below the VAE's own noise.
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -6.0, 2.0

Carry = tuple[torch.Tensor, torch.Tensor]


class MDNOutput(NamedTuple):
    """Head outputs. Leading dims are (B, T) from ``forward`` and (B,) from ``step``."""

    logit_pi: torch.Tensor  # (..., z, K) unnormalised mixture weights
    mu: torch.Tensor  # (..., z, K)
    log_sigma: torch.Tensor  # (..., z, K), in [LOG_SIGMA_MIN, LOG_SIGMA_MAX]
    reward: torch.Tensor  # (...) predicted reward of the step
    done_logit: torch.Tensor  # (...) logit of "the episode ends with this step"


class MDNRNN(nn.Module):
    """M: (z_t, a_t, carry) -> mixture over z_{t+1}, reward, done; see the module docstring."""

    kind = "mdnrnn"
    max_jump = 1  # one LSTM step is one env step

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
        """The constructor arguments, for the checkpoint's JSON."""
        return {"z_dim": self.z_dim, "action_dim": self.action_dim, "discrete_actions": self.discrete_actions,
                "hidden": self.hidden, "mixtures": self.mixtures}

    def initial_carry(self, batch: int, device: torch.device | str = "cpu") -> Carry:
        """Zero LSTM state (h, c), each (1, B, hidden)."""
        dtype = self.mdn.weight.dtype
        return (torch.zeros(1, batch, self.hidden, device=device, dtype=dtype),
                torch.zeros(1, batch, self.hidden, device=device, dtype=dtype))

    # ---- the memory interface (world_models.memory.Memory) ----------------------------------
    def feature_dim(self, include_cell: bool = False) -> int:
        return self.z_dim + self.hidden * (2 if include_cell else 1)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> Carry:
        return self.initial_carry(batch, device)

    def observe(self, z: torch.Tensor, state: Carry, mask: torch.Tensor | None = None) -> Carry:
        return state  # the LSTM takes z in with the action, in ``step``

    def features(self, z: torch.Tensor, state: Carry, include_cell: bool = False) -> torch.Tensor:
        """[z, h] or [z, h, c] for a batch: (B, z) and carry (1, B, H) each -> (B, F)."""
        h, c = state
        return torch.cat([z, h[0], c[0]] if include_cell else [z, h[0]], dim=-1)

    def imagine(self, z: torch.Tensor, action: torch.Tensor, state: Carry, temperature: float,
                generator: torch.Generator | None, jump: int = 1) -> Imagined:
        if jump != 1:
            raise ValueError(f"an MDN-RNN dreams one step at a time, not {jump}")
        out, state = self.step(z, action, state)
        return Imagined(self.sample(out, temperature, generator), out.reward, out.done_logit, state, out)

    def expected_next(self, prediction: MDNOutput) -> torch.Tensor:
        """E[z_{t+1}] = sum_k pi_k mu_k per latent dim: (B, z)."""
        return (prediction.logit_pi.softmax(-1) * prediction.mu).sum(-1)

    def surprise(self, prediction: MDNOutput, z_next: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(prediction, z_next)

    def reset(self, state: Carry, mask: torch.Tensor) -> Carry:
        keep = ~mask[None, :, None]
        return tuple(torch.where(keep, part, torch.zeros_like(part)) for part in state)

    def select(self, state: Carry, keep: torch.Tensor) -> Carry:
        return tuple(part[:, keep].contiguous() for part in state)

    # ---- running the model ----------------------------------------------------------------
    def forward(self, z: torch.Tensor, actions: torch.Tensor, carry: Carry | None = None) -> tuple[MDNOutput, Carry]:
        """z (B, T, z), actions (B, T) long or (B, T, A) float, carry ((1, B, H) x 2) or None for zeros.

        Returns the predictions for step t+1 made at every t (leading dims (B, T)) and the final carry.
        """
        x = torch.cat([z, self._encode_action(actions, z.dtype)], dim=-1)
        h, carry = self.lstm(x, carry)
        return self._heads(h), carry

    def step(self, z: torch.Tensor, action: torch.Tensor, carry: Carry) -> tuple[MDNOutput, Carry]:
        """One step for a batch: z (B, z), action (B,) or (B, A) -> outputs with leading dim (B,), new carry."""
        out, carry = self.forward(z[:, None], action[:, None], carry)
        return MDNOutput(*(t.squeeze(1) for t in out)), carry

    def _encode_action(self, actions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.discrete_actions:
            return F.one_hot(actions.long(), self.action_dim).to(dtype)
        return actions.to(dtype)

    def _heads(self, h: torch.Tensor) -> MDNOutput:
        """h (..., H) -> MDNOutput with leading dims (...)."""
        logit_pi, mu, raw_log_sigma = self.mdn(h).view(*h.shape[:-1], self.z_dim, 3, self.mixtures).unbind(-2)
        reward, done_logit = self.reward_head(h).squeeze(-1), self.done_head(h).squeeze(-1)
        return MDNOutput(logit_pi, mu, _bound_log_sigma(raw_log_sigma), reward, done_logit)

    # ---- the mixture ----------------------------------------------------------------------
    @staticmethod
    def log_prob(out: MDNOutput, z_next: torch.Tensor) -> torch.Tensor:
        """log p(z_next | h), summed over latent dims: z_next (..., z) -> (...), e.g. (B, T).

        Written out with log_softmax and logsumexp over the K components, which never
        exponentiates a log density (the stable path the training loss uses). Arguments are not
        validated, so a diverged model gives a NaN loss (which training reports) instead of raising.
        """
        log_pi = F.log_softmax(out.logit_pi, dim=-1)
        log_normal = Normal(out.mu, out.log_sigma.exp(), validate_args=False).log_prob(z_next.unsqueeze(-1))
        return torch.logsumexp(log_pi + log_normal, dim=-1).sum(-1)

    @staticmethod
    def mixture(out: MDNOutput) -> MixtureSameFamily:
        """The per-dimension mixtures as a distribution with batch shape (..., z) and scalar events."""
        return MixtureSameFamily(Categorical(logits=out.logit_pi), Normal(out.mu, out.log_sigma.exp()))

    @staticmethod
    def sample(out: MDNOutput, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z_{t+1} (..., z) from outputs with leading dims (...), at temperature tau.

        tau sharpens or flattens the choice of component (pi / tau) and scales every component's
        spread (sigma * sqrt(tau)). All randomness comes from ``generator`` (on the outputs'
        device), so a seeded dream replays exactly.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        k = _sample_component(out.logit_pi / temperature, generator)
        mu = out.mu.gather(-1, k).squeeze(-1)
        sigma = out.log_sigma.gather(-1, k).squeeze(-1).exp() * math.sqrt(temperature)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + sigma * noise

    # ---- training -------------------------------------------------------------------------
    def losses(self, out: MDNOutput, z_next: torch.Tensor, reward: torch.Tensor, done: torch.Tensor,
               mask: torch.Tensor, done_weight: float = 10.0, reward_weight: float = 1.0,
               reward_event_weight: float = 0.0) -> dict[str, torch.Tensor]:
        """Losses of a batch of sequences; padding (mask False) never enters any of them.

        out from ``forward`` (leading dims (B, T)); z_next (B, T, z); reward, done, mask (B, T).
        Every term is a mean over the unmasked steps:

            nll         = -log p(z_{t+1} | h_t) / z_dim                        (per latent dim)
            reward_loss = (1 + reward_event_weight * |r_t|) (r_hat_t - r_t)^2
            done_loss   = BCE(done_logit_t, done_t), terminal steps weighted by done_weight
            loss        = nll + reward_weight * reward_loss + done_loss

        done_accuracy / done_precision (threshold p = 0.5; precision 0 when nothing is
        predicted done) are detached metrics.
        """
        mask = mask.bool()
        # targets at padded steps may be anything (even NaN): replace them so that neither the
        # values nor the gradients of the masked mean can see them
        z_next = torch.where(mask[..., None], z_next, torch.zeros_like(z_next))
        reward = torch.where(mask, reward, torch.zeros_like(reward))
        done = torch.where(mask, done.to(out.done_logit.dtype), torch.zeros_like(out.done_logit))

        nll = _masked_mean(-self.log_prob(out, z_next) / self.z_dim, mask)
        reward_loss = _masked_mean(reward_errors(out.reward, reward, reward_event_weight), mask)
        done_loss = _masked_mean(_weighted_bce(out.done_logit, done, done_weight), mask)
        return {
            "loss": nll + reward_weight * reward_loss + done_loss,
            "nll": nll,
            "reward_loss": reward_loss,
            "done_loss": done_loss,
            **_done_metrics(out.done_logit.detach(), done > 0.5, mask),
        }


def _sample_component(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One component index per mixture, drawn with probability softmax(logits): (..., K) -> (..., 1).

    Inverse CDF on the unnormalised weights: one uniform per mixture, scaled to the weights' sum.
    Same distribution as ``torch.multinomial`` of the softmax, ~3x faster for the dream's many
    small mixtures (``multinomial`` draws an exponential per component; benchmarks/mdn_sampling.py).
    """
    weights = (logits - logits.amax(-1, keepdim=True)).exp()
    cumulative = weights.cumsum(-1)
    u = torch.rand(cumulative[..., -1:].shape, generator=generator, device=logits.device, dtype=logits.dtype)
    # k = #{j < K-1 : u >= c_j}: P(k = j) = c_j - c_{j-1}; ">=" never lands on a zero-weight component
    return (u * cumulative[..., -1:] >= cumulative[..., :-1]).sum(-1, keepdim=True)


def _bound_log_sigma(raw: torch.Tensor) -> torch.Tensor:
    """Squash raw (-inf, inf) into (LOG_SIGMA_MIN, LOG_SIGMA_MAX) smoothly (gradients never vanish
    abruptly as with a hard clamp); shifted so that raw = 0 gives log sigma = 0 (sigma = 1) at init."""
    shift = math.log(-LOG_SIGMA_MIN / LOG_SIGMA_MAX)
    return LOG_SIGMA_MIN + (LOG_SIGMA_MAX - LOG_SIGMA_MIN) * torch.sigmoid(raw + shift)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values (B, T) over the True entries of mask (B, T); 0 when there are none."""
    kept = torch.where(mask, values, torch.zeros_like(values))
    return kept.sum() / mask.sum().clamp(min=1)


def reward_errors(predicted: torch.Tensor, reward: torch.Tensor, event_weight: float) -> torch.Tensor:
    """Per-entry squared error of the reward head, each step weighted 1 + event_weight * |r|.

    A reward that comes once in tens of thousands of steps (MyWayHome's vest) is invisible to a plain
    mean squared error, as rare deaths are to the done loss; the weight makes such steps count like
    a common event's. Weighted least squares fits p(1 + W) r / (1 + p W) where a reward r comes with
    probability p: it overstates rare rewards, on purpose (the dream should lead C toward them).
    event_weight 0 is the plain error, bit for bit."""
    error = F.mse_loss(predicted, reward, reduction="none")
    return error if event_weight == 0 else error * (1 + event_weight * reward.abs())


def _weighted_bce(done_logit: torch.Tensor, done: torch.Tensor, done_weight: float) -> torch.Tensor:
    """Per-entry BCE of done logits against float targets of the same dtype, terminal steps
    weighted ``done_weight`` (the heads' rare deaths would otherwise barely count)."""
    pos_weight = torch.as_tensor(done_weight, dtype=done.dtype, device=done.device)
    return F.binary_cross_entropy_with_logits(done_logit, done, pos_weight=pos_weight, reduction="none")


def _done_metrics(done_logit: torch.Tensor, done: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy, precision and recall of "done" predicted at p > 0.5 (logit > 0), over unmasked steps."""
    predicted, actual = (done_logit > 0) & mask, done & mask
    true_positive = (predicted & actual).sum()
    return {
        "done_accuracy": ((predicted == actual) & mask).sum() / mask.sum().clamp(min=1),
        "done_precision": true_positive / predicted.sum().clamp(min=1),
        "done_recall": true_positive / actual.sum().clamp(min=1),
    }
