"""A sharded adaptive index: S AdaptiveIndex shards searched together, their top-k merged.

    from mrl_deploy.sharded import ShardedIndex, load_index
    ShardedIndex.build(vectors, "corpus.index", shards=4, shortlist_dim=32)      # one after another
    ShardedIndex.build(vectors, "corpus.index", shards=4, ray=True)              # Ray tasks
    index = ShardedIndex.load("corpus.index")              # shards in this process
    index = ShardedIndex.load("corpus.index", ray=True)    # one Ray actor per shard
    ids, scores = index.search(queries, k=10)

Each shard is a plain AdaptiveIndex directory over a contiguous slice of the corpus (rows in
input order), keyed by the user's global ids. A search runs the same stages on every shard (each
shard returns its own top k after its own rerank) and merges those S x k candidates by score: the
merge is exact over them, and a shard's shortlist of k' out of N/S rows finds at least what a
single index's k' out of N does, so recall does not drop (measured in tests and
benchmarks/scale_out.py).

The directory:
  sharded.json      settings shared by the shards (dims, dtypes, graph, defaults), the count, and
                    per shard its directory, size, key range and bytes
  shard-0000/ ...   AdaptiveIndex directories (index.json, shortlist.usearch, rerank.npy, ...)

Shards are reached through `submit(method, *args, **kwargs) -> future` (`.result()`): LocalShard
runs an AdaptiveIndex in a thread here; mrl_deploy.scale holds the Ray actor and Ray Serve ones.
Nothing here imports ray.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ArtifactError, InputError
from .manifest import read_description, staged_directory, write_json_atomic
from .retrieval.documents import document_lines
from .retrieval.files import INDEX_JSON
from .retrieval.index import AdaptiveIndex
from .retrieval.stages import Funnel, check_queries, plan_stages
from .retrieval.vectors import as_matrix, check_keys

FORMAT = "mrl-deploy-sharded-index"
FORMAT_VERSION = 1
SHARDED_JSON = "sharded.json"
# what the shards share; the top-level settings repeat them (so /info and `search` read them there)
SHARED_SETTINGS = ("full_dim", "shortlist_dim", "rerank_dim", "dtype", "rerank_dtype", "metric", "normalization",
                   "connectivity", "expansion_add", "defaults")


def is_sharded(path: str | os.PathLike) -> bool:
    return (Path(path) / SHARDED_JSON).is_file()


def load_index(path: str | os.PathLike, view: bool = True, ray: bool = False, verify: bool = False):
    """An AdaptiveIndex or a ShardedIndex, whichever the directory holds (verify: check every
    file's sha256, as AdaptiveIndex.load does)."""
    if is_sharded(path):
        return ShardedIndex.load(path, view=view, ray=ray, verify=verify)
    if ray:
        raise InputError(f"{path} is a single index: --ray serves sharded indexes (build one with --shards)")
    return AdaptiveIndex.load(path, view=view, verify=verify)


# --- where a shard's rows come from ------------------------------------------------------------------

@dataclass
class Slice:
    """Rows [start, stop) of an .npy file (optionally one field of a structured array): what a
    shard task reads, memory-mapped, instead of receiving the vectors themselves."""
    path: str
    start: int
    stop: int
    field: str | None = None

    def read(self) -> np.ndarray:
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {self.path}: {str(exc).splitlines()[0]}") from None
        part = array[self.start:self.stop]
        return np.array(part[self.field] if self.field else part)


@dataclass
class ShardSpec:
    """Everything one shard build needs, picklable for a Ray task. vectors / keys: an array or
    Slices (concatenated in order); texts / metadata: its rows' documents, or None."""
    number: int
    vectors: Any
    keys: Any
    texts: list[str] | None = None
    metadata: list[Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)


class SliceRows:
    """Slices of .npy files as one N x d corpus read on demand: rows [a:b] are copied from the
    files that hold them (memory-mapped for the copy, then unmapped), so an index built from it
    (`AdaptiveIndex.build` reads CHUNK_ROWS rows at a time) never holds the whole corpus in RAM."""

    def __init__(self, slices: Sequence[Slice]):
        self.slices = list(slices)
        self._starts = np.cumsum([0] + [s.stop - s.start for s in self.slices])
        first = np.load(self.slices[0].path, mmap_mode="r", allow_pickle=False)
        self.shape = (int(self._starts[-1]), int(first.shape[1]))
        self.dtype = first.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("SliceRows takes contiguous row slices only")
        start, stop, _ = rows.indices(len(self))
        parts = []
        for number, piece in enumerate(self.slices):
            first, last = int(self._starts[number]), int(self._starts[number + 1])
            if last <= start or first >= stop:
                continue
            a, b = max(start, first) - first, min(stop, last) - first
            parts.append(Slice(piece.path, piece.start + a, piece.start + b, piece.field).read())
        return np.concatenate(parts) if parts else np.empty((0, self.shape[1]), dtype=self.dtype)


def _gather(part: Any, *, lazy: bool) -> Any:
    """A shard's vectors (`lazy`: Slices read on demand) or keys (read into RAM): an array, or its
    Slices."""
    if isinstance(part, list) and part and isinstance(part[0], Slice):
        return SliceRows(part) if lazy and part[0].field is None else np.concatenate([s.read() for s in part])
    return np.asarray(part)


def shard_name(number: int) -> str:
    return f"shard-{number:04d}"


def build_shard(spec: ShardSpec, directory: str) -> dict[str, Any]:
    """Build one shard and save it to `directory`/shard-NNNN; returns its manifest entry. Runs here
    or as a Ray task (it reads its own rows)."""
    vectors, keys = _gather(spec.vectors, lazy=True), _gather(spec.keys, lazy=False)
    name = shard_name(spec.number)
    # straight into its directory: the rerank store is streamed to its file, never held in RAM
    index = AdaptiveIndex.build(vectors, keys=keys, texts=spec.texts, metadata=spec.metadata,
                                output=Path(directory) / name, **spec.options)
    return {"path": name, "count": len(index), "key_min": int(keys.min()), "key_max": int(keys.max()),
            "shortlist_bytes": index.shortlist_bytes, "rerank_bytes": index.rerank_bytes,
            "documents": index.has_documents, "settings": {k: index.settings[k] for k in SHARED_SETTINGS}}


def split_rows(count: int, shards: int) -> list[tuple[int, int]]:
    """`shards` contiguous row ranges of near-equal size (the first ones one row longer)."""
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise InputError(f"the number of shards must be a positive integer, got {shards!r}")
    if shards > count:
        raise InputError(f"{shards} shards for {count} vectors: every shard needs at least one vector")
    edges = np.linspace(0, count, shards + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


# --- shards as futures ---------------------------------------------------------------------------------

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1), thread_name_prefix="mrl-shard")
    return _POOL


class LocalShard:
    """A shard in this process: its calls run on a thread pool, so the shards search at once
    (usearch and the rerank kernel release the GIL)."""

    def __init__(self, index: AdaptiveIndex):
        self.index = index

    def submit(self, method: str, *args: Any, **kwargs: Any):
        return _pool().submit(getattr(self.index, method), *args, **kwargs)

    def close(self) -> None:
        pass


# --- the index -------------------------------------------------------------------------------------------

class ShardedIndex:
    """S AdaptiveIndex shards behind AdaptiveIndex's search interface (search, plan, documents,
    __len__, full_dim, settings): the server and `mrl-deploy search` take either."""

    def __init__(self, settings: dict[str, Any], shards: Sequence[Any], path: Path | None = None):
        self.settings = settings
        self.shards = list(shards)
        self.path = path
        entries = settings["shards"]
        self._counts = np.array([e["count"] for e in entries], dtype=np.int64)
        self._ranges = np.array([(e["key_min"], e["key_max"]) for e in entries], dtype=np.int64)

    shortlist_dim = property(lambda self: int(self.settings["shortlist_dim"]))
    rerank_dim = property(lambda self: int(self.settings["rerank_dim"]))
    full_dim = property(lambda self: int(self.settings["full_dim"]))
    dtype = property(lambda self: self.settings["dtype"])
    rerank_dtype = property(lambda self: self.settings["rerank_dtype"])
    defaults = property(lambda self: self.settings["defaults"])
    has_documents = property(lambda self: bool(self.settings.get("documents")))

    @property
    def shortlist_bytes(self) -> int:
        return int(sum(e["shortlist_bytes"] for e in self.settings["shards"]))

    @property
    def rerank_bytes(self) -> int:
        return int(sum(e["rerank_bytes"] for e in self.settings["shards"]))

    def __len__(self) -> int:
        return int(self.settings["count"])

    def __repr__(self) -> str:
        return (f"ShardedIndex({len(self)} vectors in {len(self.shards)} shards, shortlist {self.shortlist_dim}-d "
                f"{self.dtype}, rerank {self.rerank_dim}-d {self.rerank_dtype})")

    # --- building ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: Any, path: str | os.PathLike, *, shards: int, keys: Any = None,
              texts: Sequence[str] | None = None, metadata: Sequence[Any] | None = None, ray: bool = False,
              progress: Callable[[int, int], None] | None = None, source: dict | None = None,
              **options: Any) -> "ShardedIndex":
        """Split N x d vectors (an array, or Slices of .npy files with `keys` as Slices too) into
        `shards` contiguous parts, build an AdaptiveIndex per part (Ray tasks with ray=True, one
        after another without), and write the sharded index to `path` atomically. `options` are
        AdaptiveIndex.build's (shortlist_dim, rerank_dim, dtype, ...)."""
        if isinstance(vectors, list) and vectors and isinstance(vectors[0], Slice):
            count = sum(s.stop - s.start for s in vectors)
            if keys is None:
                raise InputError("vectors given as file slices need their keys as slices too")
        else:
            vectors = as_matrix(vectors, "vectors")
            count = len(vectors)
            keys = check_keys(np.arange(count) if keys is None else keys, count)
        document_lines(texts, metadata, count)      # checked here, stored by each shard
        ranges = split_rows(count, shards)
        specs = [ShardSpec(i, _cut(vectors, a, b), _cut(keys, a, b), None if texts is None else list(texts[a:b]),
                           None if metadata is None else list(metadata[a:b]), options)
                 for i, (a, b) in enumerate(ranges)]
        target = Path(path).resolve()
        with staged_directory(target, SHARDED_JSON, "an mrl-deploy sharded index", InputError) as staging:
            if ray:
                from .scale.cluster import run_tasks

                entries = run_tasks(build_shard, [(spec, str(staging)) for spec in specs], progress=progress)
            else:
                entries = []
                for spec in specs:
                    entries.append(build_shard(spec, str(staging)))
                    if progress:
                        progress(len(entries), len(specs))
            settings = _top_settings(entries, source)
            write_json_atomic(staging / SHARDED_JSON, settings)
        return cls.load(target)

    # --- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, view: bool = True, ray: bool = False, verify: bool = False,
             **actor_options: Any) -> "ShardedIndex":
        """Open a sharded index: every shard in this process (memory-mapped like
        AdaptiveIndex.load; verify=True checks every file's sha256), or with ray=True each in a
        Ray actor (`actor_options`: num_cpus and Ray's actor options)."""
        path = Path(path).resolve()
        settings = read_sharded_settings(path)
        directories = [path / entry["path"] for entry in settings["shards"]]
        if ray:
            from .scale.actors import actor_shards

            shards = actor_shards(directories, settings, view=view, verify=verify, **actor_options)
        else:
            shards = [LocalShard(AdaptiveIndex.load(d, view=view, verify=verify)) for d in directories]
            for shard, entry in zip(shards, settings["shards"]):
                if len(shard.index) != entry["count"]:
                    raise ArtifactError(f"{path / entry['path']} holds {len(shard.index)} vectors; "
                                        f"{SHARDED_JSON} says {entry['count']}")
        return cls(settings, shards, path)

    def close(self) -> None:
        """Release the shards (Ray actors are killed; local shards need nothing)."""
        for shard in self.shards:
            shard.close()

    # --- searching ----------------------------------------------------------------------------------
    # the same stages and query checks as a single index (stages.py): planned once here from the
    # shared settings, then run by every shard
    def plan(self, k: int, *, shortlist_size: int | None = None, funnel: Funnel | str | None = None,
             count: int | None = None) -> list[tuple[int, int]]:
        """The stages a search runs (AdaptiveIndex.plan over the whole sharded corpus)."""
        return plan_stages(self.settings, k, len(self) if count is None else count,
                           shortlist_size=shortlist_size, funnel=funnel)

    def search(self, queries: Any, k: int = 10, *, shortlist_size: int | None = None,
               funnel: Funnel | str | None = None, exact: bool = False,
               expansion_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """AdaptiveIndex.search over every shard; the shards' top k merged by score."""
        q = check_queries(self.settings, queries, k, len(self))
        if exact:
            futures = [shard.submit("exact", q, int(min(k, n))) for shard, n in zip(self.shards, self._counts)]
        else:
            stages = self.plan(k, shortlist_size=shortlist_size, funnel=funnel)
            futures = [shard.submit("search", q, int(min(k, n)), funnel=stages, expansion_search=expansion_search)
                       for shard, n in zip(self.shards, self._counts)]
        return merge_top_k([future.result() for future in futures], k)

    def exact(self, queries: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        return self.search(queries, k, exact=True)

    def documents(self, ids: Any) -> list:
        """The stored {"text", "metadata"} of each id (nested like `ids`), asked of the shards
        whose key range holds it; None for -1 and ids no shard has."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.reshape(-1)
        found = np.empty(len(flat), dtype=object)
        found[:] = [None] * len(flat)
        if self.has_documents:
            asked = []
            for shard, (low, high) in zip(self.shards, self._ranges):
                where = np.flatnonzero((flat >= low) & (flat <= high))
                if len(where):
                    asked.append((where, shard.submit("documents", flat[where])))
            for where, future in asked:
                for i, document in zip(where, future.result()):
                    if document is not None:
                        found[i] = document
        return found.reshape(ids.shape).tolist()


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of the shards' results by score (ids Q x k, -1 / NaN where fewer were found).
    Ties keep the shards' order."""
    ids = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts], axis=1)
    scores = np.concatenate([np.asarray(p[1], dtype=np.float32) for p in parts], axis=1)
    found = (ids >= 0) & ~np.isnan(scores)
    order = np.argsort(np.where(found, -scores, np.inf), axis=1, kind="stable")[:, :k]
    keep = np.take_along_axis(found, order, 1)
    ids = np.where(keep, np.take_along_axis(ids, order, 1), -1)
    scores = np.where(keep, np.take_along_axis(scores, order, 1), np.nan).astype(np.float32)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=np.nan)
    return ids, scores


def _cut(part: Any, start: int, stop: int) -> Any:
    """Rows [start, stop) of an array, or of a list of Slices (as Slices)."""
    if not (isinstance(part, list) and part and isinstance(part[0], Slice)):
        return part[start:stop]
    out, offset = [], 0
    for s in part:
        size = s.stop - s.start
        a, b = max(start, offset), min(stop, offset + size)
        if a < b:
            out.append(Slice(s.path, s.start + a - offset, s.start + b - offset, s.field))
        offset += size
    return out


def _top_settings(entries: list[dict[str, Any]], source: dict | None) -> dict[str, Any]:
    from .version import __version__

    first = entries[0]["settings"]
    for entry in entries[1:]:
        if entry["settings"] != first:     # cannot happen with one set of options; a bug if it does
            raise ArtifactError(f"shard {entry['path']} was built with other settings than {entries[0]['path']}")
    settings = {"format": FORMAT, "format_version": FORMAT_VERSION, "mrl_deploy_version": __version__,
                "count": int(sum(e["count"] for e in entries)), **first,
                "documents": all(e["documents"] for e in entries),
                "shards": [{k: v for k, v in e.items() if k != "settings"} for e in entries]}
    if source:
        settings["source"] = source
    return settings


def read_sharded_settings(path: Path) -> dict[str, Any]:
    settings = read_description(path, SHARDED_JSON, "sharded index")
    if settings.get("format") != FORMAT:
        raise ArtifactError(f"{path / SHARDED_JSON} is not an mrl-deploy sharded index description")
    if settings.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"{path} has sharded index format {settings['format_version']}; upgrade mrl-deploy")
    entries = settings.get("shards")
    if not isinstance(entries, list) or not entries:
        raise ArtifactError(f"{path / SHARDED_JSON} lists no shards")
    for entry in entries:
        if not (path / entry["path"] / INDEX_JSON).is_file():
            raise ArtifactError(f"shard missing: {path / entry['path']}")
    return settings

