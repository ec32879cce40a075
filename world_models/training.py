"""What every training loop shares: resumable state, NaN guard, progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from envs.checks import at_least, directory_to_write, positive
from envs.errors import UserError
from world_models.checkpoint import (
    check_config,
    load_checkpoint,
    load_module_state,
    module_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from world_models.runlog import check_wandb_mode, resolve_device, to_jsonable

STATE_NAME = "train_state"


class DivergedError(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def check_finite(loss: torch.Tensor, what: str, checkpoint_dir: Path) -> None:
    if not torch.isfinite(loss):
        raise DivergedError(
            f"{what} loss became {loss.item()}: stopped; the last good checkpoint in {checkpoint_dir} "
            "is kept (lower --lr or check the data, then run again to resume from it)"
        )


@dataclass
class TrainState:
    """Epoch and step counters, saved with the model, optimizer and torch RNG so a killed run
    resumes exactly where its last checkpoint left it.

    ``train_state.safetensors`` holds everything needed to resume (model included, so the pair
    can never be out of step); ``model.safetensors`` is the exported weights users load.
    """

    epoch: int = 0
    step: int = 0
    metrics: dict = field(default_factory=dict)
    """The last epoch's metrics, returned again when a finished run is asked for no more epochs."""

    def save(self, directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             model_config: dict, extra: dict | None = None) -> None:
        optim_tensors, optim_meta = optimizer_to_tensors(optimizer)
        tensors = {f"model.{k}": v for k, v in module_state(model).items()}
        tensors.update(optim_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"epoch": self.epoch, "step": self.step, "optimizer": optim_meta, "model": model_config,
                "metrics": to_jsonable(self.metrics), **(extra or {})}
        save_checkpoint(directory, tensors, meta, name=STATE_NAME)
        save_checkpoint(directory, module_state(model), {**model_config, **(extra or {})})

    @classmethod
    def resume(cls, directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               model_config: dict, what: str = "this run") -> TrainState:
        """Restore from ``directory`` when it holds a training state, else start fresh."""
        if not (Path(directory) / f"{STATE_NAME}.safetensors").exists():
            return cls()
        device = next(model.parameters()).device
        tensors, meta = load_checkpoint(directory, name=STATE_NAME, device=device)
        check_config(meta["model"], model_config, f"the checkpoint in {directory}")
        load_module_state(model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
        torch.set_rng_state(tensors["rng.torch"].cpu())
        print(f"resuming {what} from {directory} (epoch {meta['epoch']}, step {meta['step']})")
        return cls(epoch=meta["epoch"], step=meta["step"], metrics=meta.get("metrics", {}))


def report_finished(what: str, directory: Path, epochs: int) -> None:
    """What a command run again on a finished run directory says (it trains nothing more)."""
    print(f"{what} in {directory} has finished its {epochs} epochs: nothing to do "
          f"(ask for more --epochs to continue it)")


def check_training(config, counts: tuple[str, ...]) -> None:
    """The checks every training config shares: its counts >= 1, lr > 0, val_fraction in [0, 1),
    seed >= 0, a known device and W&B mode, and its run directory not a file."""
    for name in counts:
        at_least(name, getattr(config, name), 1)
    positive("lr", config.lr)
    if not 0 <= config.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {config.val_fraction:g}")
    at_least("seed", config.seed, 0)
    resolve_device(config.device)
    check_wandb_mode(config.wandb_mode)
    directory_to_write("run_dir", config.run_dir)
    if getattr(config, "data", None) is not None:
        directory_to_write("data", config.data)


class progress_bar:
    """A rich progress bar over epochs (or generations) with ETA; silent when disabled."""

    def __init__(self, name: str, total: int, completed: int = 0, enabled: bool = True) -> None:
        self.progress = None
        self.start = time.perf_counter()
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn(name), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.progress.start()
            self.task = self.progress.add_task(name, total=total, completed=completed, info="")

    def advance(self, info: str = "") -> None:
        if self.progress:
            self.progress.update(self.task, advance=1, info=info)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()


def mixed_precision(amp: bool, device: torch.device) -> torch.autocast:
    """bfloat16 autocast of a forward pass and its loss on CUDA when ``amp``; a no-op on CPU (bfloat16
    needs no loss scaling, unlike float16, and the optimizer still steps float32 weights)."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
