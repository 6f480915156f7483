"""The per-user cache directory: derived data that is safe to delete and never part of an artifact.

~/.cache/mrl-deploy ($XDG_CACHE_HOME/mrl-deploy; $MRL_DEPLOY_CACHE overrides). Holds the training
embedding cache (embeddings/) and ONNX Runtime TensorRT engine caches (ort-trt/)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("MRL_DEPLOY_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mrl-deploy"
