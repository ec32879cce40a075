"""The analysis functions behind experiments/ and each kept script, on a tiny random-weight TakeCover run.

The run is written directly (random V, M, C and dream start latents, as an exported agent holds
them, plus one fake pipeline round): no training, so the file stays fast; what is checked is the
plumbing (seeding, env ids from the run, the scripts' outputs), not any score.
"""

import dataclasses
import functools
import importlib.util
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro

from agents.agent import load_agent, save_controller
from agents.analysis import (
    held_actions_per_round,
    held_runs,
    jitter_dream_length,
    jitter_policy,
    kept_rounds,
    switching_stats,
)
from agents.controller import Controller, ControllerSpec
from envs.collect import run_episode
from envs.errors import UserError
from envs.make import make_env
from world_models.checkpoint import module_state, save_checkpoint
from world_models.dream import DreamConfig
from world_models.latents import latent_dir
from world_models.mdnrnn import MDNRNN
from world_models.train_mdnrnn import load_mdnrnn, mdnrnn_dir, reward_fit
from world_models.train_vae import vae_dir
from world_models.vae import ConvVAE

ROOT = Path(__file__).resolve().parents[1]
ENV = "VizdoomTakeCover-v1"
SCRIPTS = ["action_switching", "constant_actions", "ram_probe", "reward_fit", "sampled_latents", "success_curve",
           "temperature_study"]
SEEDS = [3_000_100, 3_000_101]


def write_tiny_run(run_dir: Path) -> Path:
    """Random V (z 8), M (hidden 16) and C, the dream's start latents, and round 1 of a pipeline."""
    torch.manual_seed(0)
    save_checkpoint(vae_dir(run_dir), module_state(ConvVAE(z_dim=8)), {"z_dim": 8, "env_id": ENV})
    space = {"type": "discrete", "n": 3}
    save_checkpoint(mdnrnn_dir(run_dir), module_state(MDNRNN(8, 3, True, 16, 2)),
                    {"z_dim": 8, "hidden": 16, "mixtures": 2, "discrete_actions": True, "action_dim": 3,
                     "env_id": ENV, "action_space": space, "done_weight": 10.0})
    controller = Controller(ControllerSpec(8 + 16, 3, discrete=True))
    with torch.no_grad():
        for parameter in controller.parameters():
            parameter.normal_()  # C's choice must depend on z, or mean and sampled z act alike
    dream = DreamConfig(done_weight=10.0, max_episode_steps=50)
    save_controller(run_dir, controller, {"env_id": ENV, "include_cell": False, "dream": dataclasses.asdict(dream)})
    save_checkpoint(latent_dir(run_dir), {"mu": torch.randn(4, 8), "log_sigma": torch.full((4, 8), -1.0)},
                    {"kind": "dream start latents", "episodes": 4}, name="start")
    for part in ("mdnrnn", "controller"):
        shutil.copytree(run_dir / part, run_dir / "rounds" / "1" / part)
    (run_dir / "stages.json").write_text(json.dumps({"validate": {"seconds": 1.0, "summary": {"mean": 123.0}}}))
    return run_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("experiments") / "run")


@pytest.fixture(scope="module")
def in_process(tiny_run) -> dict:
    """Each seed's episode played here, in this process: the reference the worker processes must match."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same arithmetic, so the same actions
    agent, _ = load_agent(tiny_run)
    env = make_env(ENV)
    played = {}
    for seed in SEEDS:
        for name, latent in (("mean", "mean"), ("sampled", "sample")):
            policy = agent.policy(rng=np.random.default_rng(seed), latent=latent)
            played[name, seed] = run_episode(env, policy, seed).actions.tolist()
        played["jitter", seed] = run_episode(env, jitter_policy(1, env.action_space, None), seed).actions.tolist()
    env.close()
    torch.set_num_threads(threads)
    return played


def load_script(name: str):
    """``experiments/NAME.py`` imported as a module (it is a script, not part of the package)."""
    if f"experiment_{name}" not in sys.modules:
        spec = importlib.util.spec_from_file_location(f"experiment_{name}", ROOT / "experiments" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # before running it: dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[f"experiment_{name}"]


@pytest.mark.timeout(10)
def test_held_runs_and_switching_stats_known_answer():
    assert held_runs([1, 1, 2, 1]).tolist() == [2, 1, 1]
    assert held_runs([]).tolist() == []
    assert switching_stats([0, 0, 0, 1, 1, 2]) == {"length": 6, "action_counts": {0: 3, 1: 2, 2: 1},
                                                   "mean_held": 2.0, "longest_held": 3}


@pytest.mark.timeout(10)
def test_jitter_policy_alternates_and_pickles():
    factory = pickle.loads(pickle.dumps(functools.partial(jitter_policy, 2)))
    policy = factory(None, np.random.default_rng(0))
    assert [policy(None) for _ in range(6)] == [1, 1, 2, 2, 1, 1]


@pytest.mark.timeout(30)
def test_acting_on_sampled_z_is_seeded_and_differs_from_the_mean(tiny_run, in_process, one_thread):
    agent, _ = load_agent(tiny_run)
    env = make_env(ENV)
    again = run_episode(env, agent.policy(rng=np.random.default_rng(SEEDS[0]), latent="sample"), SEEDS[0])
    env.close()
    assert again.actions.tolist() == in_process["sampled", SEEDS[0]]
    assert in_process["sampled", SEEDS[0]] != in_process["mean", SEEDS[0]]
    with pytest.raises(ValueError, match="latent"):
        agent.policy(latent="median")


@pytest.mark.timeout(30)
def test_dream_lengths_of_scripted_and_held_actions(tiny_run, one_thread):
    mdnrnn, _ = load_mdnrnn(tiny_run)
    start = (torch.randn(4, 8), torch.full((4, 8), -1.0))
    config = DreamConfig(max_episode_steps=30)
    length = jitter_dream_length(mdnrnn, *start, config, period=2, dreams=8, seed=3)
    assert 1 <= length <= 30 and length == jitter_dream_length(mdnrnn, *start, config, period=2, dreams=8, seed=3)
    assert kept_rounds(tiny_run) == [1]
    [row] = held_actions_per_round(tiny_run, dreams=4, seed=1)
    assert row["round"] == 1 and row["validation_mean"] == 123.0 and row["temperature"] == 1.15
    for rule in ("threshold", "sample"):
        assert len(row[f"dream_length_{rule}"]) == 3 and all(1 <= n <= 50 for n in row[f"dream_length_{rule}"])


@pytest.mark.timeout(60)
def test_every_kept_script_has_help(capsys):
    assert sorted(SCRIPTS) == sorted(path.stem for path in (ROOT / "experiments").glob("*.py"))
    for name in SCRIPTS:  # in this process: one torch import for all
        with pytest.raises(SystemExit) as exit_:
            tyro.cli(load_script(name).Args, args=["--help"])
        assert exit_.value.code == 0 and "--run-dir" in capsys.readouterr().out, name
    # and one as a script from the command line: the package's imports need no sys.path change
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "constant_actions.py"), "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=50)
    assert result.returncode == 0 and "--dreams" in result.stdout, result.stderr[-2000:]


@pytest.mark.timeout(30)
def test_constant_actions_script(tiny_run, tmp_path, one_thread):
    module = load_script("constant_actions")
    result = module.main(module.Args(run_dirs=[tiny_run], dreams=4, out=tmp_path / "held.json"))
    assert json.loads((tmp_path / "held.json").read_text()) == result
    assert [row["round"] for row in result["runs"][str(tiny_run)]] == [1]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sampled_latents_script_replays_each_seed_in_workers(tiny_run, in_process):
    module = load_script("sampled_latents")
    result = module.main(module.Args(run_dir=tiny_run, seed=SEEDS[0], episodes=2, workers=1))
    assert json.loads((tiny_run / "experiments" / "sampled_latents.json").read_text())["env_id"] == ENV
    for name in ("mean", "sampled"):  # TakeCover pays +1 per step: a return is the episode's length
        assert result[name]["returns"] == [float(len(in_process[name, seed])) for seed in SEEDS]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_action_switching_script(tiny_run, in_process, tmp_path, one_thread):
    module = load_script("action_switching")
    result = module.main(module.Args(run_dir=tiny_run, seed=SEEDS[0], episodes=2, workers=1, periods=(1,),
                                     dreams=4, out=tmp_path / "switching.json"))
    assert result["env_id"] == ENV and [e["seed"] for e in result["episodes"]] == SEEDS
    assert [e["length"] for e in result["episodes"]] == [len(in_process["mean", seed]) for seed in SEEDS]
    assert result["episodes"][0]["mean_held"] == pytest.approx(held_runs(in_process["mean", SEEDS[0]]).mean())
    [jitter] = result["scripted_jitter"]
    assert jitter["real_length"] == np.mean([len(in_process["jitter", seed]) for seed in SEEDS])
    assert 1 <= jitter["dream_length"] <= 50


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_temperature_study_script(tiny_run, tmp_path, one_thread):
    module = load_script("temperature_study")
    rows = module.main(module.Args(run_dir=tiny_run, temperatures=[1.0], generations=1, population=4, rollouts=2,
                                   max_episode_steps=20, real_episodes=1, dream_episodes=4, workers=1,
                                   out=tmp_path / "tau"))
    assert [row["temperature"] for row in rows] == [1.0] and 1 <= rows[0]["dream_mean"] <= 20
    assert (tmp_path / "tau.png").stat().st_size > 1000 and (tiny_run / "tau_1.0" / "controller").is_dir()


def test_reward_fit_known_answers():
    from world_models.data import LatentEpisodes

    rewards = [torch.tensor([1.0, 0.0, 0.0, -1.0]), torch.tensor([0.0, 1.0, 1.0])]
    episodes = LatentEpisodes.from_parts(
        {"mu": [torch.zeros(len(r) + 1, 4) for r in rewards],
         "log_sigma": [torch.zeros(len(r) + 1, 4) for r in rewards],
         "actions": [torch.zeros(len(r), dtype=torch.int64) for r in rewards], "rewards": rewards,
         "terminated": [torch.zeros(len(r), dtype=torch.bool) for r in rewards]}, [len(r) for r in rewards])
    mdnrnn = MDNRNN(z_dim=4, action_dim=2, discrete_actions=True, hidden=8)
    flat = torch.cat(rewards)
    with torch.no_grad():
        mdnrnn.reward_head.weight.zero_()
        mdnrnn.reward_head.bias.fill_(float(flat.mean()))  # a constant at the mean explains nothing
    fit = reward_fit(mdnrnn, episodes)
    assert abs(fit["r2"]) < 1e-6 and fit["variance"] == pytest.approx(float(flat.var(unbiased=False)))
    mean = float(flat.mean())
    assert fit["real"] == [0.0, 2.0] and fit["predicted"] == pytest.approx([4 * mean, 3 * mean])
    assert fit["episode_correlation"] == pytest.approx(-1.0)  # the longer episode earned less: ranked wrong
    with torch.no_grad():
        mdnrnn.reward_head.bias.zero_()  # a constant 0: worse than the mean by mean^2 / variance
    assert reward_fit(mdnrnn, episodes)["r2"] == pytest.approx(-mean**2 / float(flat.var(unbiased=False)))


def test_success_curve_counts_each_rounds_episodes_that_reach_the_goal(tmp_path):
    from envs.episodes import Episode, episode_path, save_episode

    run_dir = tmp_path / "run"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "pipeline_config.json").write_text(json.dumps({"env": "VizdoomMyWayHomeSparse-v0"}))
    returns = {0: -0.2, 1: 0.9, 2: -0.2, 10: 0.95, 11: 0.8}  # round 1: seeds 0-2, round 2: 10-11
    for seed, value in returns.items():
        steps = 3
        save_episode(episode_path(run_dir / "data", seed), Episode(
            observations=np.zeros((steps + 1, 64, 64, 3), np.uint8), actions=np.zeros(steps, np.int64),
            rewards=np.array([0.0, 0.0, value], np.float32), terminated=np.zeros(steps, bool),
            truncated=np.zeros(steps, bool)))
    stages = {"collect": {"summary": {"episodes_new": 3, "steps_total": 9}},
              "vae": {"summary": {}},
              "collect_2": {"summary": {"episodes_new": 2, "steps_total": 15}}}
    (run_dir / "stages.json").write_text(json.dumps(stages))
    script = load_script("success_curve")
    result = script.main(script.Args(run_dir=run_dir))
    assert [(r["stage"], r["episodes"], r["successes"], r["real_steps_after"]) for r in result["rounds"]] == [
        ("collect", 3, 1, 9), ("collect_2", 2, 2, 15)]
    assert (run_dir / "experiments" / "success_curve.json").exists()


@pytest.mark.timeout(60)
def test_ram_probes_known_answers(one_thread):
    probe = load_script("ram_probe")
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2_000, 8, generator=generator)
    linear = z @ torch.randn(8, 1, generator=generator) + 0.05 * torch.randn(2_000, 1, generator=generator)
    curved = z[:, :1].abs() * 3  # no linear trace in z: only a nonlinear probe finds it
    unrelated = torch.randn(2_000, 1, generator=generator)
    fits = probe.probe(z, torch.cat([linear, curved, unrelated], 1), test_fraction=0.25)
    assert fits["ridge"][0] > 0.99 and fits["mlp"][0] > 0.95
    assert fits["ridge"][1] < 0.1 < 0.8 < fits["mlp"][1]
    assert max(fits["ridge"][2], fits["mlp"][2]) < 0.1


@pytest.mark.timeout(60)
def test_ram_probe_reads_the_ball_off_pongs_ram(tmp_path, one_thread):
    probe = load_script("ram_probe")
    frames, positions = probe.play("ALE/Pong-v5", steps=300, seed=3_000_200)
    assert frames.shape == (300, 64, 64, 3) and positions.shape == (300, 4)
    assert len(np.unique(positions[:, 2])) > 10  # the ball's x moves
    torch.manual_seed(0)
    save_checkpoint(vae_dir(tmp_path), module_state(ConvVAE(z_dim=8)), {"z_dim": 8, "env_id": "ALE/Pong-v5"})
    result = probe.main(probe.Args(run_dir=tmp_path, steps=400))
    assert list(result["r2"]) == ["player_y", "enemy_y", "ball_x", "ball_y"]
    assert json.loads((tmp_path / "experiments" / "ram_probe.json").read_text()) == result
    with pytest.raises(UserError, match="no RAM annotations"):
        probe.game_of("ALE/MsPacman-v5")
