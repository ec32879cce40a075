"""One run directory per run: resolved config, ``metrics.jsonl``, images, optional W&B.

Every training loop logs through ``RunLogger`` so that a run's numbers live in the run
directory whether or not W&B is on (``--wandb-mode online|offline|disabled``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.episodes import atomic_write_json
from envs.errors import UserError

WANDB_MODES = ("online", "offline", "disabled")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is visible: use --device auto or cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    return value


class RunLogger:
    """Append metrics to ``run_dir/metrics.jsonl`` (one JSON object per line) and to W&B."""

    def __init__(self, run_dir: Path, config: Any, stage: str, wandb_mode: str = "disabled",
                 project: str = "world-models-rl") -> None:
        if wandb_mode not in WANDB_MODES:
            raise UserError(f"unknown --wandb-mode {wandb_mode!r}: use one of {', '.join(WANDB_MODES)}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        self.config = to_jsonable(config)
        atomic_write_json(self.run_dir / f"config_{stage}.json", self.config)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.start = time.perf_counter()
        self.wandb = None
        if wandb_mode != "disabled":
            self.wandb = self._start_wandb(wandb_mode, project)

    def _start_wandb(self, mode: str, project: str):
        import wandb

        return wandb.init(project=project, name=f"{self.run_dir.name}-{self.stage}", mode=mode,
                          dir=str(self.run_dir), config=self.config, group=self.run_dir.name,
                          resume="allow", id=f"{self.run_dir.name}-{self.stage}")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"stage": self.stage, "step": step, "time": round(time.perf_counter() - self.start, 3)}
        record.update({k: to_jsonable(v) for k, v in metrics.items()})
        with self.metrics_path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({f"{self.stage}/{k}": v for k, v in metrics.items()}, step=step)

    def image(self, name: str, image: np.ndarray, step: int) -> Path:
        """Save an (H, W, 3) uint8 image as ``run_dir/images/<name>.png`` and to W&B."""
        import cv2

        directory = self.run_dir / "images"
        directory.mkdir(exist_ok=True)
        path = directory / f"{name}.png"
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
        assert ok
        tmp = path.with_suffix(".png.tmp")
        tmp.write_bytes(encoded.tobytes())
        tmp.replace(path)
        if self.wandb is not None:
            import wandb

            self.wandb.log({f"{self.stage}/{name.split('_')[0]}": wandb.Image(image)}, step=step)
        return path

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: Path, stage: str | None = None) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if stage is None or r.get("stage") == stage]
