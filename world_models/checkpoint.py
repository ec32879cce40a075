"""Checkpoints: weights in safetensors, a JSON config beside them; never pickle.

``DIR/NAME.safetensors`` holds the tensors and ``DIR/NAME.json`` the config (architecture, env
id, action space, package version, ...). Each file is written atomically (temp file in the same
directory, fsync, rename) and the JSON last, so its presence marks a complete checkpoint.
Optimizer and RNG state are flattened into tensors plus JSON metadata so that a killed run
resumes exactly where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from envs.episodes import atomic_write_bytes, atomic_write_json
from envs.errors import ConfigMismatchError, CorruptFileError, UserError
from envs.version import package_version

# checkpoint directories named after the ``train.py`` subcommand that writes them, each with the
# ones it is trained from, in pipeline order
STAGES = {"vae": (), "mdnrnn": ("vae",), "tdvae": ("vae",), "controller": ("vae", "mdnrnn")}


# ---- files -----------------------------------------------------------------------------------
def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], config: dict, name: str = "model") -> None:
    """Write ``directory/name.safetensors``, then a readable copy of its config as ``name.json``.

    The config also travels inside the safetensors header (``metadata["config"]``), so weights
    and config are one atomic write and can never be out of step; the JSON is for people.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {**config, "package_version": package_version()}
    payload = save({key: value.detach().cpu().contiguous() for key, value in tensors.items()},
                   metadata={"config": json.dumps(config)})
    atomic_write_bytes(directory / f"{name}.safetensors", lambda file: file.write(payload))
    atomic_write_json(directory / f"{name}.json", config)


def load_checkpoint(directory: Path, name: str = "model", device: str | torch.device = "cpu",
                    expect: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors (on ``device``) and config of a checkpoint.

    Raises UserError when it does not exist, CorruptFileError (one line) when it cannot be read,
    and ConfigMismatchError naming the file when its config lacks any of ``expect`` (a checkpoint
    of another kind, e.g. V's weights where M's should be).
    """
    directory = Path(directory)
    weights, config_path = directory / f"{name}.safetensors", directory / f"{name}.json"
    if not weights.exists():
        raise UserError(f"no checkpoint at {weights}: train it first with {_train_hint(directory)}")
    try:
        with safe_open(str(weights), framework="pt") as file:
            embedded = (file.metadata() or {}).get("config")
        config = json.loads(embedded if embedded is not None else config_path.read_text())
        tensors = load_file(str(weights), device=str(device))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, ValueError) as error:
        raise CorruptFileError(f"corrupt checkpoint {weights}: {_first_line(error)}") from None
    if not isinstance(config, dict):
        raise CorruptFileError(f"corrupt checkpoint {config_path}: expected a JSON object")
    missing = [key for key in expect if key not in config]
    if missing:
        raise ConfigMismatchError(f"{weights} is not a {directory.name} checkpoint: its config has no "
                                  f"{', '.join(missing)} (was it copied from another model?)")
    return tensors, config


def _train_hint(directory: Path) -> str:
    """The ``train.py`` command that makes the first missing stage of the run that needs ``directory``."""
    if directory.name not in STAGES:
        return "the matching `python train.py` subcommand (see `python train.py --help`)"
    run_dir = directory.parent
    needed = (*STAGES[directory.name], directory.name)
    stage = next(s for s in needed if s == directory.name or not (run_dir / s / "model.json").exists())
    return f"`python train.py {stage} --run-dir {run_dir}`"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---- modules ---------------------------------------------------------------------------------
def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state_dict with every tensor its own copy (safetensors refuses shared storage)."""
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def load_module_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "",
                      source: Path | None = None) -> None:
    """Load the tensors whose keys start with ``prefix`` (prefix stripped) into ``module``.

    A different architecture (missing, unexpected or differently shaped keys) raises a one-line
    ConfigMismatchError instead of torch's many-line error.
    """
    found = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    expected = module.state_dict()
    what = f"{'checkpoint' if source is None else source} does not fit {type(module).__name__}"
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ConfigMismatchError(f"{what}: missing {_few(missing)}, unexpected {_few(unexpected)}")
    for key, value in expected.items():
        if value.shape != found[key].shape:
            raise ConfigMismatchError(f"{what}: {prefix}{key} has shape {tuple(found[key].shape)}, "
                                      f"the model wants {tuple(value.shape)} (was it trained with other settings?)")
    module.load_state_dict(found)


def _few(keys: list[str], limit: int = 3) -> str:
    return "[" + ", ".join(keys[:limit]) + (f", ... {len(keys) - limit} more" if len(keys) > limit else "") + "]"


# ---- optimizers ------------------------------------------------------------------------------
def optimizer_to_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim.",
                         ) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten ``optimizer.state_dict()`` into tensors ``{prefix}{param index}.{name}`` plus JSON metadata.

    The metadata holds the param_groups (lr, betas, ...) and every non-tensor per-parameter value.
    """
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    tensor_keys: dict[str, list[str]] = {}
    for index, values in state["state"].items():
        tensor_keys[str(index)] = [key for key, value in values.items() if isinstance(value, torch.Tensor)]
        scalars[str(index)] = {key: value for key, value in values.items() if not isinstance(value, torch.Tensor)}
        tensors.update({f"{prefix}{index}.{key}": values[key] for key in tensor_keys[str(index)]})
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars, "tensor_keys": tensor_keys}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                           prefix: str = "optim.") -> None:
    """Restore what ``optimizer_to_tensors`` saved into an optimizer over the same parameters."""
    state = {}
    for index, keys in meta["tensor_keys"].items():
        values = dict(meta["scalars"].get(index, {}))
        values.update({key: tensors[f"{prefix}{index}.{key}"] for key in keys})
        state[int(index)] = values
    if len(meta["param_groups"]) != len(optimizer.param_groups):
        raise ConfigMismatchError(f"optimizer state has {len(meta['param_groups'])} parameter groups, "
                                  f"this optimizer {len(optimizer.param_groups)}")
    # JSON turned tuples (Adam's betas) into lists: give values back the type the live optimizer uses
    groups = [{key: tuple(value) if isinstance(live.get(key), tuple) else value for key, value in saved.items()}
              for saved, live in zip(meta["param_groups"], optimizer.param_groups, strict=True)]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as error:  # e.g. a different number of parameters or groups
        raise ConfigMismatchError(f"optimizer state does not fit this model: {_first_line(error)}") from None


# ---- random number generators ----------------------------------------------------------------
def rng_state_to_tensors(prefix: str = "rng.") -> dict[str, torch.Tensor]:
    """torch's CPU (and, if initialised, CUDA) RNG and numpy's global RNG as tensors."""
    tensors = {f"{prefix}torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"{prefix}cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    tensors[f"{prefix}numpy.keys"] = torch.from_numpy(keys.astype(np.int64))  # uint32 -> int64: exact
    tensors[f"{prefix}numpy.pos"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
    tensors[f"{prefix}numpy.cached_gaussian"] = torch.tensor([cached_gaussian], dtype=torch.float64)
    return tensors


def restore_rng_state(tensors: dict[str, torch.Tensor], prefix: str = "rng.") -> None:
    """Restore whatever ``rng_state_to_tensors`` saved (missing parts are left alone)."""
    if f"{prefix}torch" in tensors:
        torch.set_rng_state(tensors[f"{prefix}torch"].cpu().to(torch.uint8))
    cuda = [key for key in tensors if key.startswith(f"{prefix}cuda.")]
    if cuda and torch.cuda.is_available():
        for key in cuda:
            torch.cuda.set_rng_state(tensors[key].cpu().to(torch.uint8), int(key.rsplit(".", 1)[1]))
    if f"{prefix}numpy.keys" in tensors:
        pos, has_gauss = (int(v) for v in tensors[f"{prefix}numpy.pos"])
        keys = tensors[f"{prefix}numpy.keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, pos, has_gauss, float(tensors[f"{prefix}numpy.cached_gaussian"][0])))


# ---- configs ---------------------------------------------------------------------------------
def check_config(found: dict, expected: dict, what: str) -> None:
    """Raise a one-line ConfigMismatchError when ``found`` (a checkpoint's config) disagrees with
    ``expected`` on any of expected's keys.

    Values are compared as JSON would store them (tuples as lists, paths as strings). Keys absent
    from ``found`` are skipped: checkpoints written before a setting existed stay loadable.
    """
    for key, value in expected.items():
        if key in found and _as_json(found[key]) != _as_json(value):
            raise ConfigMismatchError(
                f"{what} was trained with {key}={found[key]!r} but {value!r} was asked for; "
                f"ask for {key}={found[key]!r} to continue it, or use a new --run-dir")


def _as_json(value):
    return json.loads(json.dumps(value, default=str))
