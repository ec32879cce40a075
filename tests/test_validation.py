"""Bad input is one line and exit code 2 before any work starts, for every command; damaged or
foreign files are one line naming the file; a finished command run again reports it finished.

The commands run in this process through ``train.main`` / ``eval.main`` (a subprocess would
pay ~3 s of imports per row); the CLI's own subprocess behaviour is covered in test_cli.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import eval as eval_cli
import train
from tests.conftest import TINY_CONTROLLER

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # the tiny run collects in a worker process


def one_line_error(capsys, main, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (argv, code, err)
    return lines[0]


@pytest.fixture
def paths(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    (tmp_path / "empty").mkdir()
    return {"FILE": str(a_file), "EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "missing"),
            "DIR": str(tmp_path)}


# (command line, a word the error must contain); FILE / EMPTY / MISSING / DIR / RUN are filled in
BAD_TRAIN = [
    (["collect", "--env", "Nope-v0", "--out", "MISSING"], "Nope-v0"),
    (["collect", "--env", "ALE/NotAGame-v5", "--out", "MISSING"], "NotAGame"),
    (["collect", "--env", "VizdoomTakeCover-v1", "--out", "MISSING", "--episodes", "0"], "--episodes"),
    (["collect", "--env", "VizdoomTakeCover-v1", "--out", "MISSING", "--workers", "0"], "--workers"),
    (["collect", "--env", "VizdoomTakeCover-v1", "--out", "FILE"], "--out"),
    (["vae", "--data", "MISSING", "--run-dir", "MISSING"], "rollout dataset"),
    (["vae", "--data", "EMPTY", "--run-dir", "MISSING"], "rollout dataset"),
    (["vae", "--data", "FILE", "--run-dir", "MISSING"], "--data"),
    (["vae", "--data", "EMPTY", "--run-dir", "FILE"], "--run-dir"),
    (["vae", "--data", "EMPTY", "--run-dir", "MISSING", "--epochs", "0"], "--epochs"),
    (["vae", "--data", "EMPTY", "--run-dir", "MISSING", "--lr", "0"], "--lr"),
    (["vae", "--data", "EMPTY", "--run-dir", "MISSING", "--batch-size", "0"], "--batch-size"),
    (["vae", "--data", "EMPTY", "--run-dir", "MISSING", "--device", "tpu"], "tpu"),
    (["vae", "--data", "EMPTY", "--run-dir", "MISSING", "--val-fraction", "1.5"], "--val-fraction"),
    (["vae", "--data", "DATA", "--run-dir", "RUN", "--z-dim", "16", "--epochs", "2"], "z_dim"),
    (["mdnrnn", "--run-dir", "EMPTY"], "train.py vae"),
    (["mdnrnn", "--run-dir", "EMPTY", "--epochs", "0"], "--epochs"),
    (["mdnrnn", "--run-dir", "EMPTY", "--seq-len", "0"], "--seq-len"),
    (["mdnrnn", "--run-dir", "EMPTY", "--keep-best", "nope"], "--keep-best"),
    (["controller", "--run-dir", "EMPTY"], "train.py vae"),
    (["controller", "--run-dir", "EMPTY", "--population", "3"], "--population"),
    (["controller", "--run-dir", "EMPTY", "--generations", "0"], "--generations"),
    (["controller", "--run-dir", "EMPTY", "--temperature", "0"], "--temperature"),
    (["controller", "--run-dir", "EMPTY", "--done-critics", "MISSING"], "--done-critics"),
    (["controller", "--run-dir", "EMPTY", "--dream-jump", "2"], "--memory tdvae"),
    (["controller", "--run-dir", "EMPTY", "--dream-jump", "0"], "--dream-jump"),
    (["controller", "--run-dir", "EMPTY", "--memory", "tdvae", "--include-cell"], "--include-cell"),
    (["controller", "--run-dir", "EMPTY", "--memory", "tdvae", "--dream-jump", "2", "--where", "real"], "--where"),
    (["controller", "--run-dir", "RUN", "--memory", "tdvae"], "train.py tdvae"),
    (["tdvae", "--run-dir", "EMPTY"], "train.py vae"),
    (["tdvae", "--run-dir", "EMPTY", "--max-jump", "0"], "--max-jump"),
    (["tdvae", "--run-dir", "EMPTY", "--rollout", "-1"], "--rollout"),
    (["controller", "--run-dir", "RUN", "--curiosity", "icm"], "train.py icm"),
    (["controller", "--run-dir", "RUN", "--curiosity", "mdn"], "--done-critics"),
    (["controller", "--run-dir", "RUN", "--curiosity", "icm", "--curiosity-scale", "-1"], "--curiosity-scale"),
    (["icm", "--run-dir", "EMPTY"], "latent cache"),
    (["icm", "--run-dir", "EMPTY", "--beta", "2"], "--beta"),
    (["pipeline", "--run-dir", "MISSING", "--population", "3"], "--population"),
    (["pipeline", "--run-dir", "MISSING", "--episodes", "0"], "--episodes"),
    (["pipeline", "--run-dir", "MISSING", "--workers", "0"], "--workers"),
    (["pipeline", "--run-dir", "MISSING", "--collect-workers", "0"], "--collect-workers"),
    (["pipeline", "--run-dir", "MISSING", "--temperature", "0"], "--temperature"),
    (["pipeline", "--run-dir", "MISSING", "--exploration", "2"], "--exploration"),
    (["pipeline", "--run-dir", "MISSING", "--iterations", "0"], "--iterations"),
    (["pipeline", "--run-dir", "MISSING", "--probe-episodes", "-1"], "--probe-episodes"),
    (["pipeline", "--run-dir", "MISSING", "--restarts", "2", "--val-episodes", "0"], "--val-episodes"),
    (["pipeline", "--run-dir", "MISSING", "--curiosity", "nope"], "--curiosity"),
    (["pipeline", "--run-dir", "MISSING", "--curiosity", "mdn"], "--done-critics"),
    (["pipeline", "--run-dir", "MISSING", "--curiosity", "icm", "--curiosity-scale", "0"], "--curiosity-scale"),
    (["pipeline", "--run-dir", "MISSING", "--curiosity", "icm", "--memory", "tdvae", "--dream-jump", "2"],
     "--dream-jump"),
    (["pipeline", "--run-dir", "MISSING", "--mdn-keep-best", "nope"], "--mdn-keep-best"),
    (["pipeline", "--run-dir", "MISSING", "--memory", "nope"], "--memory"),
    (["pipeline", "--run-dir", "MISSING", "--dream-jump", "2"], "--memory tdvae"),
    (["pipeline", "--run-dir", "MISSING", "--memory", "tdvae", "--dream-jump", "5"], "--max-jump"),
    (["pipeline", "--run-dir", "MISSING", "--memory", "tdvae", "--done-critics", "1"], "--done-critics"),
    (["pipeline", "--run-dir", "MISSING", "--env", "Nope-v0"], "Nope-v0"),
    (["pipeline", "--run-dir", "MISSING", "--device", "tpu"], "tpu"),
    (["pipeline", "--run-dir", "FILE"], "--run-dir"),
    (["pipeline", "--run-dir", "MISSING", "--preset", "nope"], "nope"),
    (["export", "--run-dir", "MISSING", "--out", "MISSING"], "--run-dir"),
    (["export", "--run-dir", "RUN", "--out", "FILE"], "--out"),
]
BAD_EVAL = [
    (["--run-dir", "MISSING"], "--run-dir"),
    (["--run-dir", "FILE"], "--run-dir"),
    (["--run-dir", "EMPTY", "--episodes", "1"], "train.py vae"),
    (["--run-dir", "RUN", "--episodes", "0"], "--episodes"),
    (["--run-dir", "RUN", "--workers", "0"], "--workers"),
    (["--run-dir", "RUN", "--temperature", "0"], "--temperature"),
    (["--run-dir", "RUN", "--json", "DIR"], "--json"),
    (["--run-dir", "RUN", "--video", "FILE"], "--video"),
]


def _fill(argv: list[str], paths: dict, run_dir: Path) -> list[str]:
    named = {**paths, "RUN": str(run_dir), "DATA": str(run_dir.parent / "data")}
    return [named.get(arg, arg) for arg in argv]


@pytest.mark.parametrize(("argv", "needle"), BAD_TRAIN, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_TRAIN])
def test_bad_train_input_is_one_line_and_exit_2(capsys, paths, tiny_run, argv, needle):
    assert needle in one_line_error(capsys, train.main, _fill(argv, paths, tiny_run))
    assert not Path(paths["MISSING"]).exists()  # validated before anything was written


@pytest.mark.parametrize(("argv", "needle"), BAD_EVAL, ids=[" ".join(a[-2:]) for a, _ in BAD_EVAL])
def test_bad_eval_input_is_one_line_and_exit_2(capsys, paths, tiny_run, argv, needle):
    assert needle in one_line_error(capsys, eval_cli.main, _fill(argv, paths, tiny_run))


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:50])
    elif how == "garbage":
        path.write_bytes(b"\x00garbage" * 20)
    elif how == "empty":
        path.write_bytes(b"")


# (part whose file is damaged, command that loads it); each must name the damaged file
DAMAGED = [
    ("vae/train_state.safetensors", ["vae", "--data", "DATA", "--run-dir", "RUN", "--z-dim", "8", "--epochs", "2",
                                     "--batch-size", "32", "--no-progress"]),
    ("vae/model.safetensors", ["mdnrnn", "--run-dir", "RUN", "--hidden", "16", "--epochs", "2", "--seq-len", "20",
                               "--no-progress"]),
    ("mdnrnn/model.safetensors", ["controller", "--run-dir", "RUN", *TINY_CONTROLLER]),
    ("mdnrnn/train_state.safetensors", ["mdnrnn", "--run-dir", "RUN", "--hidden", "16", "--epochs", "2",
                                        "--seq-len", "20", "--no-progress"]),
    ("controller/model.safetensors", ["eval", "--run-dir", "RUN", "--episodes", "1"]),
    ("latents/latents.safetensors", ["controller", "--run-dir", "RUN", *TINY_CONTROLLER]),
    ("controller/model.safetensors", ["export", "--run-dir", "RUN", "--out", "OUT"]),
]


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    return run_dir


def _main_of(argv: list[str]):
    return (eval_cli.main, argv[1:]) if argv[0] == "eval" else (train.main, argv)


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize(("part", "argv"), DAMAGED, ids=[f"{p} {a[0]}" for p, a in DAMAGED])
def test_a_damaged_file_is_one_line_naming_it(capsys, tiny_run, tmp_path, part, argv, how):
    run_dir = _copy_run(tiny_run, tmp_path)
    damaged = run_dir / part
    assert damaged.exists(), part
    _damage(damaged, how)
    main, args = _main_of([{"RUN": str(run_dir), "DATA": str(tiny_run.parent / "data"),
                            "OUT": str(tmp_path / "out")}.get(a, a) for a in argv])
    assert damaged.name in one_line_error(capsys, main, args)


def test_a_foreign_checkpoint_is_one_line_naming_it(capsys, tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path)
    for suffix in (".safetensors", ".json"):  # V's weights where M's should be
        shutil.copy(run_dir / "vae" / f"model{suffix}", run_dir / "mdnrnn" / f"model{suffix}")
    error = one_line_error(capsys, train.main, ["controller", "--run-dir", str(run_dir), *TINY_CONTROLLER])
    assert "mdnrnn" in error and "model.safetensors" in error


def test_a_damaged_stages_file_is_one_line(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stages.json").write_text("{not json")
    argv = ["pipeline", "--preset", "doom-take-cover-tiny", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert "stages.json" in one_line_error(capsys, train.main, argv)


def test_every_finished_command_run_again_reports_it_and_changes_nothing(capsys, tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path)
    data = tiny_run.parent / "data"
    weights = {part: (run_dir / part / "model.safetensors").read_bytes() for part in ("vae", "mdnrnn", "controller")}
    commands = [
        ["collect", "--env", "VizdoomTakeCover-v1", "--episodes", "4", "--out", str(data), "--policy", "held",
         "--no-progress"],
        ["vae", "--data", str(data), "--run-dir", str(run_dir), "--z-dim", "8", "--epochs", "1", "--batch-size", "32",
         "--lr", "1e-3", "--no-progress"],
        ["mdnrnn", "--run-dir", str(run_dir), "--hidden", "16", "--epochs", "1", "--seq-len", "20", "--batch-size",
         "8", "--no-progress"],
        ["controller", "--run-dir", str(run_dir), "--algo", "cmaes", *TINY_CONTROLLER],
        ["export", "--run-dir", str(run_dir), "--out", str(tmp_path / "out")],
        ["export", "--run-dir", str(run_dir), "--out", str(tmp_path / "out")],
    ]
    for argv in commands:
        assert train.main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "collected 0 new episodes (4 in total)" in out
    assert out.count("has finished its 1 epochs: nothing to do") == 2  # V and M
    assert "has finished its 2 generations: nothing to do" in out  # C's CMA-ES
    for part, before in weights.items():
        assert (run_dir / part / "model.safetensors").read_bytes() == before, part
    assert eval_cli.main(["--run-dir", str(tmp_path / "out"), "--episodes", "1", "--json",
                          str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["episodes"] == 1
    assert eval_cli.main(["--run-dir", str(run_dir), "--episodes", "1", "--latent", "sample"]) == 0


def test_more_epochs_continue_a_finished_run(capsys, tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path)
    argv = ["mdnrnn", "--run-dir", str(run_dir), "--hidden", "16", "--epochs", "2", "--seq-len", "20",
            "--batch-size", "8", "--no-progress"]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "M trained" in out
    assert json.loads((run_dir / "mdnrnn" / "train_state.json").read_text())["epoch"] == 2
