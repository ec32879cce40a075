"""Every benchmark script runs at its smallest sizes and ends with one JSON line holding the ratio of
the two ways it measured in that same run (the figures themselves are meaningless at these sizes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMALLEST = {
    "collect.py": ["--episodes", 2, "--workers", 1],
    "dream.py": ["--population", 2, "--rollouts", 2, "--steps", 3, "--sequential-rollouts", 1, "--hiddens", 16,
                 "--z-dims", 8],
    "dream_jump.py": ["--generations", 1, "--population", 4, "--rollouts", 2, "--jumps", 2, "--max-episode-steps", 20,
                      "--step-dreams", 8, "--step-env-steps", 8,
                      "--z-dim", 8, "--belief", 16],
    "mdn_sampling.py": ["--dreams", 4, "--population", 2, "--z-dim", 8, "--hidden", 16, "--mixtures", 2,
                        "--repeats", 2],
    "scale.py": ["--episodes", 2, "--workers", 1],
    "world_model.py": ["--episodes", 2, "--workers", 1, "--batch-size", 8, "--z-dim", 8, "--v-steps", 1,
                       "--hidden", 16, "--seq-len", 10, "--m-batch", 2, "--m-steps", 1],
}


def test_every_benchmark_has_a_smoke_run():
    assert sorted(SMALLEST) == sorted(path.name for path in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.timeout(300)  # scale.py starts a Ray instance: ~15 s alone, minutes on busy cores
@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_ends_with_a_json_ratio(script):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors on shared cores: one thread is faster
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, SMALLEST[script])],
                            cwd=ROOT, capture_output=True, text=True, timeout=280, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    ratios = {key: value for key, value in last.items() if key.endswith("ratio")}
    assert ratios and all(isinstance(value, (int, float)) and value > 0 for value in ratios.values()), last
