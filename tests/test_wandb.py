"""W&B: a pipeline is one offline run, read back from disk (scalars, images, tables, videos), that
a rerun resumes; names are deterministic; with W&B disabled nothing imports wandb."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from world_models.runlog import wandb_identity

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args) -> subprocess.CompletedProcess:
    """``eval.py`` as the real command: W&B's offline files are what a user's run writes."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result

BLOCK, HEADER = 32 * 1024, 7  # a .wandb file is a LevelDB-style log of protobuf records
FULL, LAST = 1, 4


def wandb_records(path: Path):
    """The ``wandb_internal_pb2.Record``s of a ``.wandb`` file (7-byte file header, then 32 KiB
    blocks of chunks: crc32 (4 bytes), length (2), type (1: full, 2: first, 3: middle, 4: last))."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if left < HEADER or (length == 0 and kind == 0):  # the rest of a block is padding
            position += left
            continue
        pending += data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_offline_run(directory: Path) -> dict:
    """Run id, config, and every history / summary key (``a/b/c`` for nested values) of one offline run."""
    (path,) = directory.glob("run-*.wandb")
    run = {"id": None, "config": {}, "history": set(), "summary": {}}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"] = record.run.run_id
            run["config"] |= {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "config":  # run.config.update() after init
            run["config"] |= {item.key: json.loads(item.value_json) for item in record.config.update}
        elif kind == "history":
            run["history"] |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "summary":
            run["summary"] |= {item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update}
    return run


def test_wandb_names_are_deterministic(tmp_path, monkeypatch):
    name, run_id = wandb_identity(tmp_path / "a" / "tc v1")
    assert (name, run_id) == wandb_identity(tmp_path / "a" / "tc v1")  # a rerun resumes the same run
    monkeypatch.chdir(tmp_path)
    assert wandb_identity(Path("a/tc v1")) == (name, run_id)  # relative or absolute: one directory
    other_name, other_id = wandb_identity(tmp_path / "b" / "tc v1")
    assert other_name == name == "tc v1" and other_id != run_id  # same name elsewhere: another run
    assert run_id.startswith("tc_v1-") and all(c.isalnum() or c in "-_" for c in run_id)
    stage_name, stage_id = wandb_identity(tmp_path / "a" / "tc v1", "vae")
    assert stage_name == "tc v1-vae" and stage_id not in (run_id, other_id)
    assert len(wandb_identity(tmp_path / ("x" * 200))[1]) <= 48 + 9


def test_disabled_wandb_imports_nothing(tmp_path):
    code = ("import sys; from world_models.runlog import RunLogger, pipeline_wandb; import agents.pipeline, eval;"
            f"logger = RunLogger({str(tmp_path)!r}, {{}}, 'vae'); logger.log({{'loss': 1.0}}, 1); logger.close();"
            f"ctx = pipeline_wandb({str(tmp_path)!r}, 'disabled', {{}}); assert ctx.__enter__() is None;"
            "assert 'wandb' not in sys.modules, 'wandb imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.0


def test_a_standalone_stage_is_a_run_of_its_own(tmp_path):
    code = ("from world_models.runlog import RunLogger; import numpy as np;"
            f"logger = RunLogger({str(tmp_path)!r}, {{'lr': 0.1}}, 'vae', 'offline');"
            "logger.log({'loss': 1.0}, 5); logger.image('reconstruction_epoch001', np.zeros((8, 8, 3), np.uint8), 5);"
            "logger.close()")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    logged = read_offline_run(offline)
    assert logged["id"] == wandb_identity(tmp_path, "vae")[1] and logged["config"] == {"lr": 0.1, "_wandb": {}}
    assert {"vae/loss", "vae/step", "vae/reconstruction/_type"} <= logged["history"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["step"] == 5  # the run dir's log as before


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pipeline_is_one_offline_wandb_run_that_a_rerun_resumes(two_rounds):
    run_dir, first, second = two_rounds  # conftest's shared pipeline, run with --wandb-mode offline
    assert "wandb:" not in first.stdout + first.stderr  # silent
    for name in ("real_episode.mp4", "dream_episode.mp4"):  # written with W&B on or off
        assert (run_dir / "videos" / name).stat().st_size > 1000
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))[0]  # the first invocation's (time-stamped)
    logged = read_offline_run(offline)
    _, expected_id = wandb_identity(run_dir)
    assert logged["id"] == expected_id
    assert logged["config"]["preset"] == "doom-take-cover-tiny" and logged["config"]["episodes"] == 4
    assert "config_vae" in logged["config"] and "config_controller_cmaes_dream" in logged["config"]
    keys = logged["history"]
    for key in ("vae/loss", "vae/step", "mdnrnn/val_nll", "mdnrnn/step", "controller_cmaes_dream/best",
                "controller_cmaes_dream/step", "validate/mean", "validate/step"):
        assert key in keys, key
    for key, kind in (("vae/reconstruction", "image-file"), ("report/learning_curve", "image-file"),
                      ("videos/real_episode", "video-file"), ("videos/dream_episode", "video-file"),
                      ("evaluate/episodes", "table-file"), ("validate/episodes", "table-file")):
        assert json.loads(logged["summary"][f"{key}/_type"]) == kind, key
    assert json.loads(logged["summary"]["evaluate/real_episodes"]) == 2
    for key in ("evaluate/real_mean", "evaluate/real_std", "evaluate/dream_score", "evaluate/real_frames_used",
                "evaluate/seconds_total", "seconds/videos"):
        assert key in logged["summary"], key
    media = offline / "files" / "media"
    assert list(media.glob("images/**/*.png")) and len(list(media.glob("videos/**/*.mp4"))) == 2
    (table,) = media.glob("table/evaluate/episodes_*.table.json")
    episodes = json.loads(table.read_text())
    assert episodes["columns"] == ["seed", "return", "length"] and [row[0] for row in episodes["data"]] == [
        1_000_000, 1_000_001]

    assert "[videos] already done" in second.stdout  # every stage skipped: the same run, resumed
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {read_offline_run(directory)["id"] for directory in runs} == {expected_id}

    ok(run("eval.py", "--run-dir", run_dir, "--episodes", 1, "--wandb-mode", "offline"))
    (evaluation,) = set((run_dir / "wandb").glob("offline-run-*")) - set(runs)  # a run of its own
    logged = read_offline_run(evaluation)
    assert logged["id"] != expected_id and "eval/mean" in logged["summary"]
    assert json.loads(logged["summary"]["eval/episodes/_type"]) == "table-file"
