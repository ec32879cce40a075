"""TD-VAE (Gregor et al., ICLR 2019) over V's latents, conditioned on actions: a memory that
jumps several steps at once.

Notation: z_t is V's latent (the paper's observation x_t); s_t is TD-VAE's own latent state
(the paper's z). With enc(a) the one-hot (discrete) or raw (continuous) action and
enc(a_{-1}) = 0:

    b_t = LSTM(b_{t-1}, [z_t, enc(a_{t-1})])                 belief: a summary of z_0..t, a_0..t-1
    p_B(s_t | b_t)                                           what the belief says the state is
    q(s_t1 | s_t2, b_t1, b_t2)                               smoothing posterior, backwards in time
    p_T(s_t2 | s_t1, delta, abar),  mean = s_t1 + f(...)     jumpy transition, delta = t2 - t1
    p_D(z_t | s_t)                                           decoder into V's latent space

abar is the mean of enc(a_t) over a_t1..a_t2-1 (an action held over the jump: its encoding).
Reward (the jump's sum) and done ("the episode ends within the jump") are heads on
[s_t1, onehot(delta - 1), abar]. All densities are diagonal Gaussians with smoothly bounded
log sigmas (as M's). A dream moves in state space with p_T and never observes again.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

from world_models.mdnrnn import _bound_log_sigma, _done_metrics, _masked_mean, _weighted_bce, reward_errors
from world_models.memory import Imagined

if TYPE_CHECKING:  # training's module pulls in V and the data pipeline, which the model itself never needs
    from world_models.train_mdnrnn import SequenceBatch

ELBO_TERMS = ("decoder_nll", "kl", "belief_log_prob", "transition_nll")


class TDVAEState(NamedTuple):
    """Per-env memory state; leading batch dim B (dim 1 of h and c, as torch's LSTM wants)."""

    h: torch.Tensor  # (1, B, belief) the belief b_t
    c: torch.Tensor  # (1, B, belief) the LSTM cell
    action: torch.Tensor  # (B, A) enc(a_{t-1}), the next LSTM input beside z_t
    s: torch.Tensor  # (B, state_dim) the current state estimate (p_B's mean; p_T's draw in a dream)


class TDVAEPrediction(NamedTuple):
    """A one-step (delta = 1) prediction of ``step``; leading dim (B,)."""

    reward: torch.Tensor  # (B,)
    done_logit: torch.Tensor  # (B,)
    s_mu: torch.Tensor  # (B, state_dim) p_T's mean of the next state
    s_sigma: torch.Tensor  # (B, state_dim)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                         nn.Linear(hidden, outputs))


def _gaussian(mu: torch.Tensor, raw_log_sigma: torch.Tensor) -> Independent:
    """Diagonal Gaussian over the last dim, in float32 (autocast gives the MLPs' outputs in bf16).
    Not validated, so a diverged model gives a NaN loss (which training reports) instead of raising."""
    sigma = _bound_log_sigma(raw_log_sigma.float()).exp()
    return Independent(Normal(mu.float(), sigma, validate_args=False), 1, validate_args=False)


def _draw(dist: Independent, noise: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Reparameterised sample mu + sigma * scale * noise (noise drawn by the caller's generator)."""
    return dist.base_dist.loc + dist.base_dist.scale * scale * noise


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normals drawn on the generator's device (a CPU batch generator may drive a CUDA
    model) and moved next to ``like``."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


class TDVAE(nn.Module):
    """The TD-VAE memory; see the module docstring. Implements ``world_models.memory.Memory``."""

    kind = "tdvae"

    def __init__(self, z_dim: int, action_dim: int, discrete_actions: bool, belief: int = 256,
                 state_dim: int = 32, hidden: int = 256, max_jump: int = 4) -> None:
        super().__init__()
        self.z_dim, self.action_dim, self.discrete_actions = z_dim, action_dim, discrete_actions
        self.belief, self.state_dim, self.hidden, self.max_jump = belief, state_dim, hidden, max_jump
        jump_input = state_dim + max_jump + action_dim  # [s, onehot(delta - 1), abar]
        self.lstm = nn.LSTM(z_dim + action_dim, belief, batch_first=True)
        self.belief_net = _mlp(belief, hidden, 2 * state_dim)
        self.smoothing_net = _mlp(state_dim + 2 * belief, hidden, 2 * state_dim)
        self.transition_net = _mlp(jump_input, hidden, 2 * state_dim)
        self.decoder_net = _mlp(state_dim, hidden, 2 * z_dim)
        self.head_net = _mlp(jump_input, hidden, 2)  # reward, done logit

    @property
    def config(self) -> dict:
        """The constructor arguments, for the checkpoint's JSON."""
        return {"z_dim": self.z_dim, "action_dim": self.action_dim, "discrete_actions": self.discrete_actions,
                "belief": self.belief, "state_dim": self.state_dim, "hidden": self.hidden,
                "max_jump": self.max_jump}

    # ---- the distributions ------------------------------------------------------------------
    def belief_dist(self, b: torch.Tensor) -> Independent:
        """p_B(s | b): b (..., belief) -> event (state_dim,)."""
        return _gaussian(*self.belief_net(b).chunk(2, -1))

    def smoothing_dist(self, s2: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor) -> Independent:
        """q(s_t1 | s_t2, b_t1, b_t2)."""
        return _gaussian(*self.smoothing_net(torch.cat([s2, b1, b2], -1)).chunk(2, -1))

    def transition_dist(self, s1: torch.Tensor, delta: torch.Tensor, abar: torch.Tensor) -> Independent:
        """p_T(s_t2 | s_t1, delta, abar): s1 (..., S), delta (...) long in [1, max_jump], abar (..., A)."""
        mu, raw_log_sigma = self.transition_net(self._jump_input(s1, delta, abar)).chunk(2, -1)
        return _gaussian(s1.float() + mu.float(), raw_log_sigma)  # residual: a short jump moves little

    def decoder_dist(self, s: torch.Tensor) -> Independent:
        """p_D(z | s): s (..., S) -> event (z_dim,)."""
        return _gaussian(*self.decoder_net(s).chunk(2, -1))

    def heads(self, s1: torch.Tensor, delta: torch.Tensor, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward summed over the jump, done logit of "the episode ends within it"), each (...)."""
        reward, done_logit = self.head_net(self._jump_input(s1, delta, abar)).float().unbind(-1)
        return reward, done_logit

    def _jump_input(self, s: torch.Tensor, delta: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        code = F.one_hot(delta.long() - 1, self.max_jump).to(s.dtype)
        return torch.cat([s, code, abar.to(s.dtype)], -1)

    def encode_action(self, actions: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """enc(a): (...) long -> one-hot (..., A) for discrete actions; (..., A) as is for continuous."""
        if self.discrete_actions:
            return F.one_hot(actions.long(), self.action_dim).to(dtype)
        return actions.to(dtype)

    # ---- filtering ----------------------------------------------------------------------------
    def beliefs(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """b_t for every t: z (B, T, z), actions (B, T) or (B, T, A) with actions[:, t] = a_t
        (the input at t is a_{t-1}, so the last action is unused) -> (B, T, belief)."""
        encoded = self.encode_action(actions, z.dtype)
        previous = torch.cat([torch.zeros_like(encoded[:, :1]), encoded[:, :-1]], 1)
        return self._run_lstm(z, previous)

    def _run_lstm(self, z: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        b, _ = self.lstm(torch.cat([z, previous.to(z.dtype)], -1))
        return b

    # ---- training -----------------------------------------------------------------------------
    def elbo_terms(self, z2: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, delta: torch.Tensor,
                   abar: torch.Tensor, noise2: torch.Tensor, noise1: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four terms of REFERENCE.md's loss at each position (leading dims (...)), not averaged:

            s2 = draw of p_B(b_t2) with noise2;  s1 = draw of q(s2, b_t1, b_t2) with noise1
            decoder_nll     = -log p_D(z_t2 | s2)
            kl              = KL(q(. | s2, b_t1, b_t2) || p_B(. | b_t1))
            belief_log_prob = log p_B(s2 | b_t2)
            transition_nll  = -log p_T(s2 | s1, delta, abar)
        """
        p_b2 = self.belief_dist(b2)
        s2 = _draw(p_b2, noise2)
        q = self.smoothing_dist(s2, b1, b2)
        s1 = _draw(q, noise1)
        return {
            "decoder_nll": -self.decoder_dist(s2).log_prob(z2.float()),
            "kl": kl_divergence(q, self.belief_dist(b1)),
            "belief_log_prob": p_b2.log_prob(s2),
            "transition_nll": -self.transition_dist(s1, delta, abar).log_prob(s2),
        }

    def losses(self, batch: SequenceBatch, generator: torch.Generator | None, done_weight: float = 10.0,
               reward_weight: float = 1.0, rollout: int = 0,
               reward_event_weight: float = 0.0) -> dict[str, torch.Tensor]:
        """Losses of a batch from ``train_mdnrnn.make_batch``; padding (mask False) never enters any.

        With n a row's chunk length, frames 0..L (z then z_next) and beliefs over all of them,
        every position t1 in [0, L) draws a jump delta ~ U{1..max_jump}, t2 = t1 + delta:

            ELBO at t2 <= n (frame t2 exists): the terms of ``elbo_terms``, each a mean over those
                positions divided by z_dim (as M's nll); elbo_loss is their sum.
            heads at t1 < n where t2 <= n or the chunk ends with a termination (what lies past a
                cut or a truncation is unknown), on s ~ p_B(b_t1) (q's s1 has seen the future: it
                would leak the death into the done head; the dream's s comes from p_T):
                reward_loss = (1 + reward_event_weight |R|) (r_hat - R)^2, R = sum of r_t1..min(t2,n)-1,
                done_loss   = BCE(done_logit, "a terminated step in the jump"), pos_weight done_weight
            loss = elbo_loss + reward_weight * reward_loss + done_loss
            + (rollout > 0) the terms of ``rollout_losses`` on chains from the heads' s

        All randomness comes from ``generator``, drawn in this order (tests replay it): delta
        (B, L) by randint, then standard normals (B, L, state_dim) for s2, s1 and the heads' s,
        then the chains' normals.
        """
        steps = batch.mask.bool()
        rows, length = steps.shape
        n = steps.sum(1, keepdim=True)  # (B, 1)
        frames, encoded, rewards, terminated = self._clean(batch, steps, n)
        b = self._run_lstm(frames, torch.cat([torch.zeros_like(encoded[:, :1]), encoded], 1))  # (B, L+1, H)

        device = frames.device
        randint_device = generator.device if generator is not None else device
        delta = torch.randint(1, self.max_jump + 1, (rows, length), generator=generator,
                              device=randint_device).to(device)
        noise = [_randn((rows, length, self.state_dim), generator, frames) for _ in range(3)]
        t1 = torch.arange(length, device=device)[None]
        t2 = t1 + delta
        end = torch.minimum(t2, n)  # the jump's steps that exist: t1..end-1
        span = (end - t1).clamp(min=1)
        elbo_ok = t2 <= n
        ends_episode = terminated.gather(1, (n - 1).clamp(min=0)) > 0.5
        head_ok = (t1 < n) & (elbo_ok | ends_episode)

        t2_index = t2.clamp(max=length)
        b1, b2 = b[:, :length], _take(b, t2_index)
        abar = self._window_sum(encoded, t1, end) / span[..., None]
        terms = self.elbo_terms(_take(frames, t2_index), b1, b2, delta, abar, noise[0], noise[1])
        out = {name: _masked_mean(value, elbo_ok) / self.z_dim for name, value in terms.items()}
        out["elbo_loss"] = sum(out[name] for name in ELBO_TERMS)

        s_belief = _draw(self.belief_dist(b1), noise[2])
        reward, done_logit = self.heads(s_belief, delta, abar)
        reward_target = torch.where(head_ok, self._window_sum(rewards, t1, end), torch.zeros_like(reward))
        done = torch.where(head_ok, self._window_sum(terminated, t1, end) > 0.5, torch.zeros_like(head_ok))
        out["reward_loss"] = _masked_mean(reward_errors(reward, reward_target, reward_event_weight), head_ok)
        out["done_loss"] = _masked_mean(_weighted_bce(done_logit, done.to(done_logit.dtype), done_weight), head_ok)
        out["loss"] = out["elbo_loss"] + reward_weight * out["reward_loss"] + out["done_loss"]
        out.update(_done_metrics(done_logit.detach(), done, head_ok))
        if rollout > 0:
            chain = self.rollout_losses(s_belief, frames, encoded, rewards, terminated, n, rollout, generator,
                                        done_weight, reward_event_weight)
            out.update(chain)
            out["loss"] = (out["loss"] + chain["rollout_nll"] + reward_weight * chain["rollout_reward_loss"]
                           + chain["rollout_done_loss"])
        return out

    def rollout_losses(self, s_belief: torch.Tensor, frames: torch.Tensor, encoded: torch.Tensor,
                       rewards: torch.Tensor, terminated: torch.Tensor, n: torch.Tensor, links: int,
                       generator: torch.Generator | None, done_weight: float,
                       reward_event_weight: float = 0.0) -> dict[str, torch.Tensor]:
        """Open-loop chains as the dream runs them. The ELBO fits p_T one jump from q's s1; a dream
        chains p_T from its own draws for hundreds of steps, where untrained drift sends the heads
        off the states they learnt on. From s_0 = s_belief at every ``links``-th position t (so
        the chains cost about one extra pass), links k = 1..links under the actions taken:

            s_k ~ p_T(s_k-1, 1, enc(a_t+k-1))
            rollout_nll         = -log p_D(z_t+k | s_k) / z_dim
            rollout_reward_loss = (1 + reward_event_weight |r|) (reward head at (s_k-1, 1, enc(a_t+k-1)) - r)^2,
                                  r = r_t+k-1
            rollout_done_loss   = BCE(its done logit, terminated_t+k-1), pos_weight done_weight

        each a mean over all links whose step t+k-1 < n exists (the chunk's last step is a
        termination or a cut: its frame t+k = n exists either way). Noise: (B, chains, state_dim)
        standard normals from ``generator``, one draw per link."""
        length = encoded.shape[1]
        starts = torch.arange(0, length, links, device=frames.device)
        s = s_belief[:, starts]
        nll, reward_sq, bce, valid = [], [], [], []
        for k in range(links):
            j = starts[None] + k  # the step whose action link k + 1 takes, (1, C)
            valid.append((j < n) & (j < length))
            index = j.clamp(max=length - 1).expand(len(frames), -1)
            action, one = _take(encoded, index), torch.ones_like(index)
            reward, done_logit = self.heads(s, one, action)
            reward_sq.append(reward_errors(reward, rewards.gather(1, index), reward_event_weight))
            bce.append(_weighted_bce(done_logit, terminated.gather(1, index).to(done_logit.dtype), done_weight))
            s = _draw(self.transition_dist(s, one, action), _randn(tuple(s.shape), generator, s))
            nll.append(-self.decoder_dist(s).log_prob(_take(frames, index + 1).float()) / self.z_dim)
        mask = torch.stack(valid)
        return {"rollout_nll": _masked_mean(torch.stack(nll), mask),
                "rollout_reward_loss": _masked_mean(torch.stack(reward_sq), mask),
                "rollout_done_loss": _masked_mean(torch.stack(bce), mask)}

    def _clean(self, batch: SequenceBatch, steps: torch.Tensor, n: torch.Tensor):
        """Frames (B, L+1, z), encoded actions (B, L, A), rewards and terminated (B, L) with zeros at
        the padding: its values may be anything (NaN, an out-of-range action), and a NaN that
        reached the LSTM would poison the gradients even where the loss masks it out."""
        frames = torch.cat([batch.z[:, :1], batch.z_next], 1)
        frame_ok = torch.arange(frames.shape[1], device=frames.device)[None] <= n
        frames = torch.where(frame_ok[..., None], frames, torch.zeros_like(frames))
        actions = batch.actions
        pad = steps if actions.dim() == 2 else steps[..., None]
        actions = torch.where(pad, actions, torch.zeros_like(actions))
        encoded = self.encode_action(actions, frames.dtype) * steps[..., None].to(frames.dtype)
        rewards = torch.where(steps, batch.rewards, torch.zeros_like(batch.rewards))
        terminated = torch.where(steps, batch.terminated.float(), torch.zeros_like(batch.rewards))
        return frames, encoded, rewards, terminated

    def _window_sum(self, values: torch.Tensor, t1: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """sum of values[:, t] over t1 <= t < end at every t1 (end - t1 <= max_jump): a loop over the
        jump's offsets (max_jump), not over positions. values (B, L, ...) -> (B, L, ...)."""
        length = values.shape[1]
        padded = torch.cat([values, torch.zeros_like(values[:, : self.max_jump])], 1)
        total = torch.zeros_like(values)
        for k in range(self.max_jump):
            inside = (t1 + k < end).view(*end.shape, *(1,) * (values.dim() - 2))
            total = total + torch.where(inside, padded[:, k : k + length], torch.zeros_like(values))
        return total

    # ---- the memory interface -----------------------------------------------------------------
    def feature_dim(self, include_cell: bool = False) -> int:
        _no_cell(include_cell)
        return self.z_dim + self.state_dim

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> TDVAEState:
        dtype = self.decoder_net[0].weight.dtype
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)
        return TDVAEState(zeros(1, batch, self.belief), zeros(1, batch, self.belief), zeros(batch, self.action_dim),
                          zeros(batch, self.state_dim))

    def observe(self, z: torch.Tensor, state: TDVAEState, mask: torch.Tensor | None = None) -> TDVAEState:
        """One LSTM step on [z_t, enc(a_{t-1})]; s becomes p_B's mean. Rows outside mask keep theirs."""
        x = torch.cat([z, state.action.to(z.dtype)], -1)[:, None]
        _, (h, c) = self.lstm(x, (state.h, state.c))
        new = TDVAEState(h, c, state.action, self.belief_dist(h[0]).mean.to(state.s.dtype))
        return new if mask is None else _where_rows(mask, new, state)

    def features(self, z: torch.Tensor, state: TDVAEState, include_cell: bool = False) -> torch.Tensor:
        _no_cell(include_cell)
        return torch.cat([z, state.s.to(z.dtype)], -1)

    def step(self, z: torch.Tensor, action: torch.Tensor, state: TDVAEState) -> tuple[TDVAEPrediction, TDVAEState]:
        """a_t taken (z_t is already in the belief through ``observe``): the one-step prediction from
        state.s, and the state whose next LSTM input carries enc(a_t)."""
        encoded = self.encode_action(action, state.s.dtype)
        delta = torch.ones(len(encoded), dtype=torch.long, device=encoded.device)
        reward, done_logit = self.heads(state.s, delta, encoded)
        p_t = self.transition_dist(state.s, delta, encoded)
        prediction = TDVAEPrediction(reward, done_logit, p_t.base_dist.loc, p_t.base_dist.scale)
        return prediction, state._replace(action=encoded)

    def sample(self, prediction: TDVAEPrediction, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """z_{t+1} (B, z): p_D's mean at s' = s_mu + s_sigma * sqrt(tau) * noise."""
        _check_temperature(temperature)
        noise = _randn(tuple(prediction.s_mu.shape), generator, prediction.s_mu)
        s_next = prediction.s_mu + prediction.s_sigma * math.sqrt(temperature) * noise
        return self.decoder_dist(s_next).mean

    def imagine(self, z: torch.Tensor, action: torch.Tensor, state: TDVAEState, temperature: float,
                generator: torch.Generator | None, jump: int = 1) -> Imagined:
        """``jump`` steps with the action held: heads at (s, jump, enc(a)), s' ~ p_T at temperature
        tau (sigma * sqrt(tau)), z' = p_D's mean at s'. Moves in state space only (no observe)."""
        if not 1 <= jump <= self.max_jump:
            raise ValueError(f"jump must be in [1, {self.max_jump}] (this TD-VAE's max_jump), got {jump}")
        _check_temperature(temperature)
        encoded = self.encode_action(action, state.s.dtype)
        delta = torch.full((len(encoded),), jump, dtype=torch.long, device=encoded.device)
        reward, done_logit = self.heads(state.s, delta, encoded)
        p_t = self.transition_dist(state.s, delta, encoded)
        s_next = _draw(p_t, _randn(tuple(state.s.shape), generator, state.s), math.sqrt(temperature))
        s_next = s_next.to(state.s.dtype)
        z_next = self.decoder_dist(s_next).mean.to(z.dtype)
        prediction = TDVAEPrediction(reward, done_logit, p_t.base_dist.loc, p_t.base_dist.scale)
        return Imagined(z_next, reward, done_logit, state._replace(s=s_next, action=encoded), prediction)

    def expected_next(self, prediction: TDVAEPrediction) -> torch.Tensor:
        """p_D's mean at p_T's mean state (B, z): the decoder of the expected state, not the
        expectation over states (p_D is nonlinear), which would need samples."""
        return self.decoder_dist(prediction.s_mu).mean

    def surprise(self, prediction: TDVAEPrediction, z_next: torch.Tensor) -> torch.Tensor:
        """-log p_D(z_next | p_T's mean state): the decoder's density at the expected state."""
        return -self.decoder_dist(prediction.s_mu).log_prob(z_next.float())

    def reset(self, state: TDVAEState, mask: torch.Tensor) -> TDVAEState:
        zeros = TDVAEState(*(torch.zeros_like(part) for part in state))
        return _where_rows(mask, zeros, state)

    def select(self, state: TDVAEState, keep: torch.Tensor) -> TDVAEState:
        return TDVAEState(state.h[:, keep], state.c[:, keep], state.action[keep], state.s[keep])


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, T, F) at time index (B, L) -> (B, L, F)."""
    return values.gather(1, index[..., None].expand(*index.shape, values.shape[-1]))


def _where_rows(mask: torch.Tensor, new: TDVAEState, old: TDVAEState) -> TDVAEState:
    """Rows in mask (B,) bool from ``new``, the others from ``old``."""
    mask = mask.bool()
    rows = mask[:, None]
    return TDVAEState(torch.where(mask[None, :, None], new.h, old.h), torch.where(mask[None, :, None], new.c, old.c),
                      torch.where(rows, new.action, old.action), torch.where(rows, new.s, old.s))


def _no_cell(include_cell: bool) -> None:
    if include_cell:
        raise ValueError("TD-VAE has no LSTM cell to give the controller; --include-cell is an MDN-RNN option")


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@torch.no_grad()
def jumpy_predictions(model: TDVAE, z: torch.Tensor, actions: torch.Tensor, t: int,
                      deltas: tuple[int, ...] | list[int]) -> dict[int, torch.Tensor]:
    """Filter to b_t over z_0..t, take s_t = p_B's mean, and for each delta predict z_{t+delta} (B, z)
    as p_D's mean at p_T's mean (s_t, delta, abar), abar the mean encoding of a_t..a_{t+delta-1}.
    z (B, >t, z); actions (B, >= t + max(deltas)) or (B, ..., A)."""
    b = model.beliefs(z[:, : t + 1], actions[:, : t + 1])[:, t]
    s = model.belief_dist(b).mean
    predictions = {}
    for delta in deltas:
        if not 1 <= delta <= model.max_jump:
            raise ValueError(f"delta must be in [1, {model.max_jump}], got {delta}")
        if t + delta > actions.shape[1]:
            raise ValueError(f"delta {delta} from t={t} needs {t + delta} actions, got {actions.shape[1]}")
        abar = model.encode_action(actions[:, t : t + delta], s.dtype).mean(1)
        jumps = torch.full((len(s),), delta, dtype=torch.long, device=s.device)
        predictions[delta] = model.decoder_dist(model.transition_dist(s, jumps, abar).mean).mean
    return predictions
