"""Adaptive retrieval side by side: exact full-dim search, usearch HNSW at full dim, and the
AdaptiveIndex funnel (HNSW shortlist at Ds, rerank at Dr) at several (Ds, dtype, shortlist) settings.

    .venv/bin/python benchmarks/retrieval.py                   # 1M x 768 synthetic + digits + bbc-news
    .venv/bin/python benchmarks/retrieval.py --size 100000     # a quick run (writes retrieval_100k.json)
    .venv/bin/python benchmarks/retrieval.py --no-real         # synthetic only

Synthetic corpus (`synthetic_mrl_corpus`, seeded): MRL-like vectors in which the variance decays
with the dim index, so a prefix carries most (not all) of the signal, as in a trained MRL
embedding: dim j has scale s_j = (1 + j) ** (-alpha / 2) (alpha 0.7); a vector is a cluster centre
(count / 1000 clusters, centres ~ N(0, diag(s^2))) plus noise * N(0, diag(s^2)) (noise 0.6), then
L2-normalised. Queries are fresh draws from the same clusters (not corpus rows). On it, exact
search at Ds alone finds only part of the full-dim top 10 (the `truncated` rows), so the rerank
matters.

Measured in one run on one machine, all on the same queries:
  exact numpy      brute force at the full dim, f32 matrix in RAM, BLAS matmul + argpartition
                   (the ground truth and the QPS baseline of every speed-up)
  exact usearch    usearch's brute force (exact=True) on a subset of the queries (it is slow)
  hnsw full-dim    usearch HNSW over the full-dim f32 vectors (what you would deploy without MRL)
  funnel           mrl_deploy.AdaptiveIndex: HNSW over the Ds prefix (f16 / i8 / b1), shortlist
                   of k', rerank at Dr from the memory-mapped f16 store (and 3-stage funnels)
  truncated        exact search at Ds alone (no rerank): what the prefix alone gets
QPS: the whole query batch at once with all cores (best of --repeats); latency: one query at a
time. Bytes: the HNSW index as saved (vectors + graph; `shortlist_bytes`), the rerank store
(memory-mapped from disk, N x Dr x 2), against an f32 full-dim flat index (N x d x 4).
Real corpora (MRL models trained here by mrl_deploy.train, cached in benchmarks/.cache):
  digits     small MRL CNN (64-d, nesting 8..64): corpus the train split, queries the test split
  bbc-news   MRL adapter on frozen all-MiniLM-L6-v2 (384-d): corpus the 2225 articles, queries the
             titles of the held-out test split; relevant = same class (mAP@10 and P@10 the MRL
             paper's way)
Writes benchmarks/results/retrieval.json (+ .png), or retrieval_<size>.json for other sizes.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CACHE = ROOT / ".cache"
sys.path.insert(0, str(ROOT.parent))

K = 10
# ../shared/ANCHORS.md: the MRL paper's adaptive retrieval and this project's targets
PAPER = {"setting": "ImageNet-1K, 1.28M x 2048, Ds=16 (HNSW M=32), k=200, Dr=2048, 24-core CPU",
         "result": "same mAP@10 as full-dim search, ~128x fewer FLOPs, ~14x wall clock"}
TARGETS = {"recall_at_10": 0.95, "speedup_vs_exact": 20.0, "memory_ratio_vs_flat": 16.0}
# (Ds, dtype, connectivity, shortlist sizes): the funnel settings swept on the synthetic corpus.
FUNNELS = [
    (32, "f16", 8, (100, 200, 400, 800)),
    (64, "i8", 8, (50, 100, 200, 400)),
    (64, "f16", 16, (50, 100, 200, 400)),
    (128, "i8", 8, (50, 100, 200)),
    (256, "b1", 8, (400, 800, 1600)),
]
VIEW_CHECK = (64, "i8")   # this setting is also saved, loaded with view=True (memory-mapped) and searched again
THREE_STAGE = [(32, "f16", [(32, 800), (128, 100), (768, K)]), (64, "i8", [(64, 400), (192, 100), (768, K)])]
HNSW_EF = (32, 64, 128, 256)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the synthetic corpus ---------------------------------------------------------------------------

def synthetic_mrl_corpus(count: int, dim: int = 768, *, clusters: int | None = None, alpha: float = 0.7,
                         noise: float = 0.6, seed: int = 0, stream: int = 0, chunk: int = 65536) -> np.ndarray:
    """`count` x `dim` float32 unit rows, MRL-like (see the module docstring). The same seed gives
    the same cluster centres; `stream` picks an independent draw of points (0: corpus, 1: queries).
    Chunks are seeded by (seed, stream, chunk number): the output does not depend on memory."""
    clusters = clusters or max(1, count // 1000)
    scale = (1.0 + np.arange(dim, dtype=np.float32)) ** np.float32(-alpha / 2)
    centres = np.random.default_rng([seed, 0]).standard_normal((clusters, dim), dtype=np.float32) * scale
    out = np.empty((count, dim), dtype=np.float32)
    for number, start in enumerate(range(0, count, chunk)):
        rng = np.random.default_rng([seed, 1 + stream, number])
        rows = min(chunk, count - start)
        block = rng.standard_normal((rows, dim), dtype=np.float32)
        block *= np.float32(noise) * scale
        block += centres[rng.integers(0, clusters, rows)]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + rows] = block
    return out


# --- measuring -------------------------------------------------------------------------------------

def timed(function, repeats: int = 1):
    """(result of the first run, best seconds of `repeats` runs)."""
    best, result = float("inf"), None
    for i in range(max(1, repeats)):
        begun = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - begun)
        result = value if i == 0 else result
    return result, best


def latency_ms(search_one, queries: np.ndarray, count: int = 200) -> float:
    """Median ms for one query at a time (batch 1), after a warm-up."""
    search_one(queries[:1])
    times = []
    for i in range(min(count, len(queries))):
        begun = time.perf_counter()
        search_one(queries[i:i + 1])
        times.append(time.perf_counter() - begun)
    return 1000 * float(np.median(times))


def row(method: str, ids, seconds: float, queries: int, truth, base_qps: float | None, **extra) -> dict:
    from mrl_deploy.metrics import recall_at_k

    qps = queries / seconds
    out = {"method": method, "recall_at_10": recall_at_k(np.asarray(ids), truth[:len(ids)], K), "qps": qps,
           "speedup_vs_exact": qps / base_qps if base_qps else 1.0, **extra}
    say(f"  {method:<58} recall@10 {out['recall_at_10']:.4f}  {qps:9.1f} QPS  x{out['speedup_vs_exact']:.1f}")
    return out


def synthetic(size: int, dim: int, n_queries: int, usearch_exact_queries: int, repeats: int, funnels, hnsw: bool) -> dict:
    from mrl_deploy.retrieval import AdaptiveIndex, _usearch, exact_search

    Index, usearch_search = _usearch().Index, _usearch().search  # onnxruntime loaded first (see _usearch)

    say(f"generating {size} x {dim} synthetic MRL-like vectors and {n_queries} queries")
    corpus = synthetic_mrl_corpus(size, dim)
    queries = synthetic_mrl_corpus(n_queries, dim, clusters=max(1, size // 1000), stream=1)
    flat_bytes = corpus.nbytes
    rows = []
    say("exact numpy (BLAS) at the full dim: the ground truth")
    (truth, _), exact_seconds = timed(lambda: exact_search(corpus, queries, K))
    base_qps = n_queries / exact_seconds
    rows.append(row("exact numpy f32 (BLAS)", truth, exact_seconds, n_queries, truth, base_qps,
                    kind="exact", dim=dim, index_bytes=flat_bytes, bytes_per_vector=flat_bytes / size))
    subset = queries[:usearch_exact_queries]
    say(f"exact usearch on {len(subset)} queries")
    matches, seconds = timed(lambda: usearch_search(corpus, subset, K, "ip", exact=True, threads=0))
    rows.append(row("exact usearch f32 (brute force)", np.asarray(matches.keys).astype(np.int64), seconds,
                    len(subset), truth, base_qps, kind="exact", dim=dim, queries_measured=len(subset)))
    for ds in sorted({f[0] for f in funnels}):
        (ids, _), seconds = timed(lambda: exact_search(corpus[:, :ds], queries, K))
        rows.append(row(f"truncated: exact at Ds={ds} alone (no rerank)", ids, seconds, n_queries, truth, base_qps,
                        kind="truncated", shortlist_dim=ds))
    if hnsw:
        rows += hnsw_rows(Index, corpus, queries, truth, base_qps, repeats, flat_bytes)
    for ds, dtype, connectivity, sizes in funnels:
        rows += funnel_rows(AdaptiveIndex, corpus, queries, truth, base_qps, repeats, flat_bytes, ds, dtype,
                            connectivity, sizes)
    # Timed again at the end: other load during the first timing would flatter every speed-up,
    # so speed-ups are against the faster of the two.
    say("exact numpy at the full dim, timed again")
    _, seconds = timed(lambda: exact_search(corpus, queries, K))
    exact_qps = {"start": base_qps, "end": n_queries / seconds}
    best_exact = max(exact_qps.values())
    for r in rows:
        r["speedup_vs_exact"] = r["qps"] / best_exact
    say(f"exact QPS {exact_qps['start']:.1f} at the start, {exact_qps['end']:.1f} at the end: speed-ups against "
        f"{best_exact:.1f}")
    return {"corpus": {"size": size, "dim": dim, "queries": n_queries, "generator": {
                "function": "synthetic_mrl_corpus", "alpha": 0.7, "noise": 0.6, "clusters": max(1, size // 1000),
                "seed": 0}}, "flat_f32_bytes": flat_bytes, "exact_qps": best_exact, "exact_qps_timings": exact_qps,
            "rows": rows}


def hnsw_rows(Index, corpus, queries, truth, base_qps, repeats, flat_bytes) -> list[dict]:
    size, dim = corpus.shape
    say(f"usearch HNSW at the full dim ({dim}, f32, M=16, expansion_add=128): building")
    index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=16, expansion_add=128)
    begun = time.perf_counter()
    index.add(np.arange(size, dtype=np.uint64), corpus, threads=0)
    build = time.perf_counter() - begun
    nbytes = index.serialized_length
    say(f"  built in {build:.0f} s ({size / build:.0f} vectors/s), {nbytes / 2**20:.0f} MiB")
    out = []
    for ef in HNSW_EF:
        index.expansion_search = ef
        matches, seconds = timed(lambda: index.search(queries, K, threads=0), repeats)
        one = latency_ms(lambda q: index.search(q, K, threads=0), queries)
        out.append(row(f"hnsw full-dim f32 M=16 ef={ef}", np.asarray(matches.keys).astype(np.int64), seconds,
                       len(queries), truth, base_qps, kind="hnsw", dim=dim, dtype="f32", connectivity=16,
                       expansion_search=ef, build_seconds=build, index_bytes=nbytes, bytes_per_vector=nbytes / size,
                       memory_ratio_vs_flat=flat_bytes / nbytes, latency_ms=one))
    del index
    gc.collect()
    return out


def funnel_rows(AdaptiveIndex, corpus, queries, truth, base_qps, repeats, flat_bytes, ds, dtype, connectivity,
                sizes) -> list[dict]:
    size, dim = corpus.shape
    say(f"AdaptiveIndex Ds={ds} {dtype} M={connectivity}: building")
    begun = time.perf_counter()
    index = AdaptiveIndex.build(corpus, shortlist_dim=ds, rerank_dim=dim, dtype=dtype, connectivity=connectivity)
    build = time.perf_counter() - begun
    nbytes = index.shortlist_bytes
    say(f"  built in {build:.0f} s ({size / build:.0f} vectors/s), shortlist {nbytes / 2**20:.0f} MiB, "
        f"rerank store {index.rerank_bytes / 2**20:.0f} MiB")
    common = {"kind": "funnel", "shortlist_dim": ds, "rerank_dim": dim, "dtype": dtype, "connectivity": connectivity,
              "rerank_dtype": index.rerank_dtype, "build_seconds": build, "index_bytes": nbytes,
              "bytes_per_vector": nbytes / size, "memory_ratio_vs_flat": flat_bytes / nbytes,
              "rerank_bytes": index.rerank_bytes}
    out = []
    for shortlist in sizes:
        (ids, _), seconds = timed(lambda: index.search(queries, K, shortlist_size=shortlist), repeats)
        one = latency_ms(lambda q: index.search(q, K, shortlist_size=shortlist), queries)
        out.append(row(f"funnel Ds={ds} {dtype} M={connectivity} k'={shortlist} -> Dr={dim}", ids, seconds,
                       len(queries), truth, base_qps, shortlist_size=shortlist, expansion_search=shortlist,
                       latency_ms=one, **common))
    if (ds, dtype) == VIEW_CHECK:
        out += view_rows(index, queries, truth, base_qps, repeats, sizes, common)
    for stage_ds, stage_dtype, stages in THREE_STAGE:
        if (stage_ds, stage_dtype) == (ds, dtype) and stages[-1][0] <= dim:
            (ids, _), seconds = timed(lambda: index.search(queries, K, funnel=stages), repeats)
            text = " -> ".join(f"{d}:{s}" for d, s in stages)
            out.append(row(f"funnel Ds={ds} {dtype} M={connectivity} {text}", ids, seconds, len(queries), truth,
                           base_qps, funnel=stages, **common))
    del index
    gc.collect()
    return out


def view_rows(index, queries, truth, base_qps, repeats, sizes, common) -> list[dict]:
    """The deployed path: save, load with view=True (HNSW file and rerank store memory-mapped), search."""
    import tempfile

    from mrl_deploy.retrieval import AdaptiveIndex

    out = []
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        begun = time.perf_counter()
        index.save(Path(tmp) / "index")
        saved = time.perf_counter() - begun
        begun = time.perf_counter()
        loaded = AdaptiveIndex.load(Path(tmp) / "index", view=True)
        opened = time.perf_counter() - begun
        say(f"  saved in {saved:.1f} s, loaded (view) in {opened * 1000:.0f} ms")
        for shortlist in sizes:
            (ids, _), seconds = timed(lambda: loaded.search(queries, K, shortlist_size=shortlist), repeats)
            out.append(row(f"funnel Ds={common['shortlist_dim']} {common['dtype']} M={common['connectivity']} "
                           f"k'={shortlist} -> Dr={common['rerank_dim']} (loaded, view=True)", ids, seconds,
                           len(queries), truth, base_qps, shortlist_size=shortlist, view=True, save_seconds=saved,
                           load_seconds=opened, **common))
        del loaded
    return out


# --- the real corpora -------------------------------------------------------------------------------

def real_corpora(names: list[str]) -> dict:
    out = {}
    for name in names:
        try:
            corpus, queries, corpus_y, query_y, info = {"digits": digits_vectors, "bbc-news": bbc_vectors}[name]()
        except Exception as exc:  # noqa: BLE001 - a missing model or data set must not lose the synthetic run
            say(f"{name}: skipped ({type(exc).__name__}: {exc})")
            out[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        out[name] = {**info, **labelled_rows(corpus, queries, corpus_y, query_y)}
    return out


def _checkpoint(dataset: str) -> Path:
    from mrl_deploy.train import train

    path = CACHE / f"retrieval_{dataset}_ckpt"
    if not (path / "mrl_model.json").is_file():
        say(f"training an MRL model on {dataset} (cached in {path})")
        train(dataset, path, baseline=False)
    return path


def digits_vectors():
    from mrl_deploy.data import load_dataset
    from mrl_deploy.train import embed, load_checkpoint

    net, meta = load_checkpoint(_checkpoint("digits"))
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    info = {"model": f"MRL CNN trained by mrl_deploy.train, {meta['full_dim']}-d, nesting {meta['nesting_dims']}",
            "corpus_split": "train", "query_split": "test"}
    return embed(net, train.x), embed(net, test.x), train.y, test.y, info


def bbc_vectors():
    from mrl_deploy.data import bbc_news_dir, load_dataset
    from mrl_deploy.train import embed, encode_texts, load_checkpoint

    path = _checkpoint("bbc-news")
    net, meta = load_checkpoint(path)
    articles = load_dataset("bbc-news")
    test = load_dataset("bbc-news", split="test")
    titles = dict(zip(articles.x, _bbc_titles(bbc_news_dir())))
    max_len = meta["encoder"]["max_seq_length"]
    say(f"bbc-news: encoding {len(articles.x)} articles and {len(test.x)} titles with MiniLM (cached after once)")
    corpus = embed(net, encode_texts(articles.x, max_seq_length=max_len))
    queries = embed(net, encode_texts([titles[t] for t in test.x], max_seq_length=max_len))
    info = {"model": f"MRL adapter ({meta['full_dim']}-d, nesting {meta['nesting_dims']}) on frozen all-MiniLM-L6-v2",
            "corpus_split": "all articles", "query_split": "titles of the test split"}
    return corpus, queries, articles.y, test.y, info


def _bbc_titles(directory: Path) -> list[str]:
    """First non-empty line of every article, in load_bbc_news's order (sorted classes, files)."""
    titles = []
    for name in sorted(p.name for p in directory.iterdir() if p.is_dir()):
        for file in sorted((directory / name).glob("*.txt")):
            lines = [line.strip() for line in file.read_text(encoding="utf-8", errors="replace").splitlines()]
            titles.append(next((line for line in lines if line), ""))
    return titles


def labelled_rows(corpus, queries, corpus_y, query_y) -> dict:
    """Exact search at every nesting dim and the funnel Ds -> full dim: recall@10 vs exact full-dim,
    mAP@10 and P@10 with same-class relevance. Small corpora: shortlist 5% of the corpus (>= 2k)."""
    from mrl_deploy.metrics import map_at_k, precision_at_k, recall_at_k
    from mrl_deploy.retrieval import AdaptiveIndex, exact_search

    full = corpus.shape[1]
    truth, _ = exact_search(corpus, queries, K)
    shortlist = max(2 * K, len(corpus) // 20)
    dims = [d for d in (2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 768) if d <= full]
    out = []
    for dim in dims:
        (ids, _), seconds = timed(lambda: exact_search(corpus[:, :dim], queries, K), 3)
        out.append({"method": f"exact at {dim}", "dim": dim, "recall_at_10": recall_at_k(ids, truth, K),
                    "map_at_10": map_at_k(ids, corpus_y, query_y, K),
                    "p_at_10": precision_at_k(ids, corpus_y, query_y, K), "ms_per_query": 1000 * seconds / len(queries)})
        if dim < full and dim >= 8:
            index = AdaptiveIndex.build(corpus, shortlist_dim=dim, dtype="f16")
            (ids, _), seconds = timed(lambda: index.search(queries, K, shortlist_size=shortlist), 3)
            out.append({"method": f"funnel Ds={dim} f16 k'={shortlist} -> {full}", "dim": dim,
                        "recall_at_10": recall_at_k(ids, truth, K), "map_at_10": map_at_k(ids, corpus_y, query_y, K),
                        "p_at_10": precision_at_k(ids, corpus_y, query_y, K),
                        "ms_per_query": 1000 * seconds / len(queries), "shortlist_size": shortlist})
        say(f"  {out[-1]['method']:<40} recall@10 {out[-1]['recall_at_10']:.3f} mAP@10 {out[-1]['map_at_10']:.3f}")
    return {"corpus": len(corpus), "queries": len(queries), "dim": full, "rows": out}


# --- summary and plot --------------------------------------------------------------------------------

def best_meeting_targets(rows: list[dict]) -> dict | None:
    """The fastest funnel row meeting recall@10 >= 0.95 (and whether it meets the other targets)."""
    meeting = [r for r in rows if r["kind"] == "funnel" and r["recall_at_10"] >= TARGETS["recall_at_10"]]
    if not meeting:
        return None
    small = [r for r in meeting if r["memory_ratio_vs_flat"] >= TARGETS["memory_ratio_vs_flat"]] or meeting
    best = max(small, key=lambda r: r["qps"])
    return {"row": best["method"], "recall_at_10": best["recall_at_10"], "speedup_vs_exact": best["speedup_vs_exact"],
            "memory_ratio_vs_flat": best["memory_ratio_vs_flat"],
            "meets": {name: best[name] >= goal for name, goal in TARGETS.items()}}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synth = result["synthetic"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    markers = {"exact": "s", "hnsw": "^", "funnel": "o", "truncated": "x"}
    for kind in ("exact", "hnsw", "funnel", "truncated"):
        rows = [r for r in synth["rows"] if r["kind"] == kind]
        if rows:
            left.scatter([r["qps"] for r in rows], [r["recall_at_10"] for r in rows], marker=markers[kind], label=kind)
    left.axhline(TARGETS["recall_at_10"], color="grey", ls="--", lw=0.8)
    left.axvline(TARGETS["speedup_vs_exact"] * synth["exact_qps"], color="grey", ls=":", lw=0.8,
                 label=f"{TARGETS['speedup_vs_exact']:.0f}x exact QPS")
    left.set(xscale="log", xlabel="queries per second (batch, all cores)", ylabel="recall@10 vs exact full-dim",
             title=f"{synth['corpus']['size']:,} x {synth['corpus']['dim']} synthetic MRL-like")
    left.legend(fontsize=8)
    indexed = {}
    for r in synth["rows"]:
        if r.get("index_bytes") and r["kind"] in ("exact", "hnsw", "funnel"):
            label = r["method"] if r["kind"] == "exact" else (
                f"hnsw {r['dim']} {r['dtype']} M={r['connectivity']}" if r["kind"] == "hnsw"
                else f"Ds={r['shortlist_dim']} {r['dtype']} M={r['connectivity']}")
            indexed[label] = r["bytes_per_vector"]
    right.barh(list(indexed), list(indexed.values()))
    right.axvline(synth["flat_f32_bytes"] / synth["corpus"]["size"] / TARGETS["memory_ratio_vs_flat"], color="grey",
                  ls="--", lw=0.8, label="1/16 of f32 flat")
    right.set(xscale="log", xlabel="index bytes per vector in RAM (rerank store: memory-mapped, not counted)")
    right.legend(fontsize=8)
    fig.suptitle(f"adaptive retrieval, {result['machine_name']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="synthetic corpus size")
    parser.add_argument("--dim", type=int, default=768, help="synthetic vector dim")
    parser.add_argument("--queries", type=int, default=1000, help="synthetic queries")
    parser.add_argument("--usearch-exact-queries", type=int, default=20, help="queries for usearch's (slow) brute force")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting (best is kept)")
    parser.add_argument("--no-hnsw", action="store_true", help="skip the full-dim HNSW baseline (slow to build)")
    parser.add_argument("--no-real", action="store_true", help="skip digits and bbc-news")
    parser.add_argument("--funnels", default=None, help="Ds:dtype:M[:k1/k2/...] settings, comma-separated "
                        "(default: the sweep in FUNNELS)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/retrieval[_SIZE].json)")
    args = parser.parse_args(argv)

    from mrl_deploy.bench import machine_info, machine_name

    funnels = FUNNELS if not args.funnels else [_parse_funnel_setting(s) for s in args.funnels.split(",")]
    name = "retrieval" if args.size == 1_000_000 else f"retrieval_{args.size // 1000}k"
    output = args.output or RESULTS / f"{name}.json"
    machine = machine_info()
    begun = time.perf_counter()
    result = {"benchmark": "benchmarks/retrieval.py", "command": " ".join(sys.argv), "machine": machine,
              "machine_name": machine_name(machine), "k": K, "targets": TARGETS, "paper": PAPER}
    result["synthetic"] = synthetic(args.size, args.dim, args.queries, args.usearch_exact_queries, args.repeats,
                                    funnels, not args.no_hnsw)
    result["synthetic"]["best_meeting_targets"] = best_meeting_targets(result["synthetic"]["rows"])
    result["real"] = {} if args.no_real else real_corpora(["digits", "bbc-news"])
    result["seconds"] = time.perf_counter() - begun
    result["machine"]["load_average_end"] = machine_info()["load_average"]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    plot(result, output.with_suffix(".png"))
    say(f"wrote {output} and {output.with_suffix('.png')} in {result['seconds']:.0f} s; "
        f"best: {json.dumps(result['synthetic']['best_meeting_targets'])}")


def _parse_funnel_setting(text: str):
    parts = text.split(":")
    sizes = tuple(int(s) for s in parts[3].split("/")) if len(parts) > 3 else (100, 200, 400)
    return int(parts[0]), parts[1], int(parts[2]), sizes


if __name__ == "__main__":
    main()
