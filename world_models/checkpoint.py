"""Checkpoints: weights in safetensors, a JSON config beside them; never pickle.

``DIR/NAME.safetensors`` holds tensors, ``DIR/NAME.json`` the config (architecture, env id,
action space, package version, ...). Both are written atomically. Optimizer state is
flattened into tensors plus JSON metadata so a run resumes exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from envs.episodes import atomic_write_bytes, atomic_write_json
from envs.errors import ConfigMismatchError, CorruptFileError, UserError
from envs.version import package_version


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], config: dict, name: str = "model") -> None:
    """Write ``name.safetensors`` then ``name.json`` atomically (the JSON last marks it complete)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(directory / f"{name}.safetensors", lambda file: file.write(payload))
    atomic_write_json(directory / f"{name}.json", {**config, "package_version": package_version()})


def load_checkpoint(directory: Path, name: str = "model", device: str | torch.device = "cpu",
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and config of a checkpoint; one-line errors for missing or corrupt files."""
    directory = Path(directory)
    weights, config_path = directory / f"{name}.safetensors", directory / f"{name}.json"
    if not weights.exists() or not config_path.exists():
        raise UserError(f"no checkpoint {name} in {directory}: train that stage first (see `train.py --help`)")
    try:
        config = json.loads(config_path.read_text())
        tensors = load_file(str(weights), device=str(device))
    except (json.JSONDecodeError, SafetensorError, OSError, ValueError) as error:
        raise CorruptFileError(f"corrupt checkpoint {weights}: {str(error).splitlines()[0]}") from None
    return tensors, config


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state_dict with every tensor its own copy (safetensors refuses shared storage)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def load_module_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load weights; a different architecture is a one-line ConfigMismatchError."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ConfigMismatchError(
            f"checkpoint does not fit {type(module).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in expected.items():
        if value.shape != tensors[key].shape:
            raise ConfigMismatchError(f"checkpoint does not fit {type(module).__name__}: {key} has shape "
                                      f"{tuple(tensors[key].shape)}, the model wants {tuple(value.shape)}")
    module.load_state_dict(tensors)


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim.") -> tuple[dict, dict]:
    """Flatten an optimizer's state into tensors and JSON-able metadata."""
    state = optimizer.state_dict()
    tensors, per_param = {}, {}
    for index, values in state["state"].items():
        per_param[str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}.{key}"] = value
            else:
                per_param[str(index)][key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": per_param,
                     "tensor_keys": {str(i): [k for k, v in s.items() if isinstance(v, torch.Tensor)]
                                     for i, s in state["state"].items()}}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict,
                           prefix: str = "optim.") -> None:
    """Restore what ``optimizer_to_tensors`` saved."""
    state = {}
    for index, keys in meta["tensor_keys"].items():
        values = dict(meta["scalars"].get(index, {}))
        values.update({key: tensors[f"{prefix}{index}.{key}"] for key in keys})
        state[int(index)] = values
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def check_config(found: dict, expected: dict, what: str) -> None:
    """Raise a one-line ConfigMismatchError when ``found`` disagrees with ``expected`` on any key."""
    for key, value in expected.items():
        if key in found and found[key] != value:
            raise ConfigMismatchError(
                f"{what} was made with {key}={found[key]!r} but {value!r} was asked for: "
                "use a new --run-dir, or the settings it was made with")
