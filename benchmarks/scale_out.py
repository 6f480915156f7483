"""Scale-out on Ray, measured: `embed --ray` against in-process embedding, and a sharded index
(4 shards, in this process and in Ray actors) against a single index.

    .venv/bin/python benchmarks/scale_out.py             # bbc-news x MiniLM + 1M x 768; ~25 min on 2 cores
    .venv/bin/python benchmarks/scale_out.py --quick     # smoke test: 64 articles, 20k x 768 (writes to .cache/)

Embedding: 1,113 BBC News articles (encoders.bbc_texts: every second of the 2,225, one per line of
a .txt, as `embed --ray` reads them)
through the all-MiniLM-L6-v2 artifact that benchmarks/encoders.py exports (cached in .cache/),
at the artifact's largest dim, batch 32, ORT CPU fp32. In-process: Artifact.encode with 1 and
2 ONNX Runtime threads. Ray: mrl_deploy.scale.embed.embed_corpus on a local Ray (2 CPUs) with
1 and 2 actors of 1 CPU and 1 thread each, shards of 128 articles. Each Ray run is timed from
the call to the manifest (planning, actor start-up with its model load, embedding, writing);
Ray's own start-up is timed apart. Ratios: Ray items/s over in-process items/s at the same
number of cores (1 actor vs 1 thread: the overhead; 2 actors vs 2 threads: the scaling), and
every Ray run's vectors are checked against the in-process ones.

Retrieval: benchmarks/retrieval.py's synthetic corpus (imported: same generator, same seed),
1,000,000 x 768 and 1,000 fresh queries, k = 10, ground truth from numpy exact search. The
headline funnel setting (Ds=32 f16, M=8, k'=200 -> 768) as a single AdaptiveIndex, as a
ShardedIndex of 4 shards built one after another here, and built by Ray tasks and searched
through 4 Ray actors (0.5 CPU each on this 2-core machine). QPS: the whole query batch, best of
--repeats; latency: one query at a time (median). The corpus is saved to .cache/ once and the
shards read their slices memory-mapped, as `index --vectors DIR --shards` does.

Writes benchmarks/results/scale_out.json (every number and the machine); --quick writes
benchmarks/.cache/scale_out_quick.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CACHE = ROOT / ".cache"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from retrieval import K, latency_ms, say, synthetic_mrl_corpus, timed  # noqa: E402

SETTING = {"shortlist_dim": 32, "dtype": "f16", "connectivity": 8, "shortlist_size": 200}


# --- embedding ---------------------------------------------------------------------------------------

def embedding(count: int, batch_size: int, shard_rows: int, actors: list[int], work: Path) -> dict:
    from encoders import bbc_texts, prepare_minilm

    from mrl_deploy.artifact import Artifact
    from mrl_deploy.corpus import load_corpus

    artifact, _, _ = prepare_minilm(say)
    artifact = Artifact.load(artifact.path)
    texts = bbc_texts(count)
    inputs = work / "bbc"
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "articles.txt").write_text("\n".join(" ".join(t.split()) for t in texts) + "\n", encoding="utf-8")
    texts = [" ".join(t.split()) for t in texts]
    dim = max(artifact.exported_dims)
    rows, reference = [], None
    for threads in (1, 2):
        say(f"in-process Artifact.encode, {len(texts)} articles, {threads} ORT threads")
        artifact.encode(texts[:batch_size], dim=dim, batch_size=batch_size, threads=threads)     # warm-up
        vectors, seconds = timed(lambda: artifact.encode(texts, dim=dim, batch_size=batch_size, threads=threads))
        reference = vectors if reference is None else reference
        rows.append({"method": f"in-process, {threads} thread{'s' * (threads > 1)}", "cores": threads,
                     "seconds": seconds, "items_per_second": len(texts) / seconds})
        say(f"  {rows[-1]['items_per_second']:.1f} articles/s")
    import ray

    from mrl_deploy.scale.embed import embed_corpus

    begun = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray_start = time.perf_counter() - begun
    try:
        for n in actors:
            out = work / f"emb_{n}"
            shutil.rmtree(out, ignore_errors=True)
            say(f"embed --ray: {n} actor(s) of 1 CPU / 1 thread, shards of {shard_rows}")
            begun = time.perf_counter()
            manifest = embed_corpus(artifact, str(inputs), out, batch_size=batch_size, shard_rows=shard_rows,
                                    concurrency=n, num_cpus=1, threads=1)
            seconds = time.perf_counter() - begun
            vectors, _ = load_corpus(out)
            rows.append({"method": f"embed --ray, {n} actor{'s' * (n > 1)}", "cores": n, "seconds": seconds,
                         "items_per_second": len(texts) / seconds, "nodes": manifest["nodes"],
                         "max_abs_diff_vs_in_process": float(np.abs(vectors - reference).max())})
            say(f"  {rows[-1]['items_per_second']:.1f} articles/s, max |diff| {rows[-1]['max_abs_diff_vs_in_process']:.1e}")
    finally:
        ray.shutdown()
    by_cores = {r["cores"]: r for r in rows if r["method"].startswith("in-process")}
    for r in rows:
        if r["method"].startswith("embed --ray"):
            r["ratio_vs_in_process_same_cores"] = r["items_per_second"] / by_cores[r["cores"]]["items_per_second"]
    return {"articles": len(texts), "model": "all-MiniLM-L6-v2 (benchmarks/encoders.py's artifact)", "dim": dim,
            "batch_size": batch_size, "shard_rows": shard_rows, "runtime": "ort-cpu fp32",
            "ray_start_seconds": ray_start, "rows": rows}


# --- sharded retrieval ----------------------------------------------------------------------------------

def retrieval(size: int, dim: int, n_queries: int, shards: int, repeats: int, work: Path) -> dict:
    from mrl_deploy.metrics import recall_at_k
    from mrl_deploy.retrieval import AdaptiveIndex, exact_search
    from mrl_deploy.sharded import ShardedIndex, Slice

    say(f"generating {size} x {dim} (benchmarks/retrieval.py's synthetic_mrl_corpus) and {n_queries} queries")
    corpus = synthetic_mrl_corpus(size, dim)
    queries = synthetic_mrl_corpus(n_queries, dim, clusters=max(1, size // 1000), stream=1)
    say("exact numpy search: the ground truth")
    (truth, _), exact_seconds = timed(lambda: exact_search(corpus, queries, K))
    np.save(work / "corpus.npy", corpus)
    np.save(work / "ids.npy", np.arange(size, dtype=np.int64))
    vector_slices = [Slice(str(work / "corpus.npy"), 0, size)]
    id_slices = [Slice(str(work / "ids.npy"), 0, size)]
    rows = []

    def measure(method, index, build_seconds, **extra):
        index.search(queries[:10], K)                                   # warm-up (page cache, threads)
        (ids, _), seconds = timed(lambda: index.search(queries, K), repeats)
        row = {"method": method, "recall_at_10": recall_at_k(ids, truth, K), "qps": n_queries / seconds,
               "latency_ms": latency_ms(lambda q: index.search(q, K), queries, 100), "build_seconds": build_seconds,
               "shortlist_bytes": int(index.shortlist_bytes), **extra}
        rows.append(row)
        say(f"  {method:<44} recall@10 {row['recall_at_10']:.4f}  {row['qps']:8.1f} QPS  "
            f"{row['latency_ms']:.2f} ms/query  build {build_seconds:.0f} s")

    say(f"single AdaptiveIndex {SETTING}")
    single, seconds = timed(lambda: AdaptiveIndex.build(corpus, **SETTING))
    measure("single index", single, seconds, shards=1)
    del single
    say(f"{shards} shards, built one after another here")
    path = work / "serial.index"
    shutil.rmtree(path, ignore_errors=True)
    built, seconds = timed(lambda: ShardedIndex.build(vector_slices, path, shards=shards, keys=id_slices, **SETTING))
    measure(f"{shards} shards, in this process", ShardedIndex.load(path), seconds, shards=shards)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        say(f"{shards} shards, built by Ray tasks, searched through Ray actors")
        path = work / "ray.index"
        shutil.rmtree(path, ignore_errors=True)
        _, seconds = timed(lambda: ShardedIndex.build(vector_slices, path, shards=shards, keys=id_slices, ray=True,
                                                      **SETTING))
        remote = ShardedIndex.load(path, ray=True, num_cpus=2 / shards)
        try:
            measure(f"{shards} shards, Ray tasks + {shards} actors", remote, seconds, shards=shards, ray=True)
        finally:
            remote.close()
    finally:
        ray.shutdown()
    return {"corpus": {"size": size, "dim": dim, "queries": n_queries, "generator": "benchmarks/retrieval.py "
                       "synthetic_mrl_corpus (seed 0)"}, "setting": SETTING, "k": K,
            "exact_qps": n_queries / exact_seconds, "rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 articles, 20k vectors; writes to .cache/")
    parser.add_argument("--articles", type=int, default=2225, help="BBC News articles to embed, at most every "
                        "second one of the 2,225 (default 2225: 1,113 articles)")
    parser.add_argument("--size", type=int, default=1_000_000, help="synthetic corpus size")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per search setting (best is kept)")
    parser.add_argument("--no-embedding", action="store_true")
    parser.add_argument("--no-retrieval", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.articles, args.size, args.queries = 64, 20_000, 200
    from mrl_deploy.machine import machine_info, machine_name

    import onnxruntime  # noqa: F401  (before usearch: see mrl_deploy.retrieval._usearch)

    work = CACHE / ("scale_out_quick" if args.quick else "scale_out")
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    begun = time.perf_counter()
    result = {"benchmark": "benchmarks/scale_out.py", "command": " ".join(sys.argv), "machine": machine,
              "machine_name": machine_name(machine)}
    if not args.no_embedding:
        result["embedding"] = embedding(args.articles, 32, 16 if args.quick else 128, [1, 2], work)
    if not args.no_retrieval:
        result["retrieval"] = retrieval(args.size, args.dim, args.queries, args.shards, args.repeats, work)
    result["seconds"] = time.perf_counter() - begun
    result["machine"]["load_average_end"] = machine_info()["load_average"]
    output = CACHE / "scale_out_quick.json" if args.quick else RESULTS / "scale_out.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    say(f"wrote {output} in {result['seconds']:.0f} s")
    for part in ("embedding", "retrieval"):
        for row in result.get(part, {}).get("rows", []):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
