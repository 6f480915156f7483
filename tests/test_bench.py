"""mrl-deploy bench: statistics, FLOPs formulas, the JSON schema, and short runs end to end."""

import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

from conftest import needs_torch
from mrl_deploy import bench, quality, timing
from mrl_deploy.errors import InputError
from mrl_deploy.flops import (adaptive_search_flops, exact_search_flops, funnel_search_flops, head_flops,
                              retrieval_flops)
from mrl_deploy.report import validate
from mrl_deploy.runtimes import runtime_pairs

# --- statistics on known samples -------------------------------------------------------------


def test_latency_stats_on_known_samples():
    seconds = np.arange(1, 101) / 1e3  # 1..100 ms
    stats = timing.latency_stats(seconds)
    assert stats["runs"] == 100
    assert stats["min_ms"] == pytest.approx(1.0)
    assert stats["max_ms"] == pytest.approx(100.0)
    assert stats["mean_ms"] == pytest.approx(50.5)
    # linear interpolation between order statistics: rank (n-1)p
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["std_ms"] == pytest.approx(statistics.pstdev(range(1, 101)))
    quantiles = statistics.quantiles(range(1, 101), n=100, method="inclusive")
    assert stats["p90_ms"] == pytest.approx(quantiles[89])


def test_latency_stats_small_and_constant():
    assert timing.latency_stats([0.002])["p99_ms"] == pytest.approx(2.0)
    stats = timing.latency_stats([0.005] * 7)
    assert stats["std_ms"] == pytest.approx(0.0) and stats["p50_ms"] == pytest.approx(5.0)
    stats = timing.latency_stats([0.001, 0.003])
    assert stats["p50_ms"] == pytest.approx(2.0) and stats["p90_ms"] == pytest.approx(2.8)
    with pytest.raises(ValueError):
        timing.latency_stats([])


def test_throughput_is_items_over_total_time():
    assert timing.throughput(8, [0.1, 0.3]) == pytest.approx(16 / 0.4)


def test_time_calls_warms_up_then_runs_for_the_duration():
    calls = []
    samples = timing.time_calls(lambda: calls.append(1), duration=0.05, warmup=0.0, warmup_runs=3, min_runs=5)
    assert len(calls) == len(samples) + 3
    assert len(samples) >= 5
    # a slow call: at least min_runs even past the duration
    samples = timing.time_calls(lambda: __import__("time").sleep(0.01), duration=0.001, warmup=0, warmup_runs=1,
                               min_runs=4)
    assert len(samples) == 4 and min(samples) >= 0.009
    # a custom timer (the GPU path) supplies the per-call seconds
    samples = timing.time_calls(lambda: None, duration=0.0, warmup=0, min_runs=3, timer=lambda fn: 0.25)
    assert samples == [0.25, 0.25, 0.25]


def test_peak_rss_tracks_allocations_and_resets():
    if timing.rss_bytes() is None:
        pytest.skip("no /proc: RSS not readable on this platform")
    block = np.ones(40_000_000 // 8)  # 40 MB touched
    peak = timing.peak_rss_bytes()
    assert peak >= timing.rss_bytes() >= 40_000_000
    del block
    if timing.reset_peak_rss():
        assert timing.peak_rss_bytes() < peak


def test_machine_info_names_the_machine():
    from mrl_deploy.machine import machine_info, machine_name

    info = machine_info()
    assert info["cpu"] and info["cores_logical"] >= 1 and info["cores_available"] >= 1
    assert "numpy" in info["packages"] and isinstance(info["gpus"], list)
    assert str(info["cores_available"]) in machine_name(info)


def test_machine_info_does_not_import_torch():
    code = "import sys; from mrl_deploy.machine import machine_info; machine_info(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


FAKE_NVIDIA_SMI = """#!/bin/sh
case "$1" in
  *compute_cap*) [ -n "$OLD_DRIVER" ] && exit 6
                 printf 'NVIDIA H200, 143771, 570.124.06, 9.0\\nNVIDIA A10G, 22731, 570.124.06, 8.6\\n' ;;
  *) printf 'NVIDIA H200, 143771, 470.57.02\\n' ;;
esac
"""


def test_one_nvidia_smi_query_serves_machine_info_and_the_engine_check(tmp_path, monkeypatch):
    """machine.nvidia_smi_gpus parses nvidia-smi's CSV (a stand-in script here: no GPU on this
    machine); machine_info and engines.gpu_from_nvidia_smi read the same list."""
    from mrl_deploy.engines import gpu_from_nvidia_smi
    from mrl_deploy.machine import machine_info, nvidia_smi_gpus

    script = tmp_path / "nvidia-smi"
    script.write_text(FAKE_NVIDIA_SMI)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    h200 = {"name": "NVIDIA H200", "memory_bytes": 143771 * 2**20, "driver": "570.124.06", "compute_capability": "9.0"}
    assert nvidia_smi_gpus() == [h200, {"name": "NVIDIA A10G", "memory_bytes": 22731 * 2**20,
                                        "driver": "570.124.06", "compute_capability": "8.6"}]
    assert machine_info()["gpus"][0] == h200
    assert gpu_from_nvidia_smi(1) == {"name": "NVIDIA A10G", "compute_capability": "8.6"}
    assert gpu_from_nvidia_smi(2) is None
    monkeypatch.setenv("OLD_DRIVER", "1")   # a driver that knows no compute_cap field
    assert nvidia_smi_gpus() == [{"name": "NVIDIA H200", "memory_bytes": 143771 * 2**20, "driver": "470.57.02",
                                  "compute_capability": None}]


# --- FLOPs formulas against FlopCounterMode --------------------------------------------------


def _counted(fn, *args):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(*args)
    return counter.get_total_flops()


@needs_torch
def test_head_flops_match_flop_counter():
    import torch

    for dim, classes in ((8, 10), (64, 1000), (3, 7)):
        head = torch.nn.Linear(dim, classes)
        assert _counted(head, torch.randn(1, dim)) == head_flops(dim, classes)
        assert _counted(head, torch.randn(5, dim)) == 5 * head_flops(dim, classes)


@needs_torch
def test_search_flops_match_flop_counter():
    import torch

    corpus, queries = torch.randn(500, 64), torch.randn(3, 64)
    for dim in (8, 64):
        exact = _counted(lambda q, c: q[:, :dim] @ c[:, :dim].T, queries, corpus)
        assert exact == 3 * exact_search_flops(500, dim)

    def adaptive(q, c, shortlist_dim=16, shortlist_size=50, rerank_dim=64):
        scores = q[:, :shortlist_dim] @ c[:, :shortlist_dim].T
        shortlist = scores.topk(shortlist_size, dim=1).indices
        return torch.bmm(c[shortlist][:, :, :rerank_dim], q[:, :rerank_dim, None])

    assert _counted(adaptive, queries, corpus) == 3 * adaptive_search_flops(500, 16, 50, 64)
    flops = retrieval_flops(500, 16, 64, 50)
    assert flops == {"exact": exact_search_flops(500, 16), "exact_full": exact_search_flops(500, 64),
                     "adaptive": adaptive_search_flops(500, 16, 50, 64)}
    assert retrieval_flops(30, 16, 64, 200)["adaptive"] == adaptive_search_flops(30, 16, 30, 64)  # k <= N


@needs_torch
def test_funnel_flops_match_flop_counter():
    import torch

    corpus, query = torch.randn(400, 64), torch.randn(1, 64)

    def funnel(q, c):
        ids = torch.arange(len(c))
        for dim, keep in ((8, 100), (32, 20), (64, 5)):
            scores = (c[ids][:, :dim] @ q[:, :dim].T)[:, 0]  # a matrix product (FlopCounterMode skips mv)
            ids = ids[scores.topk(min(keep, len(ids))).indices]
        return ids

    assert _counted(funnel, query, corpus) == funnel_search_flops(400, [(8, 100), (32, 20), (64, 5)])
    assert funnel_search_flops(1000, [(16, 200), (64, 10)]) == adaptive_search_flops(1000, 16, 200, 64)


@needs_torch
def test_count_flops_on_a_small_model_is_per_sample():
    import torch

    from mrl_deploy.flops import count_flops

    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    assert count_flops(model, (torch.randn(4, 20),), batch=4) == 2 * (20 * 64 + 64 * 32)


def test_vector_bytes_and_dim_costs():
    assert bench.vector_bytes(64) == {"f32": 256, "f16": 128, "i8": 64, "binary": 8}
    assert bench.vector_bytes(12)["binary"] == 2
    manifest = {"exported_dims": [8, 32], "nesting_dims": [4, 8, 16, 32],
                "flops": {"encoder": 1000, "heads": {"8": 80, "32": 320}}}
    rows = bench.dim_costs(manifest, [32, 8, 16], corpus_size=1000, shortlist_size=100)
    assert [r["dim"] for r in rows] == [8, 16, 32]
    assert {r["encoder_flops"] for r in rows} == {1000}  # the same at every dim
    assert rows[0]["head_flops"] == 80 and rows[1]["head_flops"] is None
    assert rows[0]["retrieval_flops"]["adaptive"] == 2 * (1000 * 8 + 100 * 32)
    assert rows[0]["retrieval_flops"]["exact_full"] == 2 * 1000 * 32
    assert bench.default_dims(manifest) == [4, 8, 16, 32]
    with pytest.raises(InputError, match="above the largest exported dim"):
        bench.check_bench_dims(manifest, [64])


def test_runtime_specs_and_batches():
    manifest = {"models": {"fp32": {}, "int8": {}}}
    assert runtime_pairs("ort-cpu,torch", manifest) == [("ort-cpu", "fp32"), ("ort-cpu", "int8"), ("torch", "fp32")]
    assert runtime_pairs("ort-cpu:int8", manifest) == [("ort-cpu", "int8")]
    with pytest.raises(InputError, match="no fp16 model"):
        runtime_pairs("ort-cpu:fp16", manifest)
    with pytest.raises(InputError, match="unknown runtime"):
        runtime_pairs("onnx", manifest)
    assert bench.parse_batches("64, 1,8") == [1, 8, 64]
    for bad in ("0", "a", ""):
        with pytest.raises(InputError):
            bench.parse_batches(bad)


def naive_recall(vectors, queries, dim, k, shortlist_size=None):
    """recall@k of exact search at `dim` (or, with shortlist_size, of a shortlist at `dim`
    reranked at the full dim) against exact search at the full dim: per query, Python sorts of
    float64 cosines, written from the definition (the reference for quality.retrieval_recall)."""
    rows = np.asarray(vectors, dtype=np.float64)
    corpus = [i for i in range(len(rows)) if i not in set(queries)]

    def ranked(q, candidates, d):
        def cosine(i):
            a, b = rows[q, :d], rows[i, :d]
            return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        return sorted(candidates, key=lambda i: -cosine(i))

    hits = 0
    for q in queries:
        truth = set(ranked(q, corpus, rows.shape[1])[:k])
        found = ranked(q, corpus, dim)
        if shortlist_size is not None:
            found = ranked(q, found[:shortlist_size], rows.shape[1])
        hits += len(truth & set(found[:k]))
    return hits / (k * len(queries))


def test_retrieval_recall_against_exact_search():
    rng = np.random.default_rng(0)
    # MRL-like: variance decays with the dim index, so prefixes carry most of the signal
    vectors = (rng.standard_normal((300, 32)) * np.linspace(3, 0.2, 32)).astype(np.float32)
    result = quality.retrieval_recall(vectors, [4, 16], k=10, shortlist_size=100, use_index=False, queries=40)
    assert result["queries"] == 40 and result["corpus"] == 260
    assert result["shortlist_size"] == 20  # capped at 5% of a 260-vector corpus (>= 2k)
    # the documented split: the first `queries` rows of the seeded permutation are the queries
    queries = np.random.default_rng(0).permutation(300)[:40].tolist()
    for row in result["per_dim"]:
        assert row["truncated"] == pytest.approx(naive_recall(vectors, queries, row["dim"], 10))
        assert row["adaptive"] == pytest.approx(naive_recall(vectors, queries, row["dim"], 10, shortlist_size=20))
    rows = {r["dim"]: r for r in result["per_dim"]}
    assert rows[4]["truncated"] < rows[4]["adaptive"] < 1.0  # the rerank recovers some, not all: not a tie


# --- a bench run end to end on a small exported artifact -------------------------------------


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    pytest.importorskip("torch")
    from mrl_deploy.exporters.onnx import export

    out = tmp_path_factory.mktemp("bench") / "tiny"
    export("factories:tiny_mrl", dims=[8, 32], output=out, input_shape="20", nesting_dims=[4, 8, 16, 32],
           precision=("fp32", "fp16"))
    rng = np.random.default_rng(0)
    data = out.parent / "data.npz"
    np.savez(data, x=rng.standard_normal((300, 20)).astype(np.float32), y=rng.integers(0, 5, 300))
    return out, data


def test_bench_end_to_end_schema(tiny_artifact):
    artifact, data = tiny_artifact
    report = bench.run_bench(artifact, runtimes="ort-cpu:fp32", batches=[1, 4], duration=0.05, threads=1, data=data,
                             corpus_size=10_000, shortlist_size=50)
    assert validate(report) == []
    # JSON round trip keeps it valid
    assert validate(json.loads(json.dumps(report))) == []
    run = report["runtimes"][0]
    assert run["runtime"] == "ort-cpu" and run["device"] == "CPUExecutionProvider" and run["threads"] == 1
    assert [b["batch"] for b in run["batches"]] == [1, 4]
    for row in run["batches"]:
        lat = row["latency"]
        assert lat["runs"] >= 5 and 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert row["throughput_items_s"] > 0 and row["peak_memory_bytes"] > 10_000_000
    assert [d["dim"] for d in report["dims"]] == [4, 8, 16, 32]
    assert report["quality"]["accuracy"].keys() == {"8", "32"}
    assert all(0 <= v <= 1 for v in report["quality"]["accuracy"].values())
    # accuracy equals what the artifact's own logits give
    from mrl_deploy.artifact import Artifact

    with np.load(data) as arrays:
        logits = Artifact.load(artifact).logits(arrays["x"], dim=8)
        assert report["quality"]["accuracy"]["8"] == pytest.approx(float(np.mean(logits.argmax(1) == arrays["y"])))


def test_bench_variants_side_by_side_with_their_quality(tiny_artifact):
    artifact, data = tiny_artifact
    report = bench.run_bench(artifact, runtimes="ort-cpu", batches=[2], duration=0.02, data=data)
    assert [r["variant"] for r in report["runtimes"]] == ["fp32", "fp16"]
    fp16 = report["quality"]["variants"]["fp16"]
    assert fp16["min_cosine"] > 0.999 and set(fp16["accuracy"]) == {"8", "32"}
    assert abs(fp16["accuracy"]["32"] - report["quality"]["accuracy"]["32"]) <= 0.02
    assert validate(report) == []
    # fp16's ratio is its p50 over fp32's, as the two runs' own latency rows give them
    p50 = {r["variant"]: r["batches"][0]["latency"]["p50_ms"] for r in report["runtimes"]}
    ratio = next(r for r in report["ratios"] if r["variant"] == "fp16")
    assert ratio["batch"] == 2 and ratio["vs_ort_fp32"] == pytest.approx(p50["fp16"] / p50["fp32"])


def test_schema_catches_problems():
    assert validate({"schema": "other"}) != []
    broken = {"schema": "mrl-deploy-bench/1", "artifact": {}, "machine": {}, "settings": {}, "runtimes": [
        {"runtime": "x", "variant": "fp32", "device": "cpu", "threads": None, "load_s": -1, "memory_kind": "rss",
         "batches": [{"batch": 0, "latency": {}, "throughput_items_s": 1.0, "peak_memory_bytes": None}]}],
        "skipped": [], "flops_unit": "", "dims": [], "quality": None, "ratios": []}
    problems = "\n".join(validate(broken))
    assert "load_s: -1 < 0" in problems and "batch: 0 < 1" in problems and "missing 'p50_ms'" in problems
    assert "$.artifact: missing 'path'" in problems


def test_bench_cli_writes_json_and_plot(tiny_artifact, tmp_path):
    artifact, data = tiny_artifact
    json_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = subprocess.run(
        [sys.executable, "-m", "mrl_deploy.cli", "bench", str(artifact), "--runtime", "ort-cpu:fp32", "--batch", "1,2",
         "--duration", "0.05", "--threads", "1", "--data", str(data), "--json", str(json_path),
         "--plot", str(plot_path), "--dims", "8,32"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(json_path.read_text())
    assert validate(report) == [] and report["settings"]["dims"] == [8, 32]
    assert all(title in result.stderr for title in ("Latency per runtime and batch", "Cost per dim", "Quality per dim"))
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot_path.stat().st_size > 20_000


@pytest.mark.parametrize("args, message", [
    (["--dims", "64"], "above the largest exported dim"),
    (["--runtime", "nope"], "unknown runtime"),
    (["--batch", "0"], "batch sizes must be >= 1"),
    (["--duration", "0"], "--duration must be > 0"),
    (["--plot", "out.jpg"], "ending in .png"),
])
def test_bench_cli_user_errors(tiny_artifact, args, message):
    artifact, _ = tiny_artifact
    result = subprocess.run([sys.executable, "-m", "mrl_deploy.cli", "bench", str(artifact), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_plot_without_quality(tiny_artifact, tmp_path):
    from mrl_deploy.report import plot_report

    artifact, _ = tiny_artifact
    report = bench.run_bench(artifact, runtimes="ort-cpu", batches=[1], duration=0.02)
    path = plot_report(report, tmp_path / "p.png")
    assert path.stat().st_size > 20_000 and not math.isnan(report["runtimes"][0]["load_s"])


@pytest.mark.skipif(not __import__("shutil").which("nvidia-smi"), reason="needs a CUDA GPU (GPU timing with events)")
def test_cuda_event_timer():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    x = torch.randn(1024, 1024, device="cuda")
    seconds = timing.time_calls(lambda: x @ x, duration=0.05, timer=timing.cuda_event_timer(torch))
    assert min(seconds) > 0


@needs_torch
def test_bench_torch_beside_ort(tiny_artifact):
    artifact, _ = tiny_artifact
    report = bench.run_bench(artifact, runtimes="ort-cpu:fp32,torch", batches=[1], duration=0.05, threads=1)
    assert validate(report) == [] and not report["skipped"]
    assert [(r["runtime"], r["variant"]) for r in report["runtimes"]] == [("ort-cpu", "fp32"), ("torch", "fp32")]
    assert report["runtimes"][1]["torch_threads"] == 1  # same thread count as ORT
    ratio = next(r for r in report["ratios"] if r["runtime"] == "ort-cpu")
    assert ratio["vs_torch_eager"] > 0


def test_bench_without_torch_runtime_is_skipped_by_default(tiny_artifact, monkeypatch):
    """An install without torch (the export extra): the torch runtime cannot start; skipped with
    the reason when asked to skip, one error naming the extra otherwise."""
    from mrl_deploy.errors import MissingExtraError

    artifact, _ = tiny_artifact
    monkeypatch.setitem(sys.modules, "torch", None)   # `import torch` raises ImportError, as without torch
    report = bench.run_bench(artifact, runtimes="ort-cpu,torch", batches=[1], duration=0.02, skip_unavailable=True)
    assert [r["runtime"] for r in report["runtimes"]] == ["ort-cpu", "ort-cpu"]
    assert report["skipped"][0]["runtime"] == "torch" and "mrl-deploy[export]" in report["skipped"][0]["reason"]
    with pytest.raises(MissingExtraError, match=r"'torch' is needed for the torch runtime"):
        bench.run_bench(artifact, runtimes="torch", batches=[1], duration=0.02)


def test_retrieval_recall_through_the_index():
    """The HNSW column runs the real AdaptiveIndex (usearch shortlist at Ds, rerank at the full dim):
    on 160 vectors of 8+ dims its graph search is all but exhaustive, so it finds what the exhaustive funnel
    finds (naive_recall, the independent reference); a failing index is reported, not fatal."""
    import unittest.mock as mock

    from mrl_deploy.retrieval import AdaptiveIndex

    rng = np.random.default_rng(1)
    vectors = (rng.standard_normal((200, 16)) * np.linspace(2, 0.3, 16)).astype(np.float32)
    # (at Ds=4, near-ties make HNSW miss a few of the exhaustive shortlist's candidates: not used)
    result = quality.retrieval_recall(vectors, [8, 16], k=5, shortlist_size=40, queries=40)
    queries = np.random.default_rng(0).permutation(200)[:40].tolist()
    assert result["hnsw"] and result["shortlist_size"] == 10
    for row in result["per_dim"]:
        assert "adaptive_hnsw_error" not in row, row
        expected = naive_recall(vectors, queries, row["dim"], 5, shortlist_size=10)
        assert row["adaptive_hnsw"] == pytest.approx(expected, abs=0.05), (row, expected)   # HNSW: approximate
    with mock.patch.object(AdaptiveIndex, "build", side_effect=RuntimeError("boom")):
        rows = quality.retrieval_recall(vectors, [4], k=5, shortlist_size=40)["per_dim"]
    assert rows[0]["adaptive_hnsw"] is None and "boom" in rows[0]["adaptive_hnsw_error"]
