"""Quality metrics, numpy in and out.

Retrieval (ids: Q x k arrays of retrieved corpus positions or ids, best first; -1 = no result):
  recall_at_k     |retrieved top-k  &  exact top-k| / k, averaged over queries: how well an
                  approximate search reproduces exact full-dim search (no labels needed)
  precision_at_k  fraction of the top k that is relevant (same class as the query)
  map_at_k        the MRL paper's mAP@k: per query, the sum over relevant ranks r <= k of
                  precision@r, divided by k (not by the number of relevant items), averaged
"""

from __future__ import annotations

import numpy as np

from .errors import check_number

# --- retrieval ------------------------------------------------------------------------------------


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int | None = None) -> float:
    """Mean fraction of each query's exact top-k that the search found in its own top k."""
    found, truth = np.atleast_2d(found), np.atleast_2d(truth)
    k = truth.shape[1] if k is None else check_number(k, "k", 1, truth.shape[1], integer=True)
    found, truth = found[:, :k], truth[:, :k]
    hits = (found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)
    return float(hits.any(axis=2).sum() / (len(truth) * k))


def relevance(ids: np.ndarray, corpus_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """Q x k booleans: retrieved item has the query's label (a missing result, -1, never does)."""
    ids = np.atleast_2d(ids)
    labels = np.asarray(corpus_labels)[np.maximum(ids, 0)]
    return (labels == np.asarray(query_labels)[:, None]) & (ids >= 0)


def precision_at_k(ids: np.ndarray, corpus_labels: np.ndarray, query_labels: np.ndarray, k: int = 10) -> float:
    return float(relevance(ids[:, :k], corpus_labels, query_labels).mean())


def average_precision_at_k(ids: np.ndarray, corpus_labels: np.ndarray, query_labels: np.ndarray,
                           k: int = 10) -> np.ndarray:
    """Per query: sum of precision@r at every relevant rank r <= k, divided by k (the paper's)."""
    relevant = relevance(ids[:, :k], corpus_labels, query_labels)
    precision = np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)
    return (precision * relevant).sum(axis=1) / k


def map_at_k(ids: np.ndarray, corpus_labels: np.ndarray, query_labels: np.ndarray, k: int = 10) -> float:
    return float(average_precision_at_k(ids, corpus_labels, query_labels, k).mean())
