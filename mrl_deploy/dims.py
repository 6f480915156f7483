"""Nesting dims: parsing and validation (unknown nesting dims are None, never guessed), and the
truncate-then-renormalise rule that makes a prefix of an MRL embedding an embedding."""

from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np

from .errors import DimsError


def parse_dims(values: Iterable[object] | str | None) -> list[int]:
    """Parse '8,16,32' or ['8', 16] into sorted unique ints; refuse non-integers and dims below 1."""
    if values is None:
        return []
    if isinstance(values, (str, int)):
        values = [values]
    out: list[int] = []
    for value in values:
        parts = value.split(",") if isinstance(value, str) else [value]
        for part in parts:
            if isinstance(part, str):
                part = part.strip()
                if not part:
                    continue
            if isinstance(part, bool) or isinstance(part, float) and not part.is_integer():
                raise DimsError(f"dims must be integers, got {part!r}")
            try:
                dim = int(part) if not isinstance(part, str) else int(part, 10)
            except (TypeError, ValueError):
                raise DimsError(f"dims must be integers, got {part!r}") from None
            if dim < 1:
                raise DimsError(f"dims must be >= 1, got {dim}")
            out.append(dim)
    return sorted(set(out))


def check_dims(dims: Iterable[int], full_dim: int, nesting_dims: Iterable[int] | None) -> list[int]:
    """Validate chosen dims against a model: above the full dim is an error; outside the
    nesting list is allowed (any prefix is computable) but warned about, since it was not trained.
    Unknown nesting dims (None: the model does not say which prefixes were trained) warn about nothing."""
    dims = parse_dims(list(dims))
    if not dims:
        raise DimsError("no dims chosen: pass --dims M (repeatable) or --all-dims")
    too_big = [d for d in dims if d > full_dim]
    if too_big:
        raise DimsError(f"dims {too_big} exceed the model's full dim {full_dim}")
    if nesting_dims is None:
        return dims
    nesting = set(nesting_dims)
    untrained = [d for d in dims if d not in nesting]
    if untrained:
        warnings.warn(
            f"dims {untrained} are not in the model's nesting dims {sorted(nesting)}: "
            "those prefixes were not trained as representations",
            UserWarning,
            stacklevel=2,
        )
    return dims


def check_nesting_dims(nesting_dims: object, full_dim: int, where: str) -> list[int] | None:
    """Declared nesting dims (--nesting-dims, a config, a model card) parsed and checked against
    the model's full dim; None stays None (unknown)."""
    if nesting_dims is None:
        return None
    dims = parse_dims(nesting_dims)
    if not dims:
        raise DimsError(f"{where}: empty nesting dims")
    if dims[-1] > full_dim:
        raise DimsError(f"{where}: nesting dims {dims} exceed the model's full dim {full_dim}")
    return dims


def format_nesting_dims(nesting_dims: Iterable[int] | None) -> str:
    """For people: "8, 16, 64", or "unknown" where the model does not declare them."""
    return "unknown" if nesting_dims is None else ", ".join(map(str, nesting_dims))


def renormalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


def prefix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """z[:dim] / ||z[:dim]|| as float32: the embedding at `dim` of MRL embeddings z."""
    return renormalize(np.asarray(vectors)[:, :dim])
