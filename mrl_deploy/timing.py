"""Timing calls and the memory they take: warm-up then timed runs for a duration (wall clock, or
CUDA events on a GPU), latency statistics and throughput, the process's resident and peak memory.
What `mrl-deploy bench`, the server's load tests and the benchmarks measure with. numpy only."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

import numpy as np


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Latency summary in milliseconds. Percentiles interpolate linearly between order statistics
    (numpy's default, the same as Python's statistics.quantiles(method='inclusive')); std is the
    population standard deviation of the runs."""
    values = np.asarray(seconds, dtype=np.float64) * 1e3
    if values.size == 0:
        raise ValueError("no timed runs")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "runs": int(values.size),
        "min_ms": float(values.min()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(values.max()),
        "mean_ms": float(values.mean()),
        "std_ms": float(values.std()),
    }


def throughput(batch: int, seconds: Sequence[float]) -> float:
    """Items per second over all timed runs (total items / total time, not the mean of rates)."""
    total = float(np.sum(seconds))
    return batch * len(seconds) / total if total > 0 else float("inf")


def time_calls(fn: Callable[[], Any], duration: float, *, warmup: float | None = None,
               warmup_runs: int = 3, min_runs: int = 5, max_runs: int = 1_000_000,
               timer: Callable[[Callable[[], Any]], float] | None = None) -> list[float]:
    """Call `fn` for `warmup` seconds (and at least `warmup_runs` times: first calls allocate,
    compile and fill caches), then time calls until `duration` seconds have passed and at least
    `min_runs` ran. `timer(fn)` returns one call's seconds (default: perf_counter around it; GPU
    timers synchronise)."""
    timer = timer or _wall_timer
    warmup = min(1.0, 0.2 * duration) if warmup is None else warmup
    started, done = time.perf_counter(), 0
    while done < warmup_runs or time.perf_counter() - started < warmup:
        fn()
        done += 1
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - started < duration):
        samples.append(timer(fn))
    return samples


def _wall_timer(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cuda_event_timer(torch: Any) -> Callable[[Callable[[], Any]], float]:
    """Time one call on the GPU with CUDA events, synchronising before and after, so queued
    kernels of the previous call are not billed to this one and this call's are not missed."""

    def timer(fn: Callable[[], Any]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3

    return timer


# --- memory ----------------------------------------------------------------------------------

def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """Resident set size of this process now (Linux /proc; None elsewhere)."""
    return _proc_status("VmRSS")


def peak_rss_bytes() -> int | None:
    """Peak resident set size since the process started or since reset_peak_rss()."""
    peak = _proc_status("VmHWM")
    if peak is None:
        try:
            import resource

            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        except (ImportError, OSError):
            return None
    return peak


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs), so
    each runtime's peak is its own and not the largest of everything before it. False if it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False
