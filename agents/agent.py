"""The acting agent: V + a memory + C in the real env, one step at a time, the memory's state
carried explicitly (``world_models.memory.Memory``: the MDN-RNN or TD-VAE).

    z_t     = mu(V(frame_t))                      the frame's latent (the mean: no sampling noise)
    state_t = memory.observe(z_t, state_t)        (TD-VAE's belief takes z_t in; M waits for a_t)
    a_t     = C(memory.features(z_t, state_t))    M: [z_t, h_t], h_t summarising (z, a) up to t-1
    state_t+1 = memory.step(z_t, a_t, state_t)

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
from world_models.memory import Memory, load_memory
from world_models.train_vae import load_vae
from world_models.vae import ConvVAE, frames_to_tensor

CONTROLLER_DIR = "controller"

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
    memory: Memory
    controller: Controller
    include_cell: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.memory.parameters()).device

    def initial_state(self, batch: int = 1):
        return self.memory.initial_state(batch, self.device)

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
    def act(self, frames: np.ndarray | torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """Actions for a batch of frames, and the memory's next state."""
        z = self.encode(frames)
        actions, state = self.act_on_latent(z, state)
        _, state = self.memory.step(z, actions, state)
        return actions, state

    def act_on_latent(self, z: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """C's actions for latents z (B, z): the memory takes z in first (``observe``)."""
        state = self.memory.observe(z, state)
        return self.controller.act(self.memory.features(z, state, self.include_cell)), state

    def policy(self, exploration: float = 0.0, rng: np.random.Generator | None = None,
               latent: Latent = "mean") -> AgentPolicy:
        return AgentPolicy(self, exploration, rng or np.random.default_rng(), latent)


class AgentPolicy:
    """A single-env ``policy(observation) -> action`` callable over a ``WorldModelAgent``.

    ``exploration`` is the probability of a uniform random action instead of C's (iterative
    training collects with it); the memory is always stepped with the action actually taken. ``latent``:
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
        self.state = agent.initial_state(1)
        # seeded from rng only when sampling, so a mean policy consumes rng exactly as before
        self.generator = None if latent == "mean" else \
            torch.Generator(device=agent.device).manual_seed(int(rng.integers(2**62)))

    @torch.no_grad()
    def __call__(self, observation: np.ndarray):
        agent = self.agent
        z = self._latent(observation[None])
        action, self.state = agent.act_on_latent(z, self.state)
        if self.exploration and self.rng.random() < self.exploration:
            action = self._random_action(action)
        _, self.state = agent.memory.step(z, action, self.state)
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
    """V, the memory C was trained with and the best C of a run, ready to act; plus C's info."""
    vae, _ = load_vae(run_dir, device)
    controller, info = load_controller(run_dir, device)
    memory, _ = load_memory(run_dir, controller_memory(info), device)
    return WorldModelAgent(vae, memory, controller, info.get("include_cell", False)), info


def controller_memory(info: dict) -> str:
    """The memory kind a controller reads (its info; controllers saved before TD-VAE read M)."""
    return info.get("memory", "mdnrnn")


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
    """Copy what ``eval.py`` needs (V, memory and C weights, the dream's start latents) into ``out``.

    No training state, no dataset: a few MB that load and evaluate right after install.
    """
    from world_models.latents import latent_dir, load_latent_cache

    run_dir, out = Path(run_dir), Path(out)
    _, info = load_agent(run_dir)  # a missing, damaged or mismatched part is one line before anything is written
    written = copy_weights(run_dir, out, ("vae", controller_memory(info), CONTROLLER_DIR))
    latents = load_latent_cache(run_dir)
    starts = latents.offsets[:-1]
    save_checkpoint(latent_dir(out), {"mu": latents.mu[starts], "log_sigma": latents.log_sigma[starts]},
                    {"kind": "dream start latents", "episodes": len(starts)}, name="start")
    return [*written, latent_dir(out) / "start.safetensors"]


def copy_weights(source: Path, target: Path, parts: tuple[str, ...]) -> list[Path]:
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
