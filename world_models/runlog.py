"""One run directory per run: resolved config, ``metrics.jsonl``, images, optional W&B.

Every training loop logs through ``RunLogger`` so that a run's numbers live in the run
directory whether or not W&B is on (``--wandb-mode online|offline|disabled``).

W&B runs are named after the run directory (``wandb_identity``) and keep their files in
``RUN/wandb``. A pipeline is one W&B run (``pipeline_wandb``): each stage's logger reuses it, and
each stage is a metric namespace (``vae/loss``, ``mdnrnn/val_nll``, ...) with its own step axis
(``vae/step``, ...). A standalone command (``train.py vae ...``) opens a run of its own, named
``RUN_NAME-STAGE``. With ``disabled`` (the default) nothing imports wandb.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.episodes import atomic_write_json
from envs.errors import UserError

WANDB_MODES = ("online", "offline", "disabled")
WANDB_PROJECT = "world-models-rl"


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


def check_wandb_mode(mode: str) -> None:
    if mode not in WANDB_MODES:
        raise UserError(f"unknown --wandb-mode {mode!r}: use one of {', '.join(WANDB_MODES)}")


def wandb_identity(run_dir: Path, suffix: str = "") -> tuple[str, str]:
    """(name, id) of the W&B run of a run directory (``suffix``: a standalone stage's name).

    The name is the directory's name (``NAME-suffix``); the id is that name reduced to letters,
    digits, ``-`` and ``_`` (at most 48 characters) plus 8 hex digits of a hash of the directory's
    absolute path: the same directory always resumes the same run, and two directories of the
    same name (``runs/a/tc``, ``runs/b/tc``) are two runs."""
    run_dir = Path(run_dir)
    name = run_dir.name + (f"-{suffix}" if suffix else "")
    digest = hashlib.sha1(f"{run_dir.resolve()}|{suffix}".encode()).hexdigest()[:8]
    return name, f"{re.sub(r'[^A-Za-z0-9_-]+', '_', name)[:48]}-{digest}"


class WandbRun:
    """An open W&B run whose metrics are namespaced by stage, each namespace with its own step.

    W&B needs its own step to grow monotonically within a run, while each stage counts from 0;
    so a stage's step is logged as the metric ``NAMESPACE/step`` and declared as that namespace's
    x axis (``define_metric``), never passed as ``step=``."""

    def __init__(self, run) -> None:
        self.run = run
        self.namespaces: set[str] = set()
        self.round_suffix = ""  # set by the pipeline per stage: "_2" in round 2 (see set_pipeline_stage)

    @classmethod
    def open(cls, run_dir: Path, mode: str, name: str, run_id: str | None, config: dict,
             group: str | None = None, project: str = WANDB_PROJECT) -> WandbRun:
        """``wandb.init`` with files in ``run_dir/wandb``; with an id, a rerun resumes that run.
        ``mode=`` is passed explicitly so that it wins over a ``WANDB_MODE`` in the environment."""
        # wandb takes this package's ``agents`` for the OpenAI Agents SDK and prints a Weave
        # advert at init, silent or not
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
        import wandb

        directory = Path(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)  # quiet; no sampler thread
        run = wandb.init(project=project, name=name, id=run_id, resume="allow" if run_id else None, mode=mode,
                         dir=str(directory), config=config, group=group, settings=settings)
        return cls(run)

    def log(self, namespace: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log ``NAMESPACE/key`` for each metric, at ``NAMESPACE/step`` = ``step`` when given (a
        namespace logged without steps, such as the final videos, keeps W&B's own step)."""
        record = {f"{namespace}/{k}": v for k, v in metrics.items()}
        if step is not None:
            if namespace not in self.namespaces:
                self.run.define_metric(f"{namespace}/step")
                self.run.define_metric(f"{namespace}/*", step_metric=f"{namespace}/step")
                self.namespaces.add(namespace)
            record[f"{namespace}/step"] = step
        self.run.log(record)

    def image(self, key: str, image: np.ndarray | Path, step: int | None = None) -> None:
        """An (H, W, 3) uint8 array or an image file, as ``key`` (``namespace/name``)."""
        import wandb

        namespace, name = key.split("/", 1)
        self.log(namespace, {name: wandb.Image(str(image) if isinstance(image, Path) else image)}, step)

    def video(self, key: str, path: Path) -> None:
        import wandb

        namespace, name = key.split("/", 1)
        self.log(namespace, {name: wandb.Video(str(path), format="mp4")})

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        import wandb

        namespace, name = key.split("/", 1)
        self.log(namespace, {name: wandb.Table(columns=columns, data=rows)})

    def summary(self, values: dict[str, Any]) -> None:
        """Set the run's summary values (what the W&B runs table shows)."""
        self.run.summary.update(values)

    def config(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)  # a later round re-runs a stage with new epochs

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


_pipeline_run: WandbRun | None = None  # the open pipeline run, which its stages' loggers log into


def active_wandb_run() -> WandbRun | None:
    """The pipeline's W&B run while ``pipeline_wandb`` is open, else None."""
    return _pipeline_run


@contextmanager
def pipeline_wandb(run_dir: Path, mode: str, config: dict) -> Iterator[WandbRun | None]:
    """The one W&B run of a pipeline (None when ``disabled``), named by ``wandb_identity(run_dir)``
    and resumed when the pipeline is run again on the same directory. Every ``RunLogger`` opened
    inside logs into it; it is finished (failed, on an exception) when the block ends."""
    global _pipeline_run
    check_wandb_mode(mode)
    if mode == "disabled":
        yield None
        return
    name, run_id = wandb_identity(run_dir)
    run = WandbRun.open(run_dir, mode, name, run_id, config)
    _pipeline_run = run
    try:
        yield run
    except BaseException:
        run.finish(exit_code=1)
        raise
    else:
        run.finish()
    finally:
        _pipeline_run = None


def set_pipeline_stage(name: str) -> None:
    """Tell the pipeline's run (if any) which stage runs now. A later round's stage (``mdnrnn_2``,
    ``controller_2``) gets namespaces of its own (``mdnrnn_2/...``, ``controller_cmaes_dream_2/...``):
    its steps count from 1 again, and one namespace would draw rounds on top of each other."""
    if _pipeline_run is not None:
        suffix = name.rsplit("_", 1)[-1] if "_" in name else ""
        _pipeline_run.round_suffix = f"_{suffix}" if suffix.isdigit() else ""


class RunLogger:
    """Append metrics to ``run_dir/metrics.jsonl`` (one JSON object per line) and to W&B.

    Inside a pipeline (``pipeline_wandb``) it logs into the pipeline's run under the namespace
    ``stage`` (plus the round's suffix) and leaves the run open on ``close``; otherwise, with
    ``wandb_mode`` online or offline, it opens and finishes a run of its own, ``RUN_NAME-STAGE``."""

    def __init__(self, run_dir: Path, config: Any, stage: str, wandb_mode: str = "disabled",
                 project: str = WANDB_PROJECT) -> None:
        check_wandb_mode(wandb_mode)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        self.config = to_jsonable(config)
        atomic_write_json(self.run_dir / f"config_{stage}.json", self.config)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.start = time.perf_counter()
        self.wandb: WandbRun | None = None
        self.owns_wandb = False
        self.namespace = stage
        if wandb_mode != "disabled":
            self._start_wandb(wandb_mode, project)

    def _start_wandb(self, mode: str, project: str) -> None:
        shared = active_wandb_run()
        if shared is not None:
            self.wandb, self.namespace = shared, self.stage + shared.round_suffix
            shared.config({f"config_{self.namespace}": self.config})
            return
        name, run_id = wandb_identity(self.run_dir, self.stage)
        self.wandb = WandbRun.open(self.run_dir, mode, name, run_id, self.config, group=self.run_dir.name,
                                   project=project)
        self.owns_wandb = True

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"stage": self.stage, "step": step, "time": round(time.perf_counter() - self.start, 3)}
        record.update({k: to_jsonable(v) for k, v in metrics.items()})
        with self.metrics_path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(self.namespace, metrics, step)

    def image(self, name: str, image: np.ndarray, step: int) -> Path:
        """Save an (H, W, 3) uint8 image as ``run_dir/images/<name>.png`` and to W&B (as the
        name's first word: ``reconstruction_epoch003`` is a step of ``vae/reconstruction``)."""
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
            self.wandb.image(f"{self.namespace}/{name.split('_')[0]}", image, step)
        return path

    def close(self) -> None:
        if self.wandb is not None and self.owns_wandb:
            self.wandb.finish()
        self.wandb = None


def read_metrics(run_dir: Path, stage: str | None = None) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if stage is None or r.get("stage") == stage]
