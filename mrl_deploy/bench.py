"""`mrl-deploy bench`: what each granularity costs and buys, on this machine.

    report = run_bench("artifacts/minilm", runtimes="ort-cpu,torch", batches=[1, 8, 64])

Per (runtime, variant, batch): warm-up, then timed runs for `duration` seconds: latency
min/p50/p90/p99/mean/std, throughput, peak memory, model load time. Per dim: bytes per vector,
head FLOPs, encoder FLOPs (the same at every dim), retrieval FLOPs per query at a corpus size,
and with data the quality (accuracy per head, recall@k of adaptive retrieval). Everything lands in
one JSON-ready dict with the machine it ran on (report.py prints, saves and plots it).

Needs numpy and onnxruntime; torch only for the torch runtime (and GPU timing with it)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .comparison import row_cosines
from .errors import DataError, InputError, MRLDeployError, RuntimeUnavailableError, check_number, parse_integers
from .feeds import SAMPLE_TEXTS, artifact_feed
from .flops import FLOPS_UNIT, retrieval_flops
from .machine import machine_info
from .metrics import recall_at_k

SCHEMA = "mrl-deploy-bench/1"
DEFAULT_RUNTIMES = "ort-cpu,torch"
DEFAULT_BATCHES = (1, 8, 64)
RECALL_K = 10


# --- statistics ------------------------------------------------------------------------------

def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Latency summary in milliseconds. Percentiles interpolate linearly between order statistics
    (numpy's default, the same as Python's statistics.quantiles(method='inclusive')); std is the
    population standard deviation of the runs."""
    values = np.asarray(seconds, dtype=np.float64) * 1e3
    if values.size == 0:
        raise ValueError("no timed runs")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "runs": int(values.size),
        "min_ms": float(values.min()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(values.max()),
        "mean_ms": float(values.mean()),
        "std_ms": float(values.std()),
    }


def throughput(batch: int, seconds: Sequence[float]) -> float:
    """Items per second over all timed runs (total items / total time, not the mean of rates)."""
    total = float(np.sum(seconds))
    return batch * len(seconds) / total if total > 0 else float("inf")


def time_calls(fn: Callable[[], Any], duration: float, *, warmup: float | None = None,
               warmup_runs: int = 3, min_runs: int = 5, max_runs: int = 1_000_000,
               timer: Callable[[Callable[[], Any]], float] | None = None) -> list[float]:
    """Call `fn` for `warmup` seconds (and at least `warmup_runs` times: first calls allocate,
    compile and fill caches), then time calls until `duration` seconds have passed and at least
    `min_runs` ran. `timer(fn)` returns one call's seconds (default: perf_counter around it; GPU
    timers synchronise)."""
    timer = timer or _wall_timer
    warmup = min(1.0, 0.2 * duration) if warmup is None else warmup
    started, done = time.perf_counter(), 0
    while done < warmup_runs or time.perf_counter() - started < warmup:
        fn()
        done += 1
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - started < duration):
        samples.append(timer(fn))
    return samples


def _wall_timer(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cuda_event_timer(torch: Any) -> Callable[[Callable[[], Any]], float]:
    """Time one call on the GPU with CUDA events, synchronising before and after, so queued
    kernels of the previous call are not billed to this one and this call's are not missed."""

    def timer(fn: Callable[[], Any]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3

    return timer


# --- memory ----------------------------------------------------------------------------------

def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """Resident set size of this process now (Linux /proc; None elsewhere)."""
    return _proc_status("VmRSS")


def peak_rss_bytes() -> int | None:
    """Peak resident set size since the process started or since reset_peak_rss()."""
    peak = _proc_status("VmHWM")
    if peak is None:
        try:
            import resource

            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        except (ImportError, OSError):
            return None
    return peak


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs), so
    each runtime's peak is its own and not the largest of everything before it. False if it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# --- per dim: bytes and FLOPs ----------------------------------------------------------------

def vector_bytes(dim: int) -> dict[str, int]:
    """Storage of one dim-d embedding: float32, float16, int8 (one byte per value), binary (one
    bit per value, as usearch's b1 and Hamming search store it)."""
    return {"f32": 4 * dim, "f16": 2 * dim, "i8": dim, "binary": (dim + 7) // 8}


def dim_costs(manifest: dict[str, Any], dims: Iterable[int], corpus_size: int, shortlist_size: int,
              rerank_dim: int | None = None) -> list[dict[str, Any]]:
    """Per dim: bytes per vector, head FLOPs, encoder FLOPs (one number for every dim: the
    encoder computes the full z whatever prefix is kept), and per-query retrieval FLOPs at
    `corpus_size`: exact search at this dim, and adaptive retrieval with this dim as the shortlist
    dim Ds and `rerank_dim` (default: the largest exported dim) as Dr."""
    flops = manifest.get("flops") or {}
    heads = {int(k): int(v) for k, v in (flops.get("heads") or {}).items()}
    encoder = flops.get("encoder")
    rerank_dim = max(manifest["exported_dims"]) if rerank_dim is None else check_number(rerank_dim, "rerank_dim", 1, integer=True)
    rows = []
    for dim in sorted(set(int(d) for d in dims)):
        rows.append({
            "dim": dim,
            "bytes_per_vector": vector_bytes(dim),
            "encoder_flops": int(encoder) if encoder is not None else None,
            "head_flops": heads.get(dim),
            "retrieval_flops": {**retrieval_flops(corpus_size, dim, rerank_dim, shortlist_size),
                                "shortlist_dim": dim, "rerank_dim": rerank_dim,
                                "shortlist_size": min(shortlist_size, corpus_size)},
        })
    return rows


def default_dims(manifest: dict[str, Any]) -> list[int]:
    """Every nesting dim up to the largest exported one, plus the exported dims: any prefix of an
    exported embedding is computable, and the nesting dims are the ones that were trained (the
    exported dims alone where the nesting dims are unknown)."""
    top = max(manifest["exported_dims"])
    return sorted({d for d in manifest.get("nesting_dims") or [] if d <= top} | set(manifest["exported_dims"]))


def check_bench_dims(manifest: dict[str, Any], dims: Iterable[int] | None) -> list[int]:
    from .dims import parse_dims

    chosen = parse_dims(list(dims)) if dims else []
    if not chosen:
        return default_dims(manifest)
    top = max(manifest["exported_dims"])
    too_big = [d for d in chosen if d > top]
    if too_big:
        raise InputError(f"dims {too_big} are above the largest exported dim {top}; re-export with --dims {max(too_big)}")
    return chosen


# --- runtimes --------------------------------------------------------------------------------

def parse_batches(value: str | Sequence[int] | None) -> list[int]:
    """'1,8,64' (or a list) -> the sorted distinct batch sizes, each >= 1; None: DEFAULT_BATCHES."""
    if value is None:
        return list(DEFAULT_BATCHES)
    batches = sorted(set(parse_integers(value, "batch sizes")))
    if not batches:
        raise InputError(f"no batch sizes given, got {value!r}: use e.g. 1,8,64")
    return batches


def bench_feed(artifact: Any, batch: int, *, seq_len: int = 128, inputs: Any = None, seed: int = 0) -> dict[str, np.ndarray]:
    """One batch to time: rows of `inputs` if given (cycled), else random tensors of the input
    shape, or for text models one sample text tokenized to exactly `seq_len` tokens per row
    (text latency depends on the length, so it is fixed and reported)."""
    if inputs is not None:
        return _cycle_rows(artifact, inputs, batch)
    if artifact.is_text:
        max_len = int(artifact.manifest["preprocessing"].get("max_seq_length", seq_len))
        length = max(2, min(seq_len, max_len))
        text = " ".join(SAMPLE_TEXTS * (1 + length // 8))
        feed = artifact.tokenize([text])
        ids = feed["input_ids"][:, :length].copy()
        ids[:, -1] = feed["input_ids"][0, int(feed["attention_mask"][0].sum()) - 1]  # keep the end token
        full = {"input_ids": np.repeat(ids, batch, axis=0),
                "attention_mask": np.ones((batch, length), dtype=np.int64)}
        if "token_type_ids" in artifact.input_names:
            full["token_type_ids"] = np.zeros((batch, length), dtype=np.int64)
        return {name: full[name] for name in artifact.input_names}
    return artifact_feed(artifact, batch, seed)


def _cycle_rows(artifact: Any, inputs: Any, batch: int) -> dict[str, np.ndarray]:
    if artifact.is_text:
        texts = list(inputs)
        return artifact.tokenize([texts[i % len(texts)] for i in range(batch)])
    feed = next(iter(artifact.batches(inputs, batch_size=10**9)))
    count = len(next(iter(feed.values())))
    index = np.arange(batch) % count
    return {name: np.ascontiguousarray(value[index]) for name, value in feed.items()}


def _runtime_memory(runner: Any) -> tuple[Callable[[], None], Callable[[], int | None], str]:
    """(reset, peak, kind): process RSS on CPU, torch.cuda peak allocation for torch on CUDA."""
    device = str(getattr(runner, "device", ""))
    torch = sys.modules.get("torch")
    if torch is not None and "cuda" in device.lower() and runner.name.startswith("torch") and torch.cuda.is_available():
        return torch.cuda.reset_peak_memory_stats, torch.cuda.max_memory_allocated, "cuda_max_allocated"
    return reset_peak_rss, peak_rss_bytes, "process_peak_rss"


def bench_runtime(artifact: Any, name: str, variant: str, batches: Sequence[int], *, duration: float,
                  threads: int | None, feeds: dict[int, dict[str, np.ndarray]],
                  outputs: list[str] | None = None, say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Load one runtime fresh (timed), then time every batch size; memory per batch is the peak
    since the runtime started loading."""
    from .runtimes import create_runtime

    baseline = rss_bytes()
    could_reset = reset_peak_rss()
    started = time.perf_counter()
    runner = create_runtime(name, artifact, variant=variant, threads=threads)
    runner.activate()
    load_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "runtime": name, "variant": variant, "device": str(runner.device), "threads": threads,
        "load_s": load_s, "rss_before_load_bytes": baseline, "rss_after_load_bytes": rss_bytes(),
        "peak_rss_reset": could_reset, "batches": [],
    }
    torch = sys.modules.get("torch")
    if name.startswith("torch") and torch is not None:
        result["torch_threads"] = torch.get_num_threads()
    try:
        reset_mem, peak_mem, mem_kind = _runtime_memory(runner)
        timer = cuda_event_timer(torch) if mem_kind == "cuda_max_allocated" else None
        result["memory_kind"] = mem_kind
        if mem_kind == "cuda_max_allocated":
            result["timing"] = "cuda events, synchronised"
        for batch in batches:
            feed = feeds[batch]
            say(f"{name} {variant} batch {batch}: timing for {duration:g} s")
            if mem_kind == "cuda_max_allocated":
                reset_mem()
            seconds = time_calls(lambda: runner.infer(feed, outputs), duration, timer=timer)
            result["batches"].append({
                "batch": batch,
                "latency": latency_stats(seconds),
                "latency_per_item_ms": float(np.median(seconds)) * 1e3 / batch,
                "throughput_items_s": throughput(batch, seconds),
                "peak_memory_bytes": peak_mem(),
            })
    finally:
        runner.deactivate()
    return result


# --- quality ---------------------------------------------------------------------------------

def load_quality_data(spec: str | Path, artifact: Any, limit: int | None = None) -> dict[str, Any]:
    """`--data`: `digits` / `bbc-news` / a .npz with x (and y), or inputs without labels (.npy, .txt:
    retrieval recall only). Labelled data as data.data_for_model gives it: the model's own
    training data (its recorded fingerprint) as the test split of its recorded split, any other
    data whole."""
    from . import data as dataset_module
    from .artifact import load_inputs

    text = str(spec)
    path = Path(text)
    x, y, split = None, None, "all"
    if path.suffix.lower() == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            labelled = "x" in data and "y" in data
        if labelled:  # the training module's reader: string labels, image layouts, checks
            x, y, split = _labelled(dataset_module, path, artifact)
        else:
            x = load_inputs(path, artifact)
    elif path.suffix.lower() in (".npy", ".txt") and path.is_file():
        x = load_inputs(path, artifact)
    else:
        x, y, split = _labelled(dataset_module, text, artifact)
    if y is not None:
        y = np.asarray(y).astype(np.int64).ravel()
        if len(y) != _count(x):
            raise DataError(f"{spec}: {len(y)} labels for {_count(x)} samples")
    if limit and _count(x) > limit:
        rng = np.random.default_rng(0)   # a seeded subset: bounded time, same rows every run
        keep = np.sort(rng.choice(_count(x), size=limit, replace=False))
        x = [x[i] for i in keep] if isinstance(x, list) else (
            {k: v[keep] for k, v in x.items()} if isinstance(x, dict) else np.asarray(x)[keep])
        y = y[keep] if y is not None else None
        split += f" (seeded subset of {limit})"
    return {"name": text, "x": x, "y": y, "split": split, "count": _count(x)}


def _count(x: Any) -> int:
    if isinstance(x, dict):
        return len(next(iter(x.values())))
    return len(x)


def _labelled(data_module: Any, spec: Any, artifact: Any) -> tuple[Any, Any, str]:
    """(x, y, split description): the test split of the model's own training data, else all of it."""
    dataset, usage = data_module.data_for_model(spec, artifact.manifest.get("training_data"))
    split = usage["split"] + (f" (seed {usage['seed']})" if usage["split"] != "all" else "")
    return dataset.x, dataset.y, split


def retrieval_recall(vectors: np.ndarray, dims: Iterable[int], *, k: int = RECALL_K, shortlist_size: int = 200,
                     queries: int = 200, seed: int = 0, use_index: bool = True) -> dict[str, Any]:
    """recall@k against exact search at the full (largest) dim, on the data itself: a seeded set of
    rows are the queries, the rest the corpus. Per dim d: `truncated` (exact search at d alone),
    `adaptive` (exhaustive shortlist of `shortlist_size` at Ds=d, rerank at the full dim: the
    FLOPs model N*Ds + k*Dr exactly) and, with `use_index`, `adaptive_hnsw` (AdaptiveIndex: usearch
    HNSW shortlist, the deployed path)."""
    from .artifact import renormalize

    vectors = np.asarray(vectors, dtype=np.float32)
    count, full = vectors.shape
    n_queries = min(queries, max(1, count // 5))
    if count - n_queries < k:
        raise DataError(f"recall@{k} needs more than {k + n_queries} samples, got {count}")
    order = np.random.default_rng(seed).permutation(count)
    q_rows, c_rows = order[:n_queries], np.sort(order[n_queries:])
    corpus, query = vectors[c_rows], vectors[q_rows]
    # On a small corpus a shortlist of 200 would be most of it and recall trivially 1: cap it at
    # 5% of the corpus (at least 2k), and report the size used.
    shortlist_size = max(k, min(shortlist_size, len(corpus), max(2 * k, len(corpus) // 20)))
    truth = _top_k(renormalize(query) @ renormalize(corpus).T, k)
    from .retrieval import AdaptiveIndex

    index_cls = AdaptiveIndex if use_index else None
    rows = []
    for dim in sorted(set(dims)):
        q_d, c_d = renormalize(query[:, :dim]), renormalize(corpus[:, :dim])
        scores = q_d @ c_d.T
        row = {"dim": dim, "truncated": recall_at_k(_top_k(scores, k), truth)}
        shortlist = _top_k(scores, shortlist_size)
        q_f, c_f = renormalize(query), renormalize(corpus)
        rerank = np.einsum("qd,qkd->qk", q_f, c_f[shortlist])
        row["adaptive"] = recall_at_k(np.take_along_axis(shortlist, _top_k(rerank, k), axis=1), truth)
        if index_cls is not None:
            row["adaptive_hnsw"], error = _hnsw_recall(index_cls, corpus, query, dim, full, k, shortlist_size, truth)
            if error:
                row["adaptive_hnsw_error"] = error
        rows.append(row)
    return {"k": k, "shortlist_size": shortlist_size, "rerank_dim": full, "queries": n_queries,
            "corpus": len(corpus), "reference": f"exact search at {full} dims", "per_dim": rows,
            "hnsw": index_cls is not None}


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _hnsw_recall(index_cls: Any, corpus, query, dim, full, k, shortlist_size, truth) -> tuple[float | None, str | None]:
    """(recall, None) or (None, why): a failing index is reported in the JSON, not fatal to the bench."""
    try:
        index = index_cls.build(corpus, shortlist_dim=dim, rerank_dim=full, dtype="f32")
        ids, _ = index.search(query, k=k, shortlist_size=shortlist_size)
    except Exception as exc:  # noqa: BLE001 - another module's failure must not lose the timings
        return None, f"{type(exc).__name__}: {exc}"
    return recall_at_k(np.asarray(ids), truth), None


def measure_quality(artifact: Any, data: dict[str, Any], dims: Sequence[int], *, runtime: str | None,
                    variant: str, threads: int | None, shortlist_size: int, variants: Sequence[str] = (),
                    say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Accuracy per head and retrieval recall with `variant`; for each of `variants` (e.g. the
    fp16/int8 models that were timed) its accuracy per head and its embeddings' cosine to
    `variant`'s, so an edge user sees what the faster model costs in quality."""
    quality: dict[str, Any] = {"data": data["name"], "split": data["split"], "samples": data["count"],
                               "runtime": runtime, "variant": variant}
    labelled = data["y"] is not None
    say(f"quality: encoding {data['count']} samples ({variant})")
    vectors, accuracy = _encode_and_score(artifact, data, dims, runtime, variant, threads)
    if accuracy is not None:
        quality["accuracy"] = accuracy
    others = {}
    for other in (v for v in variants if v != variant):
        say(f"quality: encoding {data['count']} samples ({other})")
        other_vectors, other_accuracy = _encode_and_score(artifact, data, dims, runtime, other, threads)
        cosine = row_cosines(other_vectors, vectors)
        others[other] = {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}
        if other_accuracy is not None:
            others[other]["accuracy"] = other_accuracy
    if others:
        quality["variants"] = others
    if labelled and not artifact.logit_dims:
        quality["accuracy_skipped"] = "the artifact has no classifier heads"
    say("quality: recall of adaptive retrieval")
    try:
        quality["retrieval"] = retrieval_recall(vectors, [d for d in dims if d <= vectors.shape[1]],
                                                shortlist_size=shortlist_size)
    except DataError as exc:
        quality["retrieval"] = None
        quality["retrieval_skipped"] = str(exc)
    return quality


def _encode_and_score(artifact: Any, data: dict[str, Any], dims: Sequence[int], runtime: str | None, variant: str,
                      threads: int | None) -> tuple[np.ndarray, dict[str, float] | None]:
    """One pass of the encoder: the largest exported embedding, and top-1 accuracy per head."""
    top = max(artifact.exported_dims)
    heads = [d for d in dims if d in artifact.logit_dims] if data["y"] is not None else []
    names = [f"embedding_{top}"] + [f"logits_{d}" for d in heads]
    outputs = artifact.run(data["x"], names, runtime=runtime, variant=variant, threads=threads)
    accuracy = None
    if heads:
        y = data["y"]
        classes = {o["dim"]: o.get("classes") for o in artifact.manifest["outputs"] if o["kind"] == "logits"}
        if y.size and classes.get(heads[0]) and (y.min() < 0 or y.max() >= classes[heads[0]]):
            raise DataError(f"labels range {y.min()}..{y.max()} but the heads have {classes[heads[0]]} classes")
        accuracy = {str(d): float(np.mean(outputs[f"logits_{d}"].argmax(axis=1) == y)) for d in heads}
    return outputs[f"embedding_{top}"].astype(np.float32, copy=False), accuracy


# --- everything ------------------------------------------------------------------------------

def run_bench(artifact_dir: str | Path, *, runtimes: str | Sequence[str] | None = DEFAULT_RUNTIMES,
              batches: str | Sequence[int] | None = DEFAULT_BATCHES, dims: Iterable[int] | None = None,
              data: str | Path | None = None, duration: float = 3.0, threads: int | None = None,
              corpus_size: int = 1_000_000, shortlist_size: int = 200, seq_len: int = 128,
              inputs: Any = None, limit: int | None = 2000, skip_unavailable: bool = False,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole benchmark of one artifact as a JSON-ready dict (see report.REPORT_SCHEMA).

    `skip_unavailable`: a runtime that cannot start here (torch without the export extra, CUDA
    without a GPU) is recorded under `skipped` with the reason instead of failing the run (the CLI
    sets it only for its default runtime list; a runtime asked for by name must run)."""
    from .artifact import Artifact
    from .runtimes import runtime_pairs

    say = progress or (lambda message: None)
    check_number(duration, "duration", 0, low_open=True)
    check_number(threads, "threads", 1, integer=True, optional=True)
    check_number(corpus_size, "corpus_size", 1, integer=True)
    check_number(shortlist_size, "shortlist_size", 1, integer=True)
    check_number(seq_len, "seq_len", 2, integer=True)     # a text takes at least its two special tokens
    check_number(limit, "limit", 1, integer=True, optional=True)
    artifact = Artifact.load(artifact_dir)
    manifest = artifact.manifest
    chosen_dims = check_bench_dims(manifest, dims)
    pairs = runtime_pairs(runtimes or DEFAULT_RUNTIMES, manifest)
    batch_sizes = parse_batches(batches)
    feeds = {b: bench_feed(artifact, b, seq_len=seq_len, inputs=inputs) for b in batch_sizes}
    first = next(iter(feeds.values()))
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "artifact": {
            "path": str(Path(artifact_dir).resolve()), "source": manifest["source"]["kind"],
            "full_dim": manifest["full_dim"], "exported_dims": manifest["exported_dims"],
            "nesting_dims": manifest["nesting_dims"], "variants": list(manifest.get("models", {})),
            "modality": manifest.get("modality", "tensor"),
        },
        "machine": machine_info(),
        "settings": {
            "runtimes": [f"{n}:{v}" for n, v in pairs], "batches": batch_sizes, "dims": chosen_dims,
            "duration_s": duration, "threads": threads, "corpus_size": corpus_size,
            "shortlist_size": shortlist_size,
            "input_shapes": {name: list(value.shape) for name, value in first.items()},
            "inputs": "user inputs" if inputs is not None else ("sample text" if artifact.is_text else "random"),
        },
        "runtimes": [],
        "skipped": [],
        "flops_unit": manifest.get("flops", {}).get("unit", FLOPS_UNIT),
        "encoder_flops_note": "the encoder runs in full at every dim: its FLOPs are the same for every dim",
        "dims": dim_costs(manifest, chosen_dims, corpus_size, shortlist_size),
        "quality": None,
    }
    if artifact.is_text:
        report["settings"]["sequence_length"] = int(first["input_ids"].shape[1])
        if manifest.get("flops", {}).get("sequence_length"):
            report["settings"]["flops_sequence_length"] = manifest["flops"]["sequence_length"]
    outputs = [o["name"] for o in manifest["outputs"]]
    for name, variant in pairs:
        say(f"loading {name} ({variant})")
        try:
            report["runtimes"].append(bench_runtime(artifact, name, variant, batch_sizes, duration=duration,
                                                    threads=threads, feeds=feeds, outputs=outputs, say=say))
        except (RuntimeUnavailableError, MRLDeployError) as exc:
            if not skip_unavailable:
                raise
            report["skipped"].append({"runtime": name, "variant": variant, "reason": str(exc)})
    _add_ratios(report)
    if data is not None:
        dataset = load_quality_data(data, artifact, limit=limit)
        timed = [v for n, v in pairs if n == "ort-cpu"]
        report["quality"] = measure_quality(artifact, dataset, chosen_dims, runtime="ort-cpu", variant="fp32",
                                            threads=threads, shortlist_size=shortlist_size, variants=timed, say=say)
    artifact.close()
    return report


def _add_ratios(report: dict[str, Any]) -> None:
    """p50 latency of every runtime relative to the ort-cpu fp32 run at each batch size (and
    ORT vs torch eager), measured in the same process, one after the other."""
    def p50(name: str, variant: str, batch: int) -> float | None:
        for run in report["runtimes"]:
            if run["runtime"] == name and run["variant"] == variant:
                for row in run["batches"]:
                    if row["batch"] == batch:
                        return row["latency"]["p50_ms"]
        return None

    ratios = []
    for batch in report["settings"]["batches"]:
        base = p50("ort-cpu", "fp32", batch)
        torch_p50 = p50("torch", "fp32", batch) or p50("torch-cuda", "fp32", batch)
        for run in report["runtimes"]:
            mine = p50(run["runtime"], run["variant"], batch)
            if mine is None:
                continue
            row = {"runtime": run["runtime"], "variant": run["variant"], "batch": batch}
            if base:
                row["vs_ort_fp32"] = mine / base
            if torch_p50:
                row["vs_torch_eager"] = mine / torch_p50
            ratios.append(row)
    report["ratios"] = ratios
