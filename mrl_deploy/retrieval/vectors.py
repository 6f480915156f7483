"""The vectors an index takes: the truncate-then-renormalise rule and the checks on vectors and
keys that every index (single or sharded) applies before it builds or adds anything."""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

from ..dims import prefix  # noqa: F401  (re-exported: retrieval's callers and users import it from here)
from ..errors import InputError

CHUNK_ROWS = 65536          # rows normalised / added / scanned at a time: bounded memory at 1M+


def as_matrix(vectors: Any, what: str) -> np.ndarray:
    """`vectors` as a 2-D real array (one row per vector; a single 1-D vector becomes one row),
    never copied: a memory-mapped .npy stays memory-mapped."""
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


def check_finite(array: np.ndarray, what: str, first: int = 0) -> None:
    """No NaN or infinity in any row (`first`: the number of row 0, for the message)."""
    for start in range(0, len(array), CHUNK_ROWS):
        block = np.asarray(array[start:start + CHUNK_ROWS], dtype=np.float32)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            raise InputError(f"{what} row {first + start + int(np.argmax(bad))} contains NaN or infinite values")


def check_nonzero(array: np.ndarray, dim: int, what: str, first: int = 0) -> None:
    """A zero prefix has no direction: cosine search cannot rank it."""
    for start in range(0, len(array), CHUNK_ROWS):
        norms = np.linalg.norm(np.asarray(array[start:start + CHUNK_ROWS, :dim], dtype=np.float32), axis=1)
        if (norms == 0).any():
            raise InputError(f"{what} row {first + start + int(np.argmax(norms == 0))} is all zeros in its first "
                             f"{dim} dims")


def read_rows(vectors: Any, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as an in-memory float32 array. Read from a read-only memory-mapped file
    (np.load(..., mmap_mode="r")), the mapped pages are dropped from this process afterwards (they
    stay in the page cache): a pass over a corpus larger than RAM keeps one chunk resident, not
    every page it touched."""
    block = np.array(vectors[start:stop], dtype=np.float32)
    mapping = _read_only_mapping(vectors)
    if mapping is not None:
        mapping.madvise(mmap.MADV_DONTNEED)
    return block


def _read_only_mapping(array: Any) -> "mmap.mmap | None":
    """The mmap under a read-only np.memmap (or a view of one). Copy-on-write or writable maps are
    left alone: dropping their pages could drop a change."""
    while isinstance(array, np.ndarray):
        if isinstance(array, np.memmap) and array.mode == "r" and isinstance(getattr(array, "_mmap", None), mmap.mmap):
            return array._mmap
        array = array.base
    return None


def check_keys(keys: Any, count: int, existing: np.ndarray | None = None) -> np.ndarray:
    """One unique non-negative integer id per vector (none of them in `existing`), as int64."""
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


def is_row_source(vectors: Any) -> bool:
    """A corpus read lazily, rows on demand (e.g. `mrl_deploy.sharded.SliceRows`): not an array,
    but a 2-D `shape` and rows [a:b] as an array."""
    shape = getattr(vectors, "shape", None)
    return (not isinstance(vectors, np.ndarray) and isinstance(shape, tuple) and len(shape) == 2
            and hasattr(vectors, "__getitem__"))
