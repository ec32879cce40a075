"""The pipeline's learning-curve figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agents.report import learning_curve


def write_run(run_dir: Path, rounds: int) -> None:
    lines = []
    for _ in range(rounds):
        for generation in range(1, 6):
            record = {"stage": "controller_cmaes_dream", "generation": generation, "best": 100.0 * generation,
                      "mean": 50.0 * generation}
            if generation % 2 == 0:
                record["eval_best"] = 90.0 * generation
            lines.append(json.dumps(record))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    names = ["validate"] + [f"validate_{k}" for k in range(2, rounds + 1)]
    stages = {name: {"seconds": 1.0, "summary": {"mean": 300.0 + k, "std": 10.0}} for k, name in enumerate(names)}
    (run_dir / "stages.json").write_text(json.dumps(stages))


def test_learning_curve_of_a_two_round_run_is_a_png(tmp_path: Path) -> None:
    import cv2

    write_run(tmp_path, rounds=2)
    path = learning_curve(tmp_path)
    assert path == tmp_path / "images" / "learning_curve.png"
    image = cv2.imread(str(path))
    assert image is not None and image.ndim == 3 and np.ptp(image) > 0
    assert not list((tmp_path / "images").glob("*.tmp*"))


def test_no_cmaes_records_no_figure(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"stage": "vae", "step": 1, "loss": 1.0}) + "\n")
    assert learning_curve(tmp_path) is None and not (tmp_path / "images").exists()
