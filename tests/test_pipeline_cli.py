"""The command lines end to end on a tiny TakeCover run: train, evaluate, resume, errors."""

import dataclasses
import json
import shutil

import pytest

from tests.conftest import TINY_CONTROLLER  # the session's tiny_run fixture is there too

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # processes; the shared pipeline takes minutes



def test_training_writes_the_run_directory(tiny_run):
    for path in ["vae/model.safetensors", "vae/model.json", "mdnrnn/model.safetensors", "latents/latents.json",
                 "controller/model.safetensors", "controller/model.json", "metrics.jsonl", "config_vae.json"]:
        assert (tiny_run / path).exists(), path
    info = json.loads((tiny_run / "controller/model.json").read_text())
    assert info["env_id"] == "VizdoomTakeCover-v1" and info["algo"] == "cmaes"
    stages = {json.loads(line)["stage"] for line in (tiny_run / "metrics.jsonl").read_text().splitlines()}
    assert {"vae", "mdnrnn", "controller_cmaes_dream"} <= stages


def test_eval_real_writes_every_episode(tiny_run, tmp_path, capsys):
    import eval as eval_cli

    out = tmp_path / "eval.json"
    assert eval_cli.main(["--run-dir", str(tiny_run), "--episodes", "3", "--workers", "2", "--seed", "77",
                          "--json", str(out)]) == 0  # in-process: no start-up (test_cli.py runs the scripts)
    stdout = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["env_id"] == "VizdoomTakeCover-v1" and data["where"] == "real"
    assert data["seeds"] == [77, 78, 79] and len(data["returns"]) == len(data["lengths"]) == 3
    assert data["mean"] == pytest.approx(sum(data["returns"]) / 3)
    # TakeCover pays +1 per step survived: a return is the episode's length
    assert data["returns"] == [float(n) for n in data["lengths"]]
    assert "eval.py" in data["command"] and "--episodes 3" in data["command"]
    assert f"{data['mean']:.1f} +- {data['std']:.1f}" in stdout


def test_eval_dream_and_videos(tiny_run, tmp_path, capsys):
    import eval as eval_cli

    assert eval_cli.main(["--run-dir", str(tiny_run), "--episodes", "8", "--where", "dream",
                          "--video", str(tmp_path / "videos"), "--json", str(tmp_path / "dream.json")]) == 0
    data = json.loads((tmp_path / "dream.json").read_text())
    assert data["where"] == "dream" and len(data["returns"]) == 8
    assert all(0 < n <= 50 for n in data["lengths"])  # the controller's dream limit applies
    for name in ["real_episode.mp4", "dream_episode.mp4"]:
        assert (tmp_path / "videos" / name).stat().st_size > 1000
    assert "dream score" in capsys.readouterr().out


def test_exported_agent_evaluates(tiny_run, tmp_path, capsys):
    import eval as eval_cli
    import train

    out = tmp_path / "pretrained"
    assert train.main(["export", "--run-dir", str(tiny_run), "--out", str(out)]) == 0  # in-process: no start-up
    assert not list(out.rglob("train_state*"))  # weights only
    for directory, name in ((out, "a.json"), (tiny_run, "b.json")):
        assert eval_cli.main(["--run-dir", str(directory), "--episodes", "1", "--json", str(tmp_path / name)]) == 0
    assert "real score over 1 episodes" in capsys.readouterr().out
    same = json.loads((tmp_path / "a.json").read_text())
    assert same["returns"] == json.loads((tmp_path / "b.json").read_text())["returns"]
    assert eval_cli.main(["--run-dir", str(out), "--episodes", "4", "--where", "dream"]) == 0
    assert "dream score" in capsys.readouterr().out


def test_npg_in_the_dream(tiny_run, tmp_path, capsys):
    import train

    run_dir = tmp_path / "run"  # a copy: NPG's controller must not replace the shared run's
    shutil.copytree(tiny_run, run_dir)
    assert train.main(["controller", "--run-dir", str(run_dir), "--algo", "npg", "--npg-envs", "8",
                       "--npg-horizon", "16", *TINY_CONTROLLER]) == 0
    assert "C trained (npg, dream)" in capsys.readouterr().out


STAGES = ["collect", "vae", "collect_rest", "probe", "mdnrnn", "held_actions0", "probe_extra1", "mdnrnn_extra1",
          "held_actions1", "icm", "controller", "validate", "collect_2", "probe_2", "mdnrnn_2", "held_actions0_2",
          "probe_extra1_2", "mdnrnn_extra1_2", "held_actions1_2", "icm_2", "controller_2", "validate_2", "select_2",
          "evaluate_2", "videos"]


def test_pipeline_runs_every_stage_in_order_and_a_rerun_skips_them_all(two_rounds):
    run_dir, first, second = two_rounds
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["seconds_per_stage"]) == STAGES  # V learns from the random rollouts it was given only
    assert summary["real_episodes"] == 2 and summary["real_frames_used"] > 0
    assert summary["real_seeds"] == [1_000_000, 1_000_001]  # the final score, apart from validation
    assert "real score" in first.stdout and (run_dir / "images" / "learning_curve.png").stat().st_size > 1000
    assert second.stdout.count("skipped") == len(STAGES)
    config = json.loads((run_dir / "pipeline_config.json").read_text())
    assert config["preset"] == "doom-take-cover-tiny" and config["episodes"] == 4  # override applied
    assert config["overrides"]["episodes"] == 4 and "z_dim" not in config["overrides"]  # what the CLI changed
    # curiosity: the ICM learnt every cached episode once, round by round, and C's dream paid its bonus
    from world_models.latents import cached_episode_seeds

    seen = json.loads((run_dir / "icm" / "episodes_seen.json").read_text())["seeds"]
    assert seen == sorted(cached_episode_seeds(run_dir))
    controller = json.loads((run_dir / "controller" / "model.json").read_text())
    assert controller["curiosity"] == "icm"


def test_the_best_round_on_validation_is_deployed(two_rounds):
    run_dir, _, _ = two_rounds
    summary = json.loads((run_dir / "summary.json").read_text())
    scores = summary["validation_score_per_round"]
    assert len(scores) == 2 and summary["deployed_round"] == (2 if scores[1] >= scores[0] else 1)
    for part in ("mdnrnn", "controller"):
        kept = run_dir / "rounds" / str(summary["deployed_round"]) / part / "model.safetensors"
        assert kept.read_bytes() == (run_dir / part / "model.safetensors").read_bytes()
    stages = json.loads((run_dir / "stages.json").read_text())
    assert stages["validate_2"]["summary"]["seeds"] == [500_000]


def test_data_random_rollouts_probes_and_agent_episodes(two_rounds):
    from envs.episodes import iter_episodes, seed_of

    run_dir, _, _ = two_rounds
    stages = json.loads((run_dir / "stages.json").read_text())
    assert stages["collect"]["summary"]["episodes_total"] == 2  # --vae-episodes: V saw these
    assert stages["collect_rest"]["summary"]["episodes_new"] == 2  # the rest, after V, for M
    episodes = {seed_of(path): episode for path, episode in iter_episodes(run_dir / "data")}
    # random 0-3, probes 4-5, extra probes 6-7, agent 8-9, probes 10-11, extra probes 12-13
    assert sorted(episodes) == list(range(14))
    held = {seed: len(set(episode.actions.tolist())) for seed, episode in episodes.items()}
    assert all(held[seed] == 1 for seed in (4, 5, 6, 7, 10, 11, 12, 13))  # one action held throughout
    assert held[0] > 1  # the random rollouts change action


def test_m_continues_and_the_held_action_check_adds_probes_up_to_its_cap(two_rounds):
    run_dir, _, _ = two_rounds
    stages = json.loads((run_dir / "stages.json").read_text())
    # every held action outlives 1 dream step: one pass of extra probes per round, then the cap
    assert len(stages["held_actions1"]["summary"]["dream_length_per_action"]) == 3  # TakeCover: 3 actions
    epochs = [stages[name]["summary"]["epoch"] for name in ("mdnrnn", "mdnrnn_extra1", "mdnrnn_2", "mdnrnn_extra1_2")]
    assert epochs == [2, 2 + 1, 2 + 1 + 1, 2 + 1 + 2 * 1]  # first round, a pass, round 2, two passes


def test_the_last_rounds_extra_cmaes_run_is_kept_if_best_on_validation(two_rounds):
    run_dir, _, _ = two_rounds
    stages = json.loads((run_dir / "stages.json").read_text())
    population = 8  # CMA-ES ran 1 generation in round 1, then 2 + 1 (--final-generations) in the last
    assert "restarts" not in stages["controller"]["summary"]  # round 1: one CMA-ES run
    assert stages["controller"]["summary"]["evaluations"] == population * 1
    controller = stages["controller_2"]["summary"]
    scores = [restart["validation"] for restart in controller["restarts"]]
    assert len(scores) == 2 and controller["restart"] == scores.index(max(scores))
    assert controller["evaluations"] == population * 3
    kept = run_dir / "rounds" / "2" / f"restart{controller['restart']}" / "controller" / "model.safetensors"
    assert kept.read_bytes() == (run_dir / "rounds" / "2" / "controller" / "model.safetensors").read_bytes()
    assert (run_dir / "cmaes_dream_2_restart1").is_dir()  # the second run kept its own search state
    assert not (run_dir / "cmaes_dream_restart1").exists()  # --final-restarts: the last round only
    critics = [json.loads((run_dir / "rounds" / str(k) / "controller" / "model.json").read_text())["done_critics"]
               for k in (1, 2)]
    assert critics == [[], [str(run_dir / "rounds" / "1")]]  # round 2's C also died where round 1's M said so


@pytest.mark.parametrize(("scores", "deployed"), [([300.0, 100.0, 200.0], 1), ([100.0, 250.0, 250.0], 3)])
def test_the_round_best_on_validation_seeds_is_deployed(tmp_path, scores, deployed):
    from agents.pipeline import Stages, _select_round, round_dir
    from agents.presets import preset_settings

    stages = Stages(tmp_path)
    for k, mean in enumerate(scores, start=1):
        stages.done["validate" if k == 1 else f"validate_{k}"] = {"seconds": 1.0, "summary": {"mean": mean}}
        for part in ("mdnrnn", "controller"):
            (round_dir(tmp_path, k) / part).mkdir(parents=True)
            for suffix in (".safetensors", ".json"):
                (round_dir(tmp_path, k) / part / f"model{suffix}").write_text(f"round {k}")
    settings = preset_settings("doom-take-cover-tiny", iterations=3, val_episodes=1)
    _select_round(stages, settings, tmp_path)
    assert json.loads((tmp_path / "stages.json").read_text())["select_3"]["summary"]["round"] == deployed
    for part in ("mdnrnn", "controller"):
        assert (tmp_path / part / "model.safetensors").read_text() == f"round {deployed}"
    _select_round(stages, dataclasses.replace(settings, select_round=False), tmp_path / "other")
    assert not (tmp_path / "other").exists()  # off: the last round's agent stays deployed


def test_a_resumed_stage_counts_the_time_of_its_interrupted_invocation(tmp_path):
    import time

    from agents.pipeline import Stages

    def interrupted():
        time.sleep(0.3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Stages(tmp_path).run("collect", interrupted)
    assert "collect" not in Stages(tmp_path).done  # not finished: it will run again
    Stages(tmp_path).run("collect", lambda: {"episodes": 1})  # a new process resumes
    stage = json.loads((tmp_path / "stages.json").read_text())["collect"]
    assert stage["summary"] == {"episodes": 1}
    assert stage["seconds"] >= stage["seconds_before_resume"] >= 0.3

