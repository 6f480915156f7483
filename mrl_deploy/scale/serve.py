"""`mrl-deploy serve ARTIFACT --ray`: the server's FastAPI app on Ray Serve.

    app = build_application("artifacts/minilm", "docs.index", replicas=2)
    serve.run(app, name="mrl-deploy", route_prefix="/")

Deployments:
  Embedder     `replicas` copies, each one runtime session (and `num_gpus` of a GPU for a GPU
               runtime); requests are merged by `@serve.batch` (its size counted in items) and
               run with serve.batcher.run_batch, the function the single-process server batches.
  IndexShard   one per shard of a sharded index (`mrl-deploy index --shards`): an AdaptiveIndex
               memory-mapped on whichever node Ray places it, answering search and documents.
  Ingress      the very app `mrl-deploy serve` runs (serve.create_app: same routes, validation,
               errors, metrics), mounted with `@serve.ingress`. Its backend (the Backend seam)
               sends items to Embedder; its index is a ShardedIndex whose shards are the
               IndexShard deployments: a search fans out to all of them and merges their top k.
A replica that dies is restarted by Ray Serve; meanwhile calls to it fail or time out, and the
ingress answers those with 503 + Retry-After (never hangs: every call has a deadline).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import MRLDeployError
from .cluster import unwrap

DEFAULT_TIMEOUT = 30.0


def _unavailable(exc: BaseException) -> bool:
    """A replica that died, is restarting or is too busy: worth a retry (503), not a 500."""
    import ray.exceptions
    from ray.serve import exceptions as serve_exceptions

    return isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                            serve_exceptions.BackPressureError, serve_exceptions.DeploymentUnavailableError,
                            asyncio.TimeoutError, TimeoutError, ray.exceptions.GetTimeoutError))


def _reraise(exc: BaseException, what: str):
    from ..serve.batcher import Overloaded

    inner = unwrap(exc)
    if isinstance(inner, MRLDeployError):
        raise inner from None
    if _unavailable(exc) or _unavailable(inner):
        raise Overloaded(f"{what} is unavailable (a replica is restarting or busy): retry", retry_after=1) from None
    raise exc


# --- the ingress's two seams ----------------------------------------------------------------------------

def _handle(deployment: str) -> Any:
    """A handle to a deployment of this replica's application. Looked up by name inside the
    ingress replica: @serve.ingress runs a copy of the app, so handles cannot be set on it."""
    from ray import serve

    return serve.get_deployment_handle(deployment, serve.get_replica_context().app_name)


class _Deployment:
    """A deployment of this replica's application, its handle looked up on first use."""

    def __init__(self, deployment: str, timeout: float):
        self.deployment, self.timeout = deployment, timeout
        self._handle = None

    @property
    def handle(self) -> Any:
        if self._handle is None:
            self._handle = _handle(self.deployment)
        return self._handle


class ServeBackend(_Deployment):
    """The app's Backend over the Embedder deployment."""

    def __init__(self, max_batch: int, timeout: float = DEFAULT_TIMEOUT, deployment: str = "Embedder"):
        super().__init__(deployment, timeout)
        self.max_batch = max_batch

    def load(self) -> dict[str, Any]:
        try:
            return self.handle.info.remote().result(timeout_s=self.timeout)
        except Exception as exc:
            _reraise(exc, "the embedding deployment")

    async def run(self, items: Sequence[Any], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        # a request larger than a batch goes as several calls (each one within @serve.batch's size)
        parts = [list(items[i:i + self.max_batch]) for i in range(0, len(items), self.max_batch)]
        try:
            done = await asyncio.wait_for(
                asyncio.gather(*(self.handle.run.remote(part, list(outputs)) for part in parts)), self.timeout)
        except Exception as exc:
            _reraise(exc, "the embedding deployment")
        return done[0] if len(done) == 1 else {name: np.concatenate([d[name] for d in done]) for name in done[0]}

    async def close(self) -> None:
        pass


class ServeFuture:
    def __init__(self, response: Any, what: str, timeout: float):
        self.response, self.what, self.timeout = response, what, timeout

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self.response.result(timeout_s=timeout or self.timeout)
        except Exception as exc:
            _reraise(exc, self.what)


class ServeShard(_Deployment):
    """A shard of the ingress's ShardedIndex: an IndexShard deployment (sharded.LocalShard's
    submit(), called from the app's worker thread)."""

    def __init__(self, deployment: str, name: str, timeout: float = DEFAULT_TIMEOUT):
        super().__init__(deployment, timeout)
        self.name = name

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None}

    def submit(self, method: str, *args: Any, **kwargs: Any) -> ServeFuture:
        return ServeFuture(self.handle.call.remote(method, *args, **kwargs), f"index shard {self.name}", self.timeout)

    def close(self) -> None:
        pass


# --- the application ---------------------------------------------------------------------------------------

def build_application(artifact_dir: str | Path, index_dir: str | Path | None = None, *, replicas: int = 1,
                      runtime: str | None = None, variant: str = "fp32", threads: int | None = None,
                      num_cpus: float = 1, num_gpus: float | None = None, max_batch: int = 64,
                      max_delay_ms: float = 2.0, max_queue: int = 1024, timeout: float = DEFAULT_TIMEOUT,
                      **app_options: Any):
    """The Ray Serve application (Ingress bound to Embedder and the IndexShards). `app_options`
    go to serve.create_app (model_name, max_request_items, max_body_bytes, api_key)."""
    from ray import serve

    from ..artifact import Artifact
    from ..errors import InputError, check_number
    from ..runtimes import resolve_runtime
    from ..serve import create_app
    from ..serve.batcher import run_batch, warmup_item
    from ..sharded import ShardedIndex, is_sharded, read_sharded_settings
    from .embed import GPU_RUNTIMES

    check_number(replicas, "replicas", 1, integer=True)
    check_number(num_cpus, "num_cpus", 0)
    check_number(num_gpus, "num_gpus", 0, optional=True)
    check_number(timeout, "timeout", 0, low_open=True)
    artifact_dir = Path(artifact_dir).resolve()
    artifact = Artifact.load(artifact_dir, verify=False)
    runtime = resolve_runtime(runtime, artifact, variant)
    gpus = (1.0 if runtime in GPU_RUNTIMES else 0.0) if num_gpus is None else float(num_gpus)
    if runtime in GPU_RUNTIMES and gpus <= 0:
        raise InputError(f"runtime {runtime} runs on a GPU: give each replica a share of one (--num-gpus 0.5)")
    threads = threads if threads is not None else (max(1, int(num_cpus)) if runtime != "torch" else None)

    # a call carries one request's items (up to max_batch): max_batch calls in flight fill a batch
    @serve.deployment(name="Embedder", num_replicas=replicas, max_ongoing_requests=max(max_batch, 8),
                      max_queued_requests=max_queue,
                      ray_actor_options={"num_cpus": num_cpus, "num_gpus": gpus})
    class Embedder:
        def __init__(self):
            from ..manifest import verify_files

            self.artifact = Artifact.load(artifact_dir, verify=False)
            verify_files(self.artifact.path, self.artifact.manifest)
            self.runner = self.artifact.runtime(runtime, variant, threads)
            self.outputs = [o["name"] for o in self.artifact.manifest["outputs"]]
            run_batch(self.artifact, self.runner, [warmup_item(self.artifact)], self.outputs)
            self.run_batched.set_max_batch_size(max_batch)
            self.run_batched.set_batch_wait_timeout_s(max_delay_ms / 1000.0)

        def info(self) -> dict[str, Any]:
            return {"runtime": runtime, "variant": variant, "device": self.runner.device, "threads": threads,
                    "replicas": replicas, "serving": "ray"}

        async def run(self, items: list, outputs: list[str]) -> dict[str, np.ndarray]:
            result = await self.run_batched((items, outputs))
            if isinstance(result, Exception):     # this caller's own failure (see _alone)
                raise result
            return result

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002,
                     batch_size_fn=lambda requests: sum(len(items) for items, _ in requests))
        async def run_batched(self, requests: list[tuple[list, list[str]]]) -> list[dict[str, np.ndarray]]:
            items = [item for part, _ in requests for item in part]
            names = sorted({name for _, outputs in requests for name in outputs})
            try:
                result = await asyncio.to_thread(run_batch, self.artifact, self.runner, items, names)
            except Exception:
                if len(requests) == 1:
                    raise
                # one caller's input must not fail the others: each again on its own
                return [await self._alone(part, outputs) for part, outputs in requests]
            out, offset = [], 0
            for part, outputs in requests:
                keep = [*outputs, *([k for k in result if k not in names])]
                out.append({name: result[name][offset:offset + len(part)] for name in keep})
                offset += len(part)
            return out

        async def _alone(self, part: list, outputs: list[str]) -> Any:
            try:
                return await asyncio.to_thread(run_batch, self.artifact, self.runner, part, outputs)
            except Exception as exc:
                return exc

    shard_apps, index = [], None
    if index_dir is not None:
        index_dir = Path(index_dir).resolve()
        if not is_sharded(index_dir):
            from ..retrieval import AdaptiveIndex

            AdaptiveIndex.load(index_dir)          # a bad directory fails here with its own message
            raise InputError(f"{index_dir} is a single index: `serve --ray` serves a sharded index "
                             "(mrl-deploy index --shards S), one deployment per shard")
        settings = read_sharded_settings(index_dir)

        @serve.deployment(name="IndexShard", max_ongoing_requests=16, ray_actor_options={"num_cpus": 0})
        class IndexShard:
            def __init__(self, directory: str):
                from ..retrieval import AdaptiveIndex

                self.index = AdaptiveIndex.load(directory, view=True)

            def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
                return getattr(self.index, method)(*args, **kwargs)

        shards = []
        for entry in settings["shards"]:
            name = f"IndexShard-{entry['path']}"
            shard_apps.append(IndexShard.options(name=name).bind(str(index_dir / entry["path"])))
            shards.append(ServeShard(name, entry["path"], timeout))
        index = ShardedIndex(settings, shards, index_dir)

    app = create_app(artifact, index, backend=ServeBackend(max_batch, timeout), max_batch=max_batch,
                     max_delay_ms=max_delay_ms, max_queue=max_queue, **app_options)

    # the ingress mostly awaits the others: let it hold as many requests as the app may queue
    @serve.deployment(name="Ingress", max_ongoing_requests=max_queue, ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, embedder: Any, *shards: Any):
            pass    # bound to the other deployments so that they are deployed; reached by name

    return Ingress.bind(Embedder.bind(), *shard_apps)


def run(application: Any, *, host: str = "127.0.0.1", port: int = 8000, name: str = "mrl-deploy",
        address: str | None = None, say=lambda message: None) -> None:
    """Deploy on Ray Serve (HTTP on host:port) and block until SIGINT / SIGTERM; then the
    application is deleted (and Ray shut down if it was started here)."""
    import signal
    import threading

    from ray import serve

    from .cluster import connect

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *args: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with connect(address):
            serve.start(http_options={"host": host, "port": port})
            serve.run(application, name=name, route_prefix="/", blocking=False)
            say(f"serving on http://{host}:{port} (Ray Serve application {name!r}); Ctrl-C stops it")
            while not stop.wait(0.5):
                pass
            serve.delete(name)
            serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
