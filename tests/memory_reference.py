"""Recorded outputs of the MDN-RNN memory's users (the dream, the acting agent, NPG's real
feature env), made before the memory seam existed; ``test_memory.py`` replays them bit for bit.

Every model is built from a fixed seed, so only outputs are stored. Regenerate (only when a
change is meant to alter MDN-RNN results): ``python -m tests.memory_reference``.
"""

from __future__ import annotations

from pathlib import Path

import torch

REFERENCE = Path(__file__).parent / "data" / "mdnrnn_reference.safetensors"


def models(discrete: bool = True, seed: int = 0):
    from agents.controller import Controller, ControllerSpec
    from world_models.mdnrnn import MDNRNN

    torch.manual_seed(seed)
    action_dim = 3 if discrete else 2
    mdnrnn = MDNRNN(4, action_dim, discrete, hidden=16, mixtures=3).eval()
    critic = MDNRNN(4, action_dim, discrete, hidden=8, mixtures=2).eval()
    with torch.no_grad():  # a done head that fires now and then, so resets and compaction happen
        mdnrnn.done_head.bias.fill_(-0.1)
    bounds = {} if discrete else {"action_low": (-1.0, -1.0), "action_high": (1.0, 1.0)}
    controllers = [Controller(ControllerSpec(4 + 16 * cells, action_dim, discrete, **bounds)).eval()
                   for cells in (1, 2)]
    start_mu, start_log_sigma = torch.randn(10, 4), torch.randn(10, 4) - 1.0
    return mdnrnn, critic, controllers, start_mu, start_log_sigma


@torch.no_grad()
def dream_outputs() -> dict[str, torch.Tensor]:
    from world_models.dream import DreamConfig, DreamVecEnv, dream_rollouts

    out = {}
    for discrete in (True, False):
        mdnrnn, critic, controllers, start_mu, start_log_sigma = models(discrete)
        cases = {
            "threshold": (DreamConfig(max_episode_steps=40), [], controllers[0]),
            "sample_cell_critic": (DreamConfig(done_mode="sample", done_weight=10.0, include_cell=True,
                                               reward_mode="model", max_episode_steps=30), [critic], controllers[1]),
        }
        for name, (config, critics, controller) in cases.items():
            key = f"{'discrete' if discrete else 'box'}_{name}"
            dream = DreamVecEnv(mdnrnn, start_mu, start_log_sigma, 6, config, seed=3, critics=critics)
            features = [dream.reset_tensor(5)]
            rewards, ends = [], []
            for _ in range(60):
                feature, reward, terminated, truncated = dream.step_tensor(controller.act(features[-1]))
                features.append(feature)
                rewards.append(reward)
                ends.append(terminated.long() + 2 * truncated.long())
            out[f"{key}_features"] = torch.stack(features)
            out[f"{key}_rewards"] = torch.stack(rewards)
            out[f"{key}_ends"] = torch.stack(ends)
            dream = DreamVecEnv(mdnrnn, start_mu, start_log_sigma, 8, config, seed=4, critics=critics)
            returns, lengths = dream_rollouts(dream, lambda f, index, c=controller: c.act(f), seed=7)
            out[f"{key}_returns"], out[f"{key}_lengths"] = returns, lengths
    return out


def agent_outputs() -> dict[str, torch.Tensor]:
    import numpy as np

    from agents.agent import WorldModelAgent
    from envs.collect import run_episode
    from envs.make import make_env
    from world_models.vae import ConvVAE

    mdnrnn, _, controllers, _, _ = models(True)
    torch.manual_seed(1)
    vae = ConvVAE(4).eval()
    env = make_env("VizdoomTakeCover-v1")
    out = {}
    for name, kwargs, controller, cell in (("mean", {}, controllers[0], False),
                                           ("sample_explore_cell", {"exploration": 0.3, "latent": "sample"},
                                            controllers[1], True)):
        agent = WorldModelAgent(vae, mdnrnn, controller, cell)
        policy = agent.policy(rng=np.random.default_rng(11), **kwargs)
        episode = run_episode(env, policy, seed=21, max_steps=120)
        out[f"agent_{name}_actions"] = torch.as_tensor(np.asarray(episode.actions))
        out[f"agent_{name}_carry"] = torch.stack(policy.state)
    env.close()
    return out


@torch.no_grad()
def feature_env_outputs() -> dict[str, torch.Tensor]:
    import functools

    from agents.npg_train import RealFeatureEnv
    from envs.make import make_env
    from envs.pool import make_vector_env
    from world_models.vae import ConvVAE

    mdnrnn, _, controllers, _, _ = models(True)
    torch.manual_seed(1)
    vae = ConvVAE(4).eval()
    env = RealFeatureEnv(make_vector_env("local", [functools.partial(make_env, "VizdoomTakeCover-v1",
                                                                     max_episode_steps=25)] * 2), vae, mdnrnn)
    features = [env.reset_tensor(seed=8)]
    for _ in range(40):  # across an episode end (25 steps) and its reset
        features.append(env.step_tensor(controllers[0].act(features[-1]))[0])
    env.close()
    return {"feature_env_features": torch.stack(features)}


def all_outputs() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    return {**dream_outputs(), **agent_outputs(), **feature_env_outputs()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    REFERENCE.parent.mkdir(exist_ok=True)
    outputs = {k: v.contiguous() for k, v in all_outputs().items()}
    save_file(outputs, str(REFERENCE))
    print(f"wrote {len(outputs)} tensors to {REFERENCE}")
