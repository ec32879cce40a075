"""Checkpoints: safetensors + JSON round trips, optimizer and RNG state, one-line errors, atomic writes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

import envs.episodes as episodes
import world_models.checkpoint as checkpoint
from envs.errors import ConfigMismatchError, CorruptFileError, UserError
from envs.version import package_version
from world_models.checkpoint import (
    check_config,
    load_checkpoint,
    load_module_state,
    module_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    restore_rng_state,
    rng_state_to_tensors,
    save_checkpoint,
)
from world_models.mdnrnn import MDNRNN
from world_models.vae import ConvVAE

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


def _vae(seed: int) -> ConvVAE:
    torch.manual_seed(seed)
    return ConvVAE(z_dim=32)


def _mdnrnn(seed: int, hidden: int = 16) -> MDNRNN:
    torch.manual_seed(seed)
    return MDNRNN(z_dim=4, action_dim=3, discrete_actions=True, hidden=hidden, mixtures=5)


def _outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if isinstance(model, ConvVAE):
            x = torch.rand(2, 3, 64, 64, generator=g)
            mu, log_sigma = model.encode(x)
            return [mu, log_sigma, model.decode(torch.randn(2, 32, generator=g))]
        z, actions = torch.randn(2, 5, 4, generator=g), torch.randint(0, 3, (2, 5), generator=g)
        out, (h, c) = model(z, actions)
        return [*out, h, c]


def _files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("make", [_vae, _mdnrnn], ids=["ConvVAE", "MDNRNN"])
def test_save_load_round_trip(tmp_path, make):
    model = make(0)
    save_checkpoint(tmp_path, module_state(model), {"model": model.config, "stage": "test"})
    assert _files(tmp_path) == ["model.json", "model.safetensors"]

    tensors, config = load_checkpoint(tmp_path)
    assert config["model"] == model.config and config["stage"] == "test"
    torch.manual_seed(99)
    fresh = type(model)(**config["model"])  # the architecture from the JSON, other initial weights
    assert any(not torch.equal(a, b) for a, b in zip(_outputs(fresh), _outputs(model), strict=True))
    load_module_state(fresh, tensors)

    expected = model.state_dict()
    got = fresh.state_dict()
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype
        assert torch.equal(got[key], expected[key]), key
    for a, b in zip(_outputs(fresh), _outputs(model), strict=True):
        assert torch.equal(a, b)


def test_config_json_records_the_package_version(tmp_path):
    model = _mdnrnn(0)
    save_checkpoint(tmp_path, module_state(model), model.config, name="mdn")
    raw = json.loads((tmp_path / "mdn.json").read_text())
    assert raw["package_version"] == package_version()
    assert isinstance(raw["package_version"], str) and raw["package_version"]
    assert {k: raw[k] for k in model.config} == model.config
    _, config = load_checkpoint(tmp_path, name="mdn")
    assert config == raw


def test_module_state_copies_tensors():
    model = _mdnrnn(0)
    state = module_state(model)
    with torch.no_grad():
        model.mdn.bias.add_(1.0)
    assert not torch.equal(state["mdn.bias"], model.mdn.bias)


def _train_step(model: MDNRNN, optimizer: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z, actions = torch.randn(3, 6, 4, generator=g), torch.randint(0, 3, (3, 6), generator=g)
    z_next = torch.randn(3, 6, 4, generator=g)
    reward, done = torch.randn(3, 6, generator=g), torch.rand(3, 6, generator=g) < 0.2
    out, _ = model(z, actions)
    loss = model.losses(out, z_next, reward, done, torch.ones(3, 6, dtype=torch.bool))["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_optimizer_state_round_trip_gives_an_identical_next_step(tmp_path):
    model = _mdnrnn(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.8, 0.99))
    for seed in range(3):
        _train_step(model, optimizer, seed)
    optim_tensors, optim_meta = optimizer_to_tensors(optimizer)
    save_checkpoint(tmp_path, {**module_state(model), **optim_tensors},
                    {"model": model.config, "optimizer": optim_meta}, name="state")

    tensors, meta = load_checkpoint(tmp_path, name="state")
    fresh = _mdnrnn(1)
    load_module_state(fresh, {k: v for k, v in tensors.items() if not k.startswith("optim.")})
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1.0)  # lr and betas come from the checkpoint
    optimizer_from_tensors(fresh_optimizer, tensors, meta["optimizer"])

    restored, original = fresh_optimizer.state_dict(), optimizer.state_dict()
    assert restored["param_groups"][0]["lr"] == 3e-3
    assert tuple(restored["param_groups"][0]["betas"]) == (0.8, 0.99)
    assert set(restored["state"]) == set(original["state"])
    for index, values in original["state"].items():
        assert set(restored["state"][index]) == set(values)
        for key, value in values.items():
            assert torch.equal(torch.as_tensor(restored["state"][index][key]), torch.as_tensor(value)), (index, key)
    assert float(restored["state"][0]["step"]) == 3

    _train_step(model, optimizer, seed=10)
    _train_step(fresh, fresh_optimizer, seed=10)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # without the optimizer state, the same step would differ (the check above can fail)
    plain = _mdnrnn(2)
    load_module_state(plain, {k: v for k, v in tensors.items() if not k.startswith("optim.")})
    _train_step(plain, torch.optim.Adam(plain.parameters(), lr=3e-3, betas=(0.8, 0.99)), seed=10)
    assert not torch.equal(plain.mdn.weight, model.mdn.weight)


@pytest.mark.parametrize("keep", [0, 7, 40, -8, -1])
def test_truncated_safetensors_is_a_one_line_corrupt_file_error(tmp_path, keep):
    model = _mdnrnn(0)
    save_checkpoint(tmp_path, module_state(model), model.config)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CorruptFileError) as info:
        load_checkpoint(tmp_path)
    message = str(info.value)
    assert "\n" not in message and message
    assert "model.safetensors" in message


def test_config_inside_the_weights_wins_over_the_readable_copy(tmp_path):
    # weights and config are one atomic write: a torn or edited model.json cannot mismatch them
    model = _mdnrnn(0)
    save_checkpoint(tmp_path, module_state(model), model.config)
    (tmp_path / "model.json").write_text('{"z_dim": 4,\n "hid')
    _, config = load_checkpoint(tmp_path)
    assert config["hidden"] == model.config["hidden"]


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "nowhere", name="vae")
    assert not isinstance(info.value, CorruptFileError)
    assert "vae" in str(info.value) and "\n" not in str(info.value)
    # the weights file alone is a whole checkpoint: its config travels in its header
    model = _mdnrnn(0)
    save_checkpoint(tmp_path, module_state(model), model.config)
    (tmp_path / "model.json").unlink()
    assert load_checkpoint(tmp_path)[1]["hidden"] == model.config["hidden"]


def test_loading_weights_of_another_hidden_size_is_a_config_mismatch(tmp_path):
    small = _mdnrnn(0, hidden=16)
    save_checkpoint(tmp_path, module_state(small), small.config)
    tensors, _ = load_checkpoint(tmp_path)
    big = _mdnrnn(0, hidden=32)
    before = {k: v.clone() for k, v in big.state_dict().items()}
    with pytest.raises(ConfigMismatchError) as info:
        load_module_state(big, tensors)
    message = str(info.value)
    assert "\n" not in message and "MDNRNN" in message
    assert any(key in message for key in before), message  # names the offending tensor
    for key, value in big.state_dict().items():  # nothing half-loaded
        assert torch.equal(value, before[key]), key


def test_loading_weights_of_another_architecture_is_a_config_mismatch():
    with pytest.raises(ConfigMismatchError) as info:
        load_module_state(_mdnrnn(0), module_state(_vae(0)))
    assert "\n" not in str(info.value)
    missing_one = module_state(_mdnrnn(0))
    del missing_one["done_head.bias"]
    with pytest.raises(ConfigMismatchError, match="done_head.bias"):
        load_module_state(_mdnrnn(0), missing_one)


def test_check_config_names_the_mismatching_key():
    found = {"z_dim": 32, "hidden": 256, "mixtures": 5, "package_version": "0.1.0"}
    check_config(found, {"z_dim": 32, "hidden": 256}, "the MDN-RNN")
    check_config(found, {}, "the MDN-RNN")
    with pytest.raises(ConfigMismatchError) as info:
        check_config(found, {"z_dim": 32, "hidden": 512}, "the MDN-RNN in runs/x")
    message = str(info.value)
    assert "\n" not in message
    assert "hidden" in message and "256" in message and "512" in message
    assert "the MDN-RNN in runs/x" in message
    assert "z_dim" not in message
    with pytest.raises(ConfigMismatchError, match="discrete_actions"):
        check_config({"discrete_actions": True}, {"discrete_actions": False}, "M")


def test_writes_leave_no_temporary_files(tmp_path):
    model = _mdnrnn(0)
    for _ in range(3):
        save_checkpoint(tmp_path, module_state(model), model.config)
        save_checkpoint(tmp_path, module_state(model), model.config, name="other")
    assert _files(tmp_path) == ["model.json", "model.safetensors", "other.json", "other.safetensors"]


@pytest.mark.parametrize("fail_on", ["model.safetensors", "model.json"])
def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch, fail_on):
    first = _mdnrnn(0)
    save_checkpoint(tmp_path, module_state(first), {"model": first.config, "generation": 1})
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}

    real_write = checkpoint.atomic_write_bytes

    def crashing_write(path, write):
        if path.name != fail_on:
            return real_write(path, write)

        def half_then_crash(file):
            buffer = io.BytesIO()
            write(buffer)
            file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise KeyboardInterrupt("killed mid-write")

        return real_write(path, half_then_crash)

    # save_checkpoint writes the weights with atomic_write_bytes and the JSON with atomic_write_json,
    # which calls envs.episodes.atomic_write_bytes: patch both names
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", crashing_write)
    monkeypatch.setattr(episodes, "atomic_write_bytes", crashing_write)
    second = _mdnrnn(1)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, module_state(second), {"model": second.config, "generation": 2})
    assert _files(tmp_path) == ["model.json", "model.safetensors"]  # no temp file left behind
    assert (tmp_path / fail_on).read_bytes() == before[fail_on]
    if fail_on == "model.safetensors":  # the JSON is written last: both files still hold the first save
        assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)} == before
        tensors, config = load_checkpoint(tmp_path)
        assert config["generation"] == 1
        restored = _mdnrnn(2)
        load_module_state(restored, tensors)
        assert torch.equal(restored.mdn.weight, first.mdn.weight)


def test_prefixed_tensors_load(tmp_path):
    # training states keep the model under "model." beside the optimizer's tensors
    model = _mdnrnn(0)
    tensors = {f"model.{k}": v for k, v in module_state(model).items()} | {"other": torch.zeros(2)}
    save_checkpoint(tmp_path, tensors, {})
    restored = _mdnrnn(1)
    load_module_state(restored, load_checkpoint(tmp_path)[0], prefix="model.")
    assert torch.equal(restored.mdn.weight, model.mdn.weight)


def test_optimizer_of_another_model_is_a_config_mismatch():
    tensors, meta = optimizer_to_tensors(torch.optim.Adam(_mdnrnn(0).parameters()))
    other = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ConfigMismatchError) as info:
        optimizer_from_tensors(other, tensors, meta)
    assert "\n" not in str(info.value)


def test_rng_round_trip(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path, rng_state_to_tensors(), {})
    expected = torch.rand(5), np.random.randn(5)
    torch.manual_seed(99)
    np.random.seed(99)
    restore_rng_state(load_checkpoint(tmp_path)[0])
    assert torch.equal(torch.rand(5), expected[0])
    assert np.array_equal(np.random.randn(5), expected[1])


def test_missing_checkpoint_says_which_command_makes_it(tmp_path):
    with pytest.raises(UserError, match="train it first.*python train.py vae --run-dir"):
        load_checkpoint(tmp_path / "run" / "vae")
    # M needs V: with neither trained, the advice is to train V first
    with pytest.raises(UserError, match="python train.py vae --run-dir"):
        load_checkpoint(tmp_path / "run" / "mdnrnn")
    save_checkpoint(tmp_path / "run" / "vae", {}, {})
    with pytest.raises(UserError, match="python train.py mdnrnn --run-dir"):
        load_checkpoint(tmp_path / "run" / "mdnrnn")


def test_check_config_matches_tuples_to_json_lists():
    found = json.loads(json.dumps({"z_dim": 32, "shape": (64, 64)}))
    check_config(found, {"z_dim": 32, "shape": (64, 64), "new_setting": 1}, "V")
    with pytest.raises(ConfigMismatchError) as info:
        check_config(found, {"z_dim": 64}, "the VAE in runs/x")
    assert str(info.value).startswith("the VAE in runs/x was trained with z_dim=32 but 64 was asked for;")
