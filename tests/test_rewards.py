"""The reward hook (world_models/rewards.py): it adds exactly eta times its intrinsic reward to
every return it touches (dream steps, CMA-ES's real returns, NPG's real steps), the dream's
bonus never comes from the dream's own sample, and the ICM learns the agent's episodes online.
Curiosity off leaves every result bit-identical (tests/test_memory.py's recordings, made before
the hook existed, replay with it in place)."""

from __future__ import annotations

import copy
import functools
import json
import shutil

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from world_models.curiosity import ICM, ICMLearner

pytestmark = pytest.mark.slow  # the tiny run's workers and real TakeCover envs


def _models(run_dir):
    from agents.evaluate import load_start_latents
    from world_models.memory import load_memory

    memory, _ = load_memory(run_dir, "mdnrnn")
    mu, log_sigma = load_start_latents(run_dir, "cpu")
    return memory, mu, log_sigma


def _icm_hook(z_dim: int, scale: float = 0.5, seed: int = 0):
    from world_models.rewards import ICMCuriosity

    torch.manual_seed(seed)
    return ICMCuriosity(ICMLearner(ICM(z_dim, 3, True, feature_dim=16, hidden=32), seed=seed), scale)


def _forward_error(icm: ICM, z, actions, target) -> torch.Tensor:
    """1/2 ||f(phi(z), a) - phi(target)||^2, written out."""
    return 0.5 * ((icm.forward_prediction(icm.features(z), actions) - icm.features(target)) ** 2).sum(-1)


def _step_both(plain, curious, steps: int, seed: int = 0):
    """Step two dreams with the same actions; yield (z, actions, state, resetting, plain out, curious out)."""
    g = torch.Generator().manual_seed(seed)
    plain.reset_tensor(3)
    curious.reset_tensor(3)
    for _ in range(steps):
        actions = torch.randint(0, 3, (plain.num_envs,), generator=g)
        z, state, resetting = curious.z.clone(), curious.state, curious._needs_reset.clone()
        yield z, actions, state, resetting, plain.step_tensor(actions), curious.step_tensor(actions)


@pytest.mark.timeout(120)
@torch.no_grad()
def test_icm_adds_exactly_eta_half_forward_error_toward_the_expected_latent_in_the_dream(tiny_run):
    from world_models.dream import DreamConfig, DreamVecEnv

    memory, mu, log_sigma = _models(tiny_run)
    hook = _icm_hook(memory.z_dim)
    config = DreamConfig(max_episode_steps=12)  # episodes end inside the 30 steps: reset steps pay 0
    plain = DreamVecEnv(memory, mu, log_sigma, 6, config, seed=3)
    curious = DreamVecEnv(memory, mu, log_sigma, 6, config, seed=3, curiosity=hook)
    resets = 0
    for z, actions, state, resetting, (f0, r0, t0, u0), (f1, r1, t1, u1) in _step_both(plain, curious, 30):
        out, _ = memory.step(z, actions, state)
        expected_next = (out.logit_pi.softmax(-1) * out.mu).sum(-1)  # E[z'], not the dream's sample
        bonus = 0.5 * _forward_error(hook.learner.icm, z, actions, expected_next)
        torch.testing.assert_close(r1 - r0, torch.where(resetting, 0.0, bonus))
        assert torch.equal(f0, f1) and torch.equal(t0, t1) and torch.equal(u0, u1)  # nothing else moves
        resets += int(resetting.sum())
    assert resets > 0


@pytest.mark.timeout(120)
@torch.no_grad()
def test_icm_dream_bonus_is_capped_at_the_real_novelty_cap(tiny_run):
    from world_models.dream import DreamConfig, DreamVecEnv

    memory, mu, log_sigma = _models(tiny_run)
    hook = _icm_hook(memory.z_dim)
    config = DreamConfig(max_episode_steps=50)

    def raw_and_paid():
        plain = DreamVecEnv(memory, mu, log_sigma, 6, config, seed=3)
        curious = DreamVecEnv(memory, mu, log_sigma, 6, config, seed=3, curiosity=hook)
        for z, actions, state, resetting, (_, r0, _, _), (_, r1, _, _) in _step_both(plain, curious, 10):
            out, _ = memory.step(z, actions, state)
            raw = _forward_error(hook.learner.icm, z, actions, (out.logit_pi.softmax(-1) * out.mu).sum(-1))
            yield raw[~resetting], (r1 - r0)[~resetting]

    cap = float(torch.cat([raw for raw, _ in raw_and_paid()]).median())  # no cap yet: what the dream pays
    hook.learner.novelty_cap = cap
    raw, paid = (torch.cat(part) for part in zip(*raw_and_paid(), strict=True))
    torch.testing.assert_close(paid, 0.5 * raw.clamp(max=cap))
    assert (raw > cap).sum() > 0 and (raw < cap).sum() > 0


@pytest.mark.timeout(120)
@torch.no_grad()
def test_mdn_dream_bonus_is_the_models_disagreement_and_zero_between_equal_models(tiny_run):
    from world_models.dream import DreamConfig, DreamVecEnv
    from world_models.rewards import SurpriseCuriosity

    memory, mu, log_sigma = _models(tiny_run)
    other = copy.deepcopy(memory)
    for parameter in other.mdn.parameters():
        parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    hook = SurpriseCuriosity(memory, scale=2.0, baseline=0.0)
    config = DreamConfig(done_threshold=1.0)  # the tiny M's done head fires often: no deaths here, no resets
    for critic, disagree in ((copy.deepcopy(memory), False), (other, True)):
        plain = DreamVecEnv(memory, mu, log_sigma, 5, config, seed=3, critics=[critic])
        curious = DreamVecEnv(memory, mu, log_sigma, 5, config, seed=3, critics=[critic], curiosity=hook)
        critic_state = critic.initial_state(5)
        for z, actions, state, resetting, (_, r0, _, _), (_, r1, _, _) in _step_both(plain, curious, 8):
            assert not resetting.any()
            out, _ = memory.step(z, actions, state)
            critic_out, critic_state = critic.step(z, actions, critic_state)
            a, b = ((o.logit_pi.softmax(-1) * o.mu).sum(-1) for o in (out, critic_out))
            expected = 2.0 * ((a - b) / 2) ** 2  # the variance of two values, per latent dim
            torch.testing.assert_close(r1 - r0, expected.mean(-1))
            assert (r1 - r0).abs().max() > 1e-4 if disagree else torch.equal(r1, r0)


@pytest.mark.timeout(120)
@torch.no_grad()
def test_mdn_real_bonus_is_surprise_per_dim_above_the_usual(tiny_run):
    from world_models.latents import load_latent_cache
    from world_models.rewards import SurpriseCuriosity, surprise_baseline

    memory, _, _ = _models(tiny_run)
    latents = load_latent_cache(tiny_run)
    # the usual surprise: the step-by-step loop against M's teacher-forced forward pass
    nll, steps = 0.0, 0
    for e in range(latents.num_episodes):
        episode = latents.episode(e)
        out, _ = memory(episode.mu[None, :-1], episode.actions[None])
        mixture = MixtureSameFamily(Categorical(logits=out.logit_pi), Normal(out.mu, out.log_sigma.exp()))
        nll -= float(Independent(mixture, 1).log_prob(episode.mu[None, 1:]).sum())
        steps += len(episode.actions)
    baseline = surprise_baseline(memory, latents)
    assert baseline == pytest.approx(nll / (steps * memory.z_dim), rel=1e-4)

    episode = latents.episode(0)
    out, _ = memory(episode.mu[None, :-1], episode.actions[None])
    mixture = MixtureSameFamily(Categorical(logits=out.logit_pi[0]), Normal(out.mu[0], out.log_sigma[0].exp()))
    surprise = -Independent(mixture, 1).log_prob(episode.mu[1:]) / memory.z_dim
    hook = SurpriseCuriosity(memory, scale=3.0, baseline=baseline)
    bonus = hook.episode(episode.mu, episode.actions)
    torch.testing.assert_close(bonus, 3.0 * (surprise - baseline).clamp(min=0), rtol=1e-4, atol=1e-5)
    assert (bonus == 0).any() and (bonus > 0).any()  # familiar steps pay nothing, surprising ones pay


@pytest.mark.timeout(300)
def test_real_cmaes_returns_gain_exactly_the_episodes_bonus_and_the_icm_learns(tiny_run):
    from agents.agent import WorldModelAgent, load_controller
    from agents.controller import ControllerSpec
    from agents.fitness import RealFitness
    from envs.collect import run_episode
    from envs.make import make_env
    from world_models.latents import encode_frames
    from world_models.train_vae import load_vae

    memory, _, _ = _models(tiny_run)
    controller, _ = load_controller(tiny_run)
    spec = ControllerSpec.from_dict(controller.spec.to_dict())
    params = torch.stack([controller.to_vector(), controller.to_vector() + 0.3])
    hook = _icm_hook(memory.z_dim, scale=0.25)
    before = copy.deepcopy(hook.learner.icm)
    plain = RealFitness(tiny_run, "VizdoomTakeCover-v1", spec, rollouts=1, workers=1)
    curious = RealFitness(tiny_run, "VizdoomTakeCover-v1", spec, rollouts=1, workers=1, curiosity=hook)
    try:
        task, with_bonus = plain(params, seed=5), curious(params, seed=5)
    finally:
        plain.close()
        curious.close()
    vae, _ = load_vae(tiny_run)
    env = make_env("VizdoomTakeCover-v1")
    for member in range(2):  # replay each member's episode here and score its bonus by hand
        controller.load_vector(params[member])
        episode = run_episode(env, WorldModelAgent(vae, memory, controller).policy(), 5 * 10_007 + member)
        z = encode_frames(vae, torch.from_numpy(episode.observations))[0].half().float()
        with torch.no_grad():
            bonus = 0.25 * _forward_error(before, z[:-1], torch.from_numpy(episode.actions), z[1:]).sum()
        assert float(task[member]) == episode.total_reward
        assert float(with_bonus[member] - task[member]) == pytest.approx(float(bonus), rel=1e-4)
    env.close()
    assert hook.learner.updates > 0 and curious.last["intrinsic_return"] > 0
    assert not torch.equal(before.features(z), hook.learner.icm.features(z))  # learnt from the generation
    assert hook.episode(z, torch.from_numpy(episode.actions)).shape == (len(episode),)


@pytest.mark.timeout(120)
@torch.no_grad()
def test_npg_real_steps_gain_the_bonus_except_on_reset_steps(tiny_run):
    from agents.npg_train import RealFeatureEnv
    from envs.make import make_env
    from envs.pool import make_vector_env
    from world_models.train_vae import load_vae

    memory, _, _ = _models(tiny_run)
    vae, _ = load_vae(tiny_run)
    hook = _icm_hook(memory.z_dim, scale=0.5)
    make = functools.partial(make_env, "VizdoomTakeCover-v1", max_episode_steps=10)
    plain = RealFeatureEnv(make_vector_env("local", [make] * 2), vae, memory)
    curious = RealFeatureEnv(make_vector_env("local", [make] * 2), vae, memory, curiosity=hook, learn_every=10**9)
    plain.reset_tensor(seed=4)
    curious.reset_tensor(seed=4)
    g = torch.Generator().manual_seed(0)
    resets = 0
    for _ in range(25):
        actions = torch.randint(0, 3, (2,), generator=g)
        z, resetting = curious.z.clone(), torch.as_tensor(curious.ended)
        _, r0, _, _ = plain.step_tensor(actions)
        _, r1, _, _ = curious.step_tensor(actions)
        bonus = 0.5 * _forward_error(hook.learner.icm, z, actions, curious.z)
        torch.testing.assert_close((r1 - r0).float(), torch.where(resetting, 0.0, bonus))
        resets += int(resetting.sum())
    plain.close()
    curious.close()
    assert resets > 0


@pytest.mark.timeout(120)
def test_train_icm_learns_each_episode_once(tiny_run, tmp_path, capsys):
    import train
    from world_models.latents import cached_episode_seeds
    from world_models.rewards import make_curiosity

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    assert train.main(["icm", "--run-dir", str(run_dir), "--epochs", "20", "--hidden", "32"]) == 0
    assert "ICM trained on" in capsys.readouterr().out
    seen = json.loads((run_dir / "icm" / "episodes_seen.json").read_text())["seeds"]
    assert seen == sorted(cached_episode_seeds(run_dir))
    first = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("stage") == "icm"]
    assert first and first[-1]["transitions"] > 0
    assert train.main(["icm", "--run-dir", str(run_dir)]) == 0
    assert "nothing to do" in capsys.readouterr().out

    memory, _, _ = _models(run_dir)
    hook = make_curiosity("icm", 0.1, run_dir, memory)  # resumes RUN/icm
    assert hook.learner.updates > 0
    assert train.main(["controller", "--run-dir", str(run_dir), "--curiosity", "icm", "--curiosity-scale", "0.1",
                       "--generations", "1", "--population", "4", "--rollouts", "2", "--eval-every", "1",
                       "--eval-rollouts", "4", "--max-episode-steps", "30", "--no-progress"]) == 0
    info = json.loads((run_dir / "controller" / "model.json").read_text())
    assert info["curiosity"] == "icm" and info["curiosity_scale"] == 0.1
