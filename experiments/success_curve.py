"""Success against real steps: how many of each round's collected episodes reached the goal.

    python experiments/success_curve.py --run-dir runs/mwh-sparse-icm

For goal tasks (MyWayHome: the vest) the pipeline's learning curve in real steps is the success
rate among the real episodes each round collected: round 1's random rollouts, then the agent's own
(with its exploration). The rounds are read from ``RUN/stages.json`` (``collect``, ``collect_2``, ...:
how many new episodes each added), the episodes from ``RUN/data`` in seed order, success from the
env's ``success_return`` (``envs/tasks.py``). Results go to ``--out`` (JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tyro

from envs.episodes import atomic_write_json, episode_files, load_episode
from envs.tasks import task_rules


@dataclass
class Args:
    run_dir: Path
    """A pipeline run of a goal task with its episodes (``RUN/data``) and ``RUN/stages.json``."""
    out: Path | None = None
    """Write the JSON here; default: ``RUN/experiments/success_curve.json``."""


def collect_stages(stages: dict) -> list[tuple[str, dict]]:
    """The collection stages in round order: collect, collect_2, collect_3, ..."""
    names = [name for name in stages if name == "collect" or name.startswith("collect_")]
    return sorted(((name, stages[name]["summary"]) for name in names),
                  key=lambda item: int(item[0].partition("_")[2] or 1))


def main(args: Args) -> dict:
    run_dir = Path(args.run_dir)
    env_id = json.loads((run_dir / "pipeline_config.json").read_text())["env"]
    goal = task_rules(env_id).success_return
    if goal is None:
        raise SystemExit(f"{env_id} has no goal (success_return): no success curve")
    files = episode_files(run_dir / "data")  # seed order: the rounds' episodes follow each other
    rounds, start = [], 0
    for name, summary in collect_stages(json.loads((run_dir / "stages.json").read_text())):
        returns = [load_episode(path).total_reward for path in files[start : start + summary["episodes_new"]]]
        start += summary["episodes_new"]
        successes = sum(value > goal for value in returns)
        rounds.append({"stage": name, "episodes": len(returns), "successes": successes,
                       "success_rate": round(successes / max(len(returns), 1), 3),
                       "real_steps_after": summary["steps_total"]})
    result = {"what": "successes among each round's collected real episodes (round 1 random, later rounds "
                      "the agent with its exploration), against real steps", "env": env_id, "rounds": rounds}
    out = args.out or run_dir / "experiments" / "success_curve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(json.dumps(result["rounds"]))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
