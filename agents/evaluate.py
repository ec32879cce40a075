"""Evaluating a trained agent: real-env episodes across workers, dream episodes batched, videos."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from agents.agent import Latent, agent_policy_factory, load_agent
from envs.collect import PolicyFactory, run_episode
from envs.errors import UserError
from envs.make import make_env
from envs.pool import make_pool
from envs.tasks import task_rules
from world_models.dream import DreamConfig, DreamVecEnv, dream_rollouts

VIDEO_SCALE = 4  # 64x64 frames are upscaled to 256x256 in videos


@dataclass
class EvalResult:
    where: str
    seeds: list[int]
    returns: list[float]
    lengths: list[int]
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    def to_dict(self) -> dict:
        return {"where": self.where, "episodes": len(self.returns), "mean": self.mean, "std": self.std,
                "seeds": self.seeds, "returns": self.returns, "lengths": self.lengths, **self.extra}


def _real_episode_worker(env_id: str, policy_factory: PolicyFactory, keep_actions: bool = False):
    torch.set_num_threads(1)  # one core per worker: the workers are the parallelism
    env = make_env(env_id)

    def play(seed: int) -> tuple:
        # the policy's rng is the episode's seed: a scripted or sampling policy replays exactly
        episode = run_episode(env, policy_factory(env.action_space, np.random.default_rng(seed)), seed)
        return (episode.total_reward, len(episode)) + ((episode.actions.tolist(),) if keep_actions else ())

    return play


def evaluate_real(run_dir: Path, env_id: str, seeds: list[int], workers: int = 1,
                  on_result=None, latent: Latent = "mean", backend: str = "local",
                  ray_address: str | None = None) -> EvalResult:
    """One real-env episode per seed of the run's agent, spread over ``workers`` processes.

    ``latent``: the agent acts on z = mu(V(frame)) (``mean``, the package's agent) or on z drawn
    from V's posterior (``sample``; the noise is a function of the episode's seed). ``backend``
    and ``ray_address``: as ``evaluate_policy``'s.
    """
    factory = functools.partial(agent_policy_factory, str(run_dir), 0.0, latent=latent)
    return evaluate_policy(env_id, factory, seeds, workers, on_result, backend=backend, ray_address=ray_address)


def evaluate_policy(env_id: str, policy_factory: PolicyFactory, seeds: list[int], workers: int = 1,
                    on_result=None, keep_actions: bool = False, backend: str = "local",
                    ray_address: str | None = None) -> EvalResult:
    """One real-env episode per seed with any ``policy_factory(action_space, rng) -> policy``
    (``envs.collect``'s signature; picklable, the workers are spawned processes; rng seeded by
    the episode's seed). ``keep_actions``: every episode's actions go to ``extra["actions"]``.
    ``backend``: ``local`` worker processes or ``ray`` actors (at ``ray_address``; ``envs.pool``);
    with Ray the run directory a policy loads must be readable at the same path on every node."""
    init = functools.partial(_real_episode_worker, env_id, policy_factory, keep_actions)
    with make_pool(backend, init, workers, ray_address) as pool:
        results = pool.map(seeds, on_result=on_result)
    result = EvalResult("real", list(seeds), [float(r[0]) for r in results], [int(r[1]) for r in results])
    goal = task_rules(env_id).success_return
    if goal is not None:  # a goal task: how often the goal was reached
        result.extra["success_rate"] = float(np.mean([r > goal for r in result.returns]))
    if keep_actions:
        result.extra["actions"] = [r[2] for r in results]
    return result


def evaluate_dream(dream: DreamVecEnv, controller, seed: int) -> EvalResult:
    """The first episode of each of ``dream.num_envs`` dreams, stepped as one batch."""
    returns, lengths = dream_rollouts(dream, lambda features, _: controller.act(features), seed)
    return EvalResult("dream", [seed] * dream.num_envs, returns.cpu().tolist(), lengths.cpu().tolist())


def write_video(path: Path, frames: np.ndarray, fps: int = 35) -> Path:
    """(T, H, W, 3) uint8 -> mp4, upscaled by nearest neighbour so 64x64 frames are visible."""
    import imageio.v2 as imageio

    frames = frames.repeat(VIDEO_SCALE, axis=1).repeat(VIDEO_SCALE, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    imageio.mimwrite(tmp, list(frames), fps=fps, macro_block_size=1)
    tmp.replace(path)
    return path


@torch.no_grad()
def real_episode_video(run_dir: Path, env_id: str, seed: int, path: Path,
                       max_steps: int | None = None) -> tuple[Path, float]:
    """A real episode: the env's frame beside V's reconstruction of it (what the agent saw), cut
    after ``max_steps`` steps if given (an Atari game may run to 27,000)."""
    agent, _ = load_agent(run_dir)
    env = make_env(env_id)
    episode = run_episode(env, agent.policy(), seed, max_steps)
    env.close()
    decoded = []
    for start in range(0, len(episode.observations), 512):
        z = agent.encode(episode.observations[start : start + 512])
        decoded.append(_to_uint8(agent.vae.decode(z)))
    side_by_side = np.concatenate([episode.observations, np.concatenate(decoded)], axis=2)
    return write_video(path, side_by_side), episode.total_reward


@torch.no_grad()
def dream_episode_video(memory, vae, start_mu, start_log_sigma, controller, config: DreamConfig, seed: int,
                        path: Path) -> tuple[Path, float]:
    """A dream episode decoded through V."""
    dream = DreamVecEnv(memory, start_mu, start_log_sigma, 1, config, vae=vae, seed=seed)
    features = dream.reset_tensor(seed)
    frames, total, done = [dream.render()[0]], 0.0, False
    while not done:
        features, reward, terminated, truncated = dream.step_tensor(controller.act(features))
        frames.append(dream.render()[0])
        total += float(reward[0])
        done = bool(terminated[0] or truncated[0])
    return write_video(path, np.stack(frames)), total


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def run_evaluation(args, command: str) -> EvalResult:
    """What ``eval.py`` does: evaluate, print progress, write the JSON and videos."""
    from envs.episodes import atomic_write_json
    from world_models.runlog import resolve_device

    run_dir = Path(args.run_dir)
    if args.episodes < 1 or args.workers < 1:
        raise UserError("--episodes and --workers must be at least 1")
    agent, info = load_agent(run_dir)  # fails early, with one line, on a missing or foreign run
    env_id = info["env_id"]
    seeds = list(range(args.seed, args.seed + args.episodes))
    dream_config = DreamConfig(**info.get("dream", {}))
    if args.temperature is not None:
        dream_config.temperature = args.temperature
    if args.where == "real":
        result = evaluate_real(run_dir, env_id, seeds, args.workers, on_result=_print_episode(seeds),
                               latent=args.latent, backend=args.backend, ray_address=args.ray_address)
    else:
        device = resolve_device(args.device)
        agent, _ = load_agent(run_dir, device)
        start_mu, start_log_sigma = load_start_latents(run_dir, device)
        dream = DreamVecEnv(agent.memory, start_mu, start_log_sigma, args.episodes, dream_config, seed=args.seed)
        result = evaluate_dream(dream, agent.controller, args.seed)
    result.extra.update(command=command, env_id=env_id, run_dir=str(run_dir),
                        temperature=dream_config.temperature if args.where == "dream" else None,
                        controller={k: v for k, v in info.items() if k != "spec"})
    if args.video is not None:
        result.extra["videos"] = _videos(run_dir, env_id, args, dream_config)
    if args.json is not None:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.json), result.to_dict())
    return result


def _print_episode(seeds: list[int]):
    done = {"n": 0}

    def report(index: int, result: tuple[float, int]) -> None:
        done["n"] += 1
        print(f"episode {done['n']}/{len(seeds)} (seed {seeds[index]}): return {result[0]:.1f}, "
              f"length {result[1]}", flush=True)

    return report


def load_start_latents(run_dir: Path, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of the dataset's first frames, where dreams start.

    From the run's latent cache, or from ``latents/start.safetensors`` in an exported agent.
    """
    from world_models.checkpoint import load_checkpoint
    from world_models.latents import latent_dir, load_latent_cache

    if (latent_dir(run_dir) / "start.safetensors").exists():
        tensors, _ = load_checkpoint(latent_dir(run_dir), name="start", device=device)
        return tensors["mu"], tensors["log_sigma"]
    latents = load_latent_cache(run_dir)
    starts = latents.offsets[:-1]
    return latents.mu[starts].to(device), latents.log_sigma[starts].to(device)


def _videos(run_dir: Path, env_id: str, args, dream_config: DreamConfig) -> list[str]:
    videos = episode_videos(run_dir, env_id, args.seed, Path(args.video), dream_config)
    return [videos["real"], videos["dream"]]


def episode_videos(run_dir: Path, env_id: str, seed: int, out: Path, dream_config: DreamConfig | None = None,
                   max_steps: int | None = None) -> dict:
    """``out/real_episode.mp4`` (``real_episode_video``, at most ``max_steps`` steps) and
    ``out/dream_episode.mp4`` (``dream_episode_video``, in the dream the controller was trained in
    unless ``dream_config``), both on ``seed``; returns their paths and returns."""
    agent, info = load_agent(run_dir)
    real_path, real_return = real_episode_video(run_dir, env_id, seed, out / "real_episode.mp4", max_steps)
    start_mu, start_log_sigma = load_start_latents(run_dir, "cpu")
    dream_path, dream_return = dream_episode_video(
        agent.memory, agent.vae, start_mu, start_log_sigma, agent.controller,
        dream_config or DreamConfig(**info.get("dream", {})), seed, out / "dream_episode.mp4")
    return {"real": str(real_path), "real_return": real_return, "dream": str(dream_path),
            "dream_return": dream_return}
