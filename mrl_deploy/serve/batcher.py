"""Dynamic batching: many requests, one runtime call.

Requests put their items (texts, or one sample's tensors each) on an asyncio queue; one collector
task takes up to `max_batch` items from the front (splitting a request larger than that), runs
them as one runtime call in a worker thread (never on the event loop), and hands every caller
exactly its own rows. A batch goes when it is full, when its oldest item has waited `max_delay`
seconds, or at once when no other request is on its way (the `arriving` hint): a lone caller
pays no delay, callers that come together share a call. While the worker runs a batch, the next
one fills. Past `max_queue` waiting items a request is refused at once (`Overloaded`), never
queued without bound.

The seam for other backends (Ray Serve): the app talks to any object with

    load() -> dict                                   blocking; what /info shows (runtime, device)
    async run(items, outputs) -> {name: rows}        rows aligned with items
    async close() -> None                            finish queued work, release

`LocalBackend` is that object over an artifact's runtime in this process; `run_batch` is the
one-call function it batches, which a Ray Serve deployment's `@serve.batch` method can call too.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..errors import check_number

# Beside the outputs, a text batch reports each item's token count (its attention mask's sum)
TOKENS = "tokens"


class Overloaded(Exception):
    """The queue is full (or the server is shutting down): answer 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class Backend(Protocol):
    def load(self) -> dict[str, Any]: ...

    async def run(self, items: Sequence[Any], outputs: Sequence[str]) -> dict[str, np.ndarray]: ...

    async def close(self) -> None: ...


def run_batch(artifact: Any, runner: Any, items: Sequence[Any], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """One runtime call for `items`: texts (tokenized together by Artifact.tokenize, so padded to
    this batch's longest) or per-sample feeds {input name: array without the batch axis}.
    Returns the named outputs, one row per item, and for text the token counts (TOKENS)."""
    if artifact.is_text:
        feed = artifact.tokenize(list(items))
        result = dict(runner.infer(feed, list(outputs)))
        result[TOKENS] = feed["attention_mask"].sum(axis=1)
        return result
    feed = {name: np.stack([item[name] for item in items]) for name in artifact.input_names}
    return dict(runner.infer(feed, list(outputs)))


def warmup_item(artifact: Any) -> Any:
    """One input the model takes: a short text, or zeros of the input shape (dynamic axes 1)."""
    if artifact.is_text:
        return "warm-up"
    return {spec["name"]: np.zeros([a if isinstance(a, int) else 1 for a in spec["shape"][1:]], dtype=spec["dtype"])
            for spec in artifact.manifest["inputs"]}


@dataclass
class _Job:
    items: Sequence[Any]
    outputs: frozenset
    future: asyncio.Future
    enqueued: float
    taken: int = 0                      # items handed to batches so far
    parts: list = field(default_factory=list)
    done: int = 0


class Batcher:
    """See the module docstring. `call(items, outputs)` runs one batch (blocking; in the worker
    thread). `on_batch(size, seconds)` is told about every runtime call (metrics)."""

    def __init__(self, call: Callable[[list, list[str]], dict[str, np.ndarray]], *, max_batch: int = 64,
                 max_delay: float = 0.002, max_queue: int = 1024, arriving: Callable[[], int] | None = None,
                 on_batch: Callable[[int, float], None] | None = None):
        check_number(max_batch, "max_batch", 1, integer=True)
        check_number(max_queue, "max_queue", 1, integer=True)
        check_number(max_delay, "max_delay (seconds)", 0)
        self.call = call
        self.max_batch = max_batch
        self.max_delay = float(max_delay)
        self.max_queue = max_queue
        self.arriving = arriving
        self.on_batch = on_batch
        self.queued = 0                 # items waiting, not yet in a batch
        self.outstanding = 0            # requests in run() that have not been answered
        self._jobs: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._seconds_per_item = 0.0    # running estimate, for Retry-After

    async def run(self, items: Sequence[Any], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """The rows of `outputs` for `items`, computed in batches shared with other callers."""
        if self._closing:
            raise Overloaded("the server is shutting down", retry_after=1)
        if not items:
            raise ValueError("no items to run")
        if self.queued and self.queued + len(items) > self.max_queue:
            raise Overloaded(f"the server is busy ({self.queued} items queued, the limit is {self.max_queue}): "
                             "retry later", retry_after=math.ceil(self.queued * self._seconds_per_item))
        loop = asyncio.get_running_loop()
        self._start(loop)
        job = _Job(items, frozenset(outputs), loop.create_future(), loop.time())
        self._jobs.append(job)
        self.queued += len(items)
        self.outstanding += 1
        self._wakeup.set()
        try:
            return await job.future
        finally:
            self.outstanding -= 1

    async def close(self) -> None:
        """Finish every queued item, then stop the collector and the worker thread."""
        self._closing = True
        if self._task is not None:
            self._wakeup.set()
            await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # --- the collector ----------------------------------------------------------------------------
    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrl-batch")
            self._task = loop.create_task(self._collect())

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._jobs:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._jobs[0].enqueued + self.max_delay
            while self.queued < self.max_batch and not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0 or (self.arriving is not None and self.arriving() <= 0):
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._execute(loop, batch)

    def _take(self) -> list[tuple[_Job, int, int]]:
        """Up to max_batch items from the front jobs: (job, start, stop) slices, in order."""
        batch, size = [], 0
        while self._jobs and size < self.max_batch:
            job = self._jobs[0]
            if job.future.done():           # its caller went away (cancelled): skip the rest of it
                self.queued -= len(job.items) - job.taken
                self._jobs.popleft()
                continue
            count = min(len(job.items) - job.taken, self.max_batch - size)
            batch.append((job, job.taken, job.taken + count))
            job.taken += count
            size += count
            self.queued -= count
            if job.taken == len(job.items):
                self._jobs.popleft()
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[_Job, int, int]]) -> None:
        items = [item for job, start, stop in batch for item in job.items[start:stop]]
        outputs = sorted(set().union(*(job.outputs for job, _, _ in batch)))
        started = time.perf_counter()
        try:
            result = await loop.run_in_executor(self._executor, self.call, items, outputs)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][0].future.done():
                    batch[0][0].future.set_exception(exc)
                return
            # one caller's input must not fail the others: each part again on its own
            for part in batch:
                await self._execute(loop, [part])
            return
        seconds = time.perf_counter() - started
        self._seconds_per_item = 0.8 * self._seconds_per_item + 0.2 * seconds / len(items)
        if self.on_batch is not None:
            self.on_batch(len(items), seconds)
        offset = 0
        for job, start, stop in batch:
            count = stop - start
            names = [*job.outputs, *([TOKENS] if TOKENS in result else [])]
            job.parts.append({name: result[name][offset:offset + count] for name in names})
            offset += count
            job.done += count
            if job.done == len(job.items) and not job.future.done():
                parts = job.parts
                job.future.set_result(parts[0] if len(parts) == 1 else
                                      {name: np.concatenate([p[name] for p in parts]) for name in parts[0]})


class LocalBackend:
    """The default backend: a Batcher over one runtime of the artifact, in this process."""

    def __init__(self, artifact: Any, *, runtime: str | None = None, variant: str = "fp32",
                 threads: int | None = None, max_batch: int = 64, max_delay: float = 0.002,
                 max_queue: int = 1024, arriving: Callable[[], int] | None = None,
                 on_batch: Callable[[int, float], None] | None = None):
        self.artifact = artifact
        self.runtime = runtime
        self.variant = variant
        self.threads = threads
        self.runner = None
        self.batcher = Batcher(self._call, max_batch=max_batch, max_delay=max_delay, max_queue=max_queue,
                               arriving=arriving, on_batch=on_batch)

    def load(self) -> dict[str, Any]:
        """Start the runtime (ONNX Runtime session, engine) and run one warm-up item through it."""
        from ..runtimes import resolve_runtime

        name = resolve_runtime(self.runtime, self.artifact, self.variant)
        runner = self.artifact.runtime(name, self.variant, self.threads)
        outputs = [o["name"] for o in self.artifact.manifest["outputs"]]
        run_batch(self.artifact, runner, [warmup_item(self.artifact)], outputs)
        self.runner = runner
        return {"runtime": name, "variant": self.variant, "device": runner.device, "threads": self.threads}

    def _call(self, items: list, outputs: list[str]) -> dict[str, np.ndarray]:
        return run_batch(self.artifact, self.runner, items, outputs)

    async def run(self, items: Sequence[Any], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return await self.batcher.run(items, outputs)

    async def close(self) -> None:
        await self.batcher.close()
