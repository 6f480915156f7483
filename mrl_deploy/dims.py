"""Nesting dims: parsing, validation and defaults."""

from __future__ import annotations

import warnings
from typing import Iterable

from .errors import DimsError


def default_nesting_dims(full_dim: int, smallest: int = 8) -> list[int]:
    """Halving from the full dim down to `smallest`: 2048 -> [8, 16, ..., 2048]; 384 -> [12, 24, ..., 384]."""
    if full_dim < 1:
        raise DimsError(f"full dim must be >= 1, got {full_dim}")
    dims = [full_dim]
    while dims[-1] % 2 == 0 and dims[-1] // 2 >= smallest:
        dims.append(dims[-1] // 2)
    return sorted(dims)


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


def check_dims(dims: Iterable[int], full_dim: int, nesting_dims: Iterable[int]) -> list[int]:
    """Validate chosen dims against a model: above the full dim is an error; outside the
    nesting list is allowed (any prefix is computable) but warned about, since it was not trained."""
    dims = parse_dims(list(dims))
    if not dims:
        raise DimsError("no dims chosen: pass --dims M (repeatable) or --all-dims")
    too_big = [d for d in dims if d > full_dim]
    if too_big:
        raise DimsError(f"dims {too_big} exceed the model's full dim {full_dim}")
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
