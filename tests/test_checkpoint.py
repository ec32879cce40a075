"""Checkpoints: round trips, exact optimizer and RNG resume, one-line errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.errors import ConfigMismatchError, CorruptFileError, UserError
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

MODELS = {
    "vae": lambda: ConvVAE(z_dim=8),
    "mdnrnn": lambda: MDNRNN(z_dim=4, action_dim=3, discrete_actions=True, hidden=16, mixtures=2),
}


def small_mdnrnn(hidden: int = 16) -> MDNRNN:
    return MDNRNN(z_dim=4, action_dim=2, discrete_actions=False, hidden=hidden, mixtures=2)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_module_round_trip(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    model = MODELS[kind]()
    save_checkpoint(tmp_path / kind, module_state(model), {**model.config, "env_id": "Test-v0"})
    tensors, config = load_checkpoint(tmp_path / kind)
    assert config["env_id"] == "Test-v0" and "package_version" in config
    restored = type(model)(**{k: v for k, v in config.items() if k in model.config})
    load_module_state(restored, tensors)
    for (key, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    assert sorted(p.name for p in (tmp_path / kind).iterdir()) == [f"model.{e}" for e in ("json", "safetensors")]


def test_prefixed_tensors_load(tmp_path: Path) -> None:
    model = small_mdnrnn()
    tensors = {f"model.{k}": v for k, v in module_state(model).items()} | {"other": torch.zeros(2)}
    save_checkpoint(tmp_path, tensors, {})
    restored = small_mdnrnn()
    load_module_state(restored, load_checkpoint(tmp_path)[0], prefix="model.")
    assert torch.equal(restored.mdn.weight, model.mdn.weight)


def adam_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        z = torch.randn((2, 3, 4), generator=g)
        out, _ = model(z, torch.randn((2, 3, 2), generator=g))
        loss = model.losses(out, torch.randn((2, 3, 4), generator=g), torch.zeros(2, 3), torch.zeros(2, 3),
                            torch.ones(2, 3, dtype=torch.bool))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_optimizer_round_trip_resumes_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = small_mdnrnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.8, 0.95))
    adam_steps(model, optimizer, 3, seed=1)
    optim_tensors, meta = optimizer_to_tensors(optimizer)
    save_checkpoint(tmp_path, {**optim_tensors, **{f"model.{k}": v for k, v in module_state(model).items()}},
                    {"optimizer": meta})

    tensors, config = load_checkpoint(tmp_path)
    resumed = small_mdnrnn()
    load_module_state(resumed, tensors, prefix="model.")
    resumed_optimizer = torch.optim.Adam(resumed.parameters(), lr=1.0)
    optimizer_from_tensors(resumed_optimizer, tensors, config["optimizer"])
    assert resumed_optimizer.param_groups[0]["betas"] == (0.8, 0.95)
    assert resumed_optimizer.param_groups[0]["lr"] == 3e-3

    adam_steps(model, optimizer, 2, seed=2)
    adam_steps(resumed, resumed_optimizer, 2, seed=2)
    for (key, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_optimizer_for_another_model_is_a_config_mismatch() -> None:
    optimizer = torch.optim.Adam(small_mdnrnn().parameters())
    tensors, meta = optimizer_to_tensors(optimizer)
    other = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ConfigMismatchError) as error:
        optimizer_from_tensors(other, tensors, meta)
    one_line(error)


def test_rng_round_trip(tmp_path: Path) -> None:
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


def test_missing_checkpoint_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        load_checkpoint(tmp_path / "run" / "vae")
    assert "train it first" in one_line(error) and "python train.py vae --run-dir" in str(error.value)
    # M needs V: with neither trained, the advice is to train V first
    with pytest.raises(UserError, match="python train.py vae --run-dir"):
        load_checkpoint(tmp_path / "run" / "mdnrnn")
    save_checkpoint(tmp_path / "run" / "vae", {}, {})
    with pytest.raises(UserError, match="python train.py mdnrnn --run-dir"):
        load_checkpoint(tmp_path / "run" / "mdnrnn")


def test_truncated_checkpoint_is_corrupt(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, module_state(small_mdnrnn()), {})
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptFileError) as error:
        load_checkpoint(tmp_path)
    assert str(weights) in one_line(error)
    weights.write_bytes(b"\x05")
    with pytest.raises(CorruptFileError):
        load_checkpoint(tmp_path)


def test_other_architecture_is_a_config_mismatch(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, module_state(small_mdnrnn(hidden=16)), {})
    tensors, _ = load_checkpoint(tmp_path)
    with pytest.raises(ConfigMismatchError) as error:
        load_module_state(small_mdnrnn(hidden=32), tensors)
    assert "shape" in one_line(error)
    with pytest.raises(ConfigMismatchError) as error:
        load_module_state(ConvVAE(4), tensors)
    assert "missing" in one_line(error)


def test_check_config() -> None:
    found = json.loads(json.dumps({"z_dim": 32, "env_id": "Doom", "shape": (64, 64), "hidden": 256}))
    check_config(found, {"z_dim": 32, "shape": (64, 64), "new_setting": 1}, "V")  # tuples match JSON lists
    with pytest.raises(ConfigMismatchError) as error:
        check_config(found, {"z_dim": 64}, "the VAE in runs/x")
    message = one_line(error)
    assert message.startswith("the VAE in runs/x was trained with z_dim=32 but 64 was asked for;")
