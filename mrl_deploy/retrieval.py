"""Adaptive retrieval (MRL paper, section 4.3): shortlist with a usearch HNSW index over the first
Ds dims, rerank the shortlist with the first Dr dims (in general a funnel of several stages).

    from mrl_deploy import AdaptiveIndex
    index = AdaptiveIndex.build(vectors, shortlist_dim=64, rerank_dim=768, dtype="f16")
    ids, scores = index.search(queries, k=10, shortlist_size=200)
    ids, scores = index.search(queries, k=10, funnel=[(64, 800), (256, 100), (768, 10)])
    index.save("corpus.index"); index = AdaptiveIndex.load("corpus.index", view=True)

Vectors are N x d float32 in MRL order. Every stage truncates and re-normalises (cosine): the
shortlist index holds z[:Ds] / ||z[:Ds]||, the rerank store z[:Dr] / ||z[:Dr]|| (a prefix of it,
re-normalised, is z[:m] / ||z[:m]|| for any m <= Dr). Keys are non-negative int64 user ids;
missing results (a graph that returns fewer candidates than asked) are id -1, score NaN.

The index directory (written atomically: a temp sibling renamed into place):
  index.json          settings (dims, dtypes, graph parameters), tuned search defaults, each file's
                      size and sha256 (load checks the sizes; load(verify=True) the hashes)
  shortlist.usearch   the usearch HNSW index over the Ds-dim prefixes; its keys are row numbers
  rerank.npy          N x Dr rerank store (f16 by default), read memory-mapped: the full vectors
                      need not sit in RAM. Row i belongs to keys.npy[i] (usearch's own file keeps
                      vectors in slot order, not insertion order, so it cannot serve as this store).
  keys.npy            N int64 user ids
  documents.jsonl     optional: per row its text and metadata, one JSON object per line, and
  documents.offsets.npy   the N+1 byte offsets of those lines (a lookup reads only its rows)

Why the rerank calls usearch's SIMD kernel per query (a Python loop per query, never per
candidate): numpy's float16 -> float32 cast is scalar here (~0.5 G values/s), which made a
gather + astype + einsum rerank ~4x slower than usearch's f16 dot products on the gathered rows.
Queries are spread over a thread pool (gather and kernel release the GIL); the HNSW stage uses
all cores by itself. Runtime path: numpy and usearch only, never torch.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import ArtifactError, InputError, check_number, require
from .manifest import read_description, sha256_file, staged_directory, write_json_atomic

FORMAT = "mrl-deploy-index"
FORMAT_VERSION = 1
INDEX_JSON = "index.json"
SHORTLIST_FILE = "shortlist.usearch"
RERANK_FILE = "rerank.npy"
KEYS_FILE = "keys.npy"
DOCUMENTS_FILE = "documents.jsonl"
DOCUMENT_OFFSETS_FILE = "documents.offsets.npy"
SHORTLIST_DTYPES = ("f32", "f16", "i8", "b1")
RERANK_DTYPES = {"f16": np.float16, "f32": np.float32}
DEFAULTS = {"dtype": "f16", "rerank_dtype": "f16", "connectivity": 16, "expansion_add": 128,
            "expansion_search": 64, "shortlist_size": 200}
CHUNK_ROWS = 65536          # rows normalised / added / scanned at a time: bounded memory at 1M+

Progress = Callable[[int, int], None]
Funnel = Sequence[tuple[int, int]]


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


# --- normalisation and checks --------------------------------------------------------------------

def prefix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """z[:dim] / ||z[:dim]|| as float32 (the truncate-then-renormalise rule)."""
    part = np.asarray(vectors[:, :dim], dtype=np.float32)
    norms = np.linalg.norm(part, axis=1, keepdims=True)
    return part / np.maximum(norms, 1e-30)


def _as_matrix(vectors: Any, what: str) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim == 1 and array.size:
        array = array[None]
    if array.ndim != 2:
        raise InputError(f"{what} must be a 2-D array (rows x dims), got shape {array.shape}")
    if array.shape[0] == 0:
        raise InputError(f"no {what} given (0 rows)")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{what} must be real numbers, got dtype {array.dtype}")
    return array


def _check_finite(array: np.ndarray, what: str) -> None:
    for start in range(0, len(array), CHUNK_ROWS):
        block = np.asarray(array[start:start + CHUNK_ROWS], dtype=np.float32)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            raise InputError(f"{what} row {start + int(np.argmax(bad))} contains NaN or infinite values")


def _check_nonzero(array: np.ndarray, dim: int, what: str) -> None:
    """A zero prefix has no direction: cosine search cannot rank it."""
    for start in range(0, len(array), CHUNK_ROWS):
        norms = np.linalg.norm(np.asarray(array[start:start + CHUNK_ROWS, :dim], dtype=np.float32), axis=1)
        if (norms == 0).any():
            raise InputError(f"{what} row {start + int(np.argmax(norms == 0))} is all zeros in its first {dim} dims")


def _check_keys(keys: Any, count: int, existing: np.ndarray | None = None) -> np.ndarray:
    keys = np.asarray(keys)
    if keys.shape != (count,):
        raise InputError(f"keys must be one id per vector ({count}), got shape {keys.shape}")
    if keys.size and not np.issubdtype(keys.dtype, np.integer):
        raise InputError(f"keys must be integers, got dtype {keys.dtype}")
    keys = keys.astype(np.int64)
    if keys.size and keys.min() < 0:
        raise InputError("keys must be non-negative (-1 marks a missing result)")
    if len(np.unique(keys)) != count:
        raise InputError("keys must be unique")
    if existing is not None and np.isin(keys, existing).any():
        raise InputError(f"key {int(keys[np.isin(keys, existing)][0])} is already in the index")
    return keys


def parse_funnel(text: str) -> list[tuple[int, int]]:
    """'16:800,64:200,768:10' -> [(16, 800), (64, 200), (768, 10)]."""
    stages = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            dim, size = (int(v) for v in part.split(":"))
        except ValueError:
            raise InputError(f"funnel stage {part!r} is not DIM:SIZE (e.g. 16:800,64:200,768:10)") from None
        stages.append((dim, size))
    if not stages:
        raise InputError("empty funnel: give stages as DIM:SIZE,... e.g. 16:800,64:200,768:10")
    return stages


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
        for i in block:
            found = candidates[i, :counts[i]]
            if not len(found):
                continue
            gathered = store[found, :dim] if dim < store.shape[1] else store[found]
            keys, dist, count, *_ = compiled.exact_search(
                np.ascontiguousarray(gathered), q[i:i + 1], min(size, len(found)), threads=1, metric_kind=kind)
            n = int(count[0])
            rows[i, :n] = found[keys[0, :n].astype(np.int64)]
            scores[i, :n] = 1.0 - dist[0, :n]
            kept[i] = n

    blocks = _blocks(len(q))
    if len(blocks) == 1:
        work(blocks[0])
    else:
        list(_pool().map(work, blocks))
    return rows, scores, kept


def _blocks(count: int, per_block: int = 16) -> list[range]:
    """Query blocks for the pool: a few per worker, at least `per_block` queries each."""
    workers = os.cpu_count() or 1
    n = max(1, min(4 * workers, count // per_block))
    edges = np.linspace(0, count, n + 1).astype(int)
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:])]


# --- the index ------------------------------------------------------------------------------------

class AdaptiveIndex:
    """A usearch HNSW shortlist over Ds-dim prefixes plus a rerank store of Dr-dim prefixes."""

    def __init__(self, settings: dict[str, Any], shortlist: Any, store: np.ndarray, keys: np.ndarray,
                 *, path: Path | None = None, view: bool = False, documents: "DocumentStore | None" = None):
        self.settings = settings
        self._shortlist = shortlist
        # The rerank store and keys, published together as one tuple: a search reads it once and
        # sees a consistent pair however adds interleave (see add()).
        self._rows = (store, keys)
        self._documents = documents    # texts / metadata per row, or None
        self._key_order: tuple | None = None   # (keys, their argsort), for lookups by id
        self._path = path              # where the store / keys files came from (unchanged since)
        # which files those were: a later save over `path` replaces them, and must not be linked
        self._identities = {name: _identity(path / name) for name in (RERANK_FILE, KEYS_FILE)} if path else {}
        self._view = view
        # The HNSW graph: expansion_search is index-wide state (set + search together), and usearch
        # may grow its storage while adding, which a concurrent search must not see half done.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one add() or save() at a time: keys and row numbers

    _store = property(lambda self: self._rows[0])
    _keys = property(lambda self: self._rows[1])

    # --- what it holds ---------------------------------------------------------------------------
    shortlist_dim = property(lambda self: int(self.settings["shortlist_dim"]))
    rerank_dim = property(lambda self: int(self.settings["rerank_dim"]))
    full_dim = property(lambda self: int(self.settings["full_dim"]))
    dtype = property(lambda self: self.settings["dtype"])
    rerank_dtype = property(lambda self: self.settings["rerank_dtype"])
    keys = property(lambda self: self._keys)
    defaults = property(lambda self: self.settings["defaults"])

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def has_documents(self) -> bool:
        """Whether the index keeps a text and / or metadata per row (`documents`)."""
        return self._documents is not None

    def documents(self, ids: Any) -> list:
        """The stored {"text", "metadata"} of each id, nested like `ids` (a search's Q x k ids);
        None for -1 (a missing result) and for an index without documents."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.reshape(-1)
        found: list = [None] * len(flat)
        keys = self._keys   # one snapshot: an add() may publish new keys meanwhile
        if self._documents is not None and len(keys):
            cached = self._key_order
            if cached is None or cached[0] is not keys:
                cached = self._key_order = (keys, np.argsort(keys, kind="stable"))
            order = cached[1]
            sorted_keys = keys[order]
            at = np.minimum(np.searchsorted(sorted_keys, flat), len(sorted_keys) - 1)
            known = (flat >= 0) & (sorted_keys[at] == flat)
            rows = order[at[known]]
            for i, document in zip(np.flatnonzero(known), self._documents.get(rows)):
                found[i] = document
        nested = np.empty(len(found), dtype=object)
        nested[:] = found
        return nested.reshape(ids.shape).tolist()

    @property
    def shortlist_bytes(self) -> int:
        """Bytes of the HNSW shortlist index (vectors + graph), as saved."""
        return int(self._shortlist.serialized_length)

    @property
    def rerank_bytes(self) -> int:
        return int(self._store.nbytes)

    def __repr__(self) -> str:
        return (f"AdaptiveIndex({len(self)} vectors, shortlist {self.shortlist_dim}-d {self.dtype}, "
                f"rerank {self.rerank_dim}-d {self.rerank_dtype})")

    # --- building -------------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: Any, *, shortlist_dim: int | None = None, rerank_dim: int | None = None,
              dtype: str = DEFAULTS["dtype"], rerank_dtype: str = DEFAULTS["rerank_dtype"], keys: Any = None,
              connectivity: int = DEFAULTS["connectivity"], expansion_add: int = DEFAULTS["expansion_add"],
              expansion_search: int = DEFAULTS["expansion_search"],
              shortlist_size: int = DEFAULTS["shortlist_size"], progress: Progress | None = None,
              texts: Sequence[str] | None = None, metadata: Sequence[Any] | None = None) -> "AdaptiveIndex":
        """Index N x d MRL vectors: an HNSW graph over the first `shortlist_dim` dims (default
        min(64, d/4), at least 8), a rerank store of the first `rerank_dim` (default d). `texts`
        and / or `metadata` (one JSON object per vector) are kept beside them (`documents`)."""
        vectors = _as_matrix(vectors, "vectors")
        full = int(vectors.shape[1])
        rerank_dim = full if rerank_dim is None else int(check_number(rerank_dim, "rerank dim", 1, integer=True))
        shortlist_dim = (default_shortlist_dim(min(rerank_dim, full)) if shortlist_dim is None
                         else int(check_number(shortlist_dim, "shortlist dim", 1, integer=True)))
        settings = _settings(full, shortlist_dim, rerank_dim, dtype, rerank_dtype, connectivity, expansion_add,
                             expansion_search, shortlist_size)
        _check_vectors(vectors, settings)
        keys = _check_keys(np.arange(len(vectors)) if keys is None else keys, len(vectors))
        lines = document_lines(texts, metadata, len(vectors))
        store = np.empty((len(vectors), rerank_dim), dtype=RERANK_DTYPES[rerank_dtype])
        for start in range(0, len(vectors), CHUNK_ROWS):
            store[start:start + CHUNK_ROWS] = prefix(vectors[start:start + CHUNK_ROWS], rerank_dim)
        shortlist = new_shortlist_index(settings)
        index = cls(settings, shortlist, store, keys, documents=None if lines is None else DocumentStore(added=lines))
        index._add_shortlist(vectors, 0, progress)
        return index

    def add(self, vectors: Any, keys: Any = None, progress: Progress | None = None,
            texts: Sequence[str] | None = None, metadata: Sequence[Any] | None = None) -> np.ndarray:
        """Append vectors (ids default to max id + 1, ...); returns their keys. The rerank store
        becomes an in-memory array: save() to persist. An index with documents needs `texts` and
        / or `metadata` for the new rows too; one without cannot take them."""
        if self._view:
            raise InputError("this index was loaded with view=True (memory-mapped, read-only): "
                             "load it with view=False to add vectors")
        vectors = _as_matrix(vectors, "vectors")
        _check_vectors(vectors, self.settings)
        lines = document_lines(texts, metadata, len(vectors))
        if (lines is None) != (self._documents is None):
            raise InputError("this index keeps a text / metadata per vector: give them for the new vectors too"
                             if lines is None else
                             "this index has no document store (it was built without texts or metadata): "
                             "rebuild it with them to keep texts")
        with self._write_lock:
            store, existing = self._rows
            start = int(existing.max()) + 1 if len(existing) else 0
            keys = _check_keys(np.arange(start, start + len(vectors)) if keys is None else keys, len(vectors), existing)
            first = len(existing)
            added = np.empty((len(vectors), self.rerank_dim), dtype=store.dtype)
            for s in range(0, len(vectors), CHUNK_ROWS):
                added[s:s + CHUNK_ROWS] = prefix(vectors[s:s + CHUNK_ROWS], self.rerank_dim)
            # Documents, then rows, then the graph: whatever the graph returns to a concurrent
            # search is already in the store, the keys and the documents (a search drops graph
            # rows past its own snapshot of the rows).
            if lines is not None:
                self._documents.extend(lines)
            self._rows = (np.concatenate([store, added]), np.concatenate([existing, keys]))
            self._path, self._identities = None, {}
            self.settings["count"] = first + len(keys)
            self._add_shortlist(vectors, first, progress)
        return keys

    def _add_shortlist(self, vectors: np.ndarray, first: int, progress: Progress | None) -> None:
        for start in range(0, len(vectors), CHUNK_ROWS):
            block = shortlist_vectors(vectors[start:start + CHUNK_ROWS], self.shortlist_dim, self.dtype)
            with self._lock:  # one chunk at a time: searches wait for a chunk, not for the whole add
                self._shortlist.add(np.arange(first + start, first + start + len(block), dtype=np.uint64), block,
                                    threads=0)
            if progress:
                progress(min(start + CHUNK_ROWS, len(vectors)), len(vectors))

    # --- searching ------------------------------------------------------------------------------
    def search(self, queries: Any, k: int = 10, *, shortlist_size: int | None = None,
               funnel: Funnel | str | None = None, exact: bool = False,
               expansion_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids int64 Q x k, cosine scores float32 Q x k) for Q queries of the index's dim.

        Default: HNSW shortlist of `shortlist_size` at Ds, reranked at Dr. `funnel`: stages
        (dim, size) whose first dim is Ds (the HNSW stage) and each later stage reranks the
        survivors at its dim keeping `size`. `exact`: brute force at Dr (the ground truth)."""
        store, keys = self._rows   # one consistent snapshot for the whole search
        q = self._check_queries(queries, k, len(keys))
        if exact:
            return self._exact(store, keys, q, k)
        stages = self.plan(k, shortlist_size=shortlist_size, funnel=funnel, count=len(keys))
        rows, scores = self._run(store, q, stages, expansion_search)
        return _ids(keys, rows[:, :k]), scores[:, :k]

    def funnel(self, queries: Any, stages: Funnel | str, k: int | None = None,
               expansion_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """search() with a funnel; k defaults to the last stage's size."""
        stages = parse_funnel(stages) if isinstance(stages, str) else list(stages)
        k = (int(stages[-1][1]) if stages else 10) if k is None else k
        return self.search(queries, k, funnel=stages, expansion_search=expansion_search)

    def exact(self, queries: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force cosine search at Dr over the rerank store (numpy BLAS, chunked)."""
        store, keys = self._rows
        return self._exact(store, keys, self._check_queries(queries, k, len(keys)), k)

    def _exact(self, store: np.ndarray, keys: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = exact_search(store, q[:, :self.rerank_dim], k)
        return _ids(keys, rows), scores

    def plan(self, k: int, *, shortlist_size: int | None = None, funnel: Funnel | str | None = None,
             count: int | None = None) -> list[tuple[int, int]]:
        """The stages a search runs: validated (dim, size) pairs, sizes clipped to the corpus
        (`count` vectors; default: the index's size now)."""
        if funnel is not None and shortlist_size is not None:
            raise InputError("give a shortlist size or a funnel, not both")
        if funnel is None:
            check_number(shortlist_size, "shortlist_size", 1, integer=True, optional=True)
            size = int(self.defaults["shortlist_size"] if shortlist_size is None else shortlist_size)
            if size < k:
                raise InputError(f"shortlist size {size} is smaller than k={k}")
            funnel = [(self.shortlist_dim, size), (self.rerank_dim, k)]
        stages = parse_funnel(funnel) if isinstance(funnel, str) else [(int(d), int(s)) for d, s in funnel]
        _check_funnel(stages, k, self.shortlist_dim, self.rerank_dim)
        count = len(self) if count is None else count
        return [(dim, min(size, count)) for dim, size in stages]

    def _run(self, store: np.ndarray, q: np.ndarray, stages: list[tuple[int, int]], expansion_search: int | None):
        dim, size = stages[0]
        rows, scores, counts = self._shortlist_search(q, size, expansion_search, len(store))
        for dim, size in stages[1:]:
            rows, scores, counts = rerank(store, q, rows, counts, dim, size)
        return rows, scores

    def _shortlist_search(self, q: np.ndarray, size: int, expansion_search: int | None, count: int | None = None):
        """HNSW top-`size` rows per query; rows at or past `count` (added after the caller's
        snapshot of the store) are dropped, the rest moved to the front."""
        block = shortlist_vectors(q, self.shortlist_dim, self.dtype)
        check_number(expansion_search, "expansion_search", 1, integer=True, optional=True)
        ef = int(self.defaults.get("expansion_search", DEFAULTS["expansion_search"]) if expansion_search is None
                 else expansion_search)
        with self._lock:
            self._shortlist.expansion_search = ef
            matches = self._shortlist.search(block, size, threads=0)
        keys, distances = _padded(matches.keys, size), _padded(matches.distances, size)
        # one query gives a Matches cut to its count; a batch pads with key 0 and NaN: use counts
        counts = np.asarray(getattr(matches, "counts", [len(matches.keys)]), dtype=np.int64).reshape(-1)
        valid = np.arange(size)[None, :] < counts[:, None]
        if count is not None:
            valid &= keys.astype(np.int64) < count
            if not valid.all():
                order = np.argsort(~valid, axis=1, kind="stable")   # kept rows first, in rank order
                keys, distances, valid = (np.take_along_axis(a, order, 1) for a in (keys, distances, valid))
                counts = valid.sum(axis=1)
        rows = np.where(valid, keys.astype(np.int64), -1)
        scale = 2.0 / self.shortlist_dim if self.dtype == "b1" else 1.0   # hamming -> agreement in [-1, 1]
        scores = np.where(valid, 1.0 - scale * distances, np.nan).astype(np.float32)
        return rows, scores, counts

    def _check_queries(self, queries: Any, k: int, count: int | None = None) -> np.ndarray:
        q = _as_matrix(queries, "queries")
        if not self.rerank_dim <= q.shape[1] <= self.full_dim:
            expected = self.full_dim if self.rerank_dim == self.full_dim else f"{self.rerank_dim}..{self.full_dim}"
            raise InputError(f"queries have {q.shape[1]} dims; this index takes {expected}")
        _check_finite(q, "query")
        _check_nonzero(q, self.shortlist_dim, "query")
        check_number(k, "k", 1, integer=True)
        count = len(self) if count is None else count
        if k > count:
            raise InputError(f"k={k} is larger than the corpus ({count} vectors)")
        return np.asarray(q, dtype=np.float32)

    # --- saving and loading -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index directory atomically; an index already at `path` stays intact until the
        new one is complete (a failure leaves it as it was)."""
        target = Path(path).resolve()
        with self._write_lock, staged_directory(target, INDEX_JSON, "an mrl-deploy index", InputError) as staging:
            store, keys = self._rows
            self._shortlist.save(str(staging / SHORTLIST_FILE))
            linked = [name for name, array in ((RERANK_FILE, store), (KEYS_FILE, keys))
                      if self._write_array(staging, name, array)]
            if self._documents is not None:
                self._documents.write(staging)
            previous = self.settings.get("files", {})
            files = {}
            for name in (SHORTLIST_FILE, RERANK_FILE, KEYS_FILE) + self._document_files():
                known = previous.get(name) if name in linked else None  # the very same file: its hash stands
                digest = known.get("sha256") if isinstance(known, dict) else None
                files[name] = {"bytes": (staging / name).stat().st_size, "sha256": digest or sha256_file(staging / name)}
            settings = dict(self.settings, count=len(keys), files=files)
            write_json_atomic(staging / INDEX_JSON, settings)
        self.settings = settings
        self._path = target
        self._identities = {name: _identity(target / name) for name in (RERANK_FILE, KEYS_FILE)}
        if self._documents is not None:
            self._documents = DocumentStore.open(target, len(self))
        return target

    def _document_files(self) -> tuple[str, ...]:
        return (DOCUMENTS_FILE, DOCUMENT_OFFSETS_FILE) if self._documents is not None else ()

    def _write_array(self, directory: Path, name: str, array: np.ndarray) -> bool:
        """Write `array` as directory/name; True if it was hard-linked from the file it maps."""
        source = self._path / name if self._path is not None else None
        if source is not None and _identity(source) == self._identities.get(name):
            try:     # still the very file this array maps: a hard link instead of copying gigabytes
                os.link(source, directory / name)
                return True
            except OSError:
                pass
        _save_npy(directory / name, array)
        return False

    @classmethod
    def load(cls, path: str | os.PathLike, view: bool = True, verify: bool = False) -> "AdaptiveIndex":
        """Open an index directory. view=True memory-maps the HNSW file (read-only, instant);
        view=False reads it into RAM (then add() works). The rerank store is memory-mapped.

        Every load checks index.json and each file's size (cheap at any size); verify=True also
        checks each file's sha256 against index.json (reads every byte: seconds per GB)."""
        path = Path(path)
        settings = read_settings(path)
        if verify:
            verify_index_files(path, settings)
        usearch = _usearch()
        try:
            shortlist = usearch.Index.restore(str(path / SHORTLIST_FILE), view=view)
            store = np.load(path / RERANK_FILE, mmap_mode="r")
            keys = np.load(path / KEYS_FILE)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{path} is a damaged index: {str(exc).splitlines()[0]}") from None
        _check_loaded(path, settings, shortlist, store, keys)
        documents = DocumentStore.open(path, len(keys)) if DOCUMENTS_FILE in settings.get("files", {}) else None
        return cls(settings, shortlist, store, keys, path=path.resolve(), view=view, documents=documents)

    def save_defaults(self, path: str | os.PathLike, **defaults: Any) -> None:
        """Update the tuned search defaults (shortlist_size, expansion_search, ...) of a saved index."""
        self.settings["defaults"] = {**self.defaults, **defaults}
        target = Path(path)
        settings = read_settings(target)
        settings["defaults"] = self.settings["defaults"]
        if "tuned" in self.settings:
            settings["tuned"] = self.settings["tuned"]
        write_json_atomic(target / INDEX_JSON, settings)

    def with_shortlist(self, shortlist_dim: int, dtype: str, progress: Progress | None = None) -> "AdaptiveIndex":
        """The same corpus with another HNSW shortlist (built from the rerank store's prefixes);
        shares the store and keys. Used by tune to sweep Ds and dtype."""
        settings = _settings(self.full_dim, shortlist_dim, self.rerank_dim, dtype, self.rerank_dtype,
                             self.settings["connectivity"], self.settings["expansion_add"],
                             self.defaults["expansion_search"], self.defaults["shortlist_size"])
        settings.update({k: v for k, v in self.settings.items() if k in ("source",)})
        other = AdaptiveIndex(settings, new_shortlist_index(settings), self._store, self._keys,
                              documents=self._documents)
        other._path, other._identities = self._path, dict(self._identities)
        other._add_shortlist(self._store, 0, progress)
        return other


def _ids(keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """User ids of store rows (-1 stays -1)."""
    return np.where(rows >= 0, keys[np.maximum(rows, 0)], -1)


def _padded(values: np.ndarray, size: int) -> np.ndarray:
    values = np.atleast_2d(np.asarray(values))
    if values.shape[1] < size:
        values = np.pad(values, ((0, 0), (0, size - values.shape[1])))
    return values


def default_shortlist_dim(rerank_dim: int) -> int:
    return max(min(8, rerank_dim), min(64, rerank_dim // 4))


def new_shortlist_index(settings: dict[str, Any]):
    binary = settings["dtype"] == "b1"
    return _usearch().Index(
        ndim=settings["shortlist_dim"], metric="hamming" if binary else "ip", dtype=settings["dtype"],
        connectivity=settings["connectivity"], expansion_add=settings["expansion_add"],
        expansion_search=settings["defaults"]["expansion_search"])


def shortlist_vectors(vectors: np.ndarray, dim: int, dtype: str) -> np.ndarray:
    """What the HNSW index stores for these rows: the re-normalised Ds prefix (usearch casts it to
    f16 / i8), or for b1 its sign bits packed 8 per byte (compared by Hamming distance)."""
    part = prefix(vectors, dim)
    return np.packbits(part > 0, axis=1) if dtype == "b1" else part


def _settings(full: int, shortlist_dim: int, rerank_dim: int, dtype: str, rerank_dtype: str, connectivity: int,
              expansion_add: int, expansion_search: int, shortlist_size: int) -> dict[str, Any]:
    if dtype not in SHORTLIST_DTYPES:
        raise InputError(f"unknown shortlist dtype {dtype!r}: use {', '.join(SHORTLIST_DTYPES)}")
    if rerank_dtype not in RERANK_DTYPES:
        raise InputError(f"unknown rerank dtype {rerank_dtype!r}: use {', '.join(RERANK_DTYPES)}")
    if not 1 <= rerank_dim <= full:
        raise InputError(f"rerank dim {rerank_dim} must be between 1 and the vectors' dim {full}")
    if not 1 <= shortlist_dim <= rerank_dim:
        raise InputError(f"shortlist dim {shortlist_dim} must be between 1 and the rerank dim {rerank_dim}")
    if dtype == "b1" and shortlist_dim % 8:
        raise InputError(f"a binary (b1) shortlist needs a shortlist dim divisible by 8, got {shortlist_dim}")
    check_number(connectivity, "connectivity", 2, integer=True)   # HNSW needs at least 2 edges per node
    for name, value in (("expansion_add", expansion_add), ("expansion_search", expansion_search),
                        ("shortlist_size", shortlist_size)):
        check_number(value, name, 1, integer=True)
    from . import __version__

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "mrl_deploy_version": __version__,
            "count": 0, "full_dim": full, "shortlist_dim": shortlist_dim, "rerank_dim": rerank_dim,
            "dtype": dtype, "rerank_dtype": rerank_dtype, "metric": "hamming" if dtype == "b1" else "ip",
            "normalization": "truncate-then-l2 per stage", "connectivity": int(connectivity),
            "expansion_add": int(expansion_add),
            "defaults": {"shortlist_size": int(shortlist_size), "expansion_search": int(expansion_search)}}


def _check_vectors(vectors: np.ndarray, settings: dict[str, Any]) -> None:
    if not settings["rerank_dim"] <= vectors.shape[1] <= settings["full_dim"]:
        raise InputError(f"vectors have {vectors.shape[1]} dims; this index takes {settings['full_dim']}")
    _check_finite(vectors, "vector")
    _check_nonzero(vectors, settings["shortlist_dim"], "vector")


def _check_funnel(stages: list[tuple[int, int]], k: int, shortlist_dim: int, rerank_dim: int) -> None:
    dims, sizes = [d for d, _ in stages], [s for _, s in stages]
    if dims[0] != shortlist_dim:
        raise InputError(f"the funnel's first stage is the HNSW shortlist: its dim must be the index's "
                         f"shortlist dim {shortlist_dim}, got {dims[0]}")
    if any(b < a for a, b in zip(dims, dims[1:])) or dims[-1] > rerank_dim:
        raise InputError(f"funnel dims must increase and stay <= the rerank dim {rerank_dim}, got {dims}")
    if min(sizes) < 1 or any(b > a for a, b in zip(sizes, sizes[1:])):
        raise InputError(f"funnel sizes must be positive and not grow from stage to stage, got {sizes}")
    if sizes[-1] < k:
        raise InputError(f"the funnel's last stage keeps {sizes[-1]} candidates, fewer than k={k}")


# --- files -----------------------------------------------------------------------------------------

def read_settings(path: Path) -> dict[str, Any]:
    file = path / INDEX_JSON
    settings = read_description(path, INDEX_JSON, "index")
    if settings.get("format") != FORMAT:
        raise ArtifactError(f"{file} is not an mrl-deploy index description")
    if settings.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"{path} has index format {settings['format_version']}; upgrade mrl-deploy")
    for name, entry in settings.get("files", {}).items():
        size = entry["bytes"] if isinstance(entry, dict) else entry   # older indexes: the size alone
        if not (path / name).is_file():
            raise ArtifactError(f"index file missing: {path / name}")
        if (path / name).stat().st_size != size:
            raise ArtifactError(f"{path / name} has {((path / name).stat().st_size)} bytes, expected {size}: "
                                "the file was truncated or replaced")
    return settings


def verify_index_files(path: Path, settings: dict[str, Any]) -> None:
    """Each file's sha256 against index.json. An index saved before hashes were recorded has
    sizes only: it still loads, with a warning that only sizes were checked."""
    import warnings

    files = settings.get("files", {})
    unhashed = [name for name, entry in files.items() if not (isinstance(entry, dict) and entry.get("sha256"))]
    if unhashed or not files:
        warnings.warn(f"{path} records no checksums (saved by an older mrl-deploy): only file sizes were "
                      "checked; save it again to record them", UserWarning, stacklevel=3)
    for name, entry in files.items():
        if name not in unhashed and sha256_file(path / name) != entry["sha256"]:
            raise ArtifactError(f"checksum mismatch for {path / name}: the file was modified or corrupted")


def _check_loaded(path: Path, settings: dict[str, Any], shortlist: Any, store: np.ndarray, keys: np.ndarray) -> None:
    count = settings["count"]
    problems = []
    if shortlist.ndim != settings["shortlist_dim"] or len(shortlist) != count:
        problems.append(f"shortlist index has {len(shortlist)} x {shortlist.ndim}")
    if store.shape != (count, settings["rerank_dim"]) or store.dtype != RERANK_DTYPES[settings["rerank_dtype"]]:
        problems.append(f"rerank store is {store.dtype} {store.shape}")
    if keys.shape != (count,):
        problems.append(f"keys have shape {keys.shape}")
    if problems:
        raise ArtifactError(f"{path} is inconsistent with its {INDEX_JSON} ({count} vectors, shortlist "
                            f"{settings['shortlist_dim']}-d, rerank {settings['rerank_dim']}-d): " + "; ".join(problems))


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Write in chunks through a memory-mapped .npy: a memory-mapped source is never read whole."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
    for start in range(0, len(array), CHUNK_ROWS):
        out[start:start + CHUNK_ROWS] = array[start:start + CHUNK_ROWS]
    out.flush()
    del out




# --- documents: the texts and metadata that search results show ------------------------------------

def document_lines(texts: Sequence[str] | None, metadata: Sequence[Any] | None, count: int) -> list[bytes] | None:
    """One UTF-8 JSON line per row ({"text": ..., "metadata": {...}}, either part optional), or
    None when neither is given."""
    import json

    if texts is None and metadata is None:
        return None
    for what, values in (("texts", texts), ("metadata", metadata)):
        if values is not None and len(values) != count:
            raise InputError(f"{len(values)} {what} for {count} vectors: give exactly one per vector")
    lines = []
    for i in range(count):
        row: dict[str, Any] = {}
        if texts is not None:
            if not isinstance(texts[i], str):
                raise InputError(f"text {i} is {type(texts[i]).__name__}, not a string")
            row["text"] = texts[i]
        if metadata is not None:
            if not isinstance(metadata[i], dict):
                raise InputError(f"metadata {i} is {type(metadata[i]).__name__}, not a JSON object")
            row["metadata"] = metadata[i]
        try:
            lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n")
        except (TypeError, ValueError) as exc:
            raise InputError(f"metadata {i} cannot be stored as JSON: {exc}") from None
    return lines


def read_metadata(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A JSONL file of per-row metadata: one JSON object per line (blank lines are refused: they
    would shift every later row)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError(f"metadata file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                row = json.loads(line)
            except ValueError:
                raise InputError(f"{path} line {number} is not JSON (one JSON object per line)") from None
            if not isinstance(row, dict):
                raise InputError(f"{path} line {number} is not a JSON object")
            rows.append(row)
    return rows


class DocumentStore:
    """Per-row documents of an index: documents.jsonl (one JSON line per row, row i belongs to
    keys.npy[i]) and documents.offsets.npy (N+1 int64 byte offsets). Saved rows are read on
    demand (offsets memory-mapped, lines by pread from a descriptor held open, so a later save
    over the directory does not pull the data away); rows added since are held in memory."""

    def __init__(self, added: list[bytes] | None = None):
        self._fd: int | None = None
        self._offsets: np.ndarray = np.zeros(1, dtype=np.int64)
        self._added: list[bytes] = list(added or [])

    @classmethod
    def open(cls, directory: Path, count: int) -> "DocumentStore":
        store = cls()
        try:
            store._offsets = np.load(directory / DOCUMENT_OFFSETS_FILE, mmap_mode="r")
            store._fd = os.open(directory / DOCUMENTS_FILE, os.O_RDONLY)
            size = os.fstat(store._fd).st_size
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{directory} has a damaged document store: {str(exc).splitlines()[0]}") from None
        if store._offsets.shape != (count + 1,) or int(store._offsets[-1]) != size:
            raise ArtifactError(f"{directory}: the document store does not match the index's {count} vectors")
        return store

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return len(self._offsets) - 1 + len(self._added)

    def extend(self, lines: list[bytes]) -> None:
        self._added.extend(lines)

    def get(self, rows: Iterable[int]) -> list[dict[str, Any]]:
        import json

        saved = len(self._offsets) - 1
        out = []
        for row in (int(r) for r in rows):
            if row < saved:
                start, end = int(self._offsets[row]), int(self._offsets[row + 1])
                line = os.pread(self._fd, end - start, start)
            else:
                line = self._added[row - saved]
            out.append(json.loads(line))
        return out

    def write(self, directory: Path) -> None:
        """Both files into `directory`: the saved lines copied in chunks, then the added ones."""
        saved = len(self._offsets) - 1
        with open(directory / DOCUMENTS_FILE, "wb") as out:
            position = 0
            end = int(self._offsets[-1])
            while position < end:
                block = os.pread(self._fd, min(1 << 24, end - position), position)
                if not block:
                    raise ArtifactError("the document store's file was truncated while saving")
                out.write(block)
                position += len(block)
            for line in self._added:
                out.write(line)
        sizes = np.fromiter((len(line) for line in self._added), dtype=np.int64, count=len(self._added))
        offsets = np.concatenate([np.asarray(self._offsets[:saved + 1], dtype=np.int64),
                                  int(self._offsets[-1]) + np.cumsum(sizes)])
        np.save(directory / DOCUMENT_OFFSETS_FILE, offsets)


# --- tuning ---------------------------------------------------------------------------------------

def tune(index: AdaptiveIndex, queries: Any, *, k: int = 10, recall: float = 0.95,
         dims: Iterable[int] | None = None, dtypes: Iterable[str] | None = None,
         shortlist_sizes: Iterable[int] | None = None, expansions: Iterable[int] | None = None,
         repeats: int = 2, say: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Sweep Ds x dtype (each a shortlist index built from the rerank store) x shortlist size x
    expansion_search; measure recall@k against exact search at Dr, QPS (all cores, the whole
    query batch, best of `repeats`) and shortlist bytes per vector. Returns every point, the Pareto
    frontier (recall up, QPS up, bytes down) and the fastest point meeting `recall`."""
    from .metrics import recall_at_k

    check_number(recall, "recall", 0, 1, low_open=True)
    check_number(repeats, "repeats", 1, integer=True)
    q = index._check_queries(queries, k)
    dims = _neighbour_dims(index.shortlist_dim, index.rerank_dim) if dims is None else list(dims)
    dtypes = [index.dtype] if dtypes is None else list(dtypes)
    sizes = [5 * k, 10 * k, 20 * k, 40 * k] if shortlist_sizes is None else list(shortlist_sizes)
    expansions = [64, 128, 256, 512] if expansions is None else list(expansions)
    for name, values, low, high in (("shortlist dim", dims, 1, index.rerank_dim), ("shortlist size", sizes, k, None),
                                    ("expansion", expansions, 1, None)):
        if not values:
            raise InputError(f"no {name}s to sweep")
        for value in values:
            check_number(value, name, low, high, integer=True)
    if not dtypes:
        raise InputError("no dtypes to sweep")
    say(f"exact search at {index.rerank_dim} dims for the ground truth ({len(q)} queries)")
    begun = time.perf_counter()
    truth, _ = index.exact(q, k)
    exact_qps = len(q) / (time.perf_counter() - begun)
    dims, dtypes, expansions = sorted(set(dims)), list(dict.fromkeys(dtypes)), sorted(set(expansions))
    sizes = sorted({min(s, len(index)) for s in sizes})
    points, built = [], {}
    for dim in dims:
        for dtype in dtypes:
            candidate = _shortlist_for(index, dim, dtype, say)
            built[(dim, dtype)] = candidate
            for size in sizes:
                for ef in sorted({max(size, e) for e in expansions}):
                    seconds, ids = _timed_search(candidate, q, k, size, ef, repeats)
                    points.append({"shortlist_dim": dim, "dtype": dtype, "shortlist_size": size,
                                   "expansion_search": ef, "recall": recall_at_k(ids, truth, k),
                                   "qps": len(q) / seconds,
                                   "bytes_per_vector": candidate.shortlist_bytes / len(index)})
    report = {"k": k, "target_recall": recall, "queries": len(q), "corpus": len(index),
              "rerank_dim": index.rerank_dim, "rerank_bytes_per_vector": index.rerank_bytes / len(index),
              "exact_qps": exact_qps, "points": points, "pareto": pareto_frontier(points),
              "recommended": recommend(points, recall)}
    return {"report": report, "indexes": built}


def _neighbour_dims(dim: int, rerank_dim: int) -> list[int]:
    return [d for d in (dim // 2, dim, dim * 2) if 8 <= d <= rerank_dim or d == dim]


def _shortlist_for(index: AdaptiveIndex, dim: int, dtype: str, say) -> AdaptiveIndex:
    if (dim, dtype) == (index.shortlist_dim, index.dtype):
        return index
    say(f"building a {dim}-d {dtype} shortlist index over {len(index)} vectors")
    return index.with_shortlist(dim, dtype)


def _timed_search(index: AdaptiveIndex, q: np.ndarray, k: int, size: int, ef: int, repeats: int):
    best, ids = float("inf"), None
    for _ in range(repeats):
        begun = time.perf_counter()
        ids, _ = index.search(q, k, shortlist_size=size, expansion_search=ef)
        best = min(best, time.perf_counter() - begun)
    return best, ids


def pareto_frontier(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points no other point beats on recall, QPS and bytes per vector at once."""
    def dominates(a, b):
        no_worse = a["recall"] >= b["recall"] and a["qps"] >= b["qps"] and a["bytes_per_vector"] <= b["bytes_per_vector"]
        better = a["recall"] > b["recall"] or a["qps"] > b["qps"] or a["bytes_per_vector"] < b["bytes_per_vector"]
        return no_worse and better

    front = [p for p in points if not any(dominates(o, p) for o in points)]
    return sorted(front, key=lambda p: (-p["recall"], -p["qps"]))


def recommend(points: list[dict[str, Any]], recall: float) -> dict[str, Any] | None:
    """The fastest point that meets the recall target (fewer bytes breaks ties); None if none does."""
    meeting = [p for p in points if p["recall"] >= recall]
    return max(meeting, key=lambda p: (p["qps"], -p["bytes_per_vector"])) if meeting else None


def apply_recommendation(index: AdaptiveIndex, tuned: dict[str, Any], path: str | os.PathLike) -> AdaptiveIndex:
    """--save: make the recommended setting the saved index's default. A different Ds or dtype
    replaces the shortlist index (the rerank store and keys are hard-linked, not copied)."""
    report, best = tuned["report"], tuned["report"]["recommended"]
    if best is None:
        raise InputError(f"no setting reached recall@{report['k']} >= {report['target_recall']}: nothing to save "
                         "(sweep larger shortlists or dims)")
    chosen = tuned["indexes"][(best["shortlist_dim"], best["dtype"])]
    chosen.settings["defaults"] = {**chosen.defaults, "shortlist_size": best["shortlist_size"],
                                   "expansion_search": best["expansion_search"]}
    chosen.settings["tuned"] = {key: report[key] for key in ("k", "target_recall", "queries", "exact_qps")} | {
        "recommended": best}
    if chosen is index:
        index.save_defaults(path, **chosen.defaults)
    else:
        chosen.save(path)
    return chosen


# --- embedding with an artifact (the CLI's `index DIR INPUTS` and `search --inputs`) ----------------

def encode_inputs(artifact: Any, inputs: Any, dim: int | None = None, *, chunk: int = 1024,
                  progress: Progress | None = None, **run_options: Any) -> np.ndarray:
    """artifact.encode(inputs, dim=dim) over chunks of `chunk` inputs, reporting progress(done,
    total) after each. Inputs: an array, a dict of arrays (one row per input) or a list of texts."""
    count = len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)
    if count == 0:
        raise InputError("no inputs to embed")
    parts = []
    for start in range(0, count, chunk):
        part = ({name: value[start:start + chunk] for name, value in inputs.items()}
                if isinstance(inputs, dict) else inputs[start:start + chunk])
        parts.append(artifact.encode(part, dim=dim, **run_options))
        if progress:
            progress(min(start + chunk, count), count)
    return np.concatenate(parts)
