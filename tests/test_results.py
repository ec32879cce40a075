"""The README stays a manual, its results agree with the results files, and the index is current.

Fast (no torch, no env): it reads README.md, docs/*.md and results/ only.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 250
# Pages other engineers are writing; checked like any other link once they exist.
PENDING = {"docs/experiments.md"}
NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")  # -25.0 is negative; 69.9-135.5 is a range
CHECKED_FIELDS = ("mean", "std", "episodes", "n", "minutes", "minutes_min", "minutes_max", "hns")


def load_make_index():
    spec = importlib.util.spec_from_file_location("make_index", ROOT / "results" / "make_index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_index():
    return load_make_index()


@pytest.fixture(scope="module")
def entries() -> dict[str, dict]:
    """Every run, group and reference of index.json, by id."""
    index = json.loads((ROOT / "results" / "index.json").read_text())
    out = {}
    for task in index["tasks"]:
        for entry in task["runs"] + task["groups"] + task["references"]:
            assert entry["id"] not in out, f"duplicate id {entry['id']} in results/index.json"
            out[entry["id"]] = entry
    return out


def split_row(line: str) -> list[str]:
    """A markdown table row's cells ('|' inside code spans or escaped as '\\|' does not split)."""
    line = re.sub(r"`[^`]*`", lambda m: m.group(0).replace("|", "\0"), line.strip())
    return [cell.strip().replace("\0", "|") for cell in re.split(r"(?<!\\)\|", line.strip("|"))]


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table outside code blocks: a list of rows (header first, separator dropped)."""
    found, current, code = [], None, False
    for line in text.splitlines():
        if line.startswith("```"):
            code = not code
        if not code and line.startswith("|"):
            if current is None:
                current = []
                found.append(current)
            if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
                current.append(split_row(line))
        else:
            current = None
    return found


def results_tables(text: str) -> list[list[list[str]]]:
    """Every table of the README's Results section (TakeCover's, Atari 100k's)."""
    section = text.split("\n## Results\n", 1)
    assert len(section) == 2, "README.md has no '## Results' section"
    found = tables(section[1].split("\n## ", 1)[0])
    assert found, "README.md's Results section has no table"
    return found


def check_row(row: dict[str, str], entries: dict[str, dict], make_index) -> None:
    ids = re.findall(r"`([^`]+)`", row["id"])
    assert ids, f"results row without an id: {row}"
    known = [entries[i] for i in ids if i in entries]
    assert len(known) == len(ids), f"ids {ids} not all in results/index.json"
    for entry in known:
        assert entry["score"] and entry["score"] in row["score"], \
            f"{entry['id']}: README says {row['score']!r}, results/index.json {entry['score']!r}"
    for column in ("score", "wall-clock"):
        for number in NUMBER.findall(row[column]):
            digits = len(number.partition(".")[2])
            value = number.replace(",", "")
            allowed = {make_index.fmt(entry[field], digits) for entry in known for field in CHECKED_FIELDS
                       if isinstance(entry.get(field), (int, float))}
            assert value in allowed, f"{ids}: {number} in the README's {column} column is in no results file " \
                                     f"({sorted(allowed)})"


def test_readme_is_a_manual():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"
    assert "python -m pytest -q" in README.read_text()  # CI runs the README's test command


def test_readme_results_agree_with_the_files(entries, make_index):
    for rows in results_tables(README.read_text()):
        header = [cell.lower() for cell in rows[0]]
        columns = {name: next(i for i, cell in enumerate(header) if cell.startswith(name))
                   for name in ("id", "score", "wall-clock")}
        assert len(rows) > 1
        for cells in rows[1:]:
            assert len(cells) == len(header), f"results row with {len(cells)} cells, header {len(header)}: {cells}"
            check_row({name: cells[i] for name, i in columns.items()}, entries, make_index)


def test_check_row_catches_a_wrong_figure(entries, make_index):
    run = entries["tc-v28"]
    good = {"id": "`tc-v28`", "score": f"**{run['score']}** over 100 episodes", "wall-clock": f"{run['minutes']} min"}
    check_row(good, entries, make_index)
    for wrong in ({**good, "score": "**753.3 +- 443.3** over 100 episodes"},
                  {**good, "wall-clock": "85.0 min"}, {**good, "score": good["score"] + ", 48 >= 750"}):
        with pytest.raises(AssertionError):
            check_row(wrong, entries, make_index)


def test_headline_is_the_best_recipe_run(make_index):
    headline = json.loads((ROOT / "results" / "doom-take-cover" / "headline.json").read_text())
    evaluation = json.loads((ROOT / headline["score_file"]).read_text())
    assert (headline["id"], headline["episodes"]) == ("tc-v28", 100)
    assert (headline["mean"], headline["std"]) == (evaluation["mean"], evaluation["std"])
    assert make_index.fmt(753.15) == "753.2"  # rounded half up, as printed


def test_index_is_up_to_date(make_index):
    stale = [str(path.relative_to(ROOT)) for path, text in make_index.build().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"out of date, run python results/make_index.py: {stale}"


def linked_paths(page: Path) -> list[tuple[str, Path]]:
    """(as written, resolved) for every local link target and every `results/...`/`docs/...` code path."""
    text = page.read_text()
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        out.append((target, (page.parent / target.split("#")[0]).resolve()))
    for target in re.findall(r"`((?:results|docs)/[^`\s]+)`", text):
        out.append((target, (ROOT / target).resolve()))
    return out


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_linked_paths_exist(page):
    missing = []
    for written, path in linked_paths(page):
        relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if relative in PENDING:
            continue
        if not (glob.glob(str(path)) if "*" in written else path.exists()):
            missing.append(written)
    assert not missing, f"{page.name} links to paths that do not exist: {missing}"


def test_markdown_tables_are_rectangular():
    for page in [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "index.md"]:
        for table in tables(page.read_text()):
            widths = {len(row) for row in table}
            assert len(widths) == 1, f"{page.name}: a table's rows have {sorted(widths)} cells: {table[0]}"


def test_atari100k_normalises_every_score_by_the_games_references(make_index):
    benchmark = json.loads((ROOT / "results" / "atari100k.json").read_text())
    assert make_index.normalised(12.8, {"random": -20.7, "human": 14.6}) == 0.949  # SimPLe's Pong
    for name, game in benchmark["games"].items():
        assert game["human"] > game["random"], name
        for run in game["runs"]:
            evaluation = json.loads((ROOT / run["score_file"]).read_text())
            assert (run["mean"], run["episodes"]) == (evaluation["mean"], 100)  # 100 episodes, from the file
            assert run["hns"] == round((run["mean"] - game["random"]) / (game["human"] - game["random"]), 3)
            assert run["real_steps"] <= 100_000
        for recipe, level in game["recipes"].items():  # the level of a recipe: the mean of its runs alone
            means = [run["mean"] for run in game["runs"] if run["recipe"] == recipe]
            assert (level["runs"], level["mean_over_runs"]) == (len(means), round(sum(means) / len(means), 2))
