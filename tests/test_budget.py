"""The Atari 100k protocol: a real-step budget that collection never exceeds and the summary
counts, the v5 evaluation rules, and the atari-100k preset end to end on a tiny budget."""

import json

import pytest

import train
from envs.collect import collect
from envs.episodes import iter_episodes
from envs.errors import UserError
from envs.make import make_env

pytestmark = pytest.mark.slow  # worker processes, real ALE games


def _lengths(directory):
    return {path.name: episode for path, episode in iter_episodes(directory)}


@pytest.mark.timeout(120)
def test_a_step_cap_is_filled_exactly_and_never_exceeded(tmp_path):
    # random Breakout games end after ~200 steps: the first wave ends naturally, the last is cut
    out = tmp_path / "data"
    summary = collect("ALE/Breakout-v5", 50, out, workers=2, seed=0, policy="random", progress=False, step_cap=600)
    episodes = list(_lengths(out).values())
    assert sum(len(e) for e in episodes) == 600 == summary.steps_total == summary.steps
    assert any(e.terminated[-1] for e in episodes) and episodes[-1].truncated[-1]  # both ways an episode ends
    assert not any(e.truncated[:-1].any() or e.terminated[:-1].any() for e in episodes)
    again = collect("ALE/Breakout-v5", 50, out, workers=2, seed=0, policy="random", progress=False, step_cap=600)
    assert again.episodes_new == 0 and again.steps_total == 600  # a full budget plays nothing more
    more = collect("ALE/Breakout-v5", 50, out, workers=2, seed=0, policy="random", progress=False, step_cap=700)
    assert more.steps == 100 and sum(len(e) for e in _lengths(out).values()) == 700  # a larger cap continues


def test_the_evaluation_env_follows_the_v5_protocol():
    env = make_env("ALE/Pong-v5")
    try:
        kwargs = env.spec.kwargs
        assert kwargs["repeat_action_probability"] == 0.25 and kwargs["frameskip"] == 4
        assert kwargs["max_num_frames_per_episode"] == 108_000 and kwargs["full_action_space"] is False
    finally:
        env.close()


@pytest.mark.parametrize(("flags", "message"), [
    (["--val-episodes", "5"], "--val-episodes 0"),
    (["--real-step-budget", "1", "--iterations", "2"], "leaves no steps"),
    (["--real-step-budget", "-5"], "real-step-budget"),
])
def test_a_budget_that_cannot_hold_is_refused_before_any_work(tmp_path, capsys, flags, message):
    run_dir = tmp_path / "run"
    assert train.main(["pipeline", "--preset", "atari-100k", "--env", "ALE/Pong-v5", "--run-dir", str(run_dir),
                       *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and error.count("\n") == 0
    assert not run_dir.exists()


@pytest.mark.timeout(300)
def test_the_atari_100k_preset_runs_end_to_end_within_its_budget(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train.main(["pipeline", "--preset", "atari-100k-tiny", "--env", "ALE/Pong-v5", "--run-dir", str(run_dir),
                       "--eval-episodes", "1", "--no-progress"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["real_steps_used"] == 1_500 == summary["real_step_budget"]  # all of it, and no more
    assert summary["real_frames_used"] == 4 * 1_500  # v5: 4 frames per agent step
    assert "1,500 agent steps of the 1,500-step budget" in capsys.readouterr().out
    stages = json.loads((run_dir / "stages.json").read_text())
    assert stages["collect"]["summary"]["steps_total"] == 750  # round 1: half, random
    assert stages["collect_2"]["summary"]["steps_total"] == 1_500  # round 2: the agent's half
    assert "validate" not in stages and summary["real_seeds"] == [1_000_000, 1_000_000]
    for name in ("reward_fit", "reward_fit_2"):  # the dream pays M's reward: how well M predicts it, each round
        assert stages[name]["summary"]["episodes"] == (2 if name == "reward_fit" else 4)
    assert summary["real_episodes"] == 1 and stages["evaluate_2"]["summary"]["lengths"][0] > 500  # a whole game
    assert stages["videos"]["summary"]["real_return"] > -21  # the video's episode was cut (video_steps 100)


def test_settings_check_names_the_budget():
    from agents.presets import preset_settings

    with pytest.raises(UserError, match="val-episodes"):
        preset_settings("atari-100k", env="ALE/Pong-v5", val_episodes=1).check()
    preset_settings("atari-100k", env="ALE/Pong-v5").check()
