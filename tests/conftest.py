import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


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
