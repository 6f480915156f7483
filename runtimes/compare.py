"""Compare runtimes on the same inputs, after Polygraphy's comparator: every output of every
(runtime, variant) against the first one, by max / mean abs diff and the worst row's cosine.

    report = compare_runtimes(artifact, ["torch", "ort-cpu"])   # ort-cpu: fp32, fp16, int8 if present
    report["passed"]

Bounds are the exporter's (fp32: cosine >= 0.99999 and abs diff <= 1e-4, scaled by the logits'
magnitude; fp16: cosine >= 0.999; int8: cosine >= 0.99), the looser of the two variants compared.
Needs numpy and the runtimes compared: torch only for the torch runtimes.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError, MRLDeployError, check_number

# The exporter's bounds against PyTorch (exporters/onnx.py TOLERANCE): top-1 agreement is
# reported, not enforced here, because a handful of random inputs makes it a coin toss on ties.
TOLERANCE = {
    "fp32": {"min_cosine": 0.99999, "max_abs_diff": 1e-4},
    "fp16": {"min_cosine": 0.999},
    "int8": {"min_cosine": 0.99},
}
ORT_VARIANTS = ("fp32", "fp16", "int8")
ENGINE_VARIANTS = ("fp32", "fp16")
DEFAULT_BATCH = 8


def tolerance_for(*variants: str, min_cosine: float | None = None, max_abs_diff: float | None = None) -> dict[str, float]:
    """The looser bound of the variants compared (an fp32 engine against an fp16 graph is held to
    fp16's), with optional overrides."""
    order = ["fp32", "fp16", "int8"]
    loosest = max((v for v in variants if v in order), key=order.index, default="fp32")
    bounds = dict(TOLERANCE[loosest])
    if min_cosine is not None:
        bounds["min_cosine"] = float(min_cosine)
    if max_abs_diff is not None:
        bounds["max_abs_diff"] = float(max_abs_diff)
    return bounds


def compare_arrays(actual: np.ndarray, expected: np.ndarray, kind: str = "embedding") -> dict[str, Any]:
    """max / mean abs diff, the minimum row-wise cosine, whether both are finite; for logits the
    top-1 agreement too. Rows are samples; other axes are flattened."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise MRLDeployError(f"output shapes differ: {actual.shape} vs {expected.shape}")
    a = actual.reshape(len(actual), -1)
    e = expected.reshape(len(expected), -1)
    finite = bool(np.isfinite(a).all() and np.isfinite(e).all())
    diff = np.abs(a - e)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(e, axis=1)
    cosine = np.where(norms > 0, np.sum(a * e, axis=1) / np.maximum(norms, 1e-300),
                      np.where(np.linalg.norm(a, axis=1) == np.linalg.norm(e, axis=1), 1.0, 0.0))
    stats: dict[str, Any] = {
        "max_abs_diff": float(diff.max(initial=0.0)) if finite else float("nan"),
        "mean_abs_diff": float(diff.mean()) if finite and diff.size else (0.0 if finite else float("nan")),
        "min_cosine": float(cosine.min(initial=1.0)) if finite else float("nan"),
        "max_abs_reference": float(np.abs(e).max(initial=0.0)) if finite else float("nan"),
        "finite": finite,
    }
    if kind == "logits" and a.shape[1] > 1:
        stats["top1_agreement"] = float(np.mean(a.argmax(1) == e.argmax(1)))
    return stats


def check_output(name: str, kind: str, stats: dict[str, Any], bounds: dict[str, float]) -> list[str]:
    """Why `stats` fail `bounds` (empty if they pass). NaN never passes."""
    if not stats["finite"]:
        return [f"{name} has NaN or infinite values"]
    failures = []
    if not stats["min_cosine"] >= bounds["min_cosine"]:
        failures.append(f"{name} min cosine {stats['min_cosine']:.9f} < {bounds['min_cosine']}")
    if "max_abs_diff" in bounds:
        # logits are not normalised: the bound scales with their magnitude, as at export
        scale = 1.0 if kind == "embedding" else max(1.0, stats["max_abs_reference"])
        if not stats["max_abs_diff"] <= bounds["max_abs_diff"] * scale:
            failures.append(f"{name} max abs diff {stats['max_abs_diff']:.2e} > {bounds['max_abs_diff'] * scale:.1e}")
    return failures


# --- inputs ---------------------------------------------------------------------------------

def random_feed(artifact: Any, batch: int = DEFAULT_BATCH, seed: int = 0) -> dict[str, np.ndarray]:
    """One batch from the manifest's input specs: standard-normal floats, small integers; text
    models get sample sentences of different lengths (padding and masks exercised)."""
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    if artifact.is_text:
        from ..sources import SAMPLE_TEXTS

        rng = np.random.default_rng(seed)
        order = rng.permutation(len(SAMPLE_TEXTS))
        return artifact.tokenize([SAMPLE_TEXTS[order[i % len(order)]] for i in range(batch)])
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in artifact.manifest["inputs"]:
        shape = [batch if position == 0 or axis == "batch" else axis for position, axis in enumerate(spec["shape"])]
        if any(isinstance(axis, str) for axis in shape):
            raise InputError(f"input {spec['name']} has a dynamic axis besides batch: pass --inputs with real inputs")
        if spec["dtype"].startswith("float"):
            feed[spec["name"]] = rng.standard_normal(shape).astype(spec["dtype"])
        else:
            feed[spec["name"]] = rng.integers(0, 100, size=shape).astype(spec["dtype"])
    return feed


def input_feeds(artifact: Any, inputs: Any = None, *, batch: int = DEFAULT_BATCH, limit: int = 256,
                seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Batches to compare on: `inputs` (array, dict, texts; at most `limit` rows) or one random batch."""
    if inputs is None:
        return [random_feed(artifact, batch, seed)]
    if artifact.is_text or isinstance(inputs, (list, tuple)):   # texts (for a tensor model: refused by batches)
        inputs = list(inputs)[:limit]
    elif isinstance(inputs, dict):
        inputs = {k: np.asarray(v)[:limit] for k, v in inputs.items()}
    else:
        inputs = np.asarray(inputs)[:limit]
    return list(artifact.batches(inputs, batch_size=batch))


# --- runtimes -------------------------------------------------------------------------------

def runtime_pairs(spec: str | Sequence[str], manifest: dict[str, Any], *, variants: bool = True) -> list[tuple[str, str]]:
    """'torch,ort-cpu' -> [(torch, fp32), (ort-cpu, fp32), (ort-cpu, fp16), (ort-cpu, int8)]:
    an ONNX Runtime name alone brings every ONNX variant of the artifact (with `variants`), and
    tensorrt every engine; 'ort-cpu:int8' picks one."""
    from . import RUNTIMES
    from .tensorrt import find_engine

    items = spec.split(",") if isinstance(spec, str) else list(spec)
    models = manifest.get("models", {})
    pairs: list[tuple[str, str]] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        name, _, variant = item.partition(":")
        if name not in RUNTIMES:
            raise InputError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
        if variant:
            chosen = [variant]
        elif name.startswith("ort"):
            chosen = [v for v in ORT_VARIANTS if v in models] if variants else ["fp32"]
        elif name == "tensorrt":
            chosen = [v for v in ENGINE_VARIANTS if find_engine(manifest, v) is not None] or ["fp32"]
            chosen = chosen if variants else chosen[:1]
        else:
            chosen = ["fp32"]
        pairs.extend((name, v) for v in chosen if (name, v) not in pairs)
    if not pairs:
        raise InputError("no runtimes given: use e.g. --runtimes torch,ort-cpu")
    return pairs


def default_runtime_list(artifact: Any) -> list[str]:
    """torch (where installed) as the reference, ort-cpu, and the best runtime here if it is another."""
    from . import availability, default_runtime

    names = (["torch"] if availability.module_installed("torch") else []) + ["ort-cpu"]
    best = default_runtime(artifact)
    return names + ([best] if best not in names else [])


def compare_runtimes(artifact: Any, runtimes: str | Sequence[str] | None = None, *, inputs: Any = None,
                     batch: int = DEFAULT_BATCH, limit: int = 256, seed: int = 0, variants: bool = True,
                     threads: int | None = None, min_cosine: float | None = None, max_abs_diff: float | None = None,
                     runtime_options: dict[str, dict[str, Any]] | None = None,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the same inputs through every (runtime, variant) and compare each output with the
    first pair's. Returns a JSON-ready report; report["passed"] is False past tolerance."""
    from . import create_runtime

    say = progress or (lambda message: None)
    check_number(batch, "batch", 1, integer=True)
    check_number(limit, "limit", 1, integer=True)
    check_number(seed, "seed", 0, integer=True)
    check_number(threads, "threads", 1, integer=True, optional=True)
    check_number(min_cosine, "min_cosine", -1, 1, optional=True)
    check_number(max_abs_diff, "max_abs_diff", 0, optional=True)
    # A default list skips what cannot start here (reported); a runtime asked for by name must run.
    skip_unavailable = not runtimes
    pairs = runtime_pairs(runtimes or default_runtime_list(artifact), artifact.manifest, variants=variants)
    if len(pairs) < 2:
        raise InputError(f"nothing to compare: only {', '.join(f'{n}:{v}' for n, v in pairs)} would run; name two runtimes "
                         "(--runtimes torch,ort-cpu), or one whose artifact has fp16 / int8 variants besides fp32")
    feeds = input_feeds(artifact, inputs, batch=batch, limit=limit, seed=seed)
    if not feeds:
        raise InputError("no inputs to compare (the inputs have no rows)")
    samples = sum(len(next(iter(f.values()))) for f in feeds)
    outputs = artifact.manifest["outputs"]
    runs, skipped = [], []
    reference = None
    for name, variant in pairs:
        say(f"running {name} ({variant}) on {samples} samples")
        options = dict((runtime_options or {}).get(name, {}))
        if threads and name not in ("tensorrt",):
            options["threads"] = threads
        started = time.perf_counter()
        runner = create_runtime(name, artifact, variant=variant, **options)
        try:
            runner.activate()
        except MRLDeployError as exc:
            if not skip_unavailable:
                raise
            skipped.append({"runtime": name, "variant": variant, "reason": str(exc)})
            continue
        with runner:
            loaded = time.perf_counter()
            values = [runner.infer(feed) for feed in feeds]
            run = {"runtime": name, "variant": variant, "device": str(runner.device),
                   "load_s": loaded - started, "run_s": time.perf_counter() - loaded}
        merged = {o["name"]: np.concatenate([v[o["name"]] for v in values]) for o in outputs}
        if reference is None:
            reference = (run, merged)
            run["reference"] = True
        else:
            bounds = tolerance_for(reference[0]["variant"], variant, min_cosine=min_cosine, max_abs_diff=max_abs_diff)
            run["tolerance"] = bounds
            run["outputs"], failures = {}, []
            for output in outputs:
                stats = compare_arrays(merged[output["name"]], reference[1][output["name"]], kind=output["kind"])
                problems = check_output(output["name"], output["kind"], stats, bounds)
                stats["passed"] = not problems
                run["outputs"][output["name"]] = stats
                failures += problems
            run["failures"] = failures
            run["passed"] = not failures
        runs.append(run)
    if not runs:
        raise MRLDeployError(f"no runtime could run {artifact.path}: " + "; ".join(
            f"{s['runtime']}: {s['reason']}" for s in skipped))
    compared = [r for r in runs if not r.get("reference")]
    if not compared:
        raise MRLDeployError(f"nothing to compare: only {runs[0]['runtime']}:{runs[0]['variant']} could run here (" +
                             "; ".join(f"{s['runtime']}:{s['variant']}: {s['reason']}" for s in skipped) + ")")
    return {
        "artifact": str(artifact.path),
        "reference": {k: runs[0][k] for k in ("runtime", "variant", "device")},
        "inputs": {"source": "random" if inputs is None else "file", "samples": samples, "batch": batch, "seed": seed},
        "runs": runs,
        "skipped": skipped,
        "passed": all(r["passed"] for r in compared),
    }


__all__ = ["TOLERANCE", "check_output", "compare_arrays", "compare_runtimes", "input_feeds", "random_feed",
           "runtime_pairs", "tolerance_for"]
