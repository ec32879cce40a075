"""Figures of a finished run: the learning curve of a pipeline (dream fitness per CMA-ES
generation, real-env score on the validation seeds after each training round)."""

from __future__ import annotations

import json
from pathlib import Path

from world_models.runlog import read_metrics


def learning_curve(run_dir: Path, out: Path | None = None) -> Path | None:
    """Plot ``RUN/images/learning_curve.png`` (or ``out``); None when the run has no CMA-ES records.

    Generations of later training rounds continue the x axis; the real score of each round on the
    validation seeds (``validate``, ``validate_2``, ... in ``stages.json``) is drawn at the
    generation it followed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = [r for r in read_metrics(run_dir) if str(r.get("stage", "")).startswith("controller_cmaes")
               and "generation" in r]
    if not records:
        return None
    x, rounds_end, offset, previous = [], [], 0, 0
    for record in records:
        if record["generation"] <= previous:  # a new training round starts counting again
            rounds_end.append(offset + previous)
            offset += previous
        previous = record["generation"]
        x.append(offset + record["generation"])
    rounds_end.append(offset + previous)

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(x, [r["best"] for r in records], label="dream: best member", lw=1)
    axis.plot(x, [r["mean"] for r in records], label="dream: population mean", lw=1)
    evaluated = [(xi, r["eval_best"]) for xi, r in zip(x, records, strict=True) if "eval_best" in r]
    if evaluated:
        axis.plot(*zip(*evaluated, strict=True), "o", ms=4, label="dream: best re-evaluated")
    real = _real_scores(run_dir)
    if real:
        ends = rounds_end[: len(real)]
        axis.errorbar(ends, [m for m, _ in real], yerr=[s for _, s in real], fmt="s", color="black", capsize=4,
                      label=f"real env, validation seeds: mean +- std ({real[-1][0]:.0f})")
    axis.axhline(750, ls="--", color="grey", lw=0.8, label="solved (750)")
    axis.set(xlabel="CMA-ES generation", ylabel="steps survived", title=run_dir.name)
    axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    out = Path(out) if out else run_dir / "images" / "learning_curve.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(out)
    return out


def _real_scores(run_dir: Path) -> list[tuple[float, float]]:
    path = run_dir / "stages.json"
    if not path.exists():
        return []
    stages = json.loads(path.read_text())
    return [(stage["summary"]["mean"], stage["summary"]["std"]) for name, stage in stages.items()
            if name.startswith("validate")]
