"""Adaptive retrieval (MRL paper, section 4.3): shortlist with a usearch HNSW index over the first
Ds dims, rerank the shortlist with the first Dr dims (in general a funnel of several stages).

    from mrl_deploy import AdaptiveIndex          # or: from mrl_deploy.retrieval import AdaptiveIndex
    index = AdaptiveIndex.build(vectors, shortlist_dim=64, rerank_dim=768, dtype="f16")
    ids, scores = index.search(queries, k=10, shortlist_size=200)
    index.save("corpus.index"); index = AdaptiveIndex.load("corpus.index", view=True)

One job per module:
  index.py      AdaptiveIndex: build, add, search (shortlist + rerank stages), save, load
  vectors.py    the truncate-then-renormalise rule (`prefix`) and the checks on vectors and keys
  stages.py     query checks and funnel planning, shared with the sharded index
  ivf.py        the inverted-list shortlist (dtype "ivf"), beside usearch's HNSW
  kernels.py    exact search (the ground truth), the rerank kernel, reading a cold store ahead, and
                `_usearch()`: the one door to usearch (it loads onnxruntime first; the other order
                segfaults)
  files.py      the index directory: format, index.json, size / sha256 checks
  documents.py  texts and metadata kept per row
  tuning.py     `tune`: sweep shortlist settings against exact search, recommend one
  encode.py     embed inputs with an artifact for an index

This module re-exports the public names; nothing below imports it back.
"""

from __future__ import annotations

from .documents import DocumentStore, document_lines, read_metadata
from .encode import encode_inputs
from .files import (DOCUMENT_OFFSETS_FILE, DOCUMENTS_FILE, FORMAT, FORMAT_VERSION, INDEX_JSON, KEYS_FILE,
                    RERANK_DTYPES, RERANK_FILE, SHORTLIST_DTYPES, SHORTLIST_FILE, read_settings, verify_index_files)
from .index import DEFAULTS, AdaptiveIndex, default_shortlist_dim, new_shortlist_index, shortlist_vectors
from .kernels import _usearch, exact_search, rerank  # noqa: F401  (_usearch: the one door to usearch)
from .stages import Funnel, check_queries, parse_funnel, plan_stages
from .tuning import apply_recommendation, pareto_frontier, recommend, tune
from .vectors import CHUNK_ROWS, as_matrix, check_keys, prefix

__all__ = ["AdaptiveIndex", "CHUNK_ROWS", "DEFAULTS", "DOCUMENTS_FILE", "DOCUMENT_OFFSETS_FILE", "DocumentStore",
           "FORMAT", "FORMAT_VERSION", "Funnel", "INDEX_JSON", "KEYS_FILE", "RERANK_DTYPES", "RERANK_FILE",
           "SHORTLIST_DTYPES", "SHORTLIST_FILE", "apply_recommendation", "as_matrix", "check_keys", "check_queries",
           "default_shortlist_dim", "document_lines", "encode_inputs", "exact_search", "new_shortlist_index",
           "pareto_frontier", "parse_funnel", "plan_stages", "prefix", "read_metadata", "read_settings",
           "recommend", "rerank", "shortlist_vectors", "tune", "verify_index_files"]
