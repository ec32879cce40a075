"""Controller C of World Models: a tiny policy on the world model's features.

Features are ``concat[z, h]`` (optionally also the LSTM cell ``c``), shape ``[N, F]``.
C is linear as in the paper (``a = W [z, h] + b``) or has one tanh hidden layer.

Parameter layout (shared by :class:`Controller`, :class:`ControllerPopulation` and
``agents.npg.StochasticPolicy``) is that of ``parameters_to_vector`` over an
``nn.Sequential`` of ``nn.Linear`` layers, i.e. per layer the weight ``[out, in]`` in
row-major order followed by the bias ``[out]``:

- linear: ``W [A, F], b [A]``                       -> ``(F + 1) * A`` numbers
- hidden: ``W1 [H, F], b1 [H], W2 [A, H], b2 [A]``  -> ``(F + 1) * H + (H + 1) * A``

so a CMA-ES candidate vector can be loaded into a single controller or evaluated inside a
batched population without any reordering.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters


@dataclass(frozen=True)
class ControllerSpec:
    """Shape of a controller.

    Attributes:
        feature_dim: F, size of the feature vector (``z`` + ``h`` [+ ``c``]).
        action_dim: A, number of discrete actions, or number of continuous action dims.
        discrete: argmax over A outputs if True, else A bounded continuous outputs.
        hidden: 0 for the paper's linear controller, > 0 for one tanh hidden layer.
        action_low / action_high: per-dim bounds for continuous actions; None means
            the raw ``tanh`` range ``[-1, 1]``.
    """

    feature_dim: int
    action_dim: int
    discrete: bool
    hidden: int = 0
    action_low: tuple[float, ...] | None = None
    action_high: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.feature_dim < 1 or self.action_dim < 1 or self.hidden < 0:
            raise ValueError(f"invalid controller sizes: {self}")
        if (self.action_low is None) != (self.action_high is None):
            raise ValueError("give both action_low and action_high, or neither")
        if self.action_low is not None:
            if self.discrete:
                raise ValueError("action bounds only apply to continuous controllers")
            # Frozen dataclass: normalise JSON lists to tuples through object.__setattr__.
            object.__setattr__(self, "action_low", tuple(float(x) for x in self.action_low))
            object.__setattr__(self, "action_high", tuple(float(x) for x in self.action_high))
            if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
                raise ValueError("action bounds must have action_dim entries")
            if any(lo >= hi for lo, hi in zip(self.action_low, self.action_high, strict=True)):
                raise ValueError("action_low must be below action_high")

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        """``(out, in)`` of each linear layer, in parameter-vector order."""
        if self.hidden == 0:
            return [(self.action_dim, self.feature_dim)]
        return [(self.hidden, self.feature_dim), (self.action_dim, self.hidden)]

    @property
    def num_params(self) -> int:
        """Length of the flat parameter vector."""
        return sum(out * (inp + 1) for out, inp in self.layer_shapes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        for key in ("action_low", "action_high"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ControllerSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


def unflatten_params(spec: ControllerSpec, params: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Split flat vectors ``[..., num_params]`` into ``(W [..., out, in], b [..., out])`` per layer."""
    if params.shape[-1] != spec.num_params:
        raise ValueError(f"expected {spec.num_params} parameters, got {params.shape[-1]}")
    batch = params.shape[:-1]
    layers, start = [], 0
    for out, inp in spec.layer_shapes:
        w = params[..., start : start + out * inp].reshape(*batch, out, inp)
        start += out * inp
        b = params[..., start : start + out]
        start += out
        layers.append((w, b))
    return layers


def outputs_to_actions(spec: ControllerSpec, outputs: Tensor) -> Tensor:
    """Map raw outputs ``[..., A]`` to actions.

    Discrete: argmax -> LongTensor ``[...]`` (deterministic, as CMA-ES controllers are).
    Continuous: ``tanh`` then affine rescale into ``[low, high]`` -> float ``[..., A]``.
    """
    if spec.discrete:
        return outputs.argmax(dim=-1)
    return squash(spec, outputs)


def squash(spec: ControllerSpec, outputs: Tensor) -> Tensor:
    """``tanh`` bound, then rescale ``[-1, 1]`` into ``[low, high]`` when bounds are given."""
    a = torch.tanh(outputs)
    if spec.action_low is None:
        return a
    low = torch.tensor(spec.action_low, dtype=a.dtype, device=a.device)
    high = torch.tensor(spec.action_high, dtype=a.dtype, device=a.device)
    # Clamp because float rounding in the affine map can step just outside the box.
    return torch.minimum(torch.maximum(low + (a + 1) * 0.5 * (high - low), low), high)


def _build_net(spec: ControllerSpec) -> nn.Sequential:
    if spec.hidden == 0:
        return nn.Sequential(nn.Linear(spec.feature_dim, spec.action_dim))
    return nn.Sequential(
        nn.Linear(spec.feature_dim, spec.hidden),
        nn.Tanh(),
        nn.Linear(spec.hidden, spec.action_dim),
    )


class Controller(nn.Module):
    """A single controller C."""

    def __init__(self, spec: ControllerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.net = _build_net(spec)

    def forward(self, features: Tensor) -> Tensor:
        """Raw outputs: features ``[N, F]`` -> ``[N, A]`` (logits / pre-tanh values)."""
        return self.net(features)

    @torch.no_grad()
    def act(self, features: Tensor) -> Tensor:
        """Actions: LongTensor ``[N]`` (discrete) or float ``[N, A]`` within bounds (continuous)."""
        return outputs_to_actions(self.spec, self.forward(features))

    def to_vector(self) -> Tensor:
        """Flat copy of the parameters, ``[num_params]`` (layout in the module docstring)."""
        return parameters_to_vector(self.parameters()).detach().clone()

    def load_vector(self, vector: Tensor) -> Controller:
        """Overwrite the parameters from a flat ``[num_params]`` vector; returns self."""
        vector = torch.as_tensor(vector)
        if vector.shape != (self.spec.num_params,):
            raise ValueError(f"expected shape ({self.spec.num_params},), got {tuple(vector.shape)}")
        p = next(self.parameters())
        with torch.no_grad():
            vector_to_parameters(vector.to(dtype=p.dtype, device=p.device), self.parameters())
        return self


class ControllerPopulation:
    """P controllers evaluated as one batched computation (one CMA-ES generation).

    Args:
        spec: shared shape of every member.
        params: ``[P, num_params]``, each row laid out as :meth:`Controller.to_vector`.
    """

    def __init__(self, spec: ControllerSpec, params: Tensor) -> None:
        params = torch.as_tensor(params)
        if params.dim() != 2:
            raise ValueError(f"params must be [P, num_params], got {tuple(params.shape)}")
        self.spec = spec
        # Stored as W [P, in, out] (transposed from nn.Linear's [out, in]) so that
        # features [P, N, in] @ W gives [P, N, out] in one bmm.
        self.layers = [
            (w.transpose(-1, -2).contiguous(), b.unsqueeze(1).contiguous())
            for w, b in unflatten_params(spec, params)
        ]

    @property
    def size(self) -> int:
        """P, the number of controllers."""
        return self.layers[0][0].shape[0]

    def outputs(self, features: Tensor) -> Tensor:
        """Raw outputs: features ``[P, N, F]`` (or shared ``[N, F]``) -> ``[P, N, A]``."""
        x = features
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.size, -1, -1)
        for i, (w, b) in enumerate(self.layers):
            x = torch.baddbmm(b, x, w)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x

    @torch.no_grad()
    def act(self, features: Tensor) -> Tensor:
        """Actions: LongTensor ``[P, N]`` (discrete) or float ``[P, N, A]`` (continuous)."""
        return outputs_to_actions(self.spec, self.outputs(features))

    @torch.no_grad()
    def act_per_env(self, features: Tensor, members: Tensor) -> Tensor:
        """Actions for envs each driven by its own member: features ``[N, F]``, members ``[N]``.

        Used once finished rollouts have been dropped from a batch, so members no longer
        own equal blocks of envs.
        """
        x = features.unsqueeze(1)  # [N, 1, F]
        for i, (w, b) in enumerate(self.layers):
            x = torch.baddbmm(b[members], x, w[members])
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return outputs_to_actions(self.spec, x.squeeze(1))
