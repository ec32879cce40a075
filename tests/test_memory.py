"""The memory seam: MDN-RNN results bit-identical to those recorded before it existed."""

import pytest
import torch
from safetensors.torch import load_file

from tests.memory_reference import REFERENCE, all_outputs


@pytest.mark.timeout(120)
def test_mdnrnn_dream_agent_and_feature_env_are_bit_identical_to_before_the_seam():
    before = load_file(str(REFERENCE))
    now = all_outputs()
    assert sorted(now) == sorted(before)
    # The recording machine's float kernels are not every CPU's: torch's batch-1 LSTM step (the
    # acting agent, NPG's real feature env) rounds differently on another CPU, by ~3e-8 (the code
    # of fc6801d, before the seam, gives the very same values as this code on such a machine).
    # Integer outputs (actions, episode ends) must match bit for bit, floats to 1e-6 relative (a
    # float32 feature of size ~14 is 1 ulp = 1e-6 apart on a third CPU) plus 1e-6 absolute.
    different = [key for key in before if not _same(now[key], before[key])]
    assert not different, different


def _same(now: torch.Tensor, before: torch.Tensor) -> bool:
    if torch.equal(now, before):
        return True
    return (before.is_floating_point() and now.shape == before.shape
            and torch.allclose(now, before, rtol=1e-6, atol=1e-6))


def _tdvae_dream(jump: int, reward_mode: str, max_steps: int = 9):
    from world_models.dream import DreamConfig, DreamVecEnv
    from world_models.tdvae import TDVAE

    torch.manual_seed(0)
    model = TDVAE(4, 3, True, belief=8, state_dim=3, hidden=8, max_jump=4).eval()
    config = DreamConfig(max_episode_steps=max_steps, reward_mode=reward_mode, jump=jump, done_threshold=0.99)
    return model, DreamVecEnv(model, torch.randn(5, 4), torch.full((5, 4), -2.0), 3, config, seed=1)


@pytest.mark.timeout(30)
def test_a_jumpy_dream_pays_the_jumps_reward_and_counts_its_steps():
    model, dream = _tdvae_dream(jump=2, reward_mode="survival")
    dream.reset_tensor(0)
    actions = torch.tensor([0, 1, 2])
    rewards, ends = [], []
    for _ in range(6):
        _, reward, terminated, truncated = dream.step_tensor(actions)
        rewards.append(reward)
        ends.append(truncated)
    # survival pays the jump's 2 steps per decision; 9 steps allowed: cut after 5 jumps (10 >= 9),
    # then the autoreset step pays 0
    assert [float(r[0]) for r in rewards] == [2.0] * 5 + [0.0]
    assert [bool(e[0]) for e in ends] == [False] * 4 + [True, False]

    model, dream = _tdvae_dream(jump=3, reward_mode="model")
    dream.reset_tensor(0)
    state = dream.state
    _, reward, _, _ = dream.step_tensor(actions)
    expected, _ = model.heads(state.s, torch.full((3,), 3), model.encode_action(actions))
    torch.testing.assert_close(reward, expected)  # the head's prediction of the 3 steps' total
    with pytest.raises(ValueError, match="predicts up to 4"):
        _tdvae_dream(jump=5, reward_mode="survival")


@pytest.mark.timeout(30)
def test_a_tdvae_dream_starts_from_the_belief_of_its_first_latent():
    model, dream = _tdvae_dream(jump=1, reward_mode="survival")
    features = dream.reset_tensor(0)
    belief = model.observe(dream.z, model.initial_state(3))
    torch.testing.assert_close(features, torch.cat([dream.z, belief.s], -1))  # C reads [z, s]
    assert features.shape == (3, model.feature_dim())


@pytest.mark.timeout(240)
def test_tdvae_trains_a_controller_in_a_jumpy_dream_that_eval_plays(tiny_run, tmp_path, capsys):
    import json
    import shutil

    import eval as eval_cli
    import train
    from tests.conftest import TINY_CONTROLLER

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    assert train.main(["tdvae", "--run-dir", str(run_dir), "--belief", "16", "--state-dim", "4", "--hidden", "16",
                       "--seq-len", "20", "--batch-size", "8", "--epochs", "1", "--max-jump", "2",
                       "--no-progress"]) == 0
    assert train.main(["controller", "--run-dir", str(run_dir), "--memory", "tdvae", "--dream-jump", "2",
                       *TINY_CONTROLLER]) == 0
    info = json.loads((run_dir / "controller" / "model.json").read_text())
    assert info["memory"] == "tdvae" and info["dream"]["jump"] == 2
    assert info["spec"]["feature_dim"] == 8 + 4  # [z, s]
    out = tmp_path / "dream.json"
    assert eval_cli.main(["--run-dir", str(run_dir), "--episodes", "4", "--where", "dream", "--json", str(out)]) == 0
    assert all(length % 2 == 0 for length in json.loads(out.read_text())["lengths"])  # whole jumps
    assert eval_cli.main(["--run-dir", str(run_dir), "--episodes", "1"]) == 0  # the real env, through the belief
    assert "real score over 1 episodes" in capsys.readouterr().out
    assert train.main(["controller", "--run-dir", str(run_dir), "--memory", "tdvae", "--dream-jump", "3",
                       *TINY_CONTROLLER]) == 2  # longer than the TD-VAE's --max-jump 2
    assert "--max-jump 3" in capsys.readouterr().err


def test_the_pipeline_trains_the_memory_it_is_given():
    from pathlib import Path

    from agents.pipeline import _memory_config, _stage_configs
    from agents.presets import preset_settings
    from world_models.train_mdnrnn import MDNRNNConfig
    from world_models.train_tdvae import TDVAEConfig

    common = {"device": "cpu", "wandb_mode": "disabled", "progress": False, "backend": "local", "ray_address": None}
    settings = preset_settings("doom-take-cover", memory="tdvae", tdvae_state_dim=16, max_jump=3)
    config = _memory_config(settings, Path("RUN"), common, 50)
    assert isinstance(config, TDVAEConfig)
    assert (config.belief, config.state_dim, config.max_jump, config.seq_len, config.epochs) == (256, 16, 3, 200, 50)
    assert isinstance(_memory_config(preset_settings("doom-take-cover"), Path("RUN"), common, 30), MDNRNNConfig)
    _stage_configs(settings, Path("RUN"), common)  # every stage's config passes its checks
