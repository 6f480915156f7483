"""Cascades on artifacts: run the heads once, calibrate (fit and record the cascade in mrl.json)
and classify (a calibrated cascade, or one head, with its report); the data they take."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .core import Cascade
from .fit import DEFAULT_SAFETY, METHODS, check_labels, fit_cascade


def artifact_logit_dims(artifact: Any) -> list[int]:
    """The artifact's head dims, or a one-line error for an artifact exported without heads."""
    dims = artifact.logit_dims
    if not dims:
        raise InputError(
            f"{artifact.path} has no classifier heads (no logits outputs): export a model with heads "
            "(an MRL classifier, e.g. from `mrl-deploy train`) to classify with it"
        )
    return dims


def head_flops_of(artifact: Any) -> dict[int, int]:
    heads = (artifact.manifest.get("flops") or {}).get("heads") or {}
    return {int(k): int(v) for k, v in heads.items()}


def run_heads(artifact: Any, inputs: Any, dims: Sequence[int] | None = None, **run_options: Any) -> tuple[dict[int, np.ndarray], float]:
    """Every head's logits from one encoder pass per batch (the heads are in the graph):
    ({dim: N x C float32}, seconds)."""
    import time

    known = artifact_logit_dims(artifact)
    dims = list(dims) if dims is not None else known
    missing = [d for d in dims if d not in known]
    if missing:
        raise InputError(f"{artifact.path} has no heads at dims {missing}; it has heads at {known}")
    # start the session first: its load time is not per-sample latency
    artifact.runtime(run_options.get("runtime"), run_options.get("variant", "fp32"), run_options.get("threads"))
    started = time.perf_counter()
    outputs = artifact.run(inputs, [f"logits_{d}" for d in dims], **run_options)
    seconds = time.perf_counter() - started
    return {d: np.asarray(outputs[f"logits_{d}"], dtype=np.float32) for d in dims}, seconds


def calibrate_artifact(directory: Any, inputs: Any, labels: np.ndarray, *, max_drop: float = 0.5,
                       confidence: str = "softmax", method: str = "search", safety: float = DEFAULT_SAFETY,
                       count_gains: bool = False, data: dict[str, Any] | None = None,
                       **run_options: Any) -> dict[str, Any]:
    """Fit the cascade on labelled calibration data, both methods (the chosen one is saved), and
    write thresholds + the calibration summary into the artifact's manifest atomically."""
    from datetime import datetime, timezone

    from ..artifact import Artifact
    from ..manifest import update_manifest

    if method not in METHODS:
        raise InputError(f"unknown --method {method!r}; choose from {', '.join(METHODS)}")
    artifact = Artifact.load(directory)
    logits, seconds = run_heads(artifact, inputs, **run_options)
    num_classes = next(iter(logits.values())).shape[1]
    labels = check_labels(labels, len(next(iter(logits.values()))), num_classes)
    flops = head_flops_of(artifact)
    fits = {m: fit_cascade(logits, labels, max_drop=max_drop, confidence=confidence, method=m, flops_per_head=flops,
                           safety=safety, count_gains=count_gains)
            for m in METHODS}
    chosen = fits[method]
    methods = {
        m: {"dims": f.cascade.dims, "thresholds": f.cascade.to_json()["thresholds"], "feasible": f.feasible,
            **f.calibration}
        for m, f in fits.items()
    }
    summary = {
        "method": method,
        "feasible": chosen.feasible,
        "max_drop": float(max_drop),
        "safety": float(safety),
        "count_gains": bool(count_gains),
        "calibrated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": data or {},
        "calibration": chosen.calibration,
        "methods": methods,
        "encoder_seconds": seconds,
    }
    cascade = Cascade(chosen.cascade.dims, chosen.cascade.thresholds, confidence, summary)
    update_manifest(artifact.path, cascade=cascade.to_json())
    return cascade.to_json()


def classify_artifact(artifact: Any, inputs: Any, labels: np.ndarray | None = None, *, dim: int | None = None,
                      cascade: Cascade | None = None, **run_options: Any) -> dict[str, Any]:
    """Predictions with per-sample stop dim and confidence, and (with labels) the report:
    accuracy, stop histogram, expected dims (final and honest), head and encoder FLOPs, latency.
    With `cascade`, every head the cascade uses is computed in one graph run; with `dim`, one head."""
    import time

    mode = "fixed" if cascade is None else "cascade"
    if cascade is None:
        dims = artifact_logit_dims(artifact)
        dim = dims[-1] if dim is None else int(dim)
        if dim not in dims:
            raise InputError(f"{artifact.path} has no head at dim {dim}; it has heads at {dims}")
        cascade = Cascade([dim], [], "softmax")
    logits, encoder_seconds = run_heads(artifact, inputs, cascade.dims, **run_options)
    started = time.perf_counter()
    result = cascade.run(logits)
    cascade_seconds = time.perf_counter() - started
    count = len(result.predictions)
    flops = artifact.manifest.get("flops") or {}
    report: dict[str, Any] = {
        "mode": mode,
        "dims": cascade.dims,
        "thresholds": cascade.to_json()["thresholds"],
        "confidence": cascade.confidence,
        **result.summary(None if labels is None else check_labels(labels, count, result.num_classes),
                         head_flops_of(artifact)),
        "encoder_flops_per_sample": flops.get("encoder"),
        "flops_unit": flops.get("unit"),
        "seconds": {"encoder_and_heads": encoder_seconds, "cascade": cascade_seconds},
        "ms_per_sample": 1000.0 * (encoder_seconds + cascade_seconds) / max(count, 1),
    }
    return {"report": report, "result": result}


SPLITS = ("calibration", "test", "all")


def load_classification_data(spec: Any, artifact: Any, split: str | None = None,
                             default_split: str = "test") -> dict[str, Any]:
    """DATA for calibrate / classify: `digits`, `bbc-news` or a .npz with x and y, or unlabelled
    inputs for the artifact (.npy images / tensors, .txt texts, .npz without y).

    Labelled data goes through data.data_for_model with the artifact's training_data: the model's
    own training data is split exactly as it was trained (calibrate takes the calibration split,
    classify the test split, so neither touches training samples and the test split never takes
    part in calibration); any other data is used whole, and `split` on it is an error.
    Returns {x, y or None, name, split, samples, description, ...usage}."""
    from pathlib import Path

    from ..artifact import load_inputs

    if split is not None and split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    text = str(spec)
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".txt") or (suffix == ".npz" and path.is_file() and not _npz_has_labels(path)):
        if split not in (None, "all"):
            raise InputError(f"--split {split} applies only to the model's own (labelled) training data; "
                             f"{text} holds unlabelled inputs, used whole")
        x = load_inputs(path, artifact)
        count = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
        return {"x": x, "y": None, "name": text, "split": "all", "samples": count,
                "description": f"all of {text}, {count} samples (unlabelled)"}
    dataset, usage = _dataset(text, artifact, split, default_split)
    return {"x": dataset.x, "y": np.asarray(dataset.y), "labels": dataset.labels, **usage}


def _npz_has_labels(path: Any) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return "y" in data
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def _dataset(spec: str, artifact: Any, split: str | None, default_split: str):
    from ..data import data_for_model

    return data_for_model(spec, artifact.manifest.get("training_data"), split, default_split)
