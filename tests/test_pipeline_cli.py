"""The command lines end to end on a tiny TakeCover run: train, evaluate, resume, errors."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_CONTROLLER  # the session's tiny_run fixture is there too

pytestmark = pytest.mark.slow  # starts processes (CLI runs, worker pools, env engines)

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_training_writes_the_run_directory(tiny_run):
    for path in ["vae/model.safetensors", "vae/model.json", "mdnrnn/model.safetensors", "latents/latents.json",
                 "controller/model.safetensors", "controller/model.json", "metrics.jsonl", "config_vae.json"]:
        assert (tiny_run / path).exists(), path
    info = json.loads((tiny_run / "controller/model.json").read_text())
    assert info["env_id"] == "VizdoomTakeCover-v1" and info["algo"] == "cmaes"
    stages = {json.loads(line)["stage"] for line in (tiny_run / "metrics.jsonl").read_text().splitlines()}
    assert {"vae", "mdnrnn", "controller_cmaes_dream"} <= stages


def test_eval_real_writes_every_episode(tiny_run, tmp_path):
    out = tmp_path / "eval.json"
    result = ok(run("eval.py", "--run-dir", tiny_run, "--episodes", 3, "--workers", 2, "--seed", 77,
                    "--json", out))
    data = json.loads(out.read_text())
    assert data["env_id"] == "VizdoomTakeCover-v1" and data["where"] == "real"
    assert data["seeds"] == [77, 78, 79] and len(data["returns"]) == len(data["lengths"]) == 3
    assert data["mean"] == pytest.approx(sum(data["returns"]) / 3)
    # TakeCover pays +1 per step survived: a return is the episode's length
    assert data["returns"] == [float(n) for n in data["lengths"]]
    assert "eval.py" in data["command"] and "--episodes 3" in data["command"]
    assert f"{data['mean']:.1f} +- {data['std']:.1f}" in result.stdout


def test_eval_dream_and_videos(tiny_run, tmp_path):
    result = ok(run("eval.py", "--run-dir", tiny_run, "--episodes", 8, "--where", "dream",
                    "--video", tmp_path / "videos", "--json", tmp_path / "dream.json"))
    data = json.loads((tmp_path / "dream.json").read_text())
    assert data["where"] == "dream" and len(data["returns"]) == 8
    assert all(0 < n <= 50 for n in data["lengths"])  # the controller's dream limit applies
    for name in ["real_episode.mp4", "dream_episode.mp4"]:
        assert (tmp_path / "videos" / name).stat().st_size > 1000
    assert "dream score" in result.stdout


def test_exported_agent_evaluates(tiny_run, tmp_path):
    out = tmp_path / "pretrained"
    ok(run("train.py", "export", "--run-dir", tiny_run, "--out", out))
    assert not list(out.rglob("train_state*"))  # weights only
    real = ok(run("eval.py", "--run-dir", out, "--episodes", 1, "--json", tmp_path / "a.json"))
    assert "real score over 1 episodes" in real.stdout
    same = json.loads((tmp_path / "a.json").read_text())
    ok(run("eval.py", "--run-dir", tiny_run, "--episodes", 1, "--json", tmp_path / "b.json"))
    assert same["returns"] == json.loads((tmp_path / "b.json").read_text())["returns"]
    assert "dream score" in ok(run("eval.py", "--run-dir", out, "--episodes", 4, "--where", "dream")).stdout


def test_npg_in_the_dream(tiny_run):
    result = ok(run("train.py", "controller", "--run-dir", tiny_run, "--algo", "npg", "--npg-envs", 8,
                    "--npg-horizon", 16, *TINY_CONTROLLER))
    assert "C trained (npg, dream)" in result.stdout


def test_cli_errors_are_one_line(tiny_run, tmp_path):
    assert "train.py vae" in one_line_error(run("eval.py", "--run-dir", tmp_path, "--episodes", 1))
    assert "train.py vae" in one_line_error(run("train.py", "controller", "--run-dir", tmp_path))
    assert "rollout dataset" in one_line_error(run("train.py", "vae", "--data", tmp_path, "--run-dir", tmp_path))
    mismatch = one_line_error(run("train.py", "vae", "--data", tiny_run.parent / "data", "--run-dir", tiny_run,
                                  "--z-dim", 16, "--epochs", 2, "--no-progress"))
    assert "z_dim" in mismatch


def test_pipeline_runs_and_resumes(tmp_path):
    run_dir = tmp_path / "pipe"
    args = ["--preset", "doom-take-cover-tiny", "--run-dir", run_dir, "--episodes", 4, "--iterations", 2,
            "--iteration-episodes", 2, "--round-mdn-epochs", 1, "--first-round-generations", 1,
            "--final-generations", 1, "--no-progress"]
    first = ok(run("train.py", "pipeline", *args))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["real_episodes"] == 2 and summary["real_frames_used"] > 0
    assert list(summary["seconds_per_stage"]) == ["collect", "vae", "mdnrnn", "controller", "validate", "collect_2",
                                                  "mdnrnn_2", "controller_2", "validate_2", "select_2",
                                                  "evaluate_2", "videos"]
    scores = summary["validation_score_per_round"]
    assert len(scores) == 2
    deployed = 2 if scores[1] >= scores[0] else 1  # the best on the validation seeds
    assert summary["deployed_round"] == deployed
    for part in ("mdnrnn", "controller"):
        kept = run_dir / "rounds" / str(deployed) / part / "model.safetensors"
        assert kept.read_bytes() == (run_dir / part / "model.safetensors").read_bytes()
    assert summary["real_seeds"] == [1_000_000, 1_000_001]  # the final score, apart from validation
    stages = json.loads((run_dir / "stages.json").read_text())
    assert stages["validate_2"]["summary"]["seeds"] == [500_000]
    assert stages["mdnrnn_2"]["summary"]["epoch"] == 2 + 1  # M continues for --round-mdn-epochs
    population = 8  # CMA-ES ran 1 generation in round 1, then 2 + 1 (--final-generations) in the last
    assert [stages[name]["summary"]["evaluations"] for name in ("controller", "controller_2")] == [
        population * 1, population * (2 + 1)]
    assert len(list((run_dir / "data").glob("ep_*.npz.zst"))) == 6  # 4 random + 2 with the agent
    assert "real score" in first.stdout
    assert (run_dir / "images" / "learning_curve.png").stat().st_size > 1000
    config = json.loads((run_dir / "pipeline_config.json").read_text())
    assert config["preset"] == "doom-take-cover-tiny" and config["episodes"] == 4  # override applied
    second = ok(run("train.py", "pipeline", *args))
    assert second.stdout.count("skipped") == 12


@pytest.mark.parametrize(("scores", "deployed"), [([300.0, 100.0, 200.0], 1), ([100.0, 250.0, 250.0], 3)])
def test_the_round_best_on_validation_seeds_is_deployed(tmp_path, scores, deployed):
    from agents.pipeline import Stages, _select_round, round_dir
    from agents.presets import PRESETS

    stages = Stages(tmp_path)
    for k, mean in enumerate(scores, start=1):
        stages.done["validate" if k == 1 else f"validate_{k}"] = {"seconds": 1.0, "summary": {"mean": mean}}
        for part in ("mdnrnn", "controller"):
            (round_dir(tmp_path, k) / part).mkdir(parents=True)
            for suffix in (".safetensors", ".json"):
                (round_dir(tmp_path, k) / part / f"model{suffix}").write_text(f"round {k}")
    settings = dataclasses.replace(PRESETS["doom-take-cover-tiny"], iterations=3, val_episodes=1)
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

def test_cmaes_restarts_keep_the_best_on_validation(tmp_path):
    run_dir = tmp_path / "pipe"
    ok(run("train.py", "pipeline", "--preset", "doom-take-cover-tiny", "--run-dir", run_dir, "--episodes", 4,
           "--restarts", 2, "--no-progress"))
    controller = json.loads((run_dir / "stages.json").read_text())["controller"]["summary"]
    scores = [restart["validation"] for restart in controller["restarts"]]
    assert len(scores) == 2 and controller["restart"] == scores.index(max(scores))
    kept = run_dir / "rounds" / "1" / f"restart{controller['restart']}" / "controller" / "model.safetensors"
    assert kept.read_bytes() == (run_dir / "controller" / "model.safetensors").read_bytes()
    assert (run_dir / "cmaes_dream_restart1").is_dir()  # the second restart kept its own search state
    error = one_line_error(run("train.py", "pipeline", "--preset", "doom-take-cover-tiny", "--run-dir", run_dir,
                               "--restarts", 2, "--val-episodes", 0))
    assert "--val-episodes" in error


def test_final_restarts_only_in_the_last_round_with_the_last_rounds_m_as_death_critic(tmp_path):
    run_dir = tmp_path / "pipe"
    ok(run("train.py", "pipeline", "--preset", "doom-take-cover-tiny", "--run-dir", run_dir, "--episodes", 4,
           "--iterations", 2, "--final-restarts", 1, "--done-critics", 1, "--no-progress"))
    stages = json.loads((run_dir / "stages.json").read_text())
    assert "restarts" not in stages["controller"]["summary"]  # round 1: one CMA-ES run
    last = stages["controller_2"]["summary"]
    assert len(last["restarts"]) == 2 and (run_dir / "cmaes_dream_2_restart1").is_dir()
    assert not (run_dir / "cmaes_dream_restart1").exists()
    critics = [json.loads((run_dir / "rounds" / str(k) / "controller" / "model.json").read_text())["done_critics"]
               for k in (1, 2)]
    assert critics == [[], [str(run_dir / "rounds" / "1")]]  # round 2's C also died where round 1's M said so
    for flag in ("--final-restarts", "--done-critics"):
        error = one_line_error(run("train.py", "pipeline", "--preset", "doom-take-cover-tiny", "--run-dir", run_dir,
                                   flag, 1, "--val-episodes", 0))
        assert "--val-episodes" in error


def test_probe_episodes_hold_one_action_each_round(tmp_path):
    from envs.episodes import iter_episodes, seed_of

    run_dir = tmp_path / "pipe"
    ok(run("train.py", "pipeline", "--preset", "doom-take-cover-tiny", "--run-dir", run_dir, "--episodes", 4,
           "--iterations", 2, "--iteration-episodes", 2, "--probe-episodes", 2, "--round-mdn-epochs", 1,
           "--first-round-generations", 1, "--no-progress"))
    stages = list(json.loads((run_dir / "stages.json").read_text()))
    assert stages[:5] == ["collect", "vae", "probe", "mdnrnn", "controller"]  # V learns from random data only
    assert stages[6:9] == ["collect_2", "probe_2", "mdnrnn_2"]
    episodes = {seed_of(path): episode for path, episode in iter_episodes(run_dir / "data")}
    assert sorted(episodes) == list(range(4 + 2 + 2 + 2))  # random, probes, agent, probes
    held = {seed: len(set(episodes[seed].actions.tolist())) for seed in episodes}
    assert all(held[seed] == 1 for seed in (4, 5, 8, 9))
    assert held[0] > 1  # the random rollouts change action
    error = one_line_error(run("train.py", "pipeline", "--preset", "doom-take-cover-tiny", "--run-dir", run_dir,
                               "--probe-episodes", -1))
    assert "--probe-episodes" in error


def test_vae_trains_on_the_first_vae_episodes_and_m_on_all(tmp_path):
    from envs.episodes import iter_episodes, seed_of

    run_dir = tmp_path / "pipe"
    ok(run("train.py", "pipeline", "--preset", "doom-take-cover-tiny", "--run-dir", run_dir, "--episodes", 4,
           "--vae-episodes", 2, "--no-progress"))
    stages = json.loads((run_dir / "stages.json").read_text())
    assert list(stages)[:4] == ["collect", "vae", "collect_rest", "mdnrnn"]  # the rest arrive after V
    assert stages["collect"]["summary"]["episodes_total"] == 2
    assert stages["collect_rest"]["summary"]["episodes_new"] == 2
    assert sorted(seed_of(path) for path, _ in iter_episodes(run_dir / "data")) == [0, 1, 2, 3]
    error = one_line_error(run("train.py", "pipeline", "--preset", "doom-take-cover-tiny", "--run-dir", run_dir,
                               "--vae-episodes", -1))
    assert "--vae-episodes" in error


def test_held_action_check_adds_probes_until_the_limit_or_the_cap(tmp_path):
    from envs.episodes import iter_episodes, seed_of

    run_dir = tmp_path / "pipe"
    ok(run("train.py", "pipeline", "--preset", "doom-take-cover-tiny", "--run-dir", run_dir, "--episodes", 4,
           "--iterations", 2, "--iteration-episodes", 2, "--round-mdn-epochs", 1, "--first-round-generations", 1,
           "--held-action-limit", 1, "--extra-probe-episodes", 2, "--max-extra-probes", 1, "--extra-mdn-epochs", 1,
           "--no-progress"))
    stages = json.loads((run_dir / "stages.json").read_text())
    assert list(stages)[2:8] == ["mdnrnn", "held_actions0", "probe_extra1", "mdnrnn_extra1", "held_actions1",
                                 "controller"]  # every held action outlives 1 step: one pass, then the cap
    assert list(stages)[10:15] == ["mdnrnn_2", "held_actions0_2", "probe_extra1_2", "mdnrnn_extra1_2",
                                   "held_actions1_2"]
    assert len(stages["held_actions1"]["summary"]["dream_length_per_action"]) == 3  # TakeCover: 3 actions
    assert stages["mdnrnn_extra1_2"]["summary"]["epoch"] == 2 + 1 + 2 * 1  # first round, round 2, two passes
    episodes = {seed_of(path): episode for path, episode in iter_episodes(run_dir / "data")}
    assert sorted(episodes) == list(range(4 + 2 + 2 + 2))  # random, extra probes, agent, extra probes
    assert all(len(set(episodes[seed].actions.tolist())) == 1 for seed in (4, 5, 8, 9))

    loose = tmp_path / "loose"
    ok(run("train.py", "pipeline", "--preset", "doom-take-cover-tiny", "--run-dir", loose, "--episodes", 4,
           "--held-action-limit", 10_000, "--no-progress"))
    stages = list(json.loads((loose / "stages.json").read_text()))
    assert "held_actions0" in stages and not any(name.startswith("probe_extra") for name in stages)
