"""The memory seam: what the dream, the acting agent, the fitness functions and NPG's feature env
ask of a memory (the MDN-RNN or TD-VAE), and the one loader that dispatches on a checkpoint's kind.

A memory carries a per-env ``state`` (an MDN-RNN's LSTM carry; TD-VAE's belief and its current
state estimate) that only the memory itself looks inside. On real frames, for every step t:

    state = memory.observe(z_t, state)            # the new latent arrives (MDN-RNN: nothing to do)
    a_t   = C(memory.features(z_t, state))        # what the controller reads
    _, state = memory.step(z_t, a_t, state)       # the action taken; predictions for step t

In a dream the memory makes up the next latent itself (``imagine``), ``jump`` steps ahead with
the action held over the jump: reward is the jump's total, done says the episode ends within it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from envs.errors import UserError

MEMORY_KINDS = ("mdnrnn", "tdvae")


class Imagined(NamedTuple):
    """One dream decision of a batch: leading dim (B,) everywhere."""

    z: torch.Tensor  # (B, z) the latent after the jump
    reward: torch.Tensor  # (B,) the reward predicted over the jump
    done_logit: torch.Tensor  # (B,) logit of "the episode ends within the jump"
    state: Any  # the memory's state after the jump
    prediction: Any = None  # the memory's prediction of the jump's end (``expected_next``, ``surprise``)


@runtime_checkable
class Memory(Protocol):
    kind: str  # "mdnrnn" | "tdvae": the checkpoint directory and the loader's key
    z_dim: int
    action_dim: int
    discrete_actions: bool
    max_jump: int  # the longest jump ``imagine`` may take

    @property
    def config(self) -> dict: ...

    def feature_dim(self, include_cell: bool = False) -> int: ...

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> Any: ...

    def observe(self, z: torch.Tensor, state: Any, mask: torch.Tensor | None = None) -> Any:
        """Fold a newly seen latent z (B, z) into the rows of ``state`` in ``mask`` (all when None)."""

    def features(self, z: torch.Tensor, state: Any, include_cell: bool = False) -> torch.Tensor:
        """The controller's input (B, feature_dim) for latent z (B, z) and ``state``."""

    def step(self, z: torch.Tensor, action: torch.Tensor, state: Any) -> tuple[Any, Any]:
        """(z_t, a_t) taken: a prediction (with ``reward`` and ``done_logit`` of the step) and the new state."""

    def sample(self, prediction: Any, temperature: float = 1.0, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Draw z_{t+1} (B, z) from a ``step`` prediction at temperature tau."""

    def imagine(self, z: torch.Tensor, action: torch.Tensor, state: Any, temperature: float,
                generator: torch.Generator | None, jump: int = 1) -> Imagined: ...

    def expected_next(self, prediction: Any) -> torch.Tensor:
        """The predicted next latent's expectation (B, z): no sampling noise in it."""

    def surprise(self, prediction: Any, z_next: torch.Tensor) -> torch.Tensor:
        """-log p(z_next | the prediction), summed over latent dims: (B, z) -> (B,)."""

    def reset(self, state: Any, mask: torch.Tensor) -> Any:
        """The rows in ``mask`` (B,) bool back to ``initial_state``'s values."""

    def select(self, state: Any, keep: torch.Tensor) -> Any:
        """Only the rows where ``keep`` (B,) is True."""


def memory_dir(run_dir: Path, kind: str) -> Path:
    return Path(run_dir) / kind


def check_kind(kind: str) -> None:
    if kind not in MEMORY_KINDS:
        raise UserError(f"--memory {kind!r}: use one of {', '.join(MEMORY_KINDS)}")


def load_memory(run_dir: Path, kind: str = "mdnrnn", device: str | torch.device = "cpu") -> tuple[Memory, dict]:
    """The trained memory of ``kind`` in a run (or round) directory, with its config."""
    check_kind(kind)
    if kind == "tdvae":
        from world_models.train_tdvae import load_tdvae

        return load_tdvae(run_dir, device)
    from world_models.train_mdnrnn import load_mdnrnn

    return load_mdnrnn(run_dir, device)
