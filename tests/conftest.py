import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
# The suite's tensors are tiny and its processes share 2 cores: one intra-op thread is several
# times faster than two fighting each other (a death-critic dream test: 3.6 s against 37 s beside
# another job). Subprocesses the tests start keep torch's default.
torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """Tiny tensors on 2 shared CPU cores: one intra-op thread is several times faster than many."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_CONTROLLER = ["--generations", "2", "--population", "4", "--rollouts", "2", "--eval-every", "1",
                   "--eval-rollouts", "4", "--max-episode-steps", "50", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained TakeCover run (4 held-action episodes, V z=8, M 16 units, C by 2 CMA-ES
    generations), made once per session through ``train.main`` in this process (each CLI
    subprocess would pay ~3 s of imports). Tests that damage it must copy it first."""
    import train

    root = tmp_path_factory.mktemp("tiny")
    data, run_dir = root / "data", root / "run"
    for argv in (["collect", "--env", "VizdoomTakeCover-v1", "--episodes", "4", "--out", str(data),
                  "--policy", "held", "--no-progress"],
                 ["vae", "--data", str(data), "--run-dir", str(run_dir), "--z-dim", "8", "--epochs", "1",
                  "--batch-size", "32", "--lr", "1e-3", "--no-progress"],
                 ["mdnrnn", "--run-dir", str(run_dir), "--hidden", "16", "--epochs", "1", "--seq-len", "20",
                  "--batch-size", "8", "--no-progress"],
                 ["controller", "--run-dir", str(run_dir), "--algo", "cmaes", *TINY_CONTROLLER]):
        assert train.main(argv) == 0, argv
    return run_dir


# One two-round pipeline that switches on every optional mechanism at once (V on part of the
# random rollouts, probes, the adaptive held-action check, a second CMA-ES run in the last round,
# an earlier round's M as death critic, ICM curiosity, offline W&B), run as the real command and then run again:
# each tiny pipeline costs a minute of process start-ups, so the tests of all these mechanisms
# share this one.
PIPELINE_ARGS = ["--preset", "doom-take-cover-tiny", "--episodes", "4", "--vae-episodes", "2", "--iterations", "2",
                 "--iteration-episodes", "2", "--probe-episodes", "2", "--round-mdn-epochs", "1",
                 "--first-round-generations", "1", "--final-generations", "1", "--final-restarts", "1",
                 "--done-critics", "1", "--held-action-limit", "1", "--extra-probe-episodes", "2",
                 "--max-extra-probes", "1", "--extra-mdn-epochs", "1", "--curiosity", "icm", "--no-progress",
                 "--wandb-mode", "offline"]


@pytest.fixture(scope="session")
def two_rounds(tmp_path_factory):
    """(run directory, first run's CompletedProcess, second run's) of the shared pipeline."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    run_dir = tmp_path_factory.mktemp("pipeline") / "tc"
    command = [sys.executable, str(root / "train.py"), "pipeline", "--run-dir", str(run_dir), *PIPELINE_ARGS]
    # conftest's WANDB_MODE=disabled is inherited: the explicit --wandb-mode must win over it
    runs = [subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600) for _ in range(2)]
    for result in runs:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return run_dir, runs[0], runs[1]
