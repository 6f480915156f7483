"""An inverted-file shortlist (dtype "ivf"): the Ds prefixes grouped into L lists by their nearest
centroid (spherical k-means on a sample), each list stored contiguously as int8 codes. A query
scores the centroids, then its `probes` nearest lists, and keeps the best k'.

Why beside HNSW: on a prefix that ranks poorly (a slowly decaying spectrum) the funnel needs a
wide shortlist (k' of 300-400), and an HNSW search for k' candidates walks at least k' nodes with
random memory accesses, several thousand distances per query. A few lists of a few hundred
vectors each are read sequentially and scored by one matrix product: the same candidates for a
fraction of the memory traffic, where the corpus is clustered (recall is measured against exact
search like every shortlist's: `tune`, benchmarks/retrieval.py).

Why int8 codes scored by numkong's packed kernels (numkong comes with usearch): a batch of queries
probes each list a few times (1,000 queries x 8 probes over 2,048 lists: ~4 per list), and numpy's
BLAS on a 4-column product runs at a few GFLOP/s. numkong's int8 kernel (VNNI where the CPU has it)
on a list packed once scores the same 4 x 500 x 128 in ~10 us instead of ~45 us (f32 BLAS), from a
quarter of the bytes. The codes are round(x * scale) with one scale for the index (127 / the largest
component of the training sample; prefixes are unit vectors): the shortlist ranks by them, and the
rerank scores the survivors from the store at full precision. On benchmarks/retrieval.py's hard
corpus (1M x 768, Ds=128, k'=400) the shortlist's recall of the top 10 is 0.976 with f32 lists and
with int8 codes alike.

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
from .kernels import _blocks, parallel

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


def code_scale(sample: np.ndarray) -> float:
    """int8 codes are round(x * scale): the largest component of the sample maps to 127."""
    largest = float(np.abs(sample).max()) if sample.size else 0.0
    return 127.0 / largest if largest > 0 else 127.0


def encode(vectors: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(np.asarray(vectors, dtype=np.float32) * np.float32(scale)), -127, 127).astype(np.int8)


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid of each row, in chunks of at most 2^24 scores (64 MB) whatever the
    number of lists: 16,384 rows x 8,192 lists at a time was 512 MB of a 5M build's peak."""
    chunk = max(1, 2**24 // max(1, len(centroids)))
    return np.concatenate([np.argmax(vectors[s:s + chunk] @ centroids.T, axis=1)
                           for s in range(0, len(vectors), chunk)] or [np.empty(0, dtype=np.int64)]).astype(np.int64)


def nearest_lists(scores: np.ndarray, probes: int) -> np.ndarray:
    """The `probes` highest-scoring lists of each row of `scores` (Q x L), in no particular order.
    A few probes: one argmax pass per probe, each masking its pick (0.8 ms for 1,000 x 2,048 and
    3 probes, against 21 ms for argpartition, which was a third of the easy corpus' shortlist)."""
    count, lists = scores.shape
    if probes >= lists:
        return np.broadcast_to(np.arange(lists), (count, lists))
    if probes > 16:
        return np.argpartition(-scores, probes - 1, axis=1)[:, :probes]
    masked, rows = scores.copy(), np.arange(count)
    nearest = np.empty((count, probes), dtype=np.int64)
    for p in range(probes):
        nearest[:, p] = pick = masked.argmax(axis=1)
        masked[rows, pick] = -np.inf
    return nearest


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
        self.scale = 127.0                                           # codes = round(x * scale)
        self.codes = np.empty((0, self.ndim), dtype=np.int8)         # in list order
        self.keys = np.empty(0, dtype=np.uint64)                    # the row of each, in list order
        self.offsets = np.zeros(self.lists + 1, dtype=np.int64)     # list l: [offsets[l], offsets[l + 1])
        self._packed: list[Any] = []                                # numkong's packed codes, per list
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []    # (keys, lists, codes)
        self._merge_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys) + sum(len(keys) for keys, _, _ in self._pending)

    @property
    def serialized_length(self) -> int:
        """Bytes held in RAM to search: codes, their packed copies, keys, offsets, centroids."""
        self._merge()
        return int(self.codes.nbytes + sum(p.nbytes for p in self._packed) + self.keys.nbytes
                   + self.offsets.nbytes + (0 if self.centroids is None else self.centroids.nbytes))

    def train(self, sample: np.ndarray) -> None:
        sample = np.asarray(sample, dtype=np.float32)
        self.centroids = train_centroids(sample, self.lists)
        self.scale = code_scale(sample)
        self.lists = len(self.centroids)
        self.offsets = np.zeros(self.lists + 1, dtype=np.int64)

    def add(self, keys: np.ndarray, vectors: np.ndarray, threads: int = 0) -> None:
        if self.centroids is None:      # not trained on a sample of the whole corpus: the first rows
            self.train(vectors)
        vectors = np.asarray(vectors, dtype=np.float32)
        self._pending.append((np.asarray(keys, dtype=np.uint64), assign(vectors, self.centroids),
                              encode(vectors, self.scale)))

    def _merge(self) -> None:
        """Pending rows into the lists (a stable sort: rows keep their order within a list), packed."""
        with self._merge_lock:
            if not self._pending and len(self._packed) == self.lists:
                return
            if self._pending:
                keys = np.concatenate([self.keys] + [k for k, _, _ in self._pending])
                codes = np.concatenate([self.codes] + [c for _, _, c in self._pending])
                lists = np.concatenate([np.repeat(np.arange(self.lists), np.diff(self.offsets))]
                                       + [a for _, a, _ in self._pending])
                order = np.argsort(lists, kind="stable")
                self.keys, self.codes = keys[order], codes[order]
                self.offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=self.lists))])
                self._pending = []
            import numkong

            self._packed = [numkong.dots_pack(self.codes[a:b], dtype="int8")
                            for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def search(self, block: np.ndarray, count: int, threads: int = 0) -> Matches:
        """The `count` best rows of each query (inner product of the codes) among its
        `expansion_search` nearest lists; fewer where those lists hold fewer (counts), padded with
        key 0. Distances are 1 - the products scaled back (what usearch's "ip" metric returns).

        Why list by list, not query by query: a list is read once for all the queries of the batch
        that probe it and scored by one kernel call. Queries are then spread over the pool in
        blocks, each selecting its best from one padded row per query."""
        self._merge()
        block = np.asarray(block, dtype=np.float32)
        probes = max(1, min(self.expansion_search, self.lists))
        nearest = nearest_lists(block @ self.centroids.T, probes)
        list_sizes = np.diff(self.offsets)
        sizes = list_sizes[nearest]                                                 # Q x probes
        runs = sizes.sum(axis=1)                                        # rows each query scores
        # one run of `found` per query: its probed lists' scores one after another
        ends = np.cumsum(sizes.ravel()).reshape(sizes.shape)
        starts = ends - sizes
        found = np.empty(int(ends[-1, -1]) if ends.size else 0, dtype=np.int32)
        codes = encode(block, self.scale)
        flat = nearest.ravel()
        pairs = np.argsort(flat, kind="stable")                                     # (query, probe) by list
        # group g: the pairs [begins[g], begins[g + 1]) probing list lists_of[g] (plain lists and
        # slices: np.split into ~1,500 arrays was 3 ms of a 1,000-query batch)
        by_list = flat[pairs]
        firsts = np.flatnonzero(np.diff(by_list, prepend=-1))                       # empty for no pairs
        lists_of, list_rows = by_list[firsts].tolist(), list_sizes[by_list[firsts]].tolist()
        begins = firsts.tolist() + [len(pairs)]
        query_of, start_of = pairs // probes, starts.ravel()[pairs].tolist()
        import numkong

        def score(part: range) -> None:
            for g in part:
                n, a, b = list_rows[g], begins[g], begins[g + 1]
                if n == 0:
                    continue
                products = np.asarray(numkong.dots_packed(codes[query_of[a:b]], self._packed[lists_of[g]]))   # int32
                for at, row in zip(start_of[a:b], products):
                    found[at:at + n] = row

        keys = np.zeros((len(block), count), dtype=np.uint64)
        distances = np.full((len(block), count), np.nan, dtype=np.float32)
        counts = np.minimum(runs, count).astype(np.int64)
        unit = np.float32(1.0 / (self.scale * self.scale))

        def select(part: np.ndarray) -> None:
            """The best of a block of queries of similar run lengths, padded into one matrix: one
            argpartition call per block (numpy releases the GIL in it; a call per query did not
            scale past one core: the Python between the calls held it)."""
            width = int(runs[part].max())
            take = min(count, width)
            if width == 0:
                return
            padded = np.full((len(part), width), np.iinfo(np.int32).min, dtype=np.int32)   # never wins
            for r, (i, n) in enumerate(zip(part.tolist(), runs[part].tolist())):
                padded[r, :n] = found[starts[i, 0]:starts[i, 0] + n]
            best = np.argpartition(padded, width - take, axis=1)[:, width - take:] if take < width else \
                np.broadcast_to(np.arange(take), (len(part), take))
            values = np.take_along_axis(padded, best, 1)
            order = np.argsort(-values.astype(np.int64), axis=1, kind="stable")
            best, values = np.take_along_axis(best, order, 1), np.take_along_axis(values, order, 1)
            # position in the run -> (probe, offset in that list) -> row in list order
            run_ends = ends[part] - starts[part, :1]
            probe = np.minimum((best[:, :, None] >= run_ends[:, None, :]).sum(axis=2), probes - 1)
            where = (self.offsets[np.take_along_axis(nearest[part], probe, 1)] + best
                     - np.take_along_axis(starts[part] - starts[part, :1], probe, 1))
            valid = np.arange(take)[None, :] < counts[part, None]      # padding: past the query's own run
            keys[part, :take] = np.where(valid, self.keys[np.where(valid, where, 0)], 0)
            distances[part, :take] = np.where(valid, 1.0 - values * unit, np.nan)

        n = len(_blocks(len(lists_of)))
        parallel(score, [range(s, len(lists_of), n) for s in range(n)])     # interleaved: big and small lists mixed
        by_run = np.argsort(runs, kind="stable")                             # little padding per block
        parallel(select, [by_run[r.start:r.stop] for r in _blocks(len(block), per_block=64)])
        return Matches(keys, distances, counts, computed_distances=int(sizes.sum()) + len(block) * self.lists)

    # --- files: one .npz (centroids, code scale, list offsets, rows and codes in list order) ------------
    def save(self, path: str) -> None:
        self._merge()
        with open(path, "wb") as handle:
            np.savez(handle, centroids=self.centroids, scale=np.float64(self.scale), offsets=self.offsets,
                     keys=self.keys, codes=self.codes)

    @classmethod
    def restore(cls, path: str) -> "IVFShortlist":
        """Load the lists into RAM (whatever AdaptiveIndex.load's `view`: an .npz is read whole).
        A file written before the int8 codes (f32 `vectors`) is encoded on load."""
        try:
            with np.load(path, allow_pickle=False) as data:
                parts: dict[str, Any] = {name: data[name] for name in data.files}
            centroids, offsets, keys = parts["centroids"], parts["offsets"], parts["keys"]
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path} is not an IVF shortlist: {str(exc).splitlines()[0]}") from None
        if "codes" in parts and "scale" in parts:
            scale, codes = float(parts["scale"]), parts["codes"]
        elif "vectors" in parts:
            scale = code_scale(parts["vectors"])
            codes = encode(parts["vectors"], scale)
        else:
            raise ArtifactError(f"{path} is not an IVF shortlist: it holds neither codes nor vectors")
        index = cls(codes.shape[1], len(centroids))
        index.centroids, index.offsets, index.keys, index.codes, index.scale = centroids, offsets, keys, codes, scale
        if (codes.dtype != np.int8 or index.offsets[-1] != len(index.keys) or len(index.keys) != len(codes)
                or len(offsets) != len(centroids) + 1):
            raise ArtifactError(f"{path} is an inconsistent IVF shortlist")
        index._merge()      # pack the lists now: the first query would wait for it (0.14 s at 1M x 64)
        return index

