"""Embedding inputs with an artifact for an index (the CLI's `index DIR INPUTS` and `search
--texts`), in chunks with progress."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import InputError

Progress = Callable[[int, int], None]


def encode_inputs(artifact: Any, inputs: Any, dim: int | None = None, *, chunk: int = 1024,
                  progress: Progress | None = None, **run_options: Any) -> np.ndarray:
    """artifact.encode(inputs, dim=dim) over chunks of `chunk` inputs, reporting progress(done,
    total) after each. Inputs: an array, a dict of arrays (one row per input) or a list of texts."""
    count = len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)
    if count == 0:
        raise InputError("no inputs to embed")
    parts = []
    for start in range(0, count, chunk):
        part = ({name: value[start:start + chunk] for name, value in inputs.items()}
                if isinstance(inputs, dict) else inputs[start:start + chunk])
        parts.append(artifact.encode(part, dim=dim, **run_options))
        if progress:
            progress(min(start + chunk, count), count)
    return np.concatenate(parts)
