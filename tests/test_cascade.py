"""Cascaded classification: threshold fitting with known answers, honest cost accounting,
persistence in the manifest, the CLI, and one-line errors."""

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import needs_torch
from mrl_deploy.cascade import (
    Cascade,
    accuracy,
    calibrate_artifact,
    classify_artifact,
    fit_cascade,
    predict_with_confidence,
)
from mrl_deploy.cascade.fit import _Problem, _fit_greedy, _fit_search
from mrl_deploy.errors import DataError, InputError, MRLDeployError

CLI = [sys.executable, "-m", "mrl_deploy.cli"]
C = 4
PLAIN = {"safety": 0.0, "count_gains": True}   # the plain constraint: calibration accuracy only


def logits_from_probs(top: float, label: int, classes: int = C, wrong: bool = False) -> np.ndarray:
    """A logit row whose softmax has max probability `top` on `label` (or on another class)."""
    winner = (label + 1) % classes if wrong else label
    probs = np.full(classes, (1 - top) / (classes - 1))
    probs[winner] = top
    return np.log(probs)


def grouped_logits(groups, dims=(8, 16, 64)):
    """groups: list of (count, [(top, wrong) per dim]). Returns ({dim: N x C}, labels)."""
    rows = {d: [] for d in dims}
    labels = []
    for count, per_dim in groups:
        for i in range(count):
            label = i % C
            labels.append(label)
            for d, (top, wrong) in zip(dims, per_dim):
                rows[d].append(logits_from_probs(top, label, wrong=wrong))
    return {d: np.array(r) for d, r in rows.items()}, np.array(labels)


# --- the cascade itself: cost accounting --------------------------------------------------------
def test_cost_accounting_is_honest():
    logits, labels = grouped_logits([
        (3, [(0.97, False), (0.9, False), (0.9, False)]),   # stops at 8
        (2, [(0.50, True), (0.95, False), (0.9, False)]),   # stops at 16
        (5, [(0.40, True), (0.60, True), (0.9, False)]),    # goes to 64
    ])
    cascade = Cascade([8, 16, 64], [0.9, 0.8])
    result = cascade.run(logits)
    assert result.stop_dims.tolist() == [8] * 3 + [16] * 2 + [64] * 5
    assert result.honest_dims.tolist() == [8] * 3 + [24] * 2 + [88] * 5
    assert result.expected_dims == pytest.approx((3 * 8 + 2 * 16 + 5 * 64) / 10)
    assert result.expected_honest_dims == pytest.approx((3 * 8 + 2 * 24 + 5 * 88) / 10)
    assert result.head_flops() == pytest.approx(2 * C * result.expected_honest_dims)
    assert result.head_flops({8: 1, 16: 10, 64: 100}) == pytest.approx((3 * 1 + 2 * 11 + 5 * 111) / 10)
    assert result.histogram() == {8: 0.3, 16: 0.2, 64: 0.5}
    assert accuracy(result.predictions, labels) == 100.0
    np.testing.assert_allclose(result.confidences, [0.97] * 3 + [0.95] * 2 + [0.9] * 5)
    summary = result.summary(labels)
    assert summary["accuracy"] == 100.0 and summary["stop_histogram"] == {"8": 0.3, "16": 0.2, "64": 0.5}


def test_single_head_and_threshold_edges():
    logits, labels = grouped_logits([(4, [(0.6, False), (0.6, False), (0.6, False)])])
    fixed = Cascade([16]).run(logits)
    assert fixed.stop_dims.tolist() == [16] * 4 and fixed.expected_honest_dims == 16
    never = Cascade([8, 64], [None]).run(logits)           # null = never stop at 8
    assert never.stop_dims.tolist() == [64] * 4 and never.expected_honest_dims == 72
    always = Cascade([8, 64], [0.0]).run(logits)
    assert always.stop_dims.tolist() == [8] * 4
    # a threshold equal to the confidence stops (>=)
    assert Cascade([8, 64], [0.6 - 1e-9]).run(logits).stop_dims.tolist() == [8] * 4
    assert Cascade([8, 64], [0.6 + 1e-9]).run(logits).stop_dims.tolist() == [64] * 4


def test_margin_confidence():
    row = np.log(np.array([[0.6, 0.3, 0.1]]))
    pred, conf = predict_with_confidence(row, "margin")
    assert pred.tolist() == [0] and conf[0] == pytest.approx(0.3)
    pred, conf = predict_with_confidence(row, "softmax")
    assert conf[0] == pytest.approx(0.6)
    big = np.array([[1000.0, 0.0, -1000.0]])  # stable softmax: no overflow
    assert predict_with_confidence(big)[1][0] == pytest.approx(1.0)


@pytest.mark.parametrize("n", [1, 10_000])
def test_batches_of_one_and_ten_thousand(n):
    rng = np.random.default_rng(0)
    logits = {d: rng.standard_normal((n, 10)).astype(np.float32) for d in (8, 16, 32)}
    result = Cascade([8, 16, 32], [0.3, 0.25]).run(logits)
    assert result.predictions.shape == (n,) and result.stop_dims.shape == (n,)
    # the vectorised run equals a per-sample loop
    for i in range(min(n, 200)):
        for step, d in enumerate([8, 16, 32]):
            probs = np.exp(logits[d][i] - logits[d][i].max())
            probs /= probs.sum()
            if step == 2 or probs.max() >= [0.3, 0.25][step]:
                assert result.stop_dims[i] == d and result.predictions[i] == probs.argmax()
                break


# --- fitting: known answers ---------------------------------------------------------------------
def test_search_finds_the_known_optimum():
    # 60 easy (8 is confident and right), 30 medium (16 is), 10 hard (only 64 is right)
    logits, labels = grouped_logits([
        (60, [(0.97, False), (0.97, False), (0.9, False)]),
        (30, [(0.40, True), (0.95, False), (0.9, False)]),
        (10, [(0.35, True), (0.50, True), (0.9, False)]),
    ])
    fit = fit_cascade(logits, labels, max_drop=0.0, **PLAIN)
    assert fit.feasible and fit.cascade.dims == [8, 16, 64]
    assert 0.40 < fit.cascade.thresholds[0] <= 0.97 and 0.50 < fit.cascade.thresholds[1] <= 0.95
    assert fit.calibration["accuracy"] == 100.0
    assert fit.calibration["expected_honest_dims"] == pytest.approx((60 * 8 + 30 * 24 + 10 * 88) / 100)
    assert fit.calibration["expected_dims"] == pytest.approx((60 * 8 + 30 * 16 + 10 * 64) / 100)


def test_search_skips_a_head_that_does_not_pay_and_beats_the_paper_greedy():
    # 16 rescues only 2 samples: computing it for all 40 that reach it costs more than it saves
    logits, labels = grouped_logits([
        (60, [(0.97, False), (0.97, False), (0.9, False)]),
        (2, [(0.40, True), (0.95, False), (0.9, False)]),
        (38, [(0.35, True), (0.50, True), (0.9, False)]),
    ])
    fit = fit_cascade(logits, labels, max_drop=0.0, **PLAIN)
    assert fit.cascade.dims == [8, 64]
    assert fit.calibration["expected_honest_dims"] == pytest.approx((60 * 8 + 40 * 72) / 100)
    greedy = fit_cascade(logits, labels, max_drop=0.0, method="greedy", **PLAIN)
    assert greedy.cascade.dims == [8, 16, 64] and greedy.feasible
    assert greedy.calibration["expected_honest_dims"] > fit.calibration["expected_honest_dims"]


def test_max_drop_allows_a_cheaper_cascade():
    logits, labels = grouped_logits([
        (60, [(0.97, False), (0.97, False), (0.9, False)]),
        (30, [(0.40, True), (0.95, False), (0.9, False)]),
        (10, [(0.35, True), (0.50, True), (0.9, False)]),
    ])
    fit = fit_cascade(logits, labels, max_drop=10.0, **PLAIN)   # may lose the 10 hard ones
    assert fit.cascade.dims == [8, 16] and fit.calibration["accuracy"] == 90.0
    assert fit.calibration["expected_honest_dims"] == pytest.approx((60 * 8 + 40 * 24) / 100)
    assert fit.calibration["target_accuracy"] == 90.0


def test_safety_margin_refuses_a_trade_of_one_loss_for_one_gain():
    # stopping the confident ones at 8 loses one sample the full head gets and wins one it misses:
    # equal accuracy on calibration, but a coin flip on new data
    groups = [
        (50, [(0.97, False), (0.9, False)]),
        (1, [(0.97, True), (0.9, False)]),
        (1, [(0.97, False), (0.9, True)]),
        (8, [(0.40, True), (0.9, False)]),
    ]
    logits, labels = grouped_logits(groups, dims=(8, 64))
    assert fit_cascade(logits, labels, max_drop=0.0, **PLAIN).cascade.dims == [8, 64]
    strict = fit_cascade(logits, labels, max_drop=0.0, safety=1.0, count_gains=True)
    assert strict.cascade.dims == [64] and strict.feasible
    # a budget of 3 points (1.8 samples) covers one standard deviation (sqrt 2 samples)
    assert fit_cascade(logits, labels, max_drop=3.0, safety=1.0, count_gains=True).cascade.dims == [8, 64]
    # not counting the gain: the loss alone (1 sample, 1.7 points) must fit the budget
    assert fit_cascade(logits, labels, max_drop=1.0, safety=0.0).cascade.dims == [64]
    assert fit_cascade(logits, labels, max_drop=2.0, safety=0.0).cascade.dims == [8, 64]
    # the defaults: losses only, two standard deviations (1 + 2 sqrt 2 samples = 6.4 points)
    assert fit_cascade(logits, labels, max_drop=6.3).cascade.dims == [64]
    assert fit_cascade(logits, labels, max_drop=6.5).cascade.dims == [8, 64]
    with pytest.raises(InputError, match="safety"):
        fit_cascade(logits, labels, safety=-1)


def random_problem(seed, n=20, dims=(8, 16, 32, 64)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    logits = {}
    for i, d in enumerate(dims):
        x = rng.standard_normal((n, C))
        x[np.arange(n), labels] += (0.5 + 0.6 * i) * rng.uniform(0, 2.5, n)
        logits[d] = x
    return logits, labels


def test_search_equals_exhaustive_search_on_small_problems():
    for seed, drop in itertools.product(range(6), (0.0, 5.0)):
        logits, labels = random_problem(seed)
        dims = sorted(logits)
        problem = _Problem.build([logits[d] for d in dims], labels, dims, "softmax")
        target = problem.target_correct(drop)
        grids = []
        for step in range(problem.steps - 1):
            values = np.unique(problem.confidences[step])
            grids.append(np.r_[math.inf, -math.inf, (values[1:] + values[:-1]) / 2])
        best = min((c, -k) for combo in itertools.product(*grids)
                   for c, k in [problem.evaluate(np.r_[combo, -math.inf])] if k >= target)
        cost, correct = problem.evaluate(_fit_search(problem, target))
        assert correct >= target
        assert cost == best[0], (seed, drop)
        assert cost <= problem.evaluate(_fit_greedy(problem, target))[0] or \
            problem.evaluate(_fit_greedy(problem, target))[1] < target


def test_greedy_is_the_papers_pairwise_grid_search():
    logits, labels = random_problem(3, n=200)
    dims = sorted(logits)
    problem = _Problem.build([logits[d] for d in dims], labels, dims, "softmax")
    thresholds = _fit_greedy(problem, target=0)    # target 0: no cap needed beyond the first
    grid = np.linspace(0.1, 1, 100)
    conf, correct = problem.confidences, problem.correct
    pair = [(np.where(conf[0] >= t, correct[0], correct[1])).sum() for t in grid]
    assert thresholds[0] == -math.inf     # the cap at 8 already meets target 0
    full = _fit_greedy(problem, target=int(correct[-1].sum()) + 10**6)   # unreachable: no cap
    assert full[0] == grid[int(np.argmax(pair))]


def test_fit_rejects_bad_input():
    logits, labels = random_problem(0)
    with pytest.raises(DataError, match="labels must lie in 0..3"):
        fit_cascade(logits, np.full_like(labels, 7))
    with pytest.raises(DataError, match="labels for"):
        fit_cascade(logits, labels[:-1])
    with pytest.raises(InputError, match="one shape"):
        fit_cascade({8: logits[8], 16: logits[16][:, :2]}, labels)
    with pytest.raises(InputError, match="NaN"):
        fit_cascade({8: np.full((20, C), np.nan), 16: logits[16]}, labels)
    with pytest.raises(InputError, match="max-drop"):
        fit_cascade(logits, labels, max_drop=-1)
    with pytest.raises(InputError, match="unknown confidence"):
        Cascade([8, 16], [0.5], confidence="entropy")
    with pytest.raises(InputError, match="strictly increasing"):
        Cascade([16, 8], [0.5])
    with pytest.raises(InputError, match="no logits for dims"):
        Cascade([8, 128], [0.5]).run(logits)


def test_json_round_trip():
    cascade = Cascade([8, 16, 64], [0.93, None], "margin", {"method": "search"})
    data = json.loads(json.dumps(cascade.to_json()))
    assert data["thresholds"] == [0.93, None]
    again = Cascade.from_json(data)
    assert again.dims == [8, 16, 64] and again.thresholds == [0.93, math.inf] and again.confidence == "margin"
    assert again.summary == {"method": "search"}
    with pytest.raises(MRLDeployError, match="calibrate"):
        Cascade.from_manifest({"cascade": None})


# --- artifacts and the CLI ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny factory MRL model (heads at 4, 8, 16, 32) exported with every head, plus data
    labelled by its own full-dim head so the full head is right and smaller ones partly agree."""
    pytest.importorskip("torch")
    from mrl_deploy import export

    root = tmp_path_factory.mktemp("cascade")
    artifact = export("factories:tiny_mrl", dims=[4, 8, 16, 32], output=root / "tiny", input_shape="20",
                      nesting_dims=[4, 8, 16, 32])
    x = np.random.default_rng(0).standard_normal((600, 20)).astype(np.float32)
    labels = artifact.logits(x, dim=32).argmax(axis=1)
    np.save(root / "x.npy", x)
    np.savez(root / "labelled.npz", x=x, y=labels)
    return {"root": root, "dir": root / "tiny", "x": x, "y": labels}


def run_cli(*args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=120)


@needs_torch
def test_calibrate_artifact_saves_thresholds_that_survive_load(tiny, tmp_path):
    import shutil

    from mrl_deploy.artifact import Artifact

    directory = tmp_path / "a"
    shutil.copytree(tiny["dir"], directory)
    x, y = tiny["x"][:300], tiny["y"][:300]
    saved = calibrate_artifact(directory, x, y, max_drop=2.0, data={"name": "synthetic"})
    artifact = Artifact.load(directory)           # checksums still verify: mrl.json is not hashed
    cascade = Cascade.from_manifest(artifact.manifest)
    assert cascade.dims == saved["dims"] and cascade.thresholds == [
        math.inf if t is None else t for t in saved["thresholds"]]
    assert set(saved["methods"]) == {"search", "greedy"}
    assert saved["calibration"]["accuracy"] >= saved["calibration"]["full_accuracy"] - 2.0
    assert saved["methods"]["search"]["expected_honest_dims"] <= saved["methods"]["greedy"]["expected_honest_dims"] \
        or not saved["methods"]["greedy"]["feasible"]
    # the saved cascade reproduces the calibration numbers through the artifact
    out = classify_artifact(artifact, x, y, cascade=cascade)
    assert out["report"]["accuracy"] == pytest.approx(saved["calibration"]["accuracy"])
    assert out["report"]["expected_honest_dims"] == pytest.approx(saved["calibration"]["expected_honest_dims"])
    assert out["report"]["encoder_flops_per_sample"] == artifact.manifest["flops"]["encoder"]
    fixed = classify_artifact(artifact, x, y, dim=32)["report"]
    assert fixed["accuracy"] == 100.0 and fixed["expected_honest_dims"] == 32 and fixed["mode"] == "fixed"


@needs_torch
def test_cli_classify_unlabelled_and_errors(tiny, tmp_path):
    import shutil

    directory = tmp_path / "a"
    shutil.copytree(tiny["dir"], directory)
    result = run_cli("classify", directory, tiny["root"] / "x.npy", "--dim", "8", "--json", "-o", tmp_path / "p.jsonl")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 600 and "accuracy" not in report and report["expected_dims"] == 8
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert len(lines) == 600 and json.loads(lines[0])["stop_dim"] == 8
    # --cascade before calibrate: says to calibrate
    result = run_cli("classify", directory, tiny["root"] / "x.npy", "--cascade")
    assert result.returncode == 2 and "calibrate" in result.stderr and "Traceback" not in result.stderr
    # data of the wrong shape
    np.save(tmp_path / "bad.npy", np.zeros((5, 7), dtype=np.float32))
    result = run_cli("classify", directory, tmp_path / "bad.npy", "--dim", "8")
    assert result.returncode == 2 and "shape" in result.stderr and "Traceback" not in result.stderr
    # a head that does not exist
    result = run_cli("classify", directory, tiny["root"] / "x.npy", "--dim", "12")
    assert result.returncode == 2 and "no head at dim 12" in result.stderr


@needs_torch
def test_cli_calibrate_and_classify_use_other_files_whole(tiny, tmp_path):
    """The issue's scenario: two separate labelled files of 500 samples. They are not the
    model's training data (a factory model records none), so calibrate uses all 500 of one and
    classify all 500 of the other, and both say so."""
    import shutil

    directory = tmp_path / "a"
    shutil.copytree(tiny["dir"], directory)
    x = np.random.default_rng(1).standard_normal((1000, 20)).astype(np.float32)
    from mrl_deploy.artifact import Artifact

    y = Artifact.load(directory).logits(x, dim=32).argmax(axis=1)
    np.savez(tmp_path / "cal.npz", x=x[:500], y=y[:500])
    np.savez(tmp_path / "test.npz", x=x[500:], y=y[500:])
    result = run_cli("calibrate", directory, tmp_path / "cal.npz", "--max-drop", "1", "--json")
    assert result.returncode == 0, result.stderr
    saved = json.loads(result.stdout)
    assert saved["data"]["samples"] == 500 and saved["data"]["split"] == "all"
    assert saved["data"]["description"].startswith(f"all of {tmp_path / 'cal.npz'}, 500 samples")
    assert saved["calibration"]["samples"] == 500
    manifest = json.loads((directory / "mrl.json").read_text())
    assert manifest["cascade"]["thresholds"] == saved["thresholds"] and manifest["cascade"]["dims"] == saved["dims"]
    result = run_cli("classify", directory, tmp_path / "test.npz", "--cascade", "--json", "-o", tmp_path / "p.jsonl")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 500 and report["split"] == "all" and report["mode"] == "cascade"
    assert report["data"]["description"].startswith(f"all of {tmp_path / 'test.npz'}, 500 samples")
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [line["label"] for line in lines] == y[500:].tolist()
    assert report["dims"] == saved["dims"] and 0 <= report["accuracy"] <= 100
    assert sum(report["stop_histogram"].values()) == pytest.approx(1.0)
    assert report["expected_dims"] <= report["expected_honest_dims"]
    # the tables say it too
    for command in (["calibrate", directory, tmp_path / "cal.npz"], ["classify", directory, tmp_path / "test.npz", "--cascade"]):
        result = run_cli(*command)
        assert result.returncode == 0, result.stderr
        assert "500 samples" in " ".join(result.stderr.split()), result.stderr
    assert "honest" in result.stderr
    # --split on a file that is not the training data: an error that says why
    result = run_cli("classify", directory, tmp_path / "test.npz", "--split", "test")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--split test applies only to the model's own training data" in result.stderr
    assert "records no training data" in result.stderr
    # labels beyond the heads' classes
    np.savez(tmp_path / "bad.npz", x=tiny["x"], y=np.arange(600) % 9)
    result = run_cli("calibrate", directory, tmp_path / "bad.npz")
    assert result.returncode == 2 and "labels must lie in 0..4" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A checkpoint trained by `mrl-deploy train --seed 3 --val-fraction 0.2` on a labelled .npz,
    exported with every head."""
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from mrl_deploy import export
    from mrl_deploy.train import train

    root = tmp_path_factory.mktemp("seeded")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    np.savez(root / "data.npz", x=x, y=y)
    result = run_cli("train", root / "data.npz", "-o", root / "ckpt", "--seed", 3, "--val-fraction", 0.2,
                     "--epochs", 3, "--no-baseline", "--nesting-dims", "4,8,16", "--full-dim", 16, "--json")
    assert result.returncode == 0, result.stderr
    artifact = export(root / "ckpt", all_dims=True, output=root / "art")
    return {"root": root, "data": root / "data.npz", "artifact": artifact}


@needs_torch
def test_train_records_the_split_and_export_carries_it(seeded):
    from mrl_deploy.data import load_dataset

    meta = json.loads((seeded["root"] / "ckpt" / "mrl_model.json").read_text())
    recorded = seeded["artifact"].manifest["training_data"]
    assert recorded["seed"] == 3 and recorded["val_fraction"] == 0.2 and recorded["test_fraction"] == 0.5
    assert recorded["samples"] == 400 and recorded == {k: meta["data"][k] for k in recorded}
    import hashlib

    with np.load(seeded["data"]) as arrays:   # the fingerprint: sha256 of the samples and labels as stored
        x, y = arrays["x"], arrays["y"]
    digest = hashlib.sha256(str((x.dtype.str, x.shape)).encode() + x.tobytes() + y.astype(np.int64).tobytes())
    assert recorded["fingerprint"] == digest.hexdigest() == load_dataset(seeded["data"]).fingerprint()


@needs_torch
def test_calibrate_and_classify_use_the_recorded_split(seeded, tmp_path):
    """On the model's own data (same fingerprint), the split is the recorded one (seed 3, 20%
    validation), not the defaults: checked row by row against the data module's split functions."""
    import shutil

    from mrl_deploy.artifact import Artifact
    from mrl_deploy.data import calibration_test_split, load_dataset, split_dataset, stratified_indices

    directory = tmp_path / "art"
    shutil.copytree(seeded["artifact"].path, directory)
    data = load_dataset(seeded["data"])
    train, val = split_dataset(data, seed=3, val_fraction=0.2)
    cal, test = calibration_test_split(val, seed=3, test_fraction=0.5)
    # which rows those are, from the index functions themselves: train / calibration / test never meet
    train_rows, val_rows = stratified_indices(data.y, 0.2, 3)
    cal_part, test_part = stratified_indices(data.y[val_rows], 0.5, 3 + 7919)
    np.testing.assert_array_equal(cal.x, data.x[val_rows[cal_part]])
    np.testing.assert_array_equal(test.x, data.x[val_rows[test_part]])
    assert not set(train_rows) & set(val_rows)
    default_test = load_dataset(seeded["data"], split="test")          # seed 0, 30%: other rows
    assert len(default_test) != len(test) or not np.array_equal(default_test.x, test.x)

    artifact = Artifact.load(directory)
    full = max(artifact.logit_dims)
    result = run_cli("calibrate", directory, seeded["data"], "--max-drop", "2", "--json")
    assert result.returncode == 0, result.stderr
    saved = json.loads(result.stdout)
    assert saved["data"]["split"] == "calibration" and saved["data"]["seed"] == 3
    assert saved["data"]["samples"] == len(cal) and 35 <= len(cal) <= 45     # half of 20% of 400
    assert saved["data"]["description"] == f"calibration split of {seeded['data']}, seed 3, {len(cal)} samples"
    full_accuracy = 100.0 * np.mean(artifact.logits(cal.x, dim=full).argmax(1) == cal.y)
    assert saved["calibration"]["full_accuracy"] == pytest.approx(full_accuracy)

    result = run_cli("classify", directory, seeded["data"], "--dim", full, "--json", "-o", tmp_path / "p.jsonl")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["split"] == "test" and report["samples"] == len(test) and 35 <= len(test) <= 45
    assert report["data"]["description"] == f"test split of {seeded['data']}, seed 3, {len(test)} samples"
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [line["label"] for line in lines] == test.y.tolist()
    assert [line["prediction"] for line in lines] == artifact.logits(test.x, dim=full).argmax(1).tolist()
    # --split chooses among the recorded splits of the model's own data
    result = run_cli("classify", directory, seeded["data"], "--dim", full, "--split", "all", "--json")
    assert json.loads(result.stdout)["samples"] == 400

    # another file (fingerprint differs): used whole, even though it is the same kind of data
    np.savez(tmp_path / "other.npz", x=data.x[:100] + 1.0, y=data.y[:100])
    result = run_cli("classify", directory, tmp_path / "other.npz", "--dim", full, "--json")
    report = json.loads(result.stdout)
    assert report["split"] == "all" and report["samples"] == 100
    assert "not the model's training data" in report["data"]["description"]


@needs_torch
def test_a_named_dataset_that_differs_from_the_recorded_one_is_an_error(seeded, tmp_path):
    import shutil

    from mrl_deploy.manifest import update_manifest

    directory = tmp_path / "art"
    shutil.copytree(seeded["artifact"].path, directory)
    recorded = json.loads((directory / "mrl.json").read_text())["training_data"]
    update_manifest(directory, training_data={**recorded, "name": "digits", "samples": 1797, "fingerprint": "0" * 64})
    for command in ("calibrate", "classify"):
        result = run_cli(command, directory, "digits")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "is not the digits the model was trained on" in result.stderr


def test_data_for_model_rules():
    """The rules without a model: training data split as recorded, other data whole, an old
    record without a fingerprint matched by a named data set's name."""
    from mrl_deploy.data import data_for_model, load_dataset, split_record

    digits = load_dataset("digits")
    record = split_record(digits, seed=3, val_fraction=0.2)
    cal, usage = data_for_model("digits", record, default_split="calibration")
    assert usage["split"] == "calibration" and usage["seed"] == 3 and len(cal) == usage["samples"]
    assert np.array_equal(cal.x, load_dataset("digits", split="calibration", seed=3, val_fraction=0.2).x)
    whole, usage = data_for_model("digits", None)
    assert len(whole) == 1797 and usage["description"] == "all of digits, 1797 samples (the model records no training data)"
    with pytest.raises(DataError, match="--split calibration applies only"):
        data_for_model("digits", None, split="calibration")
    legacy = {k: v for k, v in record.items() if k != "fingerprint"}
    test, usage = data_for_model("digits", legacy)
    assert usage["split"] == "test" and "matched by name" in usage["description"]
    assert np.array_equal(test.x, load_dataset("digits", split="test", seed=3, val_fraction=0.2).x)


@needs_torch
def test_artifact_without_heads_is_a_one_line_error(tmp_path):
    from mrl_deploy import export

    export("factories:tiny_embedder", dims=[16], output=tmp_path / "e", input_shape="20", nesting_dims=None)
    np.save(tmp_path / "x.npy", np.zeros((3, 20), dtype=np.float32))
    for command in (["classify", tmp_path / "e", tmp_path / "x.npy"], ["calibrate", tmp_path / "e", "digits"]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        assert "no classifier heads" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_cascade_path_imports_no_torch():
    code = "import sys, mrl_deploy.cascade, mrl_deploy.artifact; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
