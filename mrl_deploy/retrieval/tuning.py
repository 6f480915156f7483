"""`mrl-deploy tune`: sweep the shortlist settings of an index against exact search and pick the
fastest that meets a recall target (the Pareto frontier of recall, QPS and bytes per vector)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import InputError, check_number
from .index import AdaptiveIndex
from .stages import check_queries


def tune(index: AdaptiveIndex, queries: Any, *, k: int = 10, recall: float = 0.95,
         dims: Iterable[int] | None = None, dtypes: Iterable[str] | None = None,
         shortlist_sizes: Iterable[int] | None = None, expansions: Iterable[int] | None = None,
         probes: Iterable[int] = (2, 4, 8, 16, 32),
         repeats: int = 2, say: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Sweep Ds x dtype (each a shortlist index built from the rerank store; dtype "ivf": inverted
    lists) x shortlist size x expansion_search (HNSW's search width `expansions`; ivf's lists
    probed, `probes`); measure recall@k against exact search at Dr, QPS (all cores, the whole
    query batch, best of `repeats`) and shortlist bytes per vector. Returns every point, the Pareto
    frontier (recall up, QPS up, bytes down) and the fastest point meeting `recall`."""
    from ..metrics import recall_at_k

    check_number(recall, "recall", 0, 1, low_open=True)
    check_number(repeats, "repeats", 1, integer=True)
    q = check_queries(index.settings, queries, k, len(index))
    dims = _neighbour_dims(index.shortlist_dim, index.rerank_dim) if dims is None else list(dims)
    dtypes = [index.dtype] if dtypes is None else list(dtypes)
    sizes = [5 * k, 10 * k, 20 * k, 40 * k] if shortlist_sizes is None else list(shortlist_sizes)
    expansions = [64, 128, 256, 512] if expansions is None else list(expansions)
    probes = list(probes)
    for name, values, low, high in (("shortlist dim", dims, 1, index.rerank_dim), ("shortlist size", sizes, k, None),
                                    ("expansion", expansions, 1, None), ("probe", probes, 1, None)):
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
                # HNSW: a search width below the shortlist size is the size itself; ivf: lists probed
                widths = (sorted(set(probes)) if dtype == "ivf" else sorted({max(size, e) for e in expansions}))
                for ef in widths:
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
