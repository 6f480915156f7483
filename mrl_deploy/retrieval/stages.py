"""What a search runs: the query checks and the funnel stages, computed from an index's settings
(shortlist_dim, rerank_dim, full_dim, defaults) and its size. AdaptiveIndex and ShardedIndex
share them: a sharded search plans once and runs the same stages on every shard."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError, check_number
from .vectors import as_matrix, check_finite, check_nonzero

Funnel = Sequence[tuple[int, int]]


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


def check_queries(settings: dict[str, Any], queries: Any, k: int, count: int) -> np.ndarray:
    """Queries as float32 Q x d for an index of `count` vectors with these settings; k checked."""
    q = as_matrix(queries, "queries")
    rerank_dim, full_dim = int(settings["rerank_dim"]), int(settings["full_dim"])
    if not rerank_dim <= q.shape[1] <= full_dim:
        expected = full_dim if rerank_dim == full_dim else f"{rerank_dim}..{full_dim}"
        raise InputError(f"queries have {q.shape[1]} dims; this index takes {expected}")
    check_finite(q, "query")
    check_nonzero(q, int(settings["shortlist_dim"]), "query")
    check_number(k, "k", 1, integer=True)
    if k > count:
        raise InputError(f"k={k} is larger than the corpus ({count} vectors)")
    return np.asarray(q, dtype=np.float32)


def plan_stages(settings: dict[str, Any], k: int, count: int, *, shortlist_size: int | None = None,
                funnel: Funnel | str | None = None) -> list[tuple[int, int]]:
    """The stages a search runs: validated (dim, size) pairs, sizes clipped to the corpus
    (`count` vectors). Default: [(Ds, shortlist size), (Dr, k)]."""
    if funnel is not None and shortlist_size is not None:
        raise InputError("give a shortlist size or a funnel, not both")
    shortlist_dim, rerank_dim = int(settings["shortlist_dim"]), int(settings["rerank_dim"])
    if funnel is None:
        check_number(shortlist_size, "shortlist_size", 1, integer=True, optional=True)
        size = int(settings["defaults"]["shortlist_size"] if shortlist_size is None else shortlist_size)
        if size < k:
            raise InputError(f"shortlist size {size} is smaller than k={k}")
        funnel = [(shortlist_dim, size), (rerank_dim, k)]
    stages = parse_funnel(funnel) if isinstance(funnel, str) else [(int(d), int(s)) for d, s in funnel]
    check_funnel(stages, k, shortlist_dim, rerank_dim)
    return [(dim, min(size, count)) for dim, size in stages]


def check_funnel(stages: list[tuple[int, int]], k: int, shortlist_dim: int, rerank_dim: int) -> None:
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
