"""`mrl-deploy bench`: what each granularity costs and buys, on this machine.

    report = run_bench("artifacts/minilm", runtimes="ort-cpu,torch", batches=[1, 8, 64])

Per (runtime, variant, batch): warm-up, then timed runs for `duration` seconds: latency
min/p50/p90/p99/mean/std, throughput, peak memory, model load time. Per dim: bytes per vector,
head FLOPs, encoder FLOPs (the same at every dim), retrieval FLOPs per query at a corpus size,
and with data the quality (accuracy per head, recall@k of adaptive retrieval). Everything lands in
one JSON-ready dict with the machine it ran on (report.py prints, saves and plots it). Timing and
memory: timing.py; quality on data: quality.py; the machine: machine.py.

Needs numpy and onnxruntime; torch only for the torch runtime (and GPU timing with it)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import InputError, MRLDeployError, RuntimeUnavailableError, check_number, parse_integers
from .feeds import SAMPLE_TEXTS, artifact_feed
from .flops import FLOPS_UNIT, retrieval_flops
from .machine import machine_info
from .quality import load_quality_data, measure_quality
from .timing import cuda_event_timer, latency_stats, peak_rss_bytes, reset_peak_rss, rss_bytes, throughput, time_calls

SCHEMA = "mrl-deploy-bench/1"
DEFAULT_RUNTIMES = "ort-cpu,torch"
DEFAULT_BATCHES = (1, 8, 64)


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
