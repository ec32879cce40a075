"""Presets are recipes that stack: values unchanged by the move to overlays, bases first, the
command line last, and --help shows the chosen presets' values."""

import ast
import dataclasses
import inspect
import textwrap

import pytest

import train
from agents.presets import PRESETS, PipelineSettings, changed_settings, overlay, preset_settings
from envs.errors import UserError

# doom-take-cover as it was run for every published row (before presets became overlays)
DOOM_TAKE_COVER = {
    "env": "VizdoomTakeCover-v1", "episodes": 300, "vae_episodes": 0, "policy": "held", "collect_workers": 2,
    "z_dim": 64, "vae_epochs": 3, "vae_batch": 100, "vae_lr": 0.001, "vae_recon_cutoff": 0.0, "hidden": 256,
    "vae_foreground_weight": 1.0, "real_step_budget": 0, "video_steps": 0,
    "mixtures": 5, "seq_len": 200,
    "mdn_epochs": 30, "mdn_batch": 32, "mdn_lr": 0.001, "mdn_keep_best": "", "mdn_patience": 10,
    "memory": "mdnrnn", "tdvae_state_dim": 32, "tdvae_lr": 0.0005, "tdvae_rollout": 8, "max_jump": 4, "dream_jump": 1,
    "curiosity": "none", "curiosity_scale": 0.1, "icm_epochs": 4, "reward_event_weight": 0.0,
    "temperature": 1.15, "done_mode": "threshold", "dream_max_steps": 2100, "generations": 30, "population": 64,
    "rollouts": 16, "eval_every": 10, "eval_rollouts": 256, "include_cell": False, "eval_episodes": 100,
    "val_episodes": 20, "workers": 2, "iterations": 5, "iteration_episodes": 100, "probe_episodes": 90,
    "held_action_limit": 0.0, "extra_probe_episodes": 30, "extra_mdn_epochs": 10, "max_extra_probes": 3,
    "exploration": 0.1, "round_mdn_epochs": 20, "late_episode_weight": 1, "first_round_generations": 10,
    "final_generations": 0, "restarts": 1, "final_restarts": 0, "done_critics": 0, "select_round": True,
    "warm_start": False, "seed": 0,
}
SOLVED_FLAGS = {"episodes": 3000, "vae_episodes": 900, "vae_epochs": 1, "mdn_epochs": 4, "round_mdn_epochs": 4,
                "val_episodes": 50, "late_episode_weight": 5}


def test_doom_take_cover_is_unchanged():
    assert dataclasses.asdict(preset_settings("doom-take-cover")) == DOOM_TAKE_COVER


def test_the_solving_recipe_is_its_base_plus_the_flags_of_its_run():
    assert dataclasses.asdict(preset_settings("doom-take-cover-3000")) == {**DOOM_TAKE_COVER, **SOLVED_FLAGS}


def test_presets_stack_left_to_right_and_the_command_line_comes_last():
    smoke = preset_settings("doom-take-cover-3000", "tiny", seed=22)
    assert (smoke.episodes, smoke.late_episode_weight, smoke.iterations, smoke.seed) == (8, 5, 1, 22)
    assert preset_settings("tiny", "doom-take-cover").episodes == 300  # the later overlay wins
    assert changed_settings(smoke, ["doom-take-cover-3000", "tiny"]) == {"seed": 22}


def test_every_preset_resolves_to_valid_settings():
    for name in PRESETS:
        settings = preset_settings(name)
        if settings.env:
            settings.check()
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        overlay(["nope"])
    with pytest.raises(UserError, match="no env"):
        PipelineSettings().check()  # the neutral defaults name no env


def test_help_documents_every_setting_with_the_chosen_presets_value(capsys):
    with pytest.raises(SystemExit):
        train.main(["pipeline", "--preset", "doom-take-cover-3000", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Random-policy rollouts to collect" in text and "(default: 3000)" in text
    assert "--late-episode-weight" in text and "(default: 5)" in text
    for setting in dataclasses.fields(PipelineSettings):
        assert f"--{setting.name.replace('_', '-')}" in text, setting.name


def _undocumented_fields(cls) -> list[str]:
    """Fields of a dataclass with no docstring under them (tyro's --help shows that docstring)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return [node.target.id for node, after in zip(body, [*body[1:], None], strict=True)
            if isinstance(node, ast.AnnAssign) and not (isinstance(after, ast.Expr)
                                                         and isinstance(after.value, ast.Constant))]


def test_every_command_documents_every_option():
    import eval as eval_cli

    specs = [spec for spec, _ in train.COMMANDS.values()] + [PipelineSettings, eval_cli.EvalArgs]
    assert {spec.__name__: _undocumented_fields(spec) for spec in specs} == {spec.__name__: [] for spec in specs}
