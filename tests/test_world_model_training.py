"""Training loops of V and M on a small real TakeCover dataset: losses fall, runs resume exactly,
the latent cache is built once and rebuilt when V or the data change, bad runs stop cleanly."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import world_models.latents as latents_module
import world_models.train_mdnrnn as train_mdnrnn_module
from envs.collect import collect
from envs.errors import ConfigMismatchError, UserError
from world_models.data import LatentEpisodes
from world_models.latents import build_latent_cache
from world_models.runlog import read_metrics
from world_models.train_mdnrnn import MDNRNNConfig, epoch_chunks, late_episode_weights, make_batch, train_mdnrnn
from world_models.train_vae import VAEConfig, load_vae, train_vae, vae_dir
from world_models.training import DivergedError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # processes; the module fixture trains V

ENV = "VizdoomTakeCover-v1"
Z = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "takecover"
    collect(ENV, 5, out, workers=1, seed=0, policy="held", progress=False)
    return out


def vae_config(data: Path, run_dir: Path, **overrides) -> VAEConfig:
    settings = dict(data=data, run_dir=run_dir, z_dim=Z, epochs=1, batch_size=32, lr=1e-3, device="cpu",
                    progress=False, log_every=5)
    return VAEConfig(**(settings | overrides))


def mdn_config(run_dir: Path, **overrides) -> MDNRNNConfig:
    settings = dict(run_dir=run_dir, hidden=32, mixtures=3, seq_len=32, batch_size=8, epochs=2, device="cpu",
                    progress=False)
    return MDNRNNConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def trained_run(data, tmp_path_factory) -> Path:
    """A run dir with V trained for 2 epochs and M for 3 (shared by the read-only tests)."""
    run_dir = tmp_path_factory.mktemp("run")
    train_vae(vae_config(data, run_dir, epochs=2))
    train_mdnrnn(mdn_config(run_dir, epochs=3))
    return run_dir


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


# ---- V -------------------------------------------------------------------------------------------
def test_vae_loss_falls_and_the_run_dir_holds_metrics_and_images(trained_run: Path) -> None:
    steps = [r for r in read_metrics(trained_run, "vae") if "epoch" not in r]
    assert len(steps) >= 4
    assert steps[-1]["loss"] < 0.7 * steps[0]["loss"]
    for key in ("recon", "kl", "mean_mu", "mean_sigma", "frames_per_s"):
        assert key in steps[-1], key
    epochs = [r for r in read_metrics(trained_run, "vae") if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2] and all("val_loss" in r for r in epochs)
    assert all(r["val_moving_mse"] > 0 and 0 < r["val_moving_fraction"] < 1 for r in epochs)  # what moves
    images = sorted(p.name for p in (trained_run / "images").glob("*.png"))
    assert images == ["reconstruction_epoch001.png", "reconstruction_epoch002.png"]
    vae, config = load_vae(trained_run)
    assert vae.z_dim == Z and config["env_id"] == ENV


def test_vae_resumed_run_equals_uninterrupted(data: Path, tmp_path: Path) -> None:
    few = tmp_path / "data"  # two episodes: resumption, not learning, is under test
    few.mkdir()
    for path in [data / "metadata.json", *sorted(data.glob("ep_*"))[:2]]:
        shutil.copy(path, few / path.name)
    train_vae(vae_config(few, tmp_path / "whole", epochs=2, val_fraction=0.5))
    train_vae(vae_config(few, tmp_path / "resumed", epochs=1, val_fraction=0.5))
    train_vae(vae_config(few, tmp_path / "resumed", epochs=2, val_fraction=0.5))
    assert_same_weights(vae_dir(tmp_path / "whole"), vae_dir(tmp_path / "resumed"))


def test_vae_with_another_latent_size_is_a_config_mismatch(data: Path, tmp_path: Path) -> None:
    train_vae(vae_config(data, tmp_path))
    with pytest.raises(ConfigMismatchError, match="z_dim"):
        train_vae(vae_config(data, tmp_path, z_dim=Z * 2, epochs=2))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data: Path, tmp_path: Path, monkeypatch) -> None:
    train_vae(vae_config(data, tmp_path))
    good = (vae_dir(tmp_path) / "model.safetensors").read_bytes()
    from world_models.vae import ConvVAE

    original = ConvVAE.loss

    def nan_loss(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        return terms | {"loss": terms["loss"] * float("nan")}

    monkeypatch.setattr(ConvVAE, "loss", nan_loss)
    with pytest.raises(DivergedError) as error:
        train_vae(vae_config(data, tmp_path, epochs=2))
    assert "\n" not in str(error.value) and "nan" in str(error.value)
    assert (vae_dir(tmp_path) / "model.safetensors").read_bytes() == good


# ---- latent cache ----------------------------------------------------------------------------------
def test_latent_cache_is_built_once_and_reencodes_only_what_v_or_the_data_changed(
        data: Path, tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    local_data = tmp_path / "data"
    shutil.copytree(data, local_data)
    train_vae(vae_config(local_data, run_dir))
    vae, _ = load_vae(run_dir)
    encoded = []  # one entry per episode V encodes
    real_encode = latents_module._encode_episode
    monkeypatch.setattr(latents_module, "_encode_episode", lambda *a: encoded.append(1) or real_encode(*a))
    weights_path = vae_dir(run_dir) / "model.safetensors"

    first, num_train = build_latent_cache(run_dir, local_data, vae, weights_path, progress=False)
    again, _ = build_latent_cache(run_dir, local_data, vae, weights_path, progress=False)
    assert len(encoded) == 5
    torch.testing.assert_close(first.mu, again.mu)
    assert first.num_episodes == 5 and 0 < num_train < 5
    assert len(first.mu) == int(first.lengths().sum()) + first.num_episodes  # T+1 frames per episode

    episode = sorted(local_data.glob("ep_*"))[0]
    os.utime(episode, ns=(episode.stat().st_atime_ns, episode.stat().st_mtime_ns + 10**9))  # data changes
    build_latent_cache(run_dir, local_data, vae, weights_path, progress=False)
    assert len(encoded) == 6  # that episode only

    train_vae(vae_config(local_data, run_dir, epochs=2))  # V changes: everything again
    build_latent_cache(run_dir, local_data, vae, weights_path, progress=False)
    assert len(encoded) == 11


def test_a_grown_dataset_encodes_only_its_new_episodes_and_equals_a_fresh_cache(data: Path, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    episodes = sorted(data.glob("ep_*"))
    local_data = tmp_path / "data"
    local_data.mkdir()
    for path in [*data.glob("*.json"), *episodes[:3]]:
        shutil.copy2(path, local_data)
    train_vae(vae_config(local_data, tmp_path / "run"))
    vae, _ = load_vae(tmp_path / "run")
    weights_path = vae_dir(tmp_path / "run") / "model.safetensors"
    build_latent_cache(tmp_path / "run", local_data, vae, weights_path, progress=False)
    key_path = tmp_path / "run" / "latents" / "latents.json"  # as a cache written before per-episode stamps
    old_key = {k: v for k, v in json.loads(key_path.read_text()).items() if k != "episode_stamps"}
    key_path.write_text(json.dumps(old_key))
    for path in episodes[3:]:  # a later round adds episodes
        shutil.copy2(path, local_data)
    encoded = []
    real_encode = latents_module._encode_episode
    monkeypatch.setattr(latents_module, "_encode_episode", lambda *a: encoded.append(1) or real_encode(*a))
    grown, num_train = build_latent_cache(tmp_path / "run", local_data, vae, weights_path, progress=False)
    assert len(encoded) == len(episodes) - 3
    fresh, fresh_train = build_latent_cache(tmp_path / "fresh", local_data, vae, weights_path, progress=False)
    assert num_train == fresh_train and grown.num_episodes == len(episodes)
    for name, tensor in fresh.tensors().items():
        assert torch.equal(getattr(grown, name), tensor), name


# ---- M ---------------------------------------------------------------------------------------------
def test_mdnrnn_validation_nll_falls_below_an_untrained_models(trained_run: Path) -> None:
    records = read_metrics(trained_run, "mdnrnn")
    untrained = next(r for r in records if r.get("epoch") == 0)
    final = [r for r in records if r.get("epoch") == 3][-1]
    assert final["val_nll"] < untrained["val_nll"] - 0.05  # per latent dimension
    for key in ("nll", "reward_loss", "done_loss", "done_accuracy", "done_precision", "val_nll", "steps_per_s"):
        assert key in final, key
    # the dream's sampled deaths undo the weight the done loss gave them (agents.train_controller.dream_config)
    assert json.loads((trained_run / "mdnrnn" / "model.json").read_text())["done_weight"] == 10.0


@pytest.mark.parametrize("keep_best", ["", "val_done_loss"])
def test_mdnrnn_resumed_run_equals_uninterrupted(trained_run: Path, tmp_path: Path, keep_best: str) -> None:
    for name in ("whole", "resumed"):
        shutil.copytree(vae_dir(trained_run), vae_dir(tmp_path / name))
    train_mdnrnn(mdn_config(tmp_path / "whole", data=None, epochs=2, keep_best=keep_best))
    train_mdnrnn(mdn_config(tmp_path / "resumed", epochs=1, keep_best=keep_best))
    train_mdnrnn(mdn_config(tmp_path / "resumed", epochs=2, keep_best=keep_best))
    assert_same_weights(tmp_path / "whole" / "mdnrnn", tmp_path / "resumed" / "mdnrnn")


def test_mdnrnn_keeps_its_best_held_out_epoch_and_stops_when_it_stalls(
        trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Scripted held-out done losses: best at epoch 2, none better for 2 epochs -> stop at 4, keep 2;
    the next call (a later pipeline round) searches afresh from the kept weights."""
    shutil.copytree(vae_dir(trained_run), vae_dir(tmp_path))
    scripted = iter([1.0, 0.5, 0.3, 0.4, 0.45, 0.9, 0.7])  # epoch 0 (untrained), 1, 2, ...
    snapshots = []  # the weights held out at epoch 0, 1, 2, ...

    def held_out(model, *_):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"val_nll": 1.0, "val_done_loss": next(scripted)}

    monkeypatch.setattr(train_mdnrnn_module, "evaluate_mdnrnn", held_out)
    config = mdn_config(tmp_path, keep_best="val_done_loss", patience=2)
    metrics = train_mdnrnn(replace(config, epochs=6))
    assert (metrics["epoch"], metrics["last_epoch"]) == (2, 4)  # epochs 5, 6 never ran
    assert len(snapshots) == 1 + 4
    kept = weights(tmp_path / "mdnrnn")
    for key, value in snapshots[2].items():
        torch.testing.assert_close(kept[key], value, rtol=0, atol=0, msg=key)
    assert not torch.equal(kept["done_head.weight"], snapshots[4]["done_head.weight"])
    before = (trained_dir := Path(config.run_dir) / "mdnrnn" / "model.safetensors").read_bytes()
    assert train_mdnrnn(replace(config, epochs=6)) == metrics  # finished: a rerun reports, trains nothing
    assert trained_dir.read_bytes() == before
    metrics = train_mdnrnn(replace(config, epochs=8))  # a new search, even though 0.9 > 0.3
    assert (metrics["epoch"], metrics["last_epoch"]) == (8, 8)
    with pytest.raises(UserError, match="held-out loss"):
        train_mdnrnn(replace(config, epochs=9, keep_best="done_accuracy"))


def test_mdnrnn_with_another_hidden_size_is_a_config_mismatch(trained_run: Path, tmp_path: Path) -> None:
    shutil.copytree(trained_run, tmp_path / "run")
    with pytest.raises(ConfigMismatchError, match="hidden"):
        train_mdnrnn(mdn_config(tmp_path / "run", hidden=16, epochs=4))


def toy_latents(lengths: list[int], z: int = 2) -> LatentEpisodes:
    parts = {"mu": [], "log_sigma": [], "actions": [], "rewards": [], "terminated": []}
    for e, length in enumerate(lengths):
        frames = torch.arange(length + 1, dtype=torch.float32)[:, None].repeat(1, z) + 1000 * e
        parts["mu"].append(frames)
        parts["log_sigma"].append(torch.full_like(frames, -30.0))  # z == mu
        parts["actions"].append(torch.arange(length) + 1000 * e)
        parts["rewards"].append(torch.zeros(length))
        parts["terminated"].append(torch.arange(length) == length - 1)
    return LatentEpisodes.from_parts(parts, lengths)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_epoch_chunks_cover_every_step_exactly_once(seed: int) -> None:
    lengths, seq_len = [5, 40, 17, 64], 16
    latents = toy_latents(lengths)
    chunks = epoch_chunks(latents, seq_len, torch.Generator().manual_seed(seed))
    assert int(chunks[:, 2].max()) <= seq_len and int(chunks[:, 2].min()) >= 1
    for episode, length in enumerate(lengths):
        rows = chunks[chunks[:, 0] == episode]
        covered = sorted(t for _, start, n in rows.tolist() for t in range(start, start + n))
        assert covered == list(range(length))


@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_epoch_draws_late_episodes_more_often_at_the_same_cost(seed: int) -> None:
    lengths, seq_len = [50, 40, 17, 64, 30], 16
    latents = toy_latents(lengths)
    plain = epoch_chunks(latents, seq_len, torch.Generator().manual_seed(seed))
    config = MDNRNNConfig(run_dir=Path("unused"), late_from_seed=104, late_weight=3)
    weights = late_episode_weights([100, 101, 102, 103, 104], config)
    assert weights.tolist() == [1, 1, 1, 1, 3]
    chunks = epoch_chunks(latents, seq_len, torch.Generator().manual_seed(seed), weights)
    assert len(chunks) == len(plain)
    rows = chunks[chunks[:, 0] == 4]  # every step of the late episode exactly three times
    covered = sorted(t for _, start, n in rows.tolist() for t in range(start, start + n))
    assert covered == sorted(list(range(lengths[4])) * 3)
    early = chunks[chunks[:, 0] < 4]
    assert len({tuple(row) for row in early.tolist()}) == len(early)  # left out, never repeated
    assert late_episode_weights([100, 104], MDNRNNConfig(run_dir=Path("unused"))) is None


def test_make_batch_pairs_each_step_with_its_next_frame_and_masks_padding() -> None:
    latents = toy_latents([5, 40])
    chunks = torch.tensor([[0, 0, 5], [1, 10, 16]])
    batch = make_batch(latents, chunks, 16, torch.Generator().manual_seed(0))
    assert batch.mask.sum(1).tolist() == [5, 16]
    torch.testing.assert_close(batch.z[0, :5, 0], torch.arange(5.0))
    torch.testing.assert_close(batch.z_next[0, :5, 0], torch.arange(1.0, 6.0))
    torch.testing.assert_close(batch.z[1, :, 0], torch.arange(10.0, 26.0) + 1000)
    assert batch.actions[1].tolist() == list(range(1010, 1026))
    assert batch.terminated[0, 4] == 1 and batch.terminated[0, :4].sum() == 0
    assert torch.isfinite(batch.z).all() and torch.isfinite(batch.z_next).all()
