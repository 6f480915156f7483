"""The documents an index keeps beside its vectors: per row a text and / or a JSON metadata object,
what search results show (`AdaptiveIndex.documents(ids)`, the server's /v1/search)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ArtifactError, InputError
from .files import DOCUMENT_OFFSETS_FILE, DOCUMENTS_FILE


def document_lines(texts: Sequence[str] | None, metadata: Sequence[Any] | None, count: int) -> list[bytes] | None:
    """One UTF-8 JSON line per row ({"text": ..., "metadata": {...}}, either part optional), or
    None when neither is given."""
    import json

    if texts is None and metadata is None:
        return None
    for what, values in (("texts", texts), ("metadata", metadata)):
        if values is not None and len(values) != count:
            raise InputError(f"{len(values)} {what} for {count} vectors: give exactly one per vector")
    lines = []
    for i in range(count):
        row: dict[str, Any] = {}
        if texts is not None:
            if not isinstance(texts[i], str):
                raise InputError(f"text {i} is {type(texts[i]).__name__}, not a string")
            row["text"] = texts[i]
        if metadata is not None:
            if not isinstance(metadata[i], dict):
                raise InputError(f"metadata {i} is {type(metadata[i]).__name__}, not a JSON object")
            row["metadata"] = metadata[i]
        try:
            lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n")
        except (TypeError, ValueError) as exc:
            raise InputError(f"metadata {i} cannot be stored as JSON: {exc}") from None
    return lines


def read_metadata(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A JSONL file of per-row metadata: one JSON object per line (blank lines are refused: they
    would shift every later row)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError(f"metadata file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                row = json.loads(line)
            except ValueError:
                raise InputError(f"{path} line {number} is not JSON (one JSON object per line)") from None
            if not isinstance(row, dict):
                raise InputError(f"{path} line {number} is not a JSON object")
            rows.append(row)
    return rows


class DocumentStore:
    """Per-row documents of an index: documents.jsonl (one JSON line per row, row i belongs to
    keys.npy[i]) and documents.offsets.npy (N+1 int64 byte offsets). Saved rows are read on
    demand (offsets memory-mapped, lines by pread from a descriptor held open, so a later save
    over the directory does not pull the data away); rows added since are held in memory."""

    def __init__(self, added: list[bytes] | None = None):
        self._fd: int | None = None
        self._offsets: np.ndarray = np.zeros(1, dtype=np.int64)
        self._added: list[bytes] = list(added or [])

    @classmethod
    def open(cls, directory: Path, count: int) -> "DocumentStore":
        store = cls()
        try:
            store._offsets = np.load(directory / DOCUMENT_OFFSETS_FILE, mmap_mode="r")
            store._fd = os.open(directory / DOCUMENTS_FILE, os.O_RDONLY)
            size = os.fstat(store._fd).st_size
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{directory} has a damaged document store: {str(exc).splitlines()[0]}") from None
        if store._offsets.shape != (count + 1,) or int(store._offsets[-1]) != size:
            raise ArtifactError(f"{directory}: the document store does not match the index's {count} vectors")
        return store

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return len(self._offsets) - 1 + len(self._added)

    def extend(self, lines: list[bytes]) -> None:
        self._added.extend(lines)

    def get(self, rows: Iterable[int]) -> list[dict[str, Any]]:
        import json

        saved = len(self._offsets) - 1
        out = []
        for row in (int(r) for r in rows):
            if row < saved:
                start, end = int(self._offsets[row]), int(self._offsets[row + 1])
                line = os.pread(self._fd, end - start, start)
            else:
                line = self._added[row - saved]
            out.append(json.loads(line))
        return out

    def write(self, directory: Path) -> None:
        """Both files into `directory`: the saved lines copied in chunks, then the added ones."""
        saved = len(self._offsets) - 1
        with open(directory / DOCUMENTS_FILE, "wb") as out:
            position = 0
            end = int(self._offsets[-1])
            while position < end:
                block = os.pread(self._fd, min(1 << 24, end - position), position)
                if not block:
                    raise ArtifactError("the document store's file was truncated while saving")
                out.write(block)
                position += len(block)
            for line in self._added:
                out.write(line)
        sizes = np.fromiter((len(line) for line in self._added), dtype=np.int64, count=len(self._added))
        offsets = np.concatenate([np.asarray(self._offsets[:saved + 1], dtype=np.int64),
                                  int(self._offsets[-1]) + np.cumsum(sizes)])
        np.save(directory / DOCUMENT_OFFSETS_FILE, offsets)
