"""Compare runtimes on the same inputs, after Polygraphy's comparator: every output of every
(runtime, variant) against the first one, by max / mean abs diff and the worst row's cosine.

    report = compare_runtimes(artifact, ["torch", "ort-cpu"])   # ort-cpu: fp32, fp16, int8 if present
    report["passed"]

Bounds are the exporter's (mrl_deploy.comparison: fp32 cosine >= 0.99999 and abs diff <= 1e-4,
scaled by the logits' magnitude; fp16 cosine >= 0.999; int8 cosine >= 0.99), the looser of the two
variants compared.
Needs numpy and the runtimes compared: torch only for the torch runtimes.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from ..comparison import check_output, compare_arrays, tolerance_for
from ..errors import InputError, MRLDeployError, check_number
from ..feeds import artifact_feed

DEFAULT_BATCH = 8


# --- inputs ---------------------------------------------------------------------------------

def input_feeds(artifact: Any, inputs: Any = None, *, batch: int = DEFAULT_BATCH, limit: int = 256,
                seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Batches to compare on: `inputs` (array, dict, texts; at most `limit` rows) or one random batch."""
    if inputs is None:
        return [artifact_feed(artifact, batch, seed)]
    if artifact.is_text or isinstance(inputs, (list, tuple)):   # texts (for a tensor model: refused by batches)
        inputs = list(inputs)[:limit]
    elif isinstance(inputs, dict):
        inputs = {k: np.asarray(v)[:limit] for k, v in inputs.items()}
    else:
        inputs = np.asarray(inputs)[:limit]
    return list(artifact.batches(inputs, batch_size=batch))


# --- runtimes -------------------------------------------------------------------------------

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
    from . import create_runtime, runtime_pairs

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


__all__ = ["compare_runtimes", "input_feeds"]
