"""Adaptive retrieval against the peers a user would pick instead, on the same corpus and queries
in one run: exact search, usearch HNSW at the full dim, faiss (IndexHNSWFlat at the full dim, HNSW
on the Ds prefix + IndexRefineFlat: the MRL paper's own adaptive retrieval, IVF-PQ +
IndexRefineFlat), and the AdaptiveIndex funnel (HNSW shortlist at Ds, rerank at Dr).

    .venv/bin/python benchmarks/retrieval.py                   # 1M x 768, easy + hard corpus, + digits, bbc-news
    .venv/bin/python benchmarks/retrieval.py --size 200000     # a quicker run (writes retrieval_200k.json)
    .venv/bin/python benchmarks/retrieval.py --quick           # smoke test: tiny sizes, writes to .cache/

Two synthetic corpora (`synthetic_mrl_corpus`, seeded): MRL-like vectors in which the variance
decays with the dim index: dim j has scale s_j = (1 + j) ** (-alpha / 2); a vector is a cluster
centre (count / 1000 clusters, centres ~ N(0, diag(s^2))) plus noise * N(0, diag(s^2)), then
L2-normalised; queries are fresh draws from the same clusters (not corpus rows).
  easy  alpha 0.7, noise 0.6: a 32-d prefix already ranks well (a shortlist of 200 at Ds=32 holds
        ~98% of the full-dim top 10)
  hard  alpha 0.3, noise 1.0: a slowly decaying spectrum; at Ds=32 even 800 candidates hold only
        ~91% of the top 10, and Ds=128 needs ~300-400 for 0.95 (Ds=256: ~200)

Every row, same queries: recall@10 against exact numpy search at the full dim, QPS (the whole
batch at once, all cores: faiss through OpenMP, usearch and the funnel through their thread
pools; best of --repeats), latency (median ms, one query at a time), build seconds, and bytes:
  ram_bytes     what must stay resident for the method to run at all (faiss: the whole index,
                the refine stage's f32 copy of the corpus included; usearch: the index; the
                funnel: its HNSW shortlist index and the keys)
  mapped_bytes  the funnel's rerank store, memory-mapped from disk: read k' rows per query
                (warm in the page cache during these timings; retrieval_scale.py measures it cold)
For the funnel the time of each stage is measured apart (shortlist_us, rerank_us per query) to say
where the time goes. Indexes, corpora and ground truth are cached in benchmarks/.cache/retrieval
by their settings (build seconds kept beside them): a rerun, or a run cut short and restarted,
rebuilds nothing; every timing is taken again in the run itself.
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
import os
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
TARGETS = {"recall_at_10": 0.95, "speedup_vs_exact": 20.0, "memory_ratio_vs_flat": 16.0,
           "qps_vs_best_peer": 1.5, "ram_vs_best_peer": 0.25}
CORPORA = {"easy": {"alpha": 0.7, "noise": 0.6}, "hard": {"alpha": 0.3, "noise": 1.0}}
# Per corpus: the funnels (Ds, dtype, connectivity, shortlist sizes k') and faiss's HNSW on the same
# prefixes (Ds, k'): the paper's method with the Ds a user would pick for that corpus.
# A funnel's sizes are k' (HNSW: searched as wide as k') or (k', lists probed) for dtype "ivf".
SETTINGS = {
    "easy": {"funnels": [(32, "f16", 8, (100, 200, 400)), (64, "i8", 8, (100, 200)), (64, "f16", 16, (80, 100, 200)),
                         (32, "ivf", 0, ((100, 4), (150, 3), (200, 4), (200, 8))),
                         (64, "ivf", 0, ((60, 3), (80, 3), (100, 3), (100, 4), (200, 4)))],
             "prefix": [(32, (100, 150, 200, 400)), (64, (60, 80, 100, 200))]},
    "hard": {"funnels": [(128, "f16", 16, (200, 300, 400)), (128, "i8", 16, (300, 400)),
                         (256, "f16", 16, (150, 200, 300)),
                         (128, "ivf", 0, ((300, 4), (400, 2), (400, 4), (400, 8))), (256, "ivf", 0, ((200, 4), (300, 4)))],
             "prefix": [(128, (200, 300, 400)), (256, (150, 200, 300))]},
}
HNSW_EF = (64, 128, 256)            # full-dim HNSW (usearch M=16, faiss M=32) search widths
FAISS_M, FAISS_EF_CONSTRUCTION = 32, 128
IVFPQ = {"subquantizers": 64, "bits": 8, "probes": (16, 32, 64), "k_factors": (10, 20, 50)}
QUICK = {"size": 3000, "queries": 50, "repeats": 1,
         "ivfpq": {"lists": 16, "subquantizers": 16, "bits": 4, "probes": (8,), "k_factors": (10,)},
         "settings": {"easy": {"funnels": [(32, "f16", 8, (50,)), (32, "ivf", 0, ((50, 2),))], "prefix": [(32, (50,))]},
                      "hard": {"funnels": [(128, "i8", 8, (100,))], "prefix": [(128, (100,))]}}}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the synthetic corpora ---------------------------------------------------------------------------

def synthetic_chunks(count: int, dim: int = 768, *, clusters: int | None = None, alpha: float = 0.7,
                     noise: float = 0.6, seed: int = 0, stream: int = 0, chunk: int = 65536):
    """Blocks of `count` x `dim` float32 unit rows, MRL-like (see the module docstring). The same
    seed gives the same cluster centres; `stream` picks an independent draw of points (0: corpus,
    1: queries). Chunks are seeded by (seed, stream, chunk number): the output does not depend on
    memory, and a corpus larger than RAM is written block by block."""
    clusters = clusters or max(1, count // 1000)
    scale = (1.0 + np.arange(dim, dtype=np.float32)) ** np.float32(-alpha / 2)
    centres = np.random.default_rng([seed, 0]).standard_normal((clusters, dim), dtype=np.float32) * scale
    for number, start in enumerate(range(0, count, chunk)):
        rng = np.random.default_rng([seed, 1 + stream, number])
        rows = min(chunk, count - start)
        block = rng.standard_normal((rows, dim), dtype=np.float32)
        block *= np.float32(noise) * scale
        block += centres[rng.integers(0, clusters, rows)]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        yield block


def synthetic_mrl_corpus(count: int, dim: int = 768, **options) -> np.ndarray:
    """The whole corpus in RAM (see synthetic_chunks)."""
    return np.concatenate(list(synthetic_chunks(count, dim, **options)))


def write_synthetic(path: Path, count: int, dim: int = 768, dtype: str = "f32", **options) -> np.ndarray:
    """The corpus as an .npy file, written chunk by chunk (never whole in RAM) and renamed into
    place when complete; reused when it is there. Returns it memory-mapped."""
    if not path.is_file():
        from mrl_deploy.manifest import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        say(f"writing {count:,} x {dim} {dtype} synthetic vectors to {path}")
        # atomic_path deletes the partial file when writing fails (a full disk left 2 GB behind)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(
                {"f32": np.float32, "f16": np.float16}[dtype])), "fortran_order": False, "shape": (count, dim)})
            for block in synthetic_chunks(count, dim, **options):
                handle.write(block.astype({"f32": np.float32, "f16": np.float16}[dtype]).tobytes())
    return np.load(path, mmap_mode="r")


def corpus_options(name: str, size: int) -> dict:
    return {**CORPORA[name], "clusters": max(1, size // 1000)}


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


def cached(path: Path, build, save, load) -> tuple[object, float]:
    """(object, build seconds): loaded from `path` if a previous run built it (its build seconds
    are kept in path.build.json), else built, timed and saved there."""
    record = path.with_name(path.name + ".build.json")
    if record.is_file() and path.exists():
        return load(path), json.loads(record.read_text())["build_seconds"]
    begun = time.perf_counter()
    made = build()
    seconds = time.perf_counter() - begun
    path.parent.mkdir(parents=True, exist_ok=True)
    save(made, path)
    record.write_text(json.dumps({"build_seconds": seconds}))
    return made, seconds


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


# --- one synthetic corpus, every method --------------------------------------------------------------

def synthetic(name: str, size: int, dim: int, n_queries: int, repeats: int, settings: dict, hnsw: bool,
              peers: bool, cache: Path) -> dict:
    from mrl_deploy.retrieval import exact_search

    options = corpus_options(name, size)
    corpus = write_synthetic(cache / f"{name}_{size}x{dim}.npy", size, dim, **options)
    queries = synthetic_mrl_corpus(n_queries, dim, stream=1, **options)
    truth_file = cache / f"{name}_{size}x{dim}.truth{n_queries}.npy"
    flat_bytes = size * dim * 4
    rows = []
    say(f"{name}: exact numpy (BLAS) at the full dim: the ground truth")
    (truth, _), exact_seconds = timed(lambda: exact_search(corpus, queries, K))
    if truth_file.is_file() and not np.array_equal(np.load(truth_file), truth):
        say(f"  note: {truth_file} differed from this run's exact search (rewritten)")
    np.save(truth_file, truth)
    base_qps = n_queries / exact_seconds
    rows.append(row("exact numpy f32 (BLAS)", truth, exact_seconds, n_queries, truth, base_qps, family="exact",
                    dim=dim, ram_bytes=flat_bytes, bytes_per_vector=flat_bytes / size))
    for ds in sorted({f[0] for f in settings["funnels"]}):
        (ids, _), seconds = timed(lambda: exact_search(corpus, queries, K, dim=ds))
        rows.append(row(f"truncated: exact at Ds={ds} alone (no rerank)", ids, seconds, n_queries, truth, base_qps,
                        family="truncated", shortlist_dim=ds))
    if hnsw:
        rows += usearch_rows(corpus, queries, truth, base_qps, repeats, cache / f"{name}_{size}")
    if peers:
        rows += faiss_rows(corpus, queries, truth, base_qps, repeats, settings, hnsw, cache / f"{name}_{size}")
    for ds, dtype, connectivity, sizes in settings["funnels"]:
        rows += funnel_rows(corpus, queries, truth, base_qps, repeats, ds, dtype, connectivity, sizes,
                            cache / f"{name}_{size}")
        gc.collect()   # each method's index is freed before the next one is loaded
    # Timed again at the end: other load during the first timing would flatter every speed-up,
    # so speed-ups are against the faster of the two.
    say("exact numpy at the full dim, timed again")
    _, seconds = timed(lambda: exact_search(corpus, queries, K))
    exact_qps = {"start": base_qps, "end": n_queries / seconds}
    best_exact = max(exact_qps.values())
    for r in rows:
        r["speedup_vs_exact"] = r["qps"] / best_exact
        if r.get("ram_bytes"):
            r["memory_ratio_vs_flat"] = flat_bytes / r["ram_bytes"]
    result = {"corpus": {"name": name, "size": size, "dim": dim, "queries": n_queries, "generator": {
                  "function": "synthetic_mrl_corpus", **options, "seed": 0}},
              "flat_f32_bytes": flat_bytes, "exact_qps": best_exact, "exact_qps_timings": exact_qps, "rows": rows}
    result["summary"] = summarise(rows)
    return result


def usearch_rows(corpus, queries, truth, base_qps, repeats, stem: Path) -> list[dict]:
    from mrl_deploy.retrieval import _usearch

    Index = _usearch().Index
    size, dim = corpus.shape
    say(f"usearch HNSW at the full dim ({dim}, f32, M=16, expansion_add=128)")

    def build():
        index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=16, expansion_add=128)
        for start in range(0, size, 65536):
            index.add(np.arange(start, min(start + 65536, size), dtype=np.uint64),
                      np.ascontiguousarray(corpus[start:start + 65536], dtype=np.float32), threads=0)
        return index

    path = stem.with_name(stem.name + "_usearch_full_M16.usearch")
    index, build_seconds = cached(path, build, lambda ix, p: ix.save(str(p)), lambda p: Index.restore(str(p)))
    nbytes = index.serialized_length
    out = []
    for ef in HNSW_EF:
        index.expansion_search = ef
        matches, seconds = timed(lambda: index.search(queries, K, threads=0), repeats)
        one = latency_ms(lambda q: index.search(q, K, threads=0), queries)
        out.append(row(f"usearch HNSW full-dim f32 M=16 ef={ef}", np.asarray(matches.keys).astype(np.int64), seconds,
                       len(queries), truth, base_qps, family="usearch-hnsw", peer=True, dim=dim, dtype="f32",
                       connectivity=16, expansion_search=ef, build_seconds=build_seconds, ram_bytes=nbytes,
                       bytes_per_vector=nbytes / size, latency_ms=one))
    return out


def faiss_rows(corpus, queries, truth, base_qps, repeats, settings, hnsw: bool, stem: Path) -> list[dict]:
    """faiss, as a user would run it: everything in RAM, OpenMP over all cores."""
    import faiss

    from mrl_deploy.retrieval import prefix

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    size, dim = corpus.shape
    flat_bytes = size * dim * 4
    out = []

    def hnsw_index(ds):
        def build():
            index = faiss.IndexHNSWFlat(ds, FAISS_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = FAISS_EF_CONSTRUCTION
            for start in range(0, size, 65536):
                index.add(prefix(corpus[start:start + 65536], ds))
            return index
        path = stem.with_name(f"{stem.name}_faiss_hnsw_{ds}_M{FAISS_M}.faiss")
        return cached(path, build, lambda ix, p: faiss.write_index(ix, str(p)), lambda p: faiss.read_index(str(p)))

    if hnsw:
        say(f"faiss IndexHNSWFlat at the full dim ({dim}, M={FAISS_M}, efConstruction={FAISS_EF_CONSTRUCTION})")
        index, build_seconds = hnsw_index(dim)
        nbytes = file_bytes(stem.with_name(f"{stem.name}_faiss_hnsw_{dim}_M{FAISS_M}.faiss"))
        q = prefix(queries, dim)
        for ef in HNSW_EF:
            index.hnsw.efSearch = ef
            (_, ids), seconds = timed(lambda: index.search(q, K), repeats)
            one = latency_ms(lambda x: index.search(x, K), q)
            out.append(row(f"faiss HNSWFlat full-dim M={FAISS_M} ef={ef}", ids, seconds, len(q), truth, base_qps,
                           family="faiss-hnsw", peer=True, dim=dim, connectivity=FAISS_M, expansion_search=ef,
                           build_seconds=build_seconds, ram_bytes=nbytes, bytes_per_vector=nbytes / size,
                           latency_ms=one))
    refine_data = None
    for ds, sizes in settings["prefix"]:
        say(f"faiss HNSW on the Ds={ds} prefix (M={FAISS_M}) + IndexRefineFlat at {dim}: the paper's method")
        base, build_seconds = hnsw_index(ds)
        base_bytes = file_bytes(stem.with_name(f"{stem.name}_faiss_hnsw_{ds}_M{FAISS_M}.faiss"))
        if refine_data is None:
            refine_data = np.ascontiguousarray(corpus, dtype=np.float32)   # the refine stage's copy, in RAM
        # queries come at the full dim: the HNSW sees their Ds prefix, re-normalised (as built)
        prefixed = faiss.IndexPreTransform(faiss.NormalizationTransform(ds, 2.0), base)
        prefixed.prepend_transform(faiss.RemapDimensionsTransform(dim, ds, False))
        index = faiss.IndexRefineFlat(prefixed, faiss.swig_ptr(refine_data))   # copies it into an IndexFlat
        for shortlist in sizes:
            base.hnsw.efSearch = shortlist
            index.k_factor = shortlist / K
            faiss.cvar.hnsw_stats.reset()
            (_, ids), seconds = timed(lambda: index.search(queries, K), repeats)
            distances = faiss.cvar.hnsw_stats.ndis / (len(queries) * max(1, repeats))   # work, whatever the load
            one = latency_ms(lambda x: index.search(x, K), queries)
            out.append(row(f"faiss HNSW Ds={ds} M={FAISS_M} k'={shortlist} + RefineFlat {dim}", ids, seconds,
                           len(queries), truth, base_qps, family="faiss-prefix-refine", peer=True, shortlist_dim=ds,
                           connectivity=FAISS_M, shortlist_size=shortlist, expansion_search=shortlist,
                           shortlist_distances=distances, build_seconds=build_seconds, ram_bytes=base_bytes + flat_bytes,
                           bytes_per_vector=(base_bytes + flat_bytes) / size, latency_ms=one))
    out += ivfpq_rows(corpus, queries, truth, base_qps, repeats, stem, refine_data)
    return out


def ivfpq_rows(corpus, queries, truth, base_qps, repeats, stem: Path, refine_data) -> list[dict]:
    import faiss

    size, dim = corpus.shape
    flat_bytes = size * dim * 4
    lists = IVFPQ.get("lists") or int(2 ** round(np.log2(max(16.0, 4 * np.sqrt(size)))))
    m, bits = IVFPQ["subquantizers"], IVFPQ["bits"]
    say(f"faiss IVF{lists},PQ{m}x{bits} + IndexRefineFlat at {dim}")

    def build():
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, lists, m, bits, faiss.METRIC_INNER_PRODUCT)
        train = np.ascontiguousarray(corpus[np.linspace(0, size - 1, min(size, 64 * lists)).astype(np.int64)],
                                     dtype=np.float32)
        index.train(train)
        for start in range(0, size, 65536):
            index.add(np.ascontiguousarray(corpus[start:start + 65536], dtype=np.float32))
        return index

    path = stem.with_name(f"{stem.name}_faiss_ivf{lists}_pq{m}x{bits}.faiss")
    base, build_seconds = cached(path, build, lambda ix, p: faiss.write_index(ix, str(p)),
                                 lambda p: faiss.read_index(str(p)))
    base_bytes = file_bytes(path)
    if refine_data is None:
        refine_data = np.ascontiguousarray(corpus, dtype=np.float32)
    index = faiss.IndexRefineFlat(base, faiss.swig_ptr(refine_data))
    out = []
    for probes in IVFPQ["probes"]:
        for factor in IVFPQ["k_factors"]:
            base.nprobe = min(probes, lists)
            index.k_factor = factor
            (_, ids), seconds = timed(lambda: index.search(queries, K), repeats)
            one = latency_ms(lambda x: index.search(x, K), queries)
            out.append(row(f"faiss IVF{lists},PQ{m} nprobe={base.nprobe} k'={factor * K} + RefineFlat {dim}", ids,
                           seconds, len(queries), truth, base_qps, family="faiss-ivfpq-refine", peer=True,
                           lists=lists, probes=base.nprobe, shortlist_size=factor * K, build_seconds=build_seconds,
                           ram_bytes=base_bytes + flat_bytes, bytes_per_vector=(base_bytes + flat_bytes) / size,
                           latency_ms=one))
    return out


def funnel_rows(corpus, queries, truth, base_qps, repeats, ds, dtype, connectivity, sizes, stem: Path) -> list[dict]:
    """AdaptiveIndex built from the memory-mapped corpus straight into its directory (the store
    streamed to disk), then loaded: the shortlist in RAM, the store memory-mapped."""
    from mrl_deploy.retrieval import AdaptiveIndex, rerank, shortlist_vectors

    size, dim = corpus.shape
    graph = f" M={connectivity}" if dtype != "ivf" else ""
    say(f"AdaptiveIndex Ds={ds} {dtype}{graph} -> Dr={dim}")
    path = stem.with_name(f"{stem.name}_funnel_{ds}_{dtype}" + (f"_M{connectivity}" if graph else ""))

    def build():
        return AdaptiveIndex.build(corpus, shortlist_dim=ds, rerank_dim=dim, dtype=dtype,
                                   connectivity=connectivity or 16, output=path.with_name(path.name + ".building"))

    def save(index, target):
        if target.exists():
            import shutil

            shutil.rmtree(target)
        os.replace(index._path, target)

    _, build_seconds = cached(path, build, save, lambda p: None)
    index = AdaptiveIndex.load(path, view=False)    # the shortlist index in RAM; the store memory-mapped
    ram = index.shortlist_bytes + index.keys.nbytes
    common = {"family": "funnel", "shortlist_dim": ds, "rerank_dim": dim, "dtype": dtype, "rerank_dtype": index.rerank_dtype,
              "build_seconds": build_seconds, "ram_bytes": ram, "bytes_per_vector": ram / size,
              "mapped_bytes": index.rerank_bytes, **({"connectivity": connectivity} if graph else
                                                     {"lists": index.settings["lists"]})}
    out = []
    q = np.asarray(queries, dtype=np.float32)
    for entry in sizes:
        shortlist, width = entry if isinstance(entry, tuple) else (entry, entry)
        (ids, _), seconds = timed(lambda: index.search(q, K, shortlist_size=shortlist, expansion_search=width), repeats)
        # the two stages apart: where the time goes
        (rows, _, counts), shortlist_seconds = timed(lambda: index._shortlist_search(q, shortlist, width), repeats)
        _, rerank_seconds = timed(lambda: rerank(index._store, q, rows, counts, dim, K), repeats)
        index._shortlist.expansion_search = width      # the shortlist's own count of its work, whatever the load
        matches = index._shortlist.search(shortlist_vectors(q, ds, dtype), shortlist, threads=0)
        one = latency_ms(lambda x: index.search(x, K, shortlist_size=shortlist, expansion_search=width), q)
        label = f"k'={shortlist}" + (f" probes={width}" if dtype == "ivf" else "")
        out.append(row(f"funnel Ds={ds} {dtype}{graph} {label} -> Dr={dim}", ids, seconds, len(q), truth, base_qps,
                       shortlist_size=shortlist, expansion_search=width, latency_ms=one,
                       shortlist_us=1e6 * shortlist_seconds / len(q), rerank_us=1e6 * rerank_seconds / len(q),
                       shortlist_distances=matches.computed_distances / len(q), **common))
    return out


def summarise(rows: list[dict]) -> dict:
    """At recall@10 >= 0.95: the fastest funnel, the fastest peer, and the issue's targets
    (QPS >= 1.5x the best peer's, resident bytes <= 1/4 of its)."""
    goal = TARGETS["recall_at_10"]
    funnels = [r for r in rows if r["family"] == "funnel" and r["recall_at_10"] >= goal]
    peers = [r for r in rows if r.get("peer") and r["recall_at_10"] >= goal]
    best = max(funnels, key=lambda r: r["qps"]) if funnels else None
    peer = max(peers, key=lambda r: r["qps"]) if peers else None
    out = {"recall_at_10": goal, "best_funnel": best and best["method"], "best_peer": peer and peer["method"]}
    if best:
        out.update(funnel_recall=best["recall_at_10"], funnel_qps=best["qps"], funnel_ram_bytes=best["ram_bytes"],
                   speedup_vs_exact=best["speedup_vs_exact"], memory_ratio_vs_flat=best["memory_ratio_vs_flat"])
    if peer:
        out.update(peer_recall=peer["recall_at_10"], peer_qps=peer["qps"], peer_ram_bytes=peer["ram_bytes"])
    if best and peer:
        out["qps_vs_best_peer"] = best["qps"] / peer["qps"]
        out["ram_vs_best_peer"] = best["ram_bytes"] / peer["ram_bytes"]
        out["meets"] = {"qps_vs_best_peer": out["qps_vs_best_peer"] >= TARGETS["qps_vs_best_peer"],
                        "ram_vs_best_peer": out["ram_vs_best_peer"] <= TARGETS["ram_vs_best_peer"],
                        "speedup_vs_exact": best["speedup_vs_exact"] >= TARGETS["speedup_vs_exact"],
                        "memory_ratio_vs_flat": best["memory_ratio_vs_flat"] >= TARGETS["memory_ratio_vs_flat"]}
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
    from mrl_deploy.checkpoint import load_checkpoint
    from mrl_deploy.train import embed

    net, meta = load_checkpoint(_checkpoint("digits"))
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    info = {"model": f"MRL CNN trained by mrl_deploy.train, {meta['full_dim']}-d, nesting {meta['nesting_dims']}",
            "corpus_split": "train", "query_split": "test"}
    return embed(net, train.x), embed(net, test.x), train.y, test.y, info


def bbc_vectors():
    from mrl_deploy.data import bbc_news_dir, load_dataset
    from mrl_deploy.checkpoint import load_checkpoint
    from mrl_deploy.encoder_cache import encode_texts
    from mrl_deploy.train import embed

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


# --- tables for benchmarks/README.md -------------------------------------------------------------------

def replace_blocks(blocks: dict[str, str], path: Path = ROOT / "README.md") -> None:
    """Replace each block of benchmarks/README.md between its <!-- NAME:begin/end --> markers."""
    text = path.read_text()
    for name, body in blocks.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1]
    path.write_text(text)


def _n(value, digits=0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def corpus_table(synth: dict) -> list[str]:
    size = synth["corpus"]["size"]
    lines = ["| method | recall@10 | QPS | vs exact | ms / query | RAM bytes / vector | mapped bytes / vector "
             "| build s | shortlist / rerank us per query | HNSW distances per query |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in synth["rows"]:
        stages = (f"{r['shortlist_us']:,.0f} / {r['rerank_us']:,.0f}" if "shortlist_us" in r else "")
        lines.append(f"| {r['method']} | {r['recall_at_10']:.4f} | {_n(r['qps'])} | {r['speedup_vs_exact']:.1f}x | "
                     f"{_n(r.get('latency_ms'), 2)} | {_n(r['ram_bytes'] / size if r.get('ram_bytes') else None)} | "
                     f"{_n(r['mapped_bytes'] / size if r.get('mapped_bytes') else None)} | "
                     f"{_n(r.get('build_seconds'))} | {stages} | {_n(r.get('shortlist_distances'))} |")
    return lines


def headline(result: dict) -> list[str]:
    lines = ["| corpus | best funnel at recall@10 >= 0.95 | best peer at recall@10 >= 0.95 | QPS ratio (target >= 1.5x)"
             " | RAM ratio (target <= 1/4) |", "|---|---|---|---:|---:|"]
    for name, synth in result["synthetic"].items():
        s = synth["summary"]
        funnel = (f"{s['best_funnel']}: {s['funnel_recall']:.3f} at {s['funnel_qps']:,.0f} QPS"
                  if s.get("best_funnel") else "none reached it")
        peer = (f"{s['best_peer']}: {s['peer_recall']:.3f} at {s['peer_qps']:,.0f} QPS"
                if s.get("best_peer") else "none reached it")
        met = s.get("meets", {})
        qps = (f"{s['qps_vs_best_peer']:.2f}x ({'met' if met['qps_vs_best_peer'] else '**missed**'})"
               if "qps_vs_best_peer" in s else "")
        ram = (f"{s['ram_vs_best_peer']:.3f} ({'met' if met['ram_vs_best_peer'] else '**missed**'})"
               if "ram_vs_best_peer" in s else "")
        lines.append(f"| {name}, {synth['corpus']['size']:,} x {synth['corpus']['dim']} | {funnel} | {peer} | {qps} | {ram} |")
    load = (result["machine"].get("load_average") or [None])[0], (result["machine"].get("load_average_end") or [None])[0]
    lines.append("")
    lines.append(f"{result['machine_name']}; load average {load[0]} at the start, {load[1]} at the end; "
                 f"`{result['command']}`.")
    return lines


# --- plot and main -------------------------------------------------------------------------------------

MARKERS = {"exact": "s", "truncated": "x", "usearch-hnsw": "^", "faiss-hnsw": "v", "faiss-prefix-refine": "D",
           "faiss-ivfpq-refine": "P", "funnel": "o"}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = list(result["synthetic"])
    fig, axes = plt.subplots(len(corpora), 2, figsize=(15, 5.5 * len(corpora)), squeeze=False)
    for (left, right), name in zip(axes, corpora):
        synth = result["synthetic"][name]
        for family, marker in MARKERS.items():
            rows = [r for r in synth["rows"] if r["family"] == family]
            if rows:
                left.scatter([r["qps"] for r in rows], [r["recall_at_10"] for r in rows], marker=marker, label=family)
        left.axhline(TARGETS["recall_at_10"], color="grey", ls="--", lw=0.8)
        left.set(xscale="log", xlabel="queries per second (batch, all cores)", ylabel="recall@10 vs exact full-dim",
                 title=f"{name}: {synth['corpus']['size']:,} x {synth['corpus']['dim']} synthetic MRL-like")
        left.legend(fontsize=8)
        sized = {}
        for r in synth["rows"]:
            if r.get("ram_bytes") and r["family"] != "truncated":
                label = r["method"].split(" k'=")[0].split(" ef=")[0].split(" nprobe=")[0]
                sized[label] = r["ram_bytes"] / synth["corpus"]["size"]
        right.barh(list(sized), list(sized.values()))
        right.set(xscale="log", xlabel="bytes per vector that must stay in RAM (funnel: its rerank store is "
                  "memory-mapped, not counted)")
        right.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"adaptive retrieval vs faiss and usearch, {result['machine_name']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(result: dict, output: Path, begun: float, plot) -> None:
    """The end of a benchmark run, for this script and retrieval_scale.py: its seconds and the
    load average at the end into `result`, then the JSON at `output` and `plot`'s PNG beside it."""
    from mrl_deploy.machine import machine_info

    result["seconds"] = time.perf_counter() - begun
    result["machine"]["load_average_end"] = machine_info()["load_average"]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    plot(result, output.with_suffix(".png"))
    say(f"wrote {output} and {output.with_suffix('.png')} in {result['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="synthetic corpus size (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=768, help="synthetic vector dim (default 768)")
    parser.add_argument("--queries", type=int, default=1000, help="synthetic queries (default 1000)")
    parser.add_argument("--corpora", default="easy,hard", help="synthetic corpora to run (default easy,hard)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting, best kept (default 2)")
    parser.add_argument("--no-hnsw", action="store_true", help="skip the full-dim HNSW indexes (slow to build)")
    parser.add_argument("--no-peers", action="store_true", help="skip faiss")
    parser.add_argument("--no-real", action="store_true", help="skip digits and bbc-news")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny corpora, one setting each, no real "
                        "corpora, results to .cache/")
    parser.add_argument("--cache", type=Path, default=CACHE / "retrieval", help="corpora, ground truth and indexes "
                        "(default benchmarks/.cache/retrieval)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/retrieval[_SIZE].json)")
    parser.add_argument("--update-readme", action="store_true", help="rewrite the retrieval tables of "
                        "benchmarks/README.md from the results (only the 1M run's)")
    args = parser.parse_args(argv)

    from mrl_deploy.machine import machine_info, machine_name

    names = [n.strip() for n in args.corpora.split(",") if n.strip()]
    unknown = [n for n in names if n not in CORPORA]
    if unknown or not names:
        parser.error(f"--corpora: choose from {', '.join(CORPORA)}")
    settings = SETTINGS
    if args.quick:
        args.size, args.queries, args.repeats, args.no_real = QUICK["size"], QUICK["queries"], QUICK["repeats"], True
        settings = QUICK["settings"]
        IVFPQ.update(QUICK["ivfpq"])
    name = "retrieval" if args.size == 1_000_000 else f"retrieval_{args.size // 1000}k"
    output = args.output or (CACHE / f"{name}_quick.json" if args.quick else RESULTS / f"{name}.json")
    machine = machine_info()
    begun = time.perf_counter()
    result = {"benchmark": "benchmarks/retrieval.py", "command": " ".join(sys.argv), "machine": machine,
              "machine_name": machine_name(machine), "k": K, "targets": TARGETS, "paper": PAPER, "synthetic": {}}
    for corpus in names:
        result["synthetic"][corpus] = synthetic(corpus, args.size, args.dim, args.queries, args.repeats,
                                                settings[corpus], not args.no_hnsw, not args.no_peers, args.cache)
        say(f"{corpus}: {json.dumps(result['synthetic'][corpus]['summary'])}")
    result["real"] = {} if args.no_real else real_corpora(["digits", "bbc-news"])
    write_results(result, output, begun, plot)
    if args.update_readme and not args.quick:
        blocks = {"retrieval:headline": "\n".join(headline(result))}
        blocks.update({f"retrieval:{name}": "\n".join(corpus_table(synth))
                       for name, synth in result["synthetic"].items()})
        replace_blocks(blocks)


if __name__ == "__main__":
    main()
