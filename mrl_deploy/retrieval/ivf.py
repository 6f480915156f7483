"""An inverted-file shortlist (dtype "ivf"): the Ds prefixes grouped into L lists by their nearest
centroid (spherical k-means on a sample), each list stored contiguously in f32. A query scores the
centroids, then scans the vectors of its `probes` nearest lists with BLAS and keeps the best k'.

Why beside HNSW: on a prefix that ranks poorly (a slowly decaying spectrum) the funnel needs a
wide shortlist (k' of 300-400), and an HNSW search for k' candidates walks at least k' nodes with
random memory accesses, several thousand distances per query. A few lists of a few hundred
vectors each are read sequentially and scored by one matrix product: the same candidates for a
fraction of the memory traffic, where the corpus is clustered (recall is measured against exact
search like every shortlist's: `tune`, benchmarks/retrieval.py).

It mimics the part of usearch's Index that AdaptiveIndex uses (add, search with
expansion_search, save / restore, serialized_length, ndim, len); `expansion_search` is the number
of lists probed. Rows are added in chunks (pending until the first search or save, then merged
into the list order).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ArtifactError
from .kernels import _blocks, _pool

KMEANS_ITERATIONS = 10
SAMPLE_PER_LIST = 64        # training rows per list (faiss asks for 39-256)


LIST_SIZE = 512             # vectors per list by default: 8 probed lists scan ~4,000 vectors


def default_lists(count: int) -> int:
    """About N / LIST_SIZE lists, a power of two, 1..65536."""
    return int(min(65536, max(1, 2 ** round(np.log2(max(1.0, count / LIST_SIZE))))))


def train_centroids(sample: np.ndarray, lists: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means: `lists` unit centroids of the unit rows of `sample` (BLAS products)."""
    lists = min(lists, len(sample))
    rng = np.random.default_rng(seed)
    centroids = _seeds(sample, lists, rng)
    for _ in range(KMEANS_ITERATIONS):
        nearest = assign(sample, centroids)
        order = np.argsort(nearest, kind="stable")
        used, starts = np.unique(nearest[order], return_index=True)
        sums = np.zeros_like(centroids)
        sums[used] = np.add.reduceat(sample[order], starts, axis=0)
        empty = ~sums.any(axis=1)
        sums[empty] = sample[rng.choice(len(sample), int(empty.sum()))]    # re-seed an empty list
        centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-30)
    return centroids.astype(np.float32)


def _seeds(sample: np.ndarray, lists: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding over a pool of 4 x `lists` sample rows (each next seed drawn with
    probability proportional to its squared distance, 2 - 2 cos, to the nearest seed so far):
    random seeds can land two in one cluster and leave another without one."""
    pool = sample[rng.choice(len(sample), min(len(sample), 4 * lists), replace=False)].astype(np.float32)
    chosen = [int(rng.integers(len(pool)))]
    nearest = pool @ pool[chosen[0]]
    for _ in range(1, lists):
        weights = np.maximum(1.0 - nearest, 0.0).astype(np.float64)
        total = weights.sum()
        pick = int(rng.choice(len(pool), p=weights / total)) if total > 0 else int(rng.integers(len(pool)))
        chosen.append(pick)
        np.maximum(nearest, pool @ pool[pick], out=nearest)
    return pool[chosen].copy()


def assign(vectors: np.ndarray, centroids: np.ndarray, chunk: int = 16384) -> np.ndarray:
    return np.concatenate([np.argmax(vectors[s:s + chunk] @ centroids.T, axis=1)
                           for s in range(0, len(vectors), chunk)]).astype(np.int64)


@dataclass
class Matches:
    """What usearch's search returns, as far as AdaptiveIndex reads it."""
    keys: np.ndarray
    distances: np.ndarray
    counts: np.ndarray
    computed_distances: int = 0     # centroids and list vectors scored, all queries together


class IVFShortlist:
    def __init__(self, ndim: int, lists: int, expansion_search: int = 8):
        self.ndim, self.lists, self.expansion_search = int(ndim), int(lists), int(expansion_search)
        self.centroids: np.ndarray | None = None
        self.vectors = np.empty((0, self.ndim), dtype=np.float32)   # in list order
        self.keys = np.empty(0, dtype=np.uint64)                    # the row of each, in list order
        self.offsets = np.zeros(self.lists + 1, dtype=np.int64)     # list l: [offsets[l], offsets[l + 1])
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._merge_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys) + sum(len(k) for k, _ in self._pending)

    @property
    def serialized_length(self) -> int:
        self._merge()
        return int(self.vectors.nbytes + self.keys.nbytes + self.offsets.nbytes
                   + (0 if self.centroids is None else self.centroids.nbytes))

    def train(self, sample: np.ndarray) -> None:
        self.centroids = train_centroids(np.asarray(sample, dtype=np.float32), self.lists)
        self.lists = len(self.centroids)
        self.offsets = np.zeros(self.lists + 1, dtype=np.int64)

    def add(self, keys: np.ndarray, vectors: np.ndarray, threads: int = 0) -> None:
        if self.centroids is None:      # not trained on a sample of the whole corpus: the first rows
            self.train(vectors)
        self._pending.append((np.asarray(keys, dtype=np.uint64), np.asarray(vectors, dtype=np.float32)))

    def _merge(self) -> None:
        """Pending rows into the lists (a stable sort: rows keep their order within a list)."""
        with self._merge_lock:
            if not self._pending:
                return
            keys = np.concatenate([self.keys] + [k for k, _ in self._pending])
            vectors = np.concatenate([self.vectors] + [v for _, v in self._pending])
            lists = np.concatenate([np.repeat(np.arange(self.lists), np.diff(self.offsets))]
                                   + [assign(v, self.centroids) for _, v in self._pending])
            order = np.argsort(lists, kind="stable")
            self.keys, self.vectors = keys[order], vectors[order]
            self.offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=self.lists))])
            self._pending = []

    def search(self, block: np.ndarray, count: int, threads: int = 0) -> Matches:
        """The `count` best rows of each query (inner product) among its `expansion_search`
        nearest lists; fewer where those lists hold fewer (counts), padded with key 0."""
        self._merge()
        block = np.asarray(block, dtype=np.float32)
        probes = max(1, min(self.expansion_search, self.lists))
        scores = block @ self.centroids.T
        nearest = np.argpartition(-scores, probes - 1, axis=1)[:, :probes] if probes < self.lists else \
            np.broadcast_to(np.arange(self.lists), (len(block), self.lists))
        keys = np.zeros((len(block), count), dtype=np.uint64)
        distances = np.full((len(block), count), np.nan, dtype=np.float32)
        counts = np.zeros(len(block), dtype=np.int64)
        offsets, vectors, rows = self.offsets, self.vectors, self.keys

        def work(part: range) -> None:
            for i in part:
                spans = [(offsets[l], offsets[l + 1]) for l in nearest[i] if offsets[l + 1] > offsets[l]]
                if not spans:
                    continue
                found = np.concatenate([vectors[a:b] @ block[i] for a, b in spans])
                where = np.concatenate([np.arange(a, b) for a, b in spans])
                n = min(count, len(found))
                best = np.argpartition(-found, n - 1)[:n] if n < len(found) else np.arange(len(found))
                best = best[np.argsort(-found[best], kind="stable")]
                keys[i, :n], distances[i, :n], counts[i] = rows[where[best]], 1.0 - found[best], n

        parts = _blocks(len(block))
        if len(parts) == 1:
            work(parts[0])
        else:
            list(_pool().map(work, parts))
        scanned = int(np.diff(offsets)[nearest].sum())
        return Matches(keys, distances, counts, computed_distances=scanned + len(block) * self.lists)

    # --- files: one .npz (centroids, list offsets, rows and vectors in list order) ---------------------
    def save(self, path: str) -> None:
        self._merge()
        with open(path, "wb") as handle:
            np.savez(handle, centroids=self.centroids, offsets=self.offsets, keys=self.keys, vectors=self.vectors)

    @classmethod
    def restore(cls, path: str) -> "IVFShortlist":
        """Load the lists into RAM (whatever AdaptiveIndex.load's `view`: an .npz is read whole)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                parts: dict[str, Any] = {name: data[name] for name in ("centroids", "offsets", "keys", "vectors")}
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path} is not an IVF shortlist: {str(exc).splitlines()[0]}") from None
        index = cls(parts["vectors"].shape[1], len(parts["centroids"]))
        index.centroids, index.offsets, index.keys, index.vectors = (
            parts["centroids"], parts["offsets"], parts["keys"], parts["vectors"])
        if index.offsets[-1] != len(index.keys) or len(index.keys) != len(index.vectors):
            raise ArtifactError(f"{path} is an inconsistent IVF shortlist")
        return index
