"""The index directory on disk: its format, the settings file (index.json) and the checks that
loading runs on it (sizes always, sha256 on request), and the chunked .npy writer.

  index.json          settings (dims, dtypes, graph parameters), tuned search defaults, each file's
                      size and sha256 (load checks the sizes; load(verify=True) the hashes)
  shortlist.usearch   the usearch HNSW index over the Ds-dim prefixes; its keys are row numbers
                      (shortlist.ivf.npz instead for dtype "ivf": centroids and lists, ivf.py)
  rerank.npy          N x Dr rerank store (f16 by default), read memory-mapped: the full vectors
                      need not sit in RAM. Row i belongs to keys.npy[i] (usearch's own file keeps
                      vectors in slot order, not insertion order, so it cannot serve as this store).
  keys.npy            N int64 user ids
  documents.jsonl     optional: per row its text and metadata, one JSON object per line, and
  documents.offsets.npy   the N+1 byte offsets of those lines (a lookup reads only its rows)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from ..manifest import read_description, sha256_file
from .vectors import CHUNK_ROWS

FORMAT = "mrl-deploy-index"
FORMAT_VERSION = 2          # what this version reads; an index records 1, or 2 with an "ivf" shortlist
INDEX_JSON = "index.json"
SHORTLIST_FILE = "shortlist.usearch"
IVF_FILE = "shortlist.ivf.npz"      # the shortlist of dtype "ivf" (ivf.py), instead of SHORTLIST_FILE
RERANK_FILE = "rerank.npy"
KEYS_FILE = "keys.npy"
DOCUMENTS_FILE = "documents.jsonl"
DOCUMENT_OFFSETS_FILE = "documents.offsets.npy"
SHORTLIST_DTYPES = ("f32", "f16", "i8", "b1", "ivf")   # HNSW of f32 ... b1 vectors; or inverted lists
RERANK_DTYPES = {"f16": np.float16, "f32": np.float32}


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


def check_loaded(path: Path, settings: dict[str, Any], shortlist: Any, store: np.ndarray, keys: np.ndarray) -> None:
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


def identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write in chunks through a memory-mapped .npy: a memory-mapped source is never read whole."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
    for start in range(0, len(array), CHUNK_ROWS):
        out[start:start + CHUNK_ROWS] = array[start:start + CHUNK_ROWS]
    out.flush()
    del out


def shortlist_file(settings: dict[str, Any]) -> str:
    return IVF_FILE if settings["dtype"] == "ivf" else SHORTLIST_FILE

