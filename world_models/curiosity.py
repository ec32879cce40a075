"""ICM, the intrinsic curiosity module (Pathak et al., ICML 2017), over V's latents.

Here a state s_t is V's latent z_t (a vector), not a frame: V has already compressed the 64x64
frames, so the encoder phi on z is a small MLP, cheap enough to train online on the agent's own
experience on CPU. With enc(a) the one-hot (discrete) or raw (continuous) action:

    phi = phi(z_t), phi' = phi(z_t+1)                       encoder, (..., feature_dim)
    g(phi, phi') -> a_t                                     inverse model: logits or an action
    f(phi, enc(a_t)) -> phi'                                forward model

    L_I = cross-entropy(g(phi, phi'), a_t)                  discrete actions
        = 1/2 ||g(phi, phi') - a_t||^2, summed over dims    continuous (Box) actions
    L_F = 1/2 ||f(phi, enc(a_t)) - sg(phi')||^2             sg: stop-gradient on the target
    loss = (1 - beta) L_I + beta L_F,  beta = 0.2
    r_intrinsic = eta/2 ||f(phi, enc(a_t)) - phi'||^2       ``ICM.intrinsic`` returns it without eta

The target phi' of L_F is detached: the forward loss reaches phi only through the forward
model's input phi(z_t), never by moving its own target. Without the stop-gradient the cheapest
way to predict phi' is to make every phi the same constant, and the features would collapse (the
reward with them); the inverse model is what shapes phi to hold what the agent controls.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from envs.errors import ConfigMismatchError
from world_models.checkpoint import (
    load_checkpoint,
    load_module_state,
    module_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)

ARCHITECTURE_KEYS = ("z_dim", "action_dim", "discrete_actions", "feature_dim", "hidden", "beta")  # ICM's arguments
ICM_KEYS = ("kind", *ARCHITECTURE_KEYS, "lr", "seed", "updates", "optimizer")  # what a checkpoint's JSON must hold
MODEL_PREFIX = "model."
GENERATOR_KEY = "generator"
NOVELTY_QUANTILE = 0.99  # the real novelty a dream's bonus is capped at (ICMLearner.novelty_cap)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ELU(), nn.Linear(hidden, outputs))


def _half_squared_norm(difference: torch.Tensor) -> torch.Tensor:
    """1/2 ||x||^2 over the last dim: (..., D) -> (...)."""
    return 0.5 * difference.pow(2).sum(-1)


class ICM(nn.Module):
    """The curiosity model: encoder, inverse and forward models; see the module docstring."""

    kind = "icm"

    def __init__(self, z_dim: int, action_dim: int, discrete_actions: bool, feature_dim: int = 64,
                 hidden: int = 256, beta: float = 0.2) -> None:
        super().__init__()
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.z_dim, self.action_dim, self.discrete_actions = z_dim, action_dim, discrete_actions
        self.feature_dim, self.hidden, self.beta = feature_dim, hidden, beta
        self.encoder = _mlp(z_dim, hidden, feature_dim)
        self.inverse_net = _mlp(2 * feature_dim, hidden, action_dim)  # logits, or the action itself
        self.forward_net = _mlp(feature_dim + action_dim, hidden, feature_dim)

    @property
    def config(self) -> dict:
        """The constructor arguments, for the checkpoint's JSON."""
        return {"z_dim": self.z_dim, "action_dim": self.action_dim, "discrete_actions": self.discrete_actions,
                "feature_dim": self.feature_dim, "hidden": self.hidden, "beta": self.beta}

    # ---- the three networks -----------------------------------------------------------------
    def features(self, z: torch.Tensor) -> torch.Tensor:
        """phi(z): z (..., z_dim) -> (..., feature_dim)."""
        return self.encoder(z)

    def encode_action(self, actions: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """enc(a): (...) long -> one-hot (..., A) for discrete actions; (..., A) as is for continuous."""
        if self.discrete_actions:
            return F.one_hot(actions.long(), self.action_dim).to(dtype)
        return actions.to(dtype)

    def inverse_prediction(self, phi: torch.Tensor, phi_next: torch.Tensor) -> torch.Tensor:
        """g(phi, phi'): (..., F) twice -> (..., A) logits (discrete) or predicted actions (continuous)."""
        return self.inverse_net(torch.cat([phi, phi_next], -1))

    def forward_prediction(self, phi: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """f(phi, enc(a)): phi (..., F), actions (...) long or (..., A) -> predicted phi' (..., F)."""
        return self.forward_net(torch.cat([phi, self.encode_action(actions, phi.dtype)], -1))

    # ---- training and the reward ------------------------------------------------------------
    def losses(self, z: torch.Tensor, actions: torch.Tensor, z_next: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of a batch of transitions: z, z_next (B, z_dim), actions (B,) long or (B, A).

        inverse_loss, forward_loss and loss = (1 - beta) L_I + beta L_F are means over the batch;
        inverse_accuracy (discrete actions only) is a detached metric.
        """
        phi, phi_next = self.features(z), self.features(z_next)
        predicted = self.inverse_prediction(phi, phi_next)
        out = {}
        if self.discrete_actions:
            out["inverse_loss"] = F.cross_entropy(predicted, actions.long())
            out["inverse_accuracy"] = (predicted.detach().argmax(-1) == actions.long()).float().mean()
        else:
            out["inverse_loss"] = _half_squared_norm(predicted - actions.to(predicted.dtype)).mean()
        # the target is detached: see the module docstring (phi cannot collapse to chase it)
        out["forward_loss"] = _half_squared_norm(self.forward_prediction(phi, actions) - phi_next.detach()).mean()
        out["loss"] = (1 - self.beta) * out["inverse_loss"] + self.beta * out["forward_loss"]
        return out

    @torch.no_grad()
    def intrinsic(self, z: torch.Tensor, actions: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
        """1/2 ||f(phi(z), enc(a)) - phi(z_next)||^2 per transition: z, z_next (B, z_dim),
        actions (B,) or (B, A) -> (B,). The caller multiplies by its eta."""
        phi = self.features(z)
        return _half_squared_norm(self.forward_prediction(phi, actions) - self.features(z_next))


class ICMLearner:
    """An ICM trained online on the agent's own transitions: Adam, and a seeded generator for the
    minibatch order, all saved with the weights so that a loaded learner continues bit for bit."""

    def __init__(self, icm: ICM, lr: float = 1e-3, seed: int = 0) -> None:
        self.icm, self.lr, self.seed = icm, lr, seed
        self.optimizer = torch.optim.Adam(icm.parameters(), lr=lr)
        # minibatch order on the CPU whatever the model's device: the same order on every machine
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0  # optimizer steps taken, over all calls
        # the 99th percentile of the intrinsic reward of the real transitions learnt, each batch
        # measured before learning it (the highest over batches): how novel a real transition gets.
        # None before any update.
        self.novelty_cap: float | None = None

    def update(self, z: torch.Tensor, actions: torch.Tensor, z_next: torch.Tensor, epochs: int = 1,
               batch_size: int = 256) -> dict[str, float]:
        """``epochs`` shuffled passes over N transitions (z, z_next (N, z_dim), actions (N,) or (N, A)),
        one Adam step per minibatch; returns the losses' means over the minibatches and ``novelty``,
        the batch's mean intrinsic reward before learning it."""
        count = _check_transitions(z, actions, z_next)
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
        novelty = self.intrinsic(z, actions, z_next)
        self._raise_cap(novelty)
        self.icm.train()
        totals: dict[str, float] = {}
        steps = 0
        for _ in range(epochs):
            order = torch.randperm(count, generator=self.generator).to(z.device)
            for start in range(0, count, batch_size):
                rows = order[start : start + batch_size]
                losses = self._step(z[rows], actions[rows], z_next[rows])
                for key, value in losses.items():
                    totals[key] = totals.get(key, 0.0) + value
                steps += 1
        return {"novelty": float(novelty.mean()), **{key: value / steps for key, value in totals.items()}}

    def _raise_cap(self, novelty: torch.Tensor) -> None:
        high = float(torch.quantile(novelty.float(), NOVELTY_QUANTILE))
        self.novelty_cap = high if self.novelty_cap is None else max(self.novelty_cap, high)

    def _step(self, z: torch.Tensor, actions: torch.Tensor, z_next: torch.Tensor) -> dict[str, float]:
        losses = self.icm.losses(z, actions, z_next)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        self.updates += 1
        return {key: float(value.detach()) for key, value in losses.items()}

    def intrinsic(self, z: torch.Tensor, actions: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
        """The ICM's eta-free intrinsic reward (B,); see ``ICM.intrinsic``."""
        self.icm.eval()
        return self.icm.intrinsic(z, actions, z_next)

    # ---- checkpoints --------------------------------------------------------------------------
    def save(self, directory: Path, name: str = "model") -> None:
        """``directory/name.safetensors`` (weights, Adam state, generator) and ``name.json``."""
        optim_tensors, optim_meta = optimizer_to_tensors(self.optimizer)
        tensors = {f"{MODEL_PREFIX}{key}": value for key, value in module_state(self.icm).items()}
        tensors.update(optim_tensors)
        tensors[GENERATOR_KEY] = self.generator.get_state()
        config = {"kind": ICM.kind, **self.icm.config, "lr": self.lr, "seed": self.seed, "updates": self.updates,
                  "novelty_cap": self.novelty_cap, "optimizer": optim_meta}
        save_checkpoint(directory, tensors, config, name=name)

    @classmethod
    def load(cls, directory: Path, device: str | torch.device = "cpu", name: str = "model") -> ICMLearner:
        """A learner exactly as ``save`` left it. One-line errors: UserError when there is no
        checkpoint, CorruptFileError when it cannot be read, ConfigMismatchError when it is not an ICM's."""
        tensors, config = load_checkpoint(directory, name=name, device=device, expect=ICM_KEYS)
        source = Path(directory) / f"{name}.safetensors"
        if config["kind"] != ICM.kind:
            raise ConfigMismatchError(f"{source} is a {config['kind']!r} checkpoint, not an ICM's ({ICM.kind!r})")
        icm = ICM(**{key: config[key] for key in ARCHITECTURE_KEYS}).to(device)
        learner = cls(icm, lr=config["lr"], seed=config["seed"])
        load_module_state(icm, tensors, prefix=MODEL_PREFIX, source=source)
        optimizer_from_tensors(learner.optimizer, tensors, config["optimizer"])
        learner.generator.set_state(tensors[GENERATOR_KEY].cpu())
        learner.updates = config["updates"]
        learner.novelty_cap = config.get("novelty_cap")  # absent in ICMs saved before the cap: none
        return learner


def transitions(z: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One episode's (z_t, a_t, z_t+1): z (T+1, z_dim) and actions (T,) or (T, A), with actions[t]
    taken at z[t] -> (T, z_dim), the actions as given, (T, z_dim)."""
    if z.dim() != 2 or len(z) != len(actions) + 1:
        raise ValueError(f"an episode of T steps has T+1 latents (T+1, z_dim): got z {tuple(z.shape)} "
                         f"for {len(actions)} actions")
    return z[:-1], actions, z[1:]


def episodes_transitions(episodes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``transitions`` of several episodes, (z (T+1, z_dim), actions) each, concatenated."""
    parts = [transitions(z, actions) for z, actions in episodes]
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


def _check_transitions(z: torch.Tensor, actions: torch.Tensor, z_next: torch.Tensor) -> int:
    """The number of transitions N; ValueError unless z and z_next are (N, z_dim) and actions (N, ...)."""
    if z.dim() != 2 or z.shape != z_next.shape or len(actions) != len(z):
        raise ValueError(f"transitions must be z, z_next (N, z_dim) and actions (N,) or (N, A): got "
                         f"{tuple(z.shape)}, {tuple(z_next.shape)} and {tuple(actions.shape)}")
    if len(z) == 0:
        raise ValueError("no transitions to learn from")
    return len(z)
