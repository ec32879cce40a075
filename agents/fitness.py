"""Scoring controllers: a whole population in the dream as one batched program, or in the real
env across a pool of workers (local processes or Ray actors, ``envs.pool``).

Both return, for parameter vectors ``params`` (P, n_params), the mean return over ``rollouts``
episodes per member: the fitness CMA-ES maximises.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from agents.controller import Controller, ControllerPopulation, ControllerSpec
from envs.collect import run_episode
from envs.make import make_env
from envs.pool import make_pool
from world_models.curiosity import episodes_transitions
from world_models.dream import DreamVecEnv, dream_rollouts
from world_models.latents import encode_frames
from world_models.rewards import Curiosity


def population_policy(population: ControllerPopulation, rollouts: int):
    """Batched act over P x rollouts dreams laid out member-major: dream i is driven by member i // R."""
    return lambda features, index: population.act_per_env(features, index // rollouts)


class DreamFitness:
    """fitness(params (P, n), seed) -> mean dream return per member (P,), all dreams batched."""

    def __init__(self, make_dream, spec: ControllerSpec, rollouts: int) -> None:
        self.make_dream = make_dream  # num_envs -> DreamVecEnv (cached by size)
        self.spec = spec
        self.rollouts = rollouts
        self._dreams: dict[int, DreamVecEnv] = {}

    def __call__(self, params: torch.Tensor, seed: int) -> torch.Tensor:
        size = len(params)
        dream = self._dreams.get(size) or self._dreams.setdefault(size, self.make_dream(size * self.rollouts))
        population = ControllerPopulation(self.spec, params.to(dream.device, torch.float32))
        returns, _ = dream_rollouts(dream, population_policy(population, self.rollouts), seed)
        return returns.view(size, self.rollouts).mean(dim=1).cpu()


def _real_rollout_worker(run_dir: str, env_id: str, spec_dict: dict, include_cell: bool, memory_kind: str,
                         latents: bool = False):
    """Worker set-up for real-env scoring: one env, V and the memory on CPU; a task is (member,
    seed) with the generation's parameters (P, n) shared, member p playing ``params[p]`` from ``seed``.
    With ``latents`` an episode also returns V's mean latents (float16) and its actions, for the
    driver's curiosity hook."""
    torch.set_num_threads(1)  # one core per worker: the workers are the parallelism
    from agents.agent import WorldModelAgent
    from world_models.memory import load_memory
    from world_models.train_vae import load_vae

    env = make_env(env_id)
    vae, _ = load_vae(Path(run_dir))
    memory, _ = load_memory(Path(run_dir), memory_kind)
    controller = Controller(ControllerSpec.from_dict(spec_dict))

    def play(shared_task: tuple[np.ndarray, tuple[int, int]]) -> tuple:
        params, (member, seed) = shared_task
        # a copy: Ray hands the shared array over read-only, straight from its object store
        controller.load_vector(torch.from_numpy(np.array(params[member], dtype=np.float32)))
        agent = WorldModelAgent(vae, memory, controller, include_cell)
        episode = run_episode(env, agent.policy(), seed)
        if not latents:
            return episode.total_reward, len(episode)
        mu, _ = encode_frames(vae, torch.from_numpy(episode.observations))
        return episode.total_reward, len(episode), mu.half().numpy(), episode.actions

    return play


class RealFitness:
    """fitness(params (P, n), seed) -> mean real-env return per member, over W workers.

    ``backend``: ``local`` processes or ``ray`` actors (at ``ray_address``). A generation's
    parameters go to the workers once (Ray: one object in the store, passed by reference to
    every task), and each task is (member, episode seed): a pure function of the parameters and
    the seed, so a task a pool retries after losing a worker scores the same."""

    def __init__(self, run_dir: Path, env_id: str, spec: ControllerSpec, rollouts: int, workers: int,
                 include_cell: bool = False, backend: str = "local", ray_address: str | None = None,
                 memory_kind: str = "mdnrnn", curiosity: Curiosity | None = None) -> None:
        """``curiosity``: the reward hook, run here on each episode's latents; after scoring a
        generation it learns from all its transitions."""
        init = functools.partial(_real_rollout_worker, str(run_dir), env_id, spec.to_dict(), include_cell,
                                 memory_kind, curiosity is not None)
        self.pool = make_pool(backend, init, workers, ray_address)
        self.rollouts = rollouts
        self.curiosity = curiosity
        self.last = {}  # the last generation's intrinsic return and the hook's learning metrics

    def __call__(self, params: torch.Tensor, seed: int) -> torch.Tensor:
        vectors = params.detach().cpu().numpy()
        tasks = [(p, seed * 10_007 + p * self.rollouts + r) for p in range(len(vectors)) for r in range(self.rollouts)]
        results = self.pool.map(tasks, shared=vectors)
        returns = torch.tensor([result[0] for result in results])
        if self.curiosity is not None:
            returns = returns + self._bonus(results)
        return returns.view(len(vectors), self.rollouts).mean(dim=1)

    def _bonus(self, results: list[tuple]) -> torch.Tensor:
        """Each episode's intrinsic return, scored before the hook learns from the generation."""
        episodes = [(torch.from_numpy(z).float(), torch.from_numpy(actions)) for _, _, z, actions in results]
        with torch.no_grad():
            bonus = torch.tensor([float(self.curiosity.episode(z, a).sum()) for z, a in episodes])
        played = [(z, a) for z, a in episodes if len(a)]
        learnt = self.curiosity.learn(*episodes_transitions(played)) if played else {}
        self.last = {"intrinsic_return": float(bonus.mean()), **{f"curiosity_{k}": v for k, v in learnt.items()}}
        return bonus

    def close(self) -> None:
        self.pool.close()
