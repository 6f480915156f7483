"""AdaptiveIndex: adaptive retrieval (MRL paper, section 4.3). A usearch HNSW index over the first
Ds dims gives a shortlist, which is reranked with the first Dr dims (in general a funnel of
several stages).

    from mrl_deploy import AdaptiveIndex
    index = AdaptiveIndex.build(vectors, shortlist_dim=64, rerank_dim=768, dtype="f16")
    ids, scores = index.search(queries, k=10, shortlist_size=200)
    ids, scores = index.search(queries, k=10, funnel=[(64, 800), (256, 100), (768, 10)])
    index.save("corpus.index"); index = AdaptiveIndex.load("corpus.index", view=True)

Vectors are N x d float32 in MRL order. Every stage truncates and re-normalises (cosine): the
shortlist index holds z[:Ds] / ||z[:Ds]||, the rerank store z[:Dr] / ||z[:Dr]|| (a prefix of it,
re-normalised, is z[:m] / ||z[:m]|| for any m <= Dr). Keys are non-negative int64 user ids;
missing results (a graph that returns fewer candidates than asked) are id -1, score NaN. The
directory it saves to is described in files.py. The HNSW stage uses all cores by itself; the
rerank spreads queries over a thread pool (kernels.py).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ArtifactError, InputError, check_number
from ..manifest import sha256_file, staged_directory, write_json_atomic
from .documents import DocumentStore, document_lines
from .files import (DOCUMENTS_FILE, DOCUMENT_OFFSETS_FILE, FORMAT, INDEX_JSON, KEYS_FILE,
                    RERANK_DTYPES, RERANK_FILE, SHORTLIST_DTYPES, check_loaded, identity, read_settings,
                    save_npy, shortlist_file, verify_index_files)
from .ivf import SAMPLE_PER_LIST, IVFShortlist, default_lists
from .kernels import _usearch, exact_search, prefetch_rows, rerank
from .stages import Funnel, check_queries, parse_funnel, plan_stages
from .vectors import CHUNK_ROWS, as_matrix, check_finite, check_keys, check_nonzero, is_row_source, prefix, read_rows

DEFAULTS = {"dtype": "f16", "rerank_dtype": "f16", "connectivity": 16, "expansion_add": 128,
            "expansion_search": 64, "shortlist_size": 200}
IVF_PROBES = 8              # the default expansion_search of an "ivf" shortlist: lists probed

Progress = Callable[[int, int], None]


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
        self._identities = {name: identity(path / name) for name in (RERANK_FILE, KEYS_FILE)} if path else {}
        self._view = view
        # The HNSW graph: expansion_search is index-wide state (set + search together), and usearch
        # may grow its storage while adding, which a concurrent search must not see half done.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one add() or save() at a time: keys and row numbers
        # The rerank store on a disk, larger than RAM: read each stage's candidate rows ahead in
        # parallel (kernels.prefetch_rows). Off by default: for a store in the page cache it is
        # only overhead (benchmarks/retrieval_scale.py measures both).
        self.prefetch = False

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
              expansion_search: int | None = None,
              shortlist_size: int = DEFAULTS["shortlist_size"], progress: Progress | None = None,
              texts: Sequence[str] | None = None, metadata: Sequence[Any] | None = None,
              output: str | os.PathLike | None = None, lists: int | None = None) -> "AdaptiveIndex":
        """Index N x d MRL vectors: an HNSW graph over the first `shortlist_dim` dims (default
        min(64, d/4), at least 8), a rerank store of the first `rerank_dim` (default d). `texts`
        and / or `metadata` (one JSON object per vector) are kept beside them (`documents`).

        dtype "ivf": inverted lists of int8 codes instead of the graph (ivf.py): `lists` of them
        (default about N / 512, a power of two) trained on a sample spread over the whole corpus;
        `expansion_search` is then the number of lists a query scores (default 8; HNSW's default
        search width is 64).

        One pass over the vectors, CHUNK_ROWS at a time: a memory-mapped .npy is never read whole
        (its pages are dropped after each chunk), nor is an `embed --ray` directory
        (`mrl_deploy.corpus.corpus_rows`). With `output`, the index is written there as it is built
        (atomically, like save()): the rerank store goes to its file chunk by chunk, so building
        holds only the HNSW graph and one chunk in RAM, and the index returned reads the store
        memory-mapped from `output`. Without it, the store is an array in RAM until save()."""
        vectors = vectors if is_row_source(vectors) else as_matrix(vectors, "vectors")
        full = int(vectors.shape[1])
        rerank_dim = full if rerank_dim is None else int(check_number(rerank_dim, "rerank dim", 1, integer=True))
        shortlist_dim = (default_shortlist_dim(min(rerank_dim, full)) if shortlist_dim is None
                         else int(check_number(shortlist_dim, "shortlist dim", 1, integer=True)))
        count = len(vectors)
        if expansion_search is None:
            expansion_search = IVF_PROBES if dtype == "ivf" else DEFAULTS["expansion_search"]
        settings = _settings(full, shortlist_dim, rerank_dim, dtype, rerank_dtype, connectivity, expansion_add,
                             expansion_search, shortlist_size, lists=default_lists(count) if lists is None else lists)
        keys = check_keys(np.arange(count) if keys is None else keys, count)
        lines = document_lines(texts, metadata, count)
        documents = None if lines is None else DocumentStore(added=lines)
        store_dtype = np.dtype(RERANK_DTYPES[rerank_dtype])
        if output is None:
            store = np.empty((count, rerank_dim), dtype=store_dtype)
            index = cls(settings, new_shortlist_index(settings), store, keys, documents=documents)
            index._train(vectors)
            index._stream(vectors, lambda start, rows: store.__setitem__(slice(start, start + len(rows)), rows),
                          progress)
            return index
        target = Path(output).resolve()
        with staged_directory(target, INDEX_JSON, "an mrl-deploy index", InputError) as staging:
            index = cls(settings, new_shortlist_index(settings), np.empty((0, rerank_dim), store_dtype), keys,
                        documents=documents)
            index._train(vectors)
            # plain writes, not a writable memory map: written pages must not pile up in this process
            with open(staging / RERANK_FILE, "wb") as handle:
                np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(store_dtype),
                                                              "fortran_order": False, "shape": (count, rerank_dim)})
                index._stream(vectors, lambda start, rows: handle.write(rows.tobytes()), progress)
            index._rows = (np.load(staging / RERANK_FILE, mmap_mode="r"), keys)
            settings = index._write_files(staging, written=(RERANK_FILE,))
        index._rows = (np.load(target / RERANK_FILE, mmap_mode="r"), keys)   # the same file, at its place
        index._saved(target, settings)
        return index

    def _train(self, vectors: Any) -> None:
        """An IVF shortlist's centroids, from rows spread over the whole corpus (64 contiguous runs,
        so a corpus sorted by topic still trains every list); nothing for HNSW."""
        if not isinstance(self._shortlist, IVFShortlist):
            return
        count, wanted = len(vectors), SAMPLE_PER_LIST * self._shortlist.lists
        run = max(1, -(-min(count, wanted) // 64))
        starts = np.unique(np.linspace(0, max(0, count - run), 64).astype(np.int64))
        # each run cut to its Ds prefix as it is read: the full-dim f32 sample of 64 rows per list
        # (524k x 768 at 5M vectors) was 1.6 GB of the 5M build's 3.7 GiB peak
        sample = np.concatenate([shortlist_vectors(read_rows(vectors, int(a), int(a) + run), self.shortlist_dim,
                                                   self.dtype) for a in starts])
        self._shortlist.train(sample)
        self.settings["lists"] = self._shortlist.lists

    def _stream(self, vectors: Any, write_rows: Callable[[int, np.ndarray], Any], progress: Progress | None) -> None:
        """The build's one pass: per chunk, check the rows, hand their rerank rows (Dr prefix,
        re-normalised, in the store's dtype) to `write_rows(first row, rows)`, add them to the graph."""
        count, dim = len(vectors), self.settings["rerank_dim"]
        dtype = RERANK_DTYPES[self.rerank_dtype]
        for start in range(0, count, CHUNK_ROWS):
            block = read_rows(vectors, start, start + CHUNK_ROWS)
            check_finite(block, "vector", first=start)
            check_nonzero(block, self.shortlist_dim, "vector", first=start)
            write_rows(start, prefix(block, dim).astype(dtype, copy=False))
            self._add_block(block, start)
            if progress:
                progress(min(start + CHUNK_ROWS, count), count)

    def add(self, vectors: Any, keys: Any = None, progress: Progress | None = None,
            texts: Sequence[str] | None = None, metadata: Sequence[Any] | None = None) -> np.ndarray:
        """Append vectors (ids default to max id + 1, ...); returns their keys. The rerank store
        becomes an in-memory array: save() to persist. An index with documents needs `texts` and
        / or `metadata` for the new rows too; one without cannot take them."""
        if self._view:
            raise InputError("this index was loaded with view=True (memory-mapped, read-only): "
                             "load it with view=False to add vectors")
        vectors = as_matrix(vectors, "vectors")
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
            keys = check_keys(np.arange(start, start + len(vectors)) if keys is None else keys, len(vectors), existing)
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
            self._add_block(read_rows(vectors, start, start + CHUNK_ROWS), first + start)
            if progress:
                progress(min(start + CHUNK_ROWS, len(vectors)), len(vectors))

    def _add_block(self, rows: np.ndarray, first: int) -> None:
        """Rows numbered first, first + 1, ... into the HNSW graph."""
        block = shortlist_vectors(rows, self.shortlist_dim, self.dtype)
        with self._lock:  # one chunk at a time: searches wait for a chunk, not for the whole add
            self._shortlist.add(np.arange(first, first + len(block), dtype=np.uint64), block, threads=0)

    # --- searching ------------------------------------------------------------------------------
    def search(self, queries: Any, k: int = 10, *, shortlist_size: int | None = None,
               funnel: Funnel | str | None = None, exact: bool = False,
               expansion_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids int64 Q x k, cosine scores float32 Q x k) for Q queries of the index's dim.

        Default: HNSW shortlist of `shortlist_size` at Ds, reranked at Dr. `funnel`: stages
        (dim, size) whose first dim is Ds (the HNSW stage) and each later stage reranks the
        survivors at its dim keeping `size`. `exact`: brute force at Dr (the ground truth)."""
        store, keys = self._rows   # one consistent snapshot for the whole search
        q = check_queries(self.settings, queries, k, len(keys))
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
        return self._exact(store, keys, check_queries(self.settings, queries, k, len(keys)), k)

    def _exact(self, store: np.ndarray, keys: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = exact_search(store, q[:, :self.rerank_dim], k)
        return _ids(keys, rows), scores

    def plan(self, k: int, *, shortlist_size: int | None = None, funnel: Funnel | str | None = None,
             count: int | None = None) -> list[tuple[int, int]]:
        """The stages a search runs: validated (dim, size) pairs, sizes clipped to the corpus
        (`count` vectors; default: the index's size now)."""
        return plan_stages(self.settings, k, len(self) if count is None else count,
                           shortlist_size=shortlist_size, funnel=funnel)

    def _run(self, store: np.ndarray, q: np.ndarray, stages: list[tuple[int, int]], expansion_search: int | None):
        dim, size = stages[0]
        if 0 < len(store) <= size:
            # the shortlist is the whole corpus: score every row, as asked; an HNSW search for all
            # of its nodes can miss some (a graph need not reach every node from the entry point)
            rows, scores = exact_search(store, q, size, dim=dim)
            counts = np.full(len(q), rows.shape[1], dtype=np.int64)
        else:
            rows, scores, counts = self._shortlist_search(q, size, expansion_search, len(store))
        for dim, size in stages[1:]:
            if self.prefetch:
                prefetch_rows(store, rows, dim)
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
        # padded slots hold garbage distances (NaN / inf): never compute with them
        scores = np.where(valid, 1.0 - scale * np.where(valid, distances, 0.0), np.nan).astype(np.float32)
        return rows, scores, counts

    # --- saving and loading -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index directory atomically; an index already at `path` stays intact until the
        new one is complete (a failure leaves it as it was)."""
        target = Path(path).resolve()
        with self._write_lock, staged_directory(target, INDEX_JSON, "an mrl-deploy index", InputError) as staging:
            settings = self._write_files(staging)
        self._saved(target, settings)
        return target

    def _write_files(self, staging: Path, written: Sequence[str] = ()) -> dict[str, Any]:
        """Every file of the index into `staging` (those in `written` are there already), index.json
        last; returns the settings written."""
        store, keys = self._rows
        self._shortlist.save(str(staging / shortlist_file(self.settings)))
        linked = [name for name, array in ((RERANK_FILE, store), (KEYS_FILE, keys))
                  if name not in written and self._write_array(staging, name, array)]
        if self._documents is not None:
            self._documents.write(staging)
        previous = self.settings.get("files", {})
        files = {}
        for name in (shortlist_file(self.settings), RERANK_FILE, KEYS_FILE) + self._document_files():
            known = previous.get(name) if name in linked else None  # the very same file: its hash stands
            digest = known.get("sha256") if isinstance(known, dict) else None
            files[name] = {"bytes": (staging / name).stat().st_size, "sha256": digest or sha256_file(staging / name)}
        settings = dict(self.settings, count=len(keys), files=files)
        write_json_atomic(staging / INDEX_JSON, settings)
        return settings

    def _saved(self, target: Path, settings: dict[str, Any]) -> None:
        """Now saved at `target`: later saves there link its store and keys, documents read from it."""
        self.settings = settings
        self._path = target
        self._identities = {name: identity(target / name) for name in (RERANK_FILE, KEYS_FILE)}
        if self._documents is not None:
            self._documents = DocumentStore.open(target, len(self))

    def _document_files(self) -> tuple[str, ...]:
        return (DOCUMENTS_FILE, DOCUMENT_OFFSETS_FILE) if self._documents is not None else ()

    def _write_array(self, directory: Path, name: str, array: np.ndarray) -> bool:
        """Write `array` as directory/name; True if it was hard-linked from the file it maps."""
        source = self._path / name if self._path is not None else None
        if source is not None and identity(source) == self._identities.get(name):
            try:     # still the very file this array maps: a hard link instead of copying gigabytes
                os.link(source, directory / name)
                return True
            except OSError:
                pass
        save_npy(directory / name, array)
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
        try:
            shortlist = (IVFShortlist.restore(str(path / shortlist_file(settings))) if settings["dtype"] == "ivf"
                         else _usearch().Index.restore(str(path / shortlist_file(settings)), view=view))
            store = np.load(path / RERANK_FILE, mmap_mode="r")
            keys = np.load(path / KEYS_FILE)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{path} is a damaged index: {str(exc).splitlines()[0]}") from None
        check_loaded(path, settings, shortlist, store, keys)
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
        """The same corpus with another shortlist (built from the rerank store's prefixes); shares
        the store and keys. Used by tune to sweep Ds and dtype."""
        ivf_change = (dtype == "ivf") != (self.dtype == "ivf")   # the search default means another thing
        settings = _settings(self.full_dim, shortlist_dim, self.rerank_dim, dtype, self.rerank_dtype,
                             self.settings["connectivity"], self.settings["expansion_add"],
                             (IVF_PROBES if dtype == "ivf" else DEFAULTS["expansion_search"]) if ivf_change
                             else self.defaults["expansion_search"], self.defaults["shortlist_size"],
                             lists=self.settings.get("lists") or default_lists(len(self)))
        settings.update({k: v for k, v in self.settings.items() if k in ("source",)})
        other = AdaptiveIndex(settings, new_shortlist_index(settings), self._store, self._keys,
                              documents=self._documents)
        other._path, other._identities = self._path, dict(self._identities)
        other._train(self._store)
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
    if settings["dtype"] == "ivf":
        return IVFShortlist(settings["shortlist_dim"], settings["lists"], settings["defaults"]["expansion_search"])
    binary = settings["dtype"] == "b1"
    return _usearch().Index(
        ndim=settings["shortlist_dim"], metric="hamming" if binary else "ip", dtype=settings["dtype"],
        connectivity=settings["connectivity"], expansion_add=settings["expansion_add"],
        expansion_search=settings["defaults"]["expansion_search"])


def shortlist_vectors(vectors: np.ndarray, dim: int, dtype: str) -> np.ndarray:
    """What the shortlist index stores for these rows: the re-normalised Ds prefix (usearch casts it
    to f16 / i8; ivf encodes it as int8 codes), or for b1 its sign bits packed 8 per byte (Hamming
    distance)."""
    part = prefix(vectors, dim)
    return np.packbits(part > 0, axis=1) if dtype == "b1" else part


def _settings(full: int, shortlist_dim: int, rerank_dim: int, dtype: str, rerank_dtype: str, connectivity: int,
              expansion_add: int, expansion_search: int, shortlist_size: int, lists: int = 1) -> dict[str, Any]:
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
                        ("shortlist_size", shortlist_size), ("lists", lists)):
        check_number(value, name, 1, integer=True)
    from ..version import __version__

    # version 1 readers know HNSW shortlists only: an "ivf" index says so with version 2
    return {"format": FORMAT, "format_version": 2 if dtype == "ivf" else 1, "mrl_deploy_version": __version__,
            "count": 0, "full_dim": full, "shortlist_dim": shortlist_dim, "rerank_dim": rerank_dim,
            "dtype": dtype, "rerank_dtype": rerank_dtype, "metric": "hamming" if dtype == "b1" else "ip",
            "normalization": "truncate-then-l2 per stage", "connectivity": int(connectivity),
            "expansion_add": int(expansion_add), **({"lists": int(lists)} if dtype == "ivf" else {}),
            "defaults": {"shortlist_size": int(shortlist_size), "expansion_search": int(expansion_search)}}


def _check_vectors(vectors: np.ndarray, settings: dict[str, Any]) -> None:
    if not settings["rerank_dim"] <= vectors.shape[1] <= settings["full_dim"]:
        raise InputError(f"vectors have {vectors.shape[1]} dims; this index takes {settings['full_dim']}")
    check_finite(vectors, "vector")
    check_nonzero(vectors, settings["shortlist_dim"], "vector")
