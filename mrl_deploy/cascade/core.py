"""The cascade itself (numpy only: the runtime path): confidence per head, Cascade.run over the
heads' logits, and the result with its two costs (honest: every head passed through; paper: the
stop dim). See the package docstring."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError, MRLDeployError


CONFIDENCES = ("softmax", "margin")


CASCADE_FORMAT = 1


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def predict_with_confidence(logits: np.ndarray, confidence: str = "softmax") -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, confidence) per row. Confidence: max softmax probability, or the margin
    top-1 minus top-2 of the softmax probabilities (both in [0, 1], comparable across heads)."""
    check_confidence(confidence)
    probs = softmax(logits)
    predictions = probs.argmax(axis=1)
    if confidence == "softmax" or probs.shape[1] == 1:
        scores = probs[np.arange(len(probs)), predictions]
    else:
        top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
        scores = top2[:, 1] - top2[:, 0]
    return predictions.astype(np.int64), scores


@dataclass
class CascadeResult:
    """Per-sample outcome of a cascade run (arrays of length N)."""

    dims: list[int]                  # the cascade's dims, in order
    predictions: np.ndarray          # int64 class index
    stop_dims: np.ndarray            # int64 dim of the head that decided
    confidences: np.ndarray          # float64 confidence at that head
    honest_dims: np.ndarray          # int64 sum of the dims of every head passed through
    num_classes: int

    @property
    def expected_dims(self) -> float:
        """The paper's measure: mean dim of the deciding head."""
        return float(self.stop_dims.mean()) if len(self.stop_dims) else 0.0

    @property
    def expected_honest_dims(self) -> float:
        return float(self.honest_dims.mean()) if len(self.honest_dims) else 0.0

    def head_flops(self, flops_per_head: Mapping[int, int] | None = None) -> float:
        """Mean head FLOPs per sample over the heads passed through (default 2 x m x C each)."""
        per_head = {m: _head_flops(m, self.num_classes, flops_per_head) for m in self.dims}
        cumulative = np.cumsum([per_head[m] for m in self.dims])
        index = np.searchsorted(self.dims, self.stop_dims)
        return float(cumulative[index].mean()) if len(index) else 0.0

    def histogram(self) -> dict[int, float]:
        return stop_histogram(self.stop_dims, self.dims)

    def summary(self, labels: np.ndarray | None = None, flops_per_head: Mapping[int, int] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "samples": int(len(self.predictions)),
            "expected_dims": self.expected_dims,
            "expected_honest_dims": self.expected_honest_dims,
            "head_flops_per_sample": self.head_flops(flops_per_head),
            "stop_histogram": {str(k): v for k, v in self.histogram().items()},
        }
        if labels is not None:
            out["accuracy"] = accuracy(self.predictions, labels)
        return out


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise InputError(f"{len(predictions)} predictions for {len(labels)} labels")
    return float(100.0 * np.mean(predictions == labels)) if len(labels) else 0.0


def stop_histogram(stop_dims: np.ndarray, dims: Sequence[int]) -> dict[int, float]:
    """Fraction of samples decided at each dim (every dim listed, zeros included)."""
    stop_dims = np.asarray(stop_dims)
    total = max(len(stop_dims), 1)
    return {int(m): float(np.count_nonzero(stop_dims == m) / total) for m in dims}


class Cascade:
    """Thresholds per step over increasing dims; see the module docstring."""

    def __init__(self, dims: Sequence[int], thresholds: Sequence[float | None] = (), confidence: str = "softmax",
                 summary: dict[str, Any] | None = None):
        dims = [int(d) for d in dims]
        if not dims:
            raise InputError("a cascade needs at least one dim")
        if any(d < 1 for d in dims) or any(b <= a for a, b in zip(dims, dims[1:])):
            raise InputError(f"cascade dims must be positive and strictly increasing, got {dims}")
        thresholds = [math.inf if t is None else float(t) for t in thresholds]
        if len(thresholds) != len(dims) - 1:
            raise InputError(f"{len(dims)} cascade dims need {len(dims) - 1} thresholds, got {len(thresholds)}")
        if any(math.isnan(t) for t in thresholds):
            raise InputError("cascade thresholds must not be NaN")
        check_confidence(confidence)
        self.dims = dims
        self.thresholds = thresholds
        self.confidence = confidence
        self.summary = summary or {}

    @property
    def final_dim(self) -> int:
        return self.dims[-1]

    def run(self, logits: Mapping[int, np.ndarray]) -> CascadeResult:
        """Vectorised over the batch: logits {dim: N x C} for (at least) every cascade dim."""
        stack = stack_logits(logits, self.dims)
        num_classes = stack[0].shape[1]
        predictions, confidences = zip(*(predict_with_confidence(x, self.confidence) for x in stack))
        predictions, confidences = np.stack(predictions), np.stack(confidences)
        stop_index = stop_steps(confidences, np.array(self.thresholds + [-math.inf]))
        columns = np.arange(predictions.shape[1])
        dims = np.array(self.dims, dtype=np.int64)
        return CascadeResult(
            dims=list(self.dims),
            predictions=predictions[stop_index, columns],
            stop_dims=dims[stop_index],
            confidences=confidences[stop_index, columns],
            honest_dims=np.cumsum(dims)[stop_index],
            num_classes=num_classes,
        )

    def capped(self, max_dim: int) -> "Cascade":
        """The same cascade ending at the largest of its dims <= max_dim (that head always decides)."""
        keep = [d for d in self.dims if d <= max_dim]
        if not keep:
            raise InputError(f"no cascade dim <= {max_dim} (dims {self.dims})")
        return Cascade(keep, self.thresholds[: len(keep) - 1], self.confidence)

    # --- persistence (the manifest's `cascade` field) ---------------------------------------
    def to_json(self) -> dict[str, Any]:
        """JSON-safe: a threshold of +inf (never stop there) is written as null."""
        return {
            "format": CASCADE_FORMAT,
            "confidence": self.confidence,
            "dims": list(self.dims),
            "thresholds": [None if math.isinf(t) and t > 0 else float(t) for t in self.thresholds],
            **self.summary,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Cascade":
        if not isinstance(data, Mapping) or "dims" not in data or "thresholds" not in data:
            raise MRLDeployError("the cascade entry of the manifest is malformed: run `mrl-deploy calibrate` again")
        summary = {k: v for k, v in data.items() if k not in ("format", "confidence", "dims", "thresholds")}
        return cls(data["dims"], data["thresholds"], data.get("confidence", "softmax"), summary)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], where: str = "the artifact") -> "Cascade":
        data = manifest.get("cascade")
        if not data:
            raise MRLDeployError(
                f"{where} has no calibrated cascade: run `mrl-deploy calibrate DIR DATA` first"
            )
        return cls.from_json(data)

    def __repr__(self) -> str:
        steps = ", ".join(f"{d}@{t:.4g}" for d, t in zip(self.dims, self.thresholds))
        return f"Cascade([{steps}{', ' if steps else ''}{self.final_dim}], confidence={self.confidence!r})"


def stop_steps(confidences: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Index of the first step whose confidence reaches its threshold (the last always stops)."""
    stops = confidences >= np.asarray(thresholds, dtype=np.float64)[:, None]
    stops[-1] = True
    return np.argmax(stops, axis=0)


def stack_logits(logits: Mapping[int, np.ndarray], dims: Sequence[int]) -> list[np.ndarray]:
    if not isinstance(logits, Mapping):
        raise InputError("cascade logits must be a dict {dim: N x C array}")
    missing = [d for d in dims if d not in logits]
    if missing:
        raise InputError(f"no logits for dims {missing} (have {sorted(logits)})")
    stack = [np.asarray(logits[d]) for d in dims]
    shapes = {x.shape for x in stack}
    if any(x.ndim != 2 for x in stack) or len(shapes) != 1:
        raise InputError(f"cascade logits must all be N x C arrays of one shape, got {sorted(shapes)}")
    if stack[0].shape[1] < 1:
        raise InputError("cascade logits have no classes")
    for dim, x in zip(dims, stack):
        if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
            raise InputError(f"logits at dim {dim} contain NaN, infinite or non-numeric values")
    return stack


def _head_flops(dim: int, num_classes: int, flops_per_head: Mapping[int, int] | None) -> int:
    if flops_per_head:
        value = flops_per_head.get(dim, flops_per_head.get(str(dim)))  # type: ignore[arg-type]
        if value is not None:
            return int(value)
    return 2 * dim * num_classes


def check_confidence(confidence: str) -> None:
    if confidence not in CONFIDENCES:
        raise InputError(f"unknown confidence {confidence!r}; choose from {', '.join(CONFIDENCES)}")
