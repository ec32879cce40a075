"""Index every run of every task under results/ into results/index.json and results/index.md.

    python results/make_index.py           # rewrite both files
    python results/make_index.py --check   # exit 1 if either is out of date

Each task is a folder ``results/<task>/`` with a hand-written manifest ``runs.json`` (the summary
files do not say what a run was): for every run its id, label, seed, date, the command in today's
preset names, the file its score comes from (``FILE`` or ``FILE#KEY``: ``mean``, ``std``,
``episodes``), its summary file (the command that ran, ``seconds_total``, frames, deployed round)
and its other files. The index takes every figure from those files, never from the manifest
(references, e.g. the paper's score, are the exception: they are not our files). A task's
``headline`` run is also written to ``results/<task>/headline.json``; a ``benchmark`` (Atari 100k) or a
``study`` (a table of arms, e.g. the MyWayHome curiosity study) to ``results/<name>.json``.

Figures are rounded half up from their decimal form (753.15 -> 753.2), as the README prints them.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

RESULTS = Path(__file__).resolve().parent
MANIFEST = "runs.json"
HEADLINE = "headline.json"


def fmt(value: float | int | None, digits: int = 1) -> str | None:
    """``value`` rounded half up to ``digits`` decimals, as text (753.15 -> '753.2')."""
    if value is None:
        return None
    quantum = Decimal(1).scaleb(-digits)
    return str(Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP))


def score_text(mean: float | None, std: float | None, digits: int = 1) -> str | None:
    return None if mean is None else f"{fmt(mean, digits)} +- {fmt(std, digits)}"


def read(folder: Path, ref: str | None) -> dict | None:
    """The JSON object at ``FILE`` or ``FILE#KEY`` (nested keys: ``FILE#A.B``) inside ``folder``."""
    if not ref:
        return None
    name, _, key = ref.partition("#")
    data = json.loads((folder / name).read_text())
    for part in key.split(".") if key else []:
        data = data[part]
    return data


def minutes_of(summary: dict | None) -> float | None:
    if not summary:
        return None
    seconds = summary.get("seconds_total", summary.get("seconds_total_finished_stages"))
    return None if seconds is None else round(seconds / 60, 1)


def run_entry(task: str, folder: Path, run: dict) -> dict:
    score = read(folder, run.get("score"))
    summary = read(folder, run.get("summary"))
    if score is not None:
        mean, std, episodes, seeds = score["mean"], score["std"], score["episodes"], score.get("seeds")
    elif summary is not None and "real_mean" in summary:
        mean, std, episodes, seeds = summary["real_mean"], summary["real_std"], summary["real_episodes"], \
            summary.get("real_seeds")
    else:
        mean = std = episodes = seeds = None
    command = (summary or {}).get("command") or (score or {}).get("command") or run["recipe"]
    minutes = run["minutes"] if "minutes" in run else minutes_of(summary)
    prefix = f"results/{task}/"
    files = [name.partition("#")[0] for name in (run.get("score"), run.get("summary")) if name]
    files += [name for name in run.get("files", []) if name not in files]
    return {
        "task": task, "kind": "run", "id": run["id"], "label": run["label"], "seed": run.get("seed"),
        "date": run.get("date"), "recipe": run["recipe"], "command": command,
        "mean": mean, "std": std, "episodes": episodes,
        "score": score_text(mean, std),
        "eval_seeds": [seeds[0], seeds[-1]] if seeds else None,
        "minutes": minutes,
        "real_frames": (summary or {}).get("real_frames_used", (summary or {}).get("real_frames_collected")),
        "real_steps": (summary or {}).get("real_steps_used"),
        "deployed_round": (summary or {}).get("deployed_round"),
        "validation_per_round": (summary or {}).get("validation_score_per_round"),
        "score_file": prefix + run["score"] if run.get("score") else None,
        "summary_file": prefix + run["summary"] if run.get("summary") else None,
        "files": [prefix + name for name in files],
        "note": run.get("note"),
    }


def group_entry(task: str, group: dict, runs: dict[str, dict]) -> dict:
    """Mean and sample standard deviation (n - 1) of the runs' means; their wall-clock range."""
    members = [runs[name] for name in group["runs"]]
    means = [run["mean"] for run in members]
    minutes = [run["minutes"] for run in members if run["minutes"] is not None]
    mean, std = statistics.fmean(means), statistics.stdev(means)
    return {
        "task": task, "kind": "group", "id": group["id"], "label": group["label"],
        "runs": group["runs"], "seeds": [run["seed"] for run in members], "n": len(members),
        "mean": round(mean, 2), "std": round(std, 2), "score": score_text(mean, std),
        "episodes": members[0]["episodes"] if len({run["episodes"] for run in members}) == 1 else None,
        "minutes_min": min(minutes) if minutes else None, "minutes_max": max(minutes) if minutes else None,
        "run_means": means,
    }


def reference_entry(task: str, reference: dict) -> dict:
    return {"task": task, "kind": "reference", **reference,
            "score": score_text(reference["mean"], reference["std"], 0)}


def other_files(task: str, folder: Path, claimed: set[str]) -> list[dict]:
    """The task's files no run names (experiments on one run's models, studies): file and 'what'."""
    out = []
    for path in sorted(folder.iterdir()):
        if path.name in claimed or path.name in (MANIFEST, HEADLINE) or not path.is_file():
            continue
        what = None
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            what = data.get("what") if isinstance(data, dict) else None
        out.append({"file": f"results/{task}/{path.name}", "what": what})
    return out


def task_index(folder: Path) -> tuple[dict, dict | None]:
    manifest = json.loads((folder / MANIFEST).read_text())
    task = folder.name
    runs = [run_entry(task, folder, run) for run in manifest["runs"]]
    by_id = {run["id"]: run for run in runs}
    if len(by_id) != len(runs):
        raise SystemExit(f"{folder / MANIFEST}: duplicate run ids")
    claimed = {Path(name).name for run in runs for name in run["files"]}
    missing = sorted(name for name in claimed if not (folder / name).exists())
    if missing:
        raise SystemExit(f"{folder / MANIFEST} names files that do not exist: {', '.join(missing)}")
    index = {
        "task": task, "env_id": manifest.get("env_id"), "solved": manifest.get("solved"),
        "headline": manifest.get("headline"),
        "groups": [group_entry(task, group, by_id) for group in manifest.get("groups", [])],
        "references": [reference_entry(task, ref) for ref in manifest.get("references", [])],
        "runs": runs,
        "other_files": other_files(task, folder, claimed),
    }
    if manifest.get("benchmark"):
        index["benchmark"] = benchmark_entry(manifest["benchmark"], runs, {run["id"]: run for run in manifest["runs"]})
        for game in index["benchmark"]["games"].values():
            for run in game["runs"]:
                by_id[run["id"]]["hns"] = run["hns"]  # the README quotes it beside the score
    if manifest.get("study"):
        index["study"] = study_entry(folder, manifest["study"], by_id)
    headline = None
    if manifest.get("headline"):
        run = by_id[manifest["headline"]]
        headline = {"what": f"The headline evaluation of {task}: run {run['id']} over {run['episodes']} real "
                            f"episodes (written by results/make_index.py from {run['score_file']})",
                    **{key: run[key] for key in ("id", "label", "seed", "date", "recipe", "command", "mean", "std",
                                                 "episodes", "score", "eval_seeds", "minutes", "real_frames",
                                                 "deployed_round", "score_file", "summary_file")}}
    return index, headline


def normalised(score: float | None, game: dict) -> float | None:
    """Human-normalised score (score - random) / (human - random), 3 decimals."""
    if score is None:
        return None
    return round((score - game["random"]) / (game["human"] - game["random"]), 3)


def benchmark_entry(benchmark: dict, runs: list[dict], manifest_runs: dict[str, dict]) -> dict:
    """Per game of a benchmark (Atari 100k): our runs' raw scores, their mean over the runs of each
    recipe (the level of the recipe: a run's ``preset`` in the manifest, ``benchmark.name`` when it has
    none), the random and human references, human-normalised scores, the published agents'."""
    games = {}
    for name, game in benchmark["games"].items():
        ours = [run for run in runs if manifest_runs[run["id"]].get("game") == name and run["mean"] is not None]
        recipe_of = {run["id"]: manifest_runs[run["id"]].get("preset", benchmark["name"]) for run in ours}
        recipes = {}
        for recipe in dict.fromkeys(recipe_of.values()):
            means = [run["mean"] for run in ours if recipe_of[run["id"]] == recipe]
            mean = round(statistics.fmean(means), 2)
            recipes[recipe] = {"runs": len(means), "mean_over_runs": mean, "hns": normalised(mean, game)}
        games[name] = {
            "env_id": game["env_id"], "random": game["random"], "human": game["human"],
            "runs": [{"id": run["id"], "recipe": recipe_of[run["id"]], "seed": run["seed"], "mean": run["mean"],
                      "std": run["std"], "episodes": run["episodes"], "hns": normalised(run["mean"], game),
                      "minutes": run["minutes"], "real_steps": run["real_steps"], "command": run["command"],
                      "score_file": run["score_file"]} for run in ours],
            "recipes": recipes,
            "published": {agent: {"score": score, "hns": normalised(score, game)}
                          for agent, score in game["published"].items()},
        }
    return {"name": benchmark["name"], "what": benchmark["what"], "source": benchmark["source"], "games": games}


def study_entry(folder: Path, study: dict, runs: dict[str, dict]) -> dict:
    """A study's table (the MyWayHome curiosity study): one row per arm, its success rate from the
    run's score file, its learning curve from the file the row names; an arm not run keeps its note."""
    rows = []
    for row in study["rows"]:
        out = {key: row[key] for key in ("env", "curiosity", "variant") if key in row}
        run = runs.get(row.get("run"))
        if row.get("run") and run is None:
            raise SystemExit(f"{folder / MANIFEST}: study row names an unknown run {row['run']!r}")
        if run is not None:
            score = read(folder, Path(run["score_file"]).name)
            out.update({"run": run["id"], "seed": run["seed"], "success_rate": score["success_rate"],
                        "episodes": run["episodes"], "mean_return": run["mean"], "real_steps": run["real_steps"],
                        "minutes": run["minutes"], "command": run["command"], "score_file": run["score_file"]})
        else:
            out["success_rate"] = None
        curve = read(folder, row.get("learning_curve"))
        out["learning_curve"] = curve["rounds"] if curve else None
        out.update({key: row[key] for key in ("learning_curve_note", "note") if key in row})
        rows.append(out)
    return {"name": study["name"], "what": study["what"], "rows": rows}


def markdown(tasks: list[dict]) -> str:
    lines = ["# Results index", "", "Written by `python results/make_index.py` from each task's `runs.json` and the "
             "files it names; do not edit by hand. Scores are mean +- std over real-env episodes.", ""]
    for task in tasks:
        solved = f", solved = {task['solved']}" if task["solved"] is not None else ""
        lines += [f"## {task['task']} (`{task['env_id']}`{solved})", ""]
        if task["groups"]:
            lines += ["| group | runs | score over the runs' means (n, sample std) | wall-clock (min) |",
                      "|---|---|---|---|"]
            lines += [f"| `{g['id']}`: {g['label']} | {', '.join(g['runs'])} | {g['score']} (n = {g['n']}) | "
                      f"{g['minutes_min']}-{g['minutes_max']} |" for g in task["groups"]]
            lines += [""]
        lines += ["| run | what | seed | score | episodes | wall-clock (min) | date | files |",
                  "|---|---|---|---|---|---|---|---|"]
        for run in task["runs"]:
            files = ", ".join(f"[{Path(name).name}]({Path(name).relative_to('results')})" for name in run["files"])
            lines += [f"| `{run['id']}` | {run['label']} | {'' if run['seed'] is None else run['seed']} | "
                      f"{run['score'] or 'not evaluated'} | {run['episodes'] or ''} | {run['minutes'] or ''} | "
                      f"{run['date'] or ''} | {files} |"]
        if task["references"]:
            lines += ["", "| reference | score | episodes | source |", "|---|---|---|---|"]
            lines += [f"| `{r['id']}`: {r['label']} | {r['score']} | {r['episodes']} | {r['source']} |"
                      for r in task["references"]]
        if task["other_files"]:
            lines += ["", "Other files (studies on one run's models):", ""]
            lines += [f"- [{Path(o['file']).name}]({Path(o['file']).relative_to('results')})"
                      + (f": {o['what']}" if o["what"] else "") for o in task["other_files"]]
        lines += [""]
    return "\n".join(lines)


def build(results: Path = RESULTS) -> dict[Path, str]:
    """Every file the index consists of, path -> text."""
    tasks, out = [], {}
    for folder in sorted(p for p in results.iterdir() if (p / MANIFEST).is_file()):
        index, headline = task_index(folder)
        tasks.append(index)
        if "benchmark" in index:  # e.g. results/atari100k.json
            name = index["benchmark"]["name"].replace("-", "")
            out[results / f"{name}.json"] = json.dumps(index["benchmark"], indent=2) + "\n"
        if "study" in index:  # e.g. results/my_way_home.json
            out[results / f"{index['study']['name']}.json"] = json.dumps(index["study"], indent=2) + "\n"
        if headline is not None:
            out[folder / HEADLINE] = json.dumps(headline, indent=2) + "\n"
    out[results / "index.json"] = json.dumps({"tasks": tasks}, indent=2) + "\n"
    out[results / "index.md"] = markdown(tasks)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="Write results/index.json and results/index.md.")
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args()
    stale = []
    for path, text in build().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(RESULTS.parent)}")
    if stale:
        print("out of date (run python results/make_index.py): " + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
