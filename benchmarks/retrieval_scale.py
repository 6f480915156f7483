"""How the cost of retrieval grows with the corpus: 100k, 1M and 10M x 768, and past RAM.

    .venv/bin/python benchmarks/retrieval_scale.py                       # 100k, 1M, 10M (f16 corpus file at 10M)
    .venv/bin/python benchmarks/retrieval_scale.py --sizes 100000,1000000
    .venv/bin/python benchmarks/retrieval_scale.py --quick               # smoke test: tiny sizes, writes to .cache/

Corpus: retrieval.py's synthetic MRL-like generator (`--corpus easy` by default, or `hard`), written
chunk by chunk to benchmarks/.cache/retrieval_scale/ as an .npy (f32; `--f16-from` sizes and larger
as f16, so 10M x 768 takes 15 GB of disk instead of 31) and reused by later runs; 1,000 queries.
Per size, in one run:
  exact        numpy BLAS over the memory-mapped corpus in chunks: the ground truth (cached with
               the seconds it took; at 10M the corpus does not fit in RAM and is read from disk)
  hnsw         usearch HNSW over the full-dim f32 vectors (M=16, ef=128), only where the corpus
               fits in RAM (N x d x 4 below half of it)
  funnel       AdaptiveIndex Ds=32 f16 M=8 -> 768 (the easy corpus' headline setting) and Ds=32 ivf
               (8 lists probed), k'=200 (`--funnels`); the first built from the memory-mapped .npy
               straight into its directory (`AdaptiveIndex.build(..., output=)`: the corpus read
               chunk by chunk, the rerank store streamed to its file), the others as another
               shortlist over its store (linked, not copied: 15 GB of disk each at 10M; their build
               time is the shortlist's alone). Searched three ways:
                 warm       the rerank store in the page cache
                 cold       the store evicted before every query batch (our mapping's pages dropped
                            with madvise, then posix_fadvise DONTNEED on the file; the resident
                            fraction checked with mincore): every candidate row is read from disk
                 prefetch   cold, with `index.prefetch = True`: each batch's candidate rows read
                            ahead, sorted, by 32 threads (mrl_deploy.retrieval.kernels.prefetch_rows)
Every build runs in a child process that reports its wall time and peak RSS (ru_maxrss): the
issue's bound is building 10M x 768 in under 8 GB. Index bytes: what is in RAM (HNSW) and what is
memory-mapped (rerank store). Writes results/retrieval_scale.json and .png; indexes are cached by
settings in the cache directory (delete it to rebuild).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from retrieval import (CACHE, K, RESULTS, corpus_options, latency_ms, replace_blocks, say, write_results,  # noqa: E402
                       synthetic_mrl_corpus, timed, write_synthetic)

SIZES = (100_000, 1_000_000, 10_000_000)
# the easy corpus' headline HNSW funnel, and the inverted-list one at the same Ds and k'
FUNNELS = [{"shortlist_dim": 32, "dtype": "f16", "connectivity": 8, "shortlist_size": 200},
           {"shortlist_dim": 32, "dtype": "ivf", "probes": 8, "shortlist_size": 200}]
HNSW = {"connectivity": 16, "expansion_add": 128, "expansion_search": 128}
RSS_LIMIT = 8 * 2**30
QUICK = {"sizes": (2000, 5000), "queries": 50}


# --- builds in a child process: wall time and peak RSS -------------------------------------------------

def child(kind: str, corpus_file: str, target: str, options: dict) -> None:
    """Build one index from the memory-mapped corpus into `target` and print its time and peak RSS."""
    corpus = np.load(corpus_file, mmap_mode="r")
    begun = time.perf_counter()
    if kind == "funnel" and options.get("store_from"):
        from mrl_deploy.retrieval import AdaptiveIndex

        # another shortlist over the rerank store of an index already built: the store is linked
        # into the new directory, not written again (10M x 768 f16 is 15 GB of disk per copy)
        AdaptiveIndex.load(options["store_from"]).with_shortlist(options["shortlist_dim"], options["dtype"]).save(target)
    elif kind == "funnel":
        from mrl_deploy.retrieval import AdaptiveIndex

        AdaptiveIndex.build(corpus, rerank_dim=corpus.shape[1], output=target,
                            **{k: options[k] for k in ("shortlist_dim", "dtype", "connectivity") if k in options})
    else:
        from mrl_deploy.retrieval import _usearch
        from mrl_deploy.retrieval.vectors import read_rows

        index = _usearch().Index(ndim=corpus.shape[1], metric="ip", dtype="f32",
                                 connectivity=options["connectivity"], expansion_add=options["expansion_add"])
        for start in range(0, len(corpus), 65536):
            block = read_rows(corpus, start, start + 65536)
            index.add(np.arange(start, start + len(block), dtype=np.uint64), block, threads=0)
        index.save(target + ".tmp")
        os.replace(target + ".tmp", target)
    seconds = time.perf_counter() - begun
    print(json.dumps({"build_seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "peak_rss_source": "VmHWM"}))


def peak_rss_bytes() -> int:
    """This process's own peak RSS: VmHWM, the high-water mark of its address space, which starts
    afresh at exec. Not ru_maxrss: Linux keeps that across exec, so a child started from a parent
    holding the corpus would report the parent's RSS at fork time (a 1M x 768 build reported 6 GiB
    that way)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak RSS is measured on Linux only")


def build(kind: str, corpus_file: Path, target: Path, options: dict) -> dict:
    """Run child() in a fresh process, once: the record beside `target` keeps its numbers."""
    record = target.with_name(target.name + ".build.json")
    if record.is_file() and target.exists():
        numbers = json.loads(record.read_text())
        if numbers.get("peak_rss_source") != "VmHWM":   # recorded with ru_maxrss, which exec does not reset
            numbers.pop("peak_rss_bytes", None)
        return numbers
    say(f"  building {kind} -> {target.name} (child process)")
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(corpus_file), str(target), json.dumps(options)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"building {target} failed:\n{out.stderr[-3000:]}")
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    record.write_text(json.dumps(numbers))
    return numbers


# --- the page cache --------------------------------------------------------------------------------------

def evict(store: np.memmap) -> None:
    """Drop the rerank store from this process (madvise) and from the page cache (fadvise)."""
    store._mmap.madvise(mmap.MADV_DONTNEED)
    fd = os.open(store.filename, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_fraction(path: str) -> float:
    """Share of the file's pages in the page cache (mincore on a fresh read-only map)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vector = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        libc.munmap(ctypes.c_void_p(address), ctypes.c_size_t(size))
        return float(np.frombuffer(vector, dtype=np.uint8).astype(bool).mean())
    finally:
        os.close(fd)


# --- one size ----------------------------------------------------------------------------------------------

def one_size(size: int, dim: int, name: str, n_queries: int, repeats: int, f16_from: int, cache: Path,
             funnels: list[dict]) -> dict:
    from mrl_deploy.metrics import recall_at_k
    from mrl_deploy.retrieval import _usearch, exact_search

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    dtype = "f16" if size >= f16_from else "f32"
    options = corpus_options(name, size)
    corpus_file = cache / f"{name}_{size}x{dim}_{dtype}.npy"
    say(f"{size:,} x {dim}: corpus ({dtype} file)")
    corpus = write_synthetic(corpus_file, size, dim, dtype=dtype, **options)
    queries = synthetic_mrl_corpus(n_queries, dim, stream=1, **options)
    out = {"size": size, "dim": dim, "corpus_dtype": dtype, "corpus_bytes": corpus_file.stat().st_size, "rows": []}

    truth_file = cache / f"{corpus_file.stem}.truth{n_queries}.npy"
    truth_record = truth_file.with_name(truth_file.name + ".json")
    if truth_file.is_file() and truth_record.is_file():
        truth, exact = np.load(truth_file), json.loads(truth_record.read_text())
        exact["measured"] = "in an earlier run (cached with the ground truth)"
    else:
        say("  exact search over the memory-mapped corpus (the ground truth)")
        begun = time.perf_counter()
        truth, _ = exact_search(corpus, queries, K)
        exact = {"seconds": time.perf_counter() - begun, "queries": n_queries}
        np.save(truth_file, truth)
        truth_record.write_text(json.dumps(exact))
        exact["measured"] = "in this run"
    out["rows"].append({"method": "exact numpy f32 (BLAS, chunks of the memory-mapped corpus)", "family": "exact",
                        "recall_at_10": 1.0, "qps": exact["queries"] / exact["seconds"], "measured": exact["measured"],
                        "ram_bytes": 0, "mapped_bytes": out["corpus_bytes"], "build_seconds": 0.0})

    if size * dim * 4 < memory / 2:
        target = cache / f"{corpus_file.stem}_usearch_full_M{HNSW['connectivity']}.usearch"
        built = build("hnsw", corpus_file, target, HNSW)
        index = _usearch().Index.restore(str(target))
        index.expansion_search = HNSW["expansion_search"]
        matches, seconds = timed(lambda: index.search(queries, K, threads=0), repeats)
        out["rows"].append({"method": f"usearch HNSW full-dim f32 M={HNSW['connectivity']} ef={HNSW['expansion_search']}",
                            "family": "hnsw", "recall_at_10": recall_at_k(np.asarray(matches.keys).astype(np.int64),
                                                                          truth, K),
                            "qps": n_queries / seconds, "latency_ms": latency_ms(lambda q: index.search(q, K), queries),
                            "ram_bytes": index.serialized_length, "mapped_bytes": 0, **built})
        del index
    else:
        out["rows"].append({"method": "usearch HNSW full-dim f32", "family": "hnsw",
                            "skipped": f"the f32 corpus ({size * dim * 4 / 2**30:.0f} GiB) does not fit in half the "
                                       f"RAM ({memory / 2**30:.0f} GiB)"})

    first = None
    for funnel in funnels:
        rows, directory = funnel_rows(funnel if first is None else {**funnel, "store_from": str(first)}, corpus_file,
                                      cache, queries, truth, size, dim, repeats)
        out["rows"] += rows
        first = first or directory
    for r in out["rows"]:
        if "qps" in r:
            say(f"  {r['method']:<62} recall@10 {r['recall_at_10']:.4f} {r['qps']:9.1f} QPS"
                + (f"  build {r['build_seconds']:.0f} s, peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB"
                   if r.get("peak_rss_bytes") else ""))
    return out


def funnel_rows(funnel: dict, corpus_file: Path, cache: Path, queries, truth, size: int, dim: int,
                repeats: int) -> tuple[list[dict], Path]:
    """One funnel built from the corpus file (child process; with "store_from": its shortlist only,
    over that index's store), searched warm, cold, cold + prefetch. Returns its rows and directory."""
    from mrl_deploy.metrics import recall_at_k
    from mrl_deploy.retrieval import AdaptiveIndex

    graph = funnel["dtype"] != "ivf"
    target = cache / (f"{corpus_file.stem}_funnel_{funnel['shortlist_dim']}_{funnel['dtype']}"
                      + (f"_M{funnel['connectivity']}" if graph else ""))
    built = build("funnel", corpus_file, target, funnel)
    index = AdaptiveIndex.load(target, view=False)
    k_prime = min(funnel["shortlist_size"], size)
    width = k_prime if graph else funnel["probes"]      # HNSW search width, or lists probed
    common = {"family": "funnel", "shortlist_dim": index.shortlist_dim, "dtype": index.dtype,
              "shortlist_size": k_prime, "expansion_search": width,
              "ram_bytes": index.shortlist_bytes + index.keys.nbytes, "mapped_bytes": index.rerank_bytes, **built,
              "built": ("the shortlist only, over the store of " + Path(funnel["store_from"]).name
                        if funnel.get("store_from") else "from the memory-mapped corpus, store streamed"),
              **({"connectivity": index.settings["connectivity"]} if graph else {"lists": index.settings["lists"]})}

    def search(q=queries):
        return index.search(q, K, shortlist_size=k_prime, expansion_search=width)[0]

    ids, seconds = timed(search, repeats)
    label = (f"funnel Ds={index.shortlist_dim} {index.dtype}" + (f" M={common['connectivity']}" if graph
             else f" probes={width}") + f" k'={k_prime} -> {dim}")
    n_queries = len(queries)
    out = [{"method": f"{label}, store warm", "store": "warm", "recall_at_10": recall_at_k(ids, truth, K),
            "qps": n_queries / seconds, "resident_before": resident_fraction(index._store.filename),
            "latency_ms": latency_ms(search, queries), **common}]
    for prefetch in (False, True):
        index.prefetch = prefetch
        best, resident = float("inf"), []
        for _ in range(max(1, repeats)):
            evict(index._store)
            resident.append(resident_fraction(index._store.filename))
            begun = time.perf_counter()
            ids = search()
            best = min(best, time.perf_counter() - begun)
        store = "cold, prefetch" if prefetch else "cold"
        out.append({"method": f"{label}, store {store}", "store": store, "recall_at_10": recall_at_k(ids, truth, K),
                    "qps": n_queries / best, "resident_before": max(resident), **common})
    return out, target


def curve_table(result: dict) -> list[str]:
    lines = ["| vectors | method | recall@10 | QPS | build s | peak RSS building | RAM bytes / vector | "
             "mapped bytes / vector |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for size in result["sizes"]:
        n = size["size"]
        for r in size["rows"]:
            if "skipped" in r:
                lines.append(f"| {n:,} | {r['method']} | skipped: {r['skipped']} | | | | | |")
                continue
            rss = f"{r['peak_rss_bytes'] / 2**30:.2f} GiB" if r.get("peak_rss_bytes") else ""
            lines.append(f"| {n:,} | {r['method']} | {r['recall_at_10']:.4f} | {r['qps']:,.0f} | "
                         f"{r.get('build_seconds', 0):,.0f} | {rss} | {r['ram_bytes'] / n:,.0f} | "
                         f"{r['mapped_bytes'] / n:,.0f} |")
    load = (result["machine"].get("load_average") or [None])[0], (result["machine"].get("load_average_end") or [None])[0]
    lines += ["", f"{result['machine_name']}; load average {load[0]} at the start, {load[1]} at the end; "
                  f"`{result['command']}`."]
    return lines


def billion_table(result: dict, target: int = 10**9) -> list[str]:
    """What 1B x 768 needs, scaled from the largest measured size (HNSW work ~ log N), per funnel."""
    size = result["sizes"][-1]
    n = size["size"]
    cores = result["machine"].get("cores_available") or 1
    log_factor = np.log(target) / np.log(n)
    groups: dict = {}
    for r in size["rows"]:
        if r.get("family") == "funnel":
            groups.setdefault(r["method"].split(", store")[0], {})[r["store"]] = r
    lines = [f"| funnel | at {n:,} (measured) | value | at 1B x 768 |", "|---|---|---:|---|"]
    for label, rows in groups.items():
        warm, cold, ahead = rows.get("warm"), rows.get("cold"), rows.get("cold, prefetch")
        k_prime = warm["shortlist_size"]
        lines += [f"| {label} | shortlist index + keys in RAM | {warm['ram_bytes'] / n:,.0f} B / vector | "
                  f"{warm['ram_bytes'] / n * target / 1e9:,.0f} GB of RAM |",
                  f"| | rerank store (f16, memory-mapped) | {warm['mapped_bytes'] / n:,.0f} B / vector | "
                  f"{warm['mapped_bytes'] / n * target / 1e12:,.2f} TB (SSD, or page cache) |",
                  f"| | QPS, store warm, {cores} cores | {warm['qps']:,.0f} (recall@10 {warm['recall_at_10']:.3f}) | "
                  f"{1e3 * cores / warm['qps']:.3f} core-ms per query at {n:,}; "
                  + (f"x {log_factor:.2f} (HNSW: log N) = {1e3 * cores / warm['qps'] * log_factor:.3f} core-ms at 1B |"
                     if warm["dtype"] != "ivf" else
                     "ivf: the lists grow with N (N/512, at most 65,536): shard so that probed lists stay short |")]
        if cold and ahead:
            best = max(cold["qps"], ahead["qps"])
            lines.append(f"| | QPS, store cold (evicted before each batch), plain / prefetch | {cold['qps']:,.0f} / "
                         f"{ahead['qps']:,.0f} | {best * k_prime:,.0f} candidate rows read per second here: per node, "
                         f"QPS = random reads per second / {k_prime} |")
        rss = f"{warm['peak_rss_bytes'] / 2**30:.2f} GiB" if warm.get("peak_rss_bytes") else "not measured"
        lines.append(f"| | build from a memory-mapped corpus | {warm['build_seconds']:,.0f} s, peak RSS "
                     f"{rss} | {cores * warm['build_seconds'] / n * 1e6:,.0f} "
                     f"core-seconds per 1M vectors |")
    return lines


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    series: dict = {}
    for size in result["sizes"]:
        for r in size["rows"]:
            if "qps" in r:
                series.setdefault(r["method"].split(" k'=")[0].split(" ef=")[0] + (f", {r['store']}" if "store" in r
                                                                                   else ""), []).append((size["size"], r))
    for label, points in series.items():
        xs = [p[0] for p in points]
        axes[0].plot(xs, [p[1]["qps"] for p in points], marker="o", label=label)
        if any(p[1].get("peak_rss_bytes") for p in points) and "cold" not in label:
            axes[1].plot(xs, [p[1].get("peak_rss_bytes", np.nan) / 2**30 for p in points], marker="o", label=label)
            axes[2].plot(xs, [p[1].get("build_seconds", np.nan) for p in points], marker="o", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="vectors", ylabel="QPS (batch, all cores)", title="search")
    axes[1].axhline(RSS_LIMIT / 2**30, color="grey", ls="--", lw=0.8, label="8 GiB")
    axes[1].set(xscale="log", xlabel="vectors", ylabel="peak RSS while building (GiB)", title="building: memory")
    axes[2].set(xscale="log", yscale="log", xlabel="vectors", ylabel="build seconds", title="building: time")
    for axis in axes:
        axis.legend(fontsize=7)
    fig.suptitle(f"cost by corpus size, {result['machine_name']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="corpus sizes (default 100k,1M,10M)")
    parser.add_argument("--dim", type=int, default=768, help="vector dim (default 768)")
    parser.add_argument("--corpus", default="easy", choices=("easy", "hard"), help="synthetic corpus (default easy)")
    parser.add_argument("--queries", type=int, default=1000, help="queries (default 1000)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting, best kept (default 2)")
    parser.add_argument("--f16-from", type=int, default=5_000_000, help="store corpora of this size and larger as "
                        "f16 files (default 5,000,000: 10M x 768 takes 15 GB, not 31)")
    parser.add_argument("--funnels", default=None, help="Ds:dtype:M:k' (HNSW) or Ds:ivf:PROBES:k', comma-separated "
                        "(default 32:f16:8:200,32:ivf:8:200)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, results to .cache/")
    parser.add_argument("--cache", type=Path, default=CACHE / "retrieval_scale", help="corpora and indexes "
                        "(default benchmarks/.cache/retrieval_scale)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default results/retrieval_scale.json)")
    parser.add_argument("--update-readme", action="store_true", help="rewrite the scale tables of "
                        "benchmarks/README.md from the results")
    args = parser.parse_args(argv)

    from mrl_deploy.machine import machine_info, machine_name

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    funnels = FUNNELS
    if args.funnels:
        funnels = []
        for text in args.funnels.split(","):
            ds, dtype, width, k_prime = text.split(":")
            funnels.append({"shortlist_dim": int(ds), "dtype": dtype, "shortlist_size": int(k_prime),
                            **({"probes": int(width)} if dtype == "ivf" else {"connectivity": int(width)})})
    if args.quick:
        sizes, args.queries, args.repeats = list(QUICK["sizes"]), QUICK["queries"], 1
        args.f16_from = QUICK["sizes"][-1]
    output = args.output or (CACHE / "retrieval_scale_quick.json" if args.quick else RESULTS / "retrieval_scale.json")
    args.cache.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    begun = time.perf_counter()
    result = {"benchmark": "benchmarks/retrieval_scale.py", "command": " ".join(sys.argv), "machine": machine,
              "machine_name": machine_name(machine), "k": K, "corpus": args.corpus, "funnels": funnels,
              "hnsw": HNSW, "rss_limit_bytes": RSS_LIMIT, "sizes": []}
    for size in sizes:
        result["sizes"].append(one_size(size, args.dim, args.corpus, args.queries, args.repeats, args.f16_from,
                                        args.cache, funnels))
    write_results(result, output, begun, plot)
    if args.update_readme and not args.quick:
        replace_blocks({"retrieval_scale:curve": "\n".join(curve_table(result)),
                        "retrieval_scale:billion": "\n".join(billion_table(result))})


if __name__ == "__main__":
    main()
