"""Smoke tests: benchmarks/retrieval.py and retrieval_scale.py run end to end on tiny sizes (their
numbers are not timings: a benchmark is run on a quiet machine, see benchmarks/README.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")   # the bench extra (in test)

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script, tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", "--cache", str(tmp_path / "cache"),
                           "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.with_suffix(".png").is_file()
    return json.loads(out.read_text())


def test_retrieval_benchmark_runs_every_peer(tmp_path):
    result = run("retrieval.py", tmp_path)
    assert set(result["synthetic"]) == {"easy", "hard"}
    assert result["machine"]["load_average"] and "load_average_end" in result["machine"]
    for name, corpus in result["synthetic"].items():
        families = {r["family"] for r in corpus["rows"]}
        assert families == {"exact", "truncated", "usearch-hnsw", "faiss-hnsw", "faiss-prefix-refine",
                            "faiss-ivfpq-refine", "funnel"}, name
        for r in corpus["rows"]:
            assert 0 <= r["recall_at_10"] <= 1 and r["qps"] > 0
            if r["family"] not in ("exact", "truncated"):
                assert r["ram_bytes"] > 0 and r["build_seconds"] >= 0 and r["latency_ms"] > 0
        funnel = next(r for r in corpus["rows"] if r["family"] == "funnel")
        assert funnel["mapped_bytes"] == 3000 * 768 * 2 and funnel["shortlist_us"] > 0 and funnel["rerank_us"] > 0
        # the refine stage keeps the f32 corpus in RAM: counted in faiss's resident bytes
        refine = next(r for r in corpus["rows"] if r["family"] == "faiss-prefix-refine")
        assert refine["ram_bytes"] > 3000 * 768 * 4
    # a second run reuses the cached corpora and indexes
    again = run("retrieval.py", tmp_path)
    builds = lambda res: [r.get("build_seconds") for c in res["synthetic"].values() for r in c["rows"]]  # noqa: E731
    assert builds(again) == builds(result)


def test_retrieval_scale_benchmark_measures_builds_and_a_cold_store(tmp_path):
    result = run("retrieval_scale.py", tmp_path)
    assert [s["size"] for s in result["sizes"]] == [2000, 5000]
    for size in result["sizes"]:
        assert {r["family"] for r in size["rows"]} == {"exact", "hnsw", "funnel"}
        for dtype in ("f16", "ivf"):
            rows = {r["store"]: r for r in size["rows"] if r.get("dtype") == dtype}
            assert set(rows) == {"warm", "cold", "cold, prefetch"}
            assert rows["warm"]["resident_before"] == 1.0
            assert rows["cold"]["resident_before"] == 0.0 and rows["cold, prefetch"]["resident_before"] == 0.0
            assert 0 < rows["warm"]["peak_rss_bytes"] < 2**30
            assert rows["warm"]["recall_at_10"] == rows["cold"]["recall_at_10"] == rows["cold, prefetch"]["recall_at_10"]
        stores = [p / "rerank.npy" for p in sorted((tmp_path / "cache").glob(f"*_{size['size']}x768_*_funnel_*")) if p.is_dir()]
        assert len(stores) == 2 and stores[0].stat().st_ino == stores[1].stat().st_ino   # the ivf one links the store
    assert result["sizes"][1]["corpus_dtype"] == "f16"
