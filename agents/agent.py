"""The acting agent: V + M + C in the real env, one step at a time, M's state carried explicitly.

    z_t   = mu(V(frame_t))                      the frame's latent (the mean: no sampling noise)
    a_t   = C([z_t, h_t])                        h_t summarises (z, a) up to t-1
    h_t+1 = M.step(z_t, a_t, carry_t)

``AgentPolicy`` wraps that as the ``policy(observation) -> action`` callable that ``envs``
expects, so collection, evaluation and video recording share one rollout loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from agents.controller import Controller, ControllerSpec
from envs.episodes import atomic_write_bytes
from world_models.checkpoint import load_checkpoint, load_module_state, module_state, save_checkpoint
from world_models.dream import controller_features
from world_models.mdnrnn import MDNRNN
from world_models.train_mdnrnn import load_mdnrnn
from world_models.train_vae import load_vae
from world_models.vae import ConvVAE, frames_to_tensor

CONTROLLER_DIR = "controller"

Carry = tuple[torch.Tensor, torch.Tensor]
Latent = Literal["mean", "sample"]


def load_controller(run_dir: Path, device: str | torch.device = "cpu") -> tuple[Controller, dict]:
    """The run's best controller (safetensors + JSON with its spec and scores)."""
    directory = Path(run_dir) / CONTROLLER_DIR
    tensors, info = load_checkpoint(directory, device=device, expect=("spec", "env_id"))
    controller = Controller(ControllerSpec.from_dict(info["spec"])).to(device)
    load_module_state(controller, tensors, source=directory / "model.safetensors")
    return controller.eval(), info


def save_controller(run_dir: Path, controller: Controller, info: dict) -> None:
    """Save C (safetensors) with its spec and provenance (JSON) as the run's deployed controller."""
    config = {**info, "spec": controller.spec.to_dict()}
    save_checkpoint(Path(run_dir) / CONTROLLER_DIR, module_state(controller), config)


@dataclass
class WorldModelAgent:
    vae: ConvVAE
    mdnrnn: MDNRNN
    controller: Controller
    include_cell: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.mdnrnn.parameters()).device

    def initial_carry(self, batch: int = 1) -> Carry:
        return self.mdnrnn.initial_carry(batch, self.device)

    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, 64, 64, 3) uint8 -> z (B, z_dim)."""
        mu, _ = self.posterior(frames)
        return mu

    @torch.no_grad()
    def posterior(self, frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 64, 64, 3) uint8 -> V's posterior (mu, log_sigma), each (B, z_dim)."""
        return self.vae.encode(frames_to_tensor(torch.as_tensor(frames).to(self.device)))

    @torch.no_grad()
    def act(self, frames: np.ndarray | torch.Tensor, carry: Carry) -> tuple[torch.Tensor, Carry]:
        """Actions for a batch of frames, and M's next state."""
        z = self.encode(frames)
        actions = self.controller.act(controller_features(z, carry, self.include_cell))
        _, carry = self.mdnrnn.step(z, actions, carry)
        return actions, carry

    def policy(self, exploration: float = 0.0, rng: np.random.Generator | None = None,
               latent: Latent = "mean") -> AgentPolicy:
        return AgentPolicy(self, exploration, rng or np.random.default_rng(), latent)


class AgentPolicy:
    """A single-env ``policy(observation) -> action`` callable over a ``WorldModelAgent``.

    ``exploration`` is the probability of a uniform random action instead of C's (iterative
    training collects with it); M is always stepped with the action actually taken. ``latent``:
    M and C see z = mu(V(frame)) (``mean``, the package's agent) or z ~ N(mu, sigma) (``sample``,
    as M's training data and the released code's agent), the noise drawn from ``rng``'s stream.
    """

    def __init__(self, agent: WorldModelAgent, exploration: float, rng: np.random.Generator,
                 latent: Latent = "mean") -> None:
        if latent not in ("mean", "sample"):
            raise ValueError(f"latent must be 'mean' or 'sample', not {latent!r}")
        self.agent = agent
        self.exploration = exploration
        self.rng = rng
        self.carry = agent.initial_carry(1)
        # seeded from rng only when sampling, so a mean policy consumes rng exactly as before
        self.generator = None if latent == "mean" else \
            torch.Generator(device=agent.device).manual_seed(int(rng.integers(2**62)))

    @torch.no_grad()
    def __call__(self, observation: np.ndarray):
        agent = self.agent
        z = self._latent(observation[None])
        action = agent.controller.act(controller_features(z, self.carry, agent.include_cell))
        if self.exploration and self.rng.random() < self.exploration:
            action = self._random_action(action)
        _, self.carry = agent.mdnrnn.step(z, action, self.carry)
        return int(action[0]) if agent.controller.spec.discrete else action[0].cpu().numpy()

    def _latent(self, frames: np.ndarray) -> torch.Tensor:
        if self.generator is None:
            return self.agent.encode(frames)
        mu, log_sigma = self.agent.posterior(frames)
        return mu + log_sigma.exp() * torch.randn(mu.shape, generator=self.generator, device=mu.device)

    def _random_action(self, like: torch.Tensor) -> torch.Tensor:
        spec = self.agent.controller.spec
        if spec.discrete:
            return torch.full_like(like, int(self.rng.integers(spec.action_dim)))
        low = np.array(spec.action_low or [-1.0] * spec.action_dim)
        high = np.array(spec.action_high or [1.0] * spec.action_dim)
        return torch.as_tensor(self.rng.uniform(low, high)[None], dtype=like.dtype, device=like.device)


def load_agent(run_dir: Path, device: str | torch.device = "cpu") -> tuple[WorldModelAgent, dict]:
    """V, M and the best C of a run, ready to act; plus the controller's info."""
    vae, _ = load_vae(run_dir, device)
    mdnrnn, _ = load_mdnrnn(run_dir, device)
    controller, info = load_controller(run_dir, device)
    return WorldModelAgent(vae, mdnrnn, controller, info.get("include_cell", False)), info


_AGENTS: dict[str, WorldModelAgent] = {}  # per worker process: load a run's agent once


def agent_policy_factory(run_dir: str, exploration: float, space, rng: np.random.Generator,
                         latent: Latent = "mean") -> AgentPolicy:
    """A collection policy (``envs.collect``'s factory signature) acting with a run's agent.

    Picklable through ``functools.partial(agent_policy_factory, run_dir, exploration)``.
    """
    if run_dir not in _AGENTS:
        torch.set_num_threads(1)  # one core per collection worker
        _AGENTS[run_dir] = load_agent(Path(run_dir))[0]
    return _AGENTS[run_dir].policy(exploration, rng, latent)


def export_agent(run_dir: Path, out: Path) -> list[Path]:
    """Copy what ``eval.py`` needs (V, M, C weights and the dream's start latents) into ``out``.

    No training state, no dataset: a few MB that load and evaluate right after install.
    """
    from world_models.latents import latent_dir, load_latent_cache

    run_dir, out = Path(run_dir), Path(out)
    load_agent(run_dir)  # a missing, damaged or mismatched part is one line before anything is written
    written = copy_weights(run_dir, out, ("vae", "mdnrnn", CONTROLLER_DIR))
    latents = load_latent_cache(run_dir)
    starts = latents.offsets[:-1]
    save_checkpoint(latent_dir(out), {"mu": latents.mu[starts], "log_sigma": latents.log_sigma[starts]},
                    {"kind": "dream start latents", "episodes": len(starts)}, name="start")
    return [*written, latent_dir(out) / "start.safetensors"]


def copy_weights(source: Path, target: Path, parts: tuple[str, ...] = ("mdnrnn", CONTROLLER_DIR)) -> list[Path]:
    """Copy the exported weights (``PART/model.safetensors`` + ``.json``) of ``parts`` from one run
    directory to another, each file atomically (a killed copy never leaves half a checkpoint)."""
    written = []
    for part in parts:
        (Path(target) / part).mkdir(parents=True, exist_ok=True)
        for suffix in (".safetensors", ".json"):
            payload = (Path(source) / part / f"model{suffix}").read_bytes()
            destination = Path(target) / part / f"model{suffix}"
            atomic_write_bytes(destination, lambda file, payload=payload: file.write(payload))
            written.append(destination)
    return written
