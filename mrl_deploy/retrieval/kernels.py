"""The compute kernels of retrieval: exact (brute-force) search, the ground truth, and the rerank
of a funnel stage; and the one door to usearch (`_usearch()`, which loads onnxruntime first).

Why the rerank calls usearch's SIMD kernel per query (a Python loop per query, never per
candidate): numpy's float16 -> float32 cast is scalar here (~0.5 G values/s), which made a
gather + astype + einsum rerank ~4x slower than usearch's f16 dot products on the gathered rows.
Queries are spread over a thread pool (gather and kernel release the GIL). Runtime path: numpy
and usearch only, never torch.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import check_number, require
from .vectors import prefix


def _usearch():
    """usearch.index (its compiled kernels are usearch.compiled)."""
    _onnxruntime_first()
    return require("usearch.index", "cpu", "adaptive retrieval")


def _onnxruntime_first() -> None:
    """onnxruntime 1.32 segfaults at import (in libstdc++'s codecvt) once usearch's extension is
    loaded; imported the other way round both work. An index is often searched with queries an
    artifact embeds in the same process, so load onnxruntime first where it is installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pass



# --- exact search (the ground truth) --------------------------------------------------------------

def exact_search(corpus: np.ndarray, queries: np.ndarray, k: int, *, dim: int | None = None,
                 chunk_rows: int = 16384, query_block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine top-k at `dim` (default: all columns) with numpy BLAS: corpus chunks
    (any dtype, memory-mapped is fine) are cast once and multiplied with every query block; a
    running top-k is merged with argpartition. Returns (rows int64 Q x k, scores float32 Q x k)."""
    dim = corpus.shape[1] if dim is None else check_number(dim, "dim", 1, corpus.shape[1], integer=True)
    check_number(k, "k", 1, integer=True)
    q = prefix(queries, dim)
    k = min(k, len(corpus))
    best_rows = np.full((len(q), k), -1, dtype=np.int64)
    best_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    for start in range(0, len(corpus), chunk_rows):
        block = prefix(corpus[start:start + chunk_rows], dim)
        for qs in range(0, len(q), query_block):
            scores = q[qs:qs + query_block] @ block.T
            _merge_top_k(best_rows[qs:qs + query_block], best_scores[qs:qs + query_block], scores, start, k)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, 1), np.take_along_axis(best_scores, order, 1)


def _merge_top_k(rows: np.ndarray, scores: np.ndarray, new: np.ndarray, offset: int, k: int) -> None:
    take = min(k, new.shape[1])
    part = np.argpartition(-new, take - 1, axis=1)[:, :take]
    all_scores = np.concatenate([scores, np.take_along_axis(new, part, 1)], axis=1)
    all_rows = np.concatenate([rows, part + offset], axis=1)
    keep = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
    rows[:] = np.take_along_axis(all_rows, keep, 1)
    scores[:] = np.take_along_axis(all_scores, keep, 1)


# --- the rerank kernel --------------------------------------------------------------------------

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="mrl-rerank")
        return _POOL


def rerank(store: np.ndarray, queries: np.ndarray, candidates: np.ndarray, counts: np.ndarray,
           dim: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score each query's candidate rows at `dim` (cosine of the re-normalised prefixes) and keep
    the best `size`: gather the rows from the (memory-mapped) store, one SIMD kernel call per
    query, queries spread over all cores. Returns (rows, scores, counts), rows padded with -1."""
    usearch = _usearch()
    compiled, metric = require("usearch.compiled", "cpu", "adaptive retrieval"), usearch.MetricKind
    # stored rows are unit at the store's dim: plain dot there, cosine for shorter prefixes
    kind = metric.IP if dim == store.shape[1] else metric.Cos
    q = prefix(queries, dim).astype(store.dtype)
    size = min(size, candidates.shape[1])
    rows = np.full((len(q), size), -1, dtype=np.int64)
    scores = np.full((len(q), size), np.nan, dtype=np.float32)
    kept = np.zeros(len(q), dtype=np.int64)

    def work(block: range) -> None:
        whole_rows = dim == store.shape[1]
        rows_buffer = np.empty((candidates.shape[1], store.shape[1]), dtype=store.dtype) if whole_rows else None
        for i in block:
            found = candidates[i, :counts[i]]
            if not len(found):
                continue
            if not whole_rows:
                gathered = np.ascontiguousarray(store[found, :dim])
            else:   # np.take into a reused buffer: 127 vs 189 ms for 1,000 x 400 rows of 768 f16 (store[found])
                gathered = np.take(store, found, axis=0, out=rows_buffer[:len(found)])
            keys, dist, count, *_ = compiled.exact_search(
                gathered, q[i:i + 1], min(size, len(found)), threads=1, metric_kind=kind)
            n = int(count[0])
            rows[i, :n] = found[keys[0, :n].astype(np.int64)]
            scores[i, :n] = 1.0 - dist[0, :n]
            kept[i] = n

    parallel(work, _blocks(len(q)))
    return rows, scores, kept


def parallel(work, parts: list) -> None:
    """work(part) for each non-empty part, on the shared pool when there is more than one."""
    parts = [p for p in parts if len(p)]
    if len(parts) == 1:
        work(parts[0])
    elif parts:
        list(_pool().map(work, parts))


def _blocks(count: int, per_block: int = 16) -> list[range]:
    """Query blocks for the pool: a few per worker, at least `per_block` queries each."""
    workers = os.cpu_count() or 1
    n = max(1, min(4 * workers, count // per_block))
    edges = np.linspace(0, count, n + 1).astype(int)
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:])]


# --- reading ahead from a store on disk --------------------------------------------------------------

_IO_POOL: ThreadPoolExecutor | None = None
PREFETCH_THREADS = 32       # reads in flight: an SSD serves many at once, a page fault one at a time


def _io_pool() -> ThreadPoolExecutor:
    global _IO_POOL
    with _POOL_LOCK:
        if _IO_POOL is None:
            _IO_POOL = ThreadPoolExecutor(max_workers=PREFETCH_THREADS, thread_name_prefix="mrl-prefetch")
        return _IO_POOL


def prefetch_rows(store: np.ndarray, rows: np.ndarray, dim: int) -> int:
    """Read the first `dim` columns of these store rows (-1: none) into the page cache before a
    rerank gathers them, for a memory-mapped store that does not sit in RAM: the rows sorted,
    adjacent ones merged into one read, the reads spread over PREFETCH_THREADS threads (os.pread
    releases the GIL) so the disk sees many requests at once, where the gather's page faults would
    ask for one page at a time. Returns the bytes read (0 for a store in RAM)."""
    if not isinstance(store, np.memmap) or store.filename is None:
        return 0
    wanted = np.unique(rows[rows >= 0])
    if not len(wanted):
        return 0
    row_bytes = store.shape[1] * store.itemsize
    first = np.concatenate([[0], np.flatnonzero(np.diff(wanted) > 1) + 1])     # runs of adjacent rows
    last = np.concatenate([first[1:], [len(wanted)]]) - 1
    starts = store.offset + wanted[first] * row_bytes
    lengths = (wanted[last] - wanted[first]) * row_bytes + dim * store.itemsize
    fd = os.open(store.filename, os.O_RDONLY)
    try:
        def read(part: slice) -> int:
            return sum(len(os.pread(fd, int(n), int(at))) for at, n in zip(starts[part], lengths[part]))

        edges = np.linspace(0, len(starts), min(len(starts), 4 * PREFETCH_THREADS) + 1).astype(int)
        return sum(_io_pool().map(read, [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]))
    finally:
        os.close(fd)

