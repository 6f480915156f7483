"""Outputs against a reference: one set of statistics and one table of bounds, used wherever
outputs are checked (export verification against PyTorch, int8 calibration, TensorRT engines
against ONNX Runtime, `mrl-deploy compare`, the bench's precision variants). numpy only.

    stats = compare_arrays(actual, expected, kind="logits")
    failures = check_output("logits_64", "logits", stats, TOLERANCE["fp32"])

Bounds per variant (TOLERANCE): fp32 must reach cosine >= 0.99999 and max abs diff <= 1e-4 (for
logits, which are not normalised, 1e-4 times their largest magnitude); fp16 cosine >= 0.999; int8
cosine >= 0.99 and top-1 agreement of the logits >= 0.99. NaN or infinite values never pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

TOLERANCE: dict[str, dict[str, float]] = {
    "fp32": {"min_cosine": 0.99999, "max_abs_diff": 1e-4},
    "fp16": {"min_cosine": 0.999},
    "int8": {"min_cosine": 0.99, "top1_agreement": 0.99},
}
VARIANT_ORDER = ("fp32", "fp16", "int8")   # tightest bound first


def row_cosines(actual: Any, expected: Any) -> np.ndarray:
    """The cosine of each row of `actual` with the same row of `expected` (other axes flattened),
    float64. Two zero rows agree (1); a zero row against a non-zero one does not (0)."""
    a = np.asarray(actual, dtype=np.float64).reshape(len(actual), -1)
    e = np.asarray(expected, dtype=np.float64).reshape(len(expected), -1)
    norm_a, norm_e = np.linalg.norm(a, axis=1), np.linalg.norm(e, axis=1)
    norms = norm_a * norm_e
    with np.errstate(invalid="ignore"):
        return np.where(norms > 0, np.sum(a * e, axis=1) / np.maximum(norms, 1e-300),
                        np.where(norm_a == norm_e, 1.0, 0.0))


def compare_arrays(actual: Any, expected: Any, kind: str = "embedding") -> dict[str, Any]:
    """max / mean abs diff, the minimum row-wise cosine, the reference's largest magnitude, whether
    both are finite; for logits (more than one class) the top-1 agreement too. Rows are samples."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise InputError(f"output shapes differ: {actual.shape} vs {expected.shape}")
    a = actual.reshape(len(actual), -1)
    e = expected.reshape(len(expected), -1)
    finite = bool(np.isfinite(a).all() and np.isfinite(e).all())
    diff = np.abs(a - e)
    stats: dict[str, Any] = {
        "max_abs_diff": float(diff.max(initial=0.0)) if finite else float("nan"),
        "mean_abs_diff": float(diff.mean()) if finite and diff.size else (0.0 if finite else float("nan")),
        "min_cosine": float(row_cosines(a, e).min(initial=1.0)) if finite else float("nan"),
        "max_abs_reference": float(np.abs(e).max(initial=0.0)) if finite else float("nan"),
        "finite": finite,
    }
    if kind == "logits" and a.shape[1] > 1:
        stats["top1_agreement"] = float(np.mean(a.argmax(1) == e.argmax(1)))
    return stats


def check_output(name: str, kind: str, stats: dict[str, Any], bounds: dict[str, float]) -> list[str]:
    """Why `stats` (compare_arrays) fail `bounds` (empty if they pass). NaN never passes."""
    if not stats["finite"]:
        return [f"{name} has NaN or infinite values"]
    failures = []
    if not stats["min_cosine"] >= bounds["min_cosine"]:
        failures.append(f"{name} min cosine {stats['min_cosine']:.9f} < {bounds['min_cosine']}")
    if "max_abs_diff" in bounds:
        # logits are not normalised: the bound scales with their magnitude
        scale = 1.0 if kind == "embedding" else max(1.0, stats["max_abs_reference"])
        if not stats["max_abs_diff"] <= bounds["max_abs_diff"] * scale:
            failures.append(f"{name} max abs diff {stats['max_abs_diff']:.2e} > {bounds['max_abs_diff'] * scale:.1e}")
    if "top1_agreement" in bounds and "top1_agreement" in stats and not stats["top1_agreement"] >= bounds["top1_agreement"]:
        failures.append(f"{name} top-1 agreement {stats['top1_agreement']:.3f} < {bounds['top1_agreement']}")
    return failures


def tolerance_for(*variants: str, min_cosine: float | None = None, max_abs_diff: float | None = None) -> dict[str, float]:
    """The bounds for comparing runtimes: the looser of the variants compared (an fp32 engine
    against an fp16 graph is held to fp16's), with optional overrides. Top-1 agreement is
    reported, not enforced: on a handful of random inputs it is a coin toss on ties."""
    loosest = max((v for v in variants if v in VARIANT_ORDER), key=VARIANT_ORDER.index, default="fp32")
    bounds = {key: value for key, value in TOLERANCE[loosest].items() if key != "top1_agreement"}
    if min_cosine is not None:
        bounds["min_cosine"] = float(min_cosine)
    if max_abs_diff is not None:
        bounds["max_abs_diff"] = float(max_abs_diff)
    return bounds
