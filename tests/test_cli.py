"""The command lines: tiny-budget smoke runs and one-line errors with exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts processes (CLI runs, worker pools, env engines)

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_collect_smoke(tmp_path):
    result = run("train.py", "collect", "--env", "VizdoomTakeCover-v1", "--episodes", "2",
                 "--out", str(tmp_path), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "collected 2 new episodes" in result.stdout


def test_a_user_error_is_one_line_and_exit_2_from_the_real_process(tmp_path):
    # the whole table of bad inputs runs in-process (tests/test_validation.py); this checks what a
    # shell sees: the process's own exit code and stderr
    assert_user_error(run("train.py", "collect", "--env", "Nope-v0", "--out", str(tmp_path)), "Nope-v0")
