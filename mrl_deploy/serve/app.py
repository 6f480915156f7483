"""The FastAPI app: create_app and its routes, and run_server (request models and validation:
requests.py; the OpenAI-style error mapping: api_errors.py; the middleware: gate.py; the app's
state: state.py).

    app = create_app("artifacts/minilm", index=AdaptiveIndex.load("docs.index"))
    run_server(app, "127.0.0.1", 8080)              # what `mrl-deploy serve` does

One path for every model endpoint: validate (all of it, before the backend: requests.py) -> the
backend runs the items in shared batches -> each caller gets its own rows -> truncate +
re-normalise to the request's `dimensions` (Artifact.at_dim), a cascade (Cascade.run) or a search
(the index's search) -> respond. `create_app` keeps all its state on the app it returns (nothing at module
level), so Ray Serve can mount the same app with `@serve.ingress(app)` and a backend of its own.

Seams (see batcher.py): `backend` (default LocalBackend: a Batcher over the artifact's runtime
here) and `index` (anything with AdaptiveIndex's search / plan / __len__ / full_dim, and
optionally has_documents / documents(ids) and settings: an AdaptiveIndex, later a sharded one).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import MRLDeployError, check_number, require

require("fastapi", "serve", "the HTTP server")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import Response  # noqa: E402

from ..artifact import Artifact  # noqa: E402
from .api_errors import ApiError, add_error_handlers, busy  # noqa: E402
from .batcher import TOKENS, LocalBackend, Overloaded  # noqa: E402
from .gate import Gate  # noqa: E402
from .metrics import Metrics  # noqa: E402
from .requests import (  # noqa: E402
    MAX_EXPANSION, MAX_K, Body, ClassifyRequest, EmbedRequest, EmbeddingsRequest, SearchRequest, body_schema,
    check_finite, parse_body, parse_inputs, parse_vectors,
)
from .state import ServerState  # noqa: E402

log = logging.getLogger("mrl_deploy.serve")

LARGE_BODY = 1 << 20          # bodies past 1 MiB are parsed in a worker thread, off the event loop
LARGE_RESPONSE = 200_000      # numbers past which a response is serialised in a worker thread


def create_app(artifact: Artifact | str | Path, index: Any = None, *, backend: Any = None,
               model_name: str | None = None, runtime: str | None = None, variant: str = "fp32",
               threads: int | None = None, max_batch: int = 64, max_delay_ms: float = 2.0, max_queue: int = 1024,
               max_request_items: int = 2048, max_body_bytes: int = 32 << 20,
               api_key: str | None = None) -> FastAPI:
    """The server's ASGI app. `artifact`: an Artifact, or its directory (its manifest is read now,
    its checksums and runtime are checked while loading, when /health answers 503). `index`: an
    AdaptiveIndex (or anything with its search interface) for /v1/search. `backend`: runs the
    model (default: dynamic batching over `runtime` / `variant` / `threads` in this process)."""
    verify = not isinstance(artifact, Artifact)
    if verify:
        artifact = Artifact.load(artifact, verify=False)
    for name, value in (("max_batch", max_batch), ("max_queue", max_queue), ("max_request_items", max_request_items),
                        ("max_body_bytes", max_body_bytes)):
        check_number(value, name, 1, integer=True)
    check_number(max_delay_ms, "max_delay_ms", 0, 10_000)
    if api_key is not None and not api_key:
        raise MRLDeployError("the API key is empty")
    built_with = ((getattr(index, "settings", None) or {}).get("source") or {}).get("artifact")
    if built_with and Path(built_with).resolve() != artifact.path.resolve():
        log.warning("the index was built with the artifact %s; queries are embedded with %s", built_with, artifact.path)
    if index is not None and index.full_dim > max(artifact.exported_dims):
        raise MRLDeployError(f"the index holds {index.full_dim}-d vectors but the artifact's largest exported dim is "
                             f"{max(artifact.exported_dims)}: serve the artifact the index was built with")
    metrics = Metrics()
    settings = {"max_batch": max_batch, "max_delay_ms": max_delay_ms, "max_queue": max_queue,
                "max_request_items": max_request_items, "max_body_bytes": max_body_bytes}
    state: ServerState
    if backend is None:
        backend = LocalBackend(artifact, runtime=runtime, variant=variant, threads=threads, max_batch=max_batch,
                               max_delay=max_delay_ms / 1000.0, max_queue=max_queue,
                               arriving=lambda: state.arriving, on_batch=metrics.observe_batch)
    state = ServerState(artifact, index, backend, metrics, model_name or artifact.path.name, max_request_items,
                        max_body_bytes, api_key.encode() if api_key else None, verify, settings)
    metrics.queue.set_function(lambda: getattr(getattr(backend, "batcher", None), "queued", 0))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(_load(state))
        try:
            yield
        finally:
            state.draining = True
            if not loading.done():
                loading.cancel()
            await state.backend.close()

    app = FastAPI(title="mrl-deploy", summary="Matryoshka embeddings, cascades and adaptive search",
                  lifespan=lifespan)
    app.state.mrl = state
    add_error_handlers(app)
    _add_routes(app, state)
    app.add_middleware(Gate, state=state)
    return app


async def _load(state: ServerState) -> None:
    log.info("loading %s", state.model_name)
    try:
        state.runtime_info = await asyncio.to_thread(state.load)
    except Exception as exc:  # a corrupt file, a runtime that cannot start: the server cannot serve
        state.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error("the model failed to load: %s", state.error)
        if state.on_fatal is not None:
            state.on_fatal(exc)
        return
    state.ready = True
    state.metrics.loaded.set(1)
    info = state.runtime_info
    log.info("ready: %s on %s (%s)", state.model_name, info.get("runtime", "?"), info.get("device", "?"))


# --- routes ------------------------------------------------------------------------------------------

def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, allow_nan=False, separators=(",", ":")), status_code=status,
                    media_type="application/json")


async def _respond(data: Any, numbers: int) -> Response:
    if numbers > LARGE_RESPONSE:
        return await asyncio.to_thread(_json, data)
    return _json(data)


def _add_routes(app: FastAPI, state: ServerState) -> None:
    artifact = state.artifact
    exported = artifact.exported_dims
    cascade_data = artifact.manifest.get("cascade")

    async def body(request: Request, model: type[Body], prepare: Callable[[Any], Any]) -> Any:
        """Read, parse and validate the body (in a worker thread when it is large)."""
        if not state.ready:
            if state.error is not None:
                raise ApiError(503, f"the model failed to load: {state.error}", type="server_error",
                               code="load_failed")
            raise ApiError(503, "the model is loading", type="server_error", code="loading",
                           headers={"Retry-After": "1"})
        raw = await request.body()
        work = lambda: prepare(parse_body(model, raw))  # noqa: E731
        return await asyncio.to_thread(work) if len(raw) > LARGE_BODY else work()

    async def run(request: Request, items: list, outputs: list[str]) -> dict[str, np.ndarray]:
        if request.scope.pop("mrl.arriving", False):   # on its way no more: in the queue now
            state.arriving -= 1
        try:
            return await state.backend.run(items, outputs)
        except Overloaded as exc:
            raise busy(exc) from None

    def check_model(name: str | None) -> None:
        if name is not None and name != state.model_name:
            raise ApiError(404, f"model {name!r} is not served here; this server serves {state.model_name!r}",
                           param="model", code="model_not_found")

    def embedding_dim(dimensions: int | None) -> int:
        top = max(exported)
        if dimensions is None:
            return top
        if not 1 <= dimensions <= top:
            raise ApiError(400, f"dimensions must be between 1 and {top}, the largest exported dim (exported dims: "
                                f"{', '.join(map(str, exported))}); got {dimensions}",
                           param="dimensions", code="invalid_dimensions")
        return dimensions

    def usage(rows: dict[str, np.ndarray]) -> dict[str, int]:
        tokens = int(rows[TOKENS].sum()) if TOKENS in rows else 0
        return {"prompt_tokens": tokens, "total_tokens": tokens}

    # --- embeddings ------------------------------------------------------------------------------
    def prepare_embeddings(req: EmbeddingsRequest) -> tuple:
        check_model(req.model)
        dim = embedding_dim(req.dimensions)
        items = parse_inputs(artifact, req.input, shape=req.shape, param="input", max_items=state.max_request_items)
        return req, dim, items

    @app.post("/v1/embeddings", openapi_extra=body_schema(EmbeddingsRequest))
    async def embeddings(request: Request) -> Response:
        """OpenAI's embeddings API: `dimensions` is any dim up to the largest exported one."""
        req, dim, items = await body(request, EmbeddingsRequest, prepare_embeddings)
        output = artifact.embedding_output(dim)
        rows = await run(request, items, [output])
        vectors = check_finite(Artifact.at_dim(rows[output], dim), "input")
        state.metrics.items.labels("/v1/embeddings").inc(len(items))
        if req.encoding_format == "base64":
            encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            encoded = vectors.tolist()
        data = {"object": "list", "data": [{"object": "embedding", "embedding": e, "index": i}
                                           for i, e in enumerate(encoded)],
                "model": state.model_name, "usage": usage(rows)}
        return await _respond(data, vectors.size)

    def prepare_embed(req: EmbedRequest) -> tuple:
        if not req.normalize:
            raise ApiError(400, "normalize=false is not available: the artifact's outputs are normalised in the graph "
                                "(z[:m] / ||z[:m]||)", param="normalize")
        if req.prompt_name is not None:
            raise ApiError(400, f"prompt_name {req.prompt_name!r}: this model defines no prompts; put any prefix in "
                                "the text itself", param="prompt_name")
        if (req.truncation_direction or "right").lower() != "right":
            raise ApiError(400, "truncation_direction Left is not available: texts past max_seq_length are cut at the "
                                "right, as the exported pipeline was verified", param="truncation_direction")
        dim = embedding_dim(req.dimensions)
        items = parse_inputs(artifact, req.inputs, shape=req.shape, param="inputs", max_items=state.max_request_items)
        if req.truncate is False and artifact.is_text:
            # TEI's contract: without truncate, an input past the model's length is refused, not cut
            longer = artifact.overlong(items)
            if longer:
                limit = artifact.manifest["preprocessing"]["max_seq_length"]
                raise ApiError(413, f"inputs[{longer[0]}] has more than {limit} tokens, this model's max_seq_length; "
                                    "send truncate: true to cut it", param="inputs", code="input_too_long")
        return dim, items

    @app.post("/", openapi_extra=body_schema(EmbedRequest), include_in_schema=False)
    @app.post("/embed", openapi_extra=body_schema(EmbedRequest))
    async def embed(request: Request) -> Response:
        """text-embeddings-inference's /embed: a list of vectors (also at POST /, TEI's route for
        the Inference API clients, which post to the base URL)."""
        dim, items = await body(request, EmbedRequest, prepare_embed)
        output = artifact.embedding_output(dim)
        rows = await run(request, items, [output])
        vectors = check_finite(Artifact.at_dim(rows[output], dim), "inputs")
        state.metrics.items.labels("/embed").inc(len(items))
        return await _respond(vectors.tolist(), vectors.size)

    # --- classify --------------------------------------------------------------------------------
    def prepare_classify(req: ClassifyRequest) -> tuple:
        from ..cascade import Cascade

        check_model(req.model)
        heads = artifact.logit_dims
        if not heads:
            raise ApiError(400, "this model has no classifier heads (no logits outputs): it cannot classify",
                           code="no_heads")
        if req.cascade and req.dimensions is not None:
            raise ApiError(400, "give cascade: true or dimensions, not both", param="cascade")
        if req.cascade:
            if not cascade_data:
                raise ApiError(400, "this model's cascade is not calibrated: run `mrl-deploy calibrate` on the "
                                    "artifact first", param="cascade", code="not_calibrated")
            cascade, mode = Cascade.from_manifest(artifact.manifest), "cascade"
        else:
            dim = heads[-1] if req.dimensions is None else req.dimensions
            if dim not in heads:
                raise ApiError(400, f"no classifier head at dimensions={dim}; heads: {', '.join(map(str, heads))}",
                               param="dimensions", code="invalid_dimensions")
            cascade, mode = Cascade([dim], []), "head"
        items = parse_inputs(artifact, req.input, shape=req.shape, param="input", max_items=state.max_request_items)
        return cascade, mode, items

    @app.post("/v1/classify", openapi_extra=body_schema(ClassifyRequest))
    async def classify(request: Request) -> Response:
        """One head (`dimensions`, default the largest) or the calibrated cascade (`cascade: true`)."""
        cascade, mode, items = await body(request, ClassifyRequest, prepare_classify)
        rows = await run(request, items, [f"logits_{d}" for d in cascade.dims])
        result = cascade.run({d: check_finite(rows[f"logits_{d}"], "input") for d in cascade.dims})
        state.metrics.items.labels("/v1/classify").inc(len(items))
        labels = artifact.labels
        data = []
        for i, (label, confidence, stop, honest) in enumerate(zip(
                result.predictions.tolist(), result.confidences.tolist(), result.stop_dims.tolist(),
                result.honest_dims.tolist())):
            data.append({"index": i, "label": labels[label] if labels else None, "class_id": label,
                         "confidence": confidence, "stop_dim": stop,
                         "dims": cascade.dims[:cascade.dims.index(stop) + 1], "honest_dims": honest})
        return _json({"object": "list", "data": data, "model": state.model_name, "mode": mode,
                      "dims": cascade.dims, "usage": usage(rows)})

    # --- search ----------------------------------------------------------------------------------
    def prepare_search(req: SearchRequest) -> tuple:
        index = state.index
        if index is None:
            raise ApiError(404, "this server has no index: start it with --index INDEX", code="no_index")
        check_model(req.model)
        if not 1 <= req.k <= min(MAX_K, len(index)):
            raise ApiError(400, f"k must be between 1 and {min(MAX_K, len(index))} (the index holds {len(index)} "
                                f"vectors); got {req.k}", param="k")
        if req.expansion_search is not None and not 1 <= req.expansion_search <= MAX_EXPANSION:
            raise ApiError(400, f"expansion_search must be between 1 and {MAX_EXPANSION}", param="expansion_search")
        if req.shortlist is not None and req.shortlist < 1:
            raise ApiError(400, f"shortlist must be a positive integer, got {req.shortlist}", param="shortlist")
        funnel = req.funnel if req.funnel is None or isinstance(req.funnel, str) else [tuple(s) for s in req.funnel]
        try:
            stages = index.plan(req.k, shortlist_size=req.shortlist, funnel=funnel)
        except MRLDeployError as exc:
            raise ApiError(400, str(exc), param="funnel" if funnel is not None else "shortlist") from None
        vectors = parse_vectors(req.input, state.max_request_items)
        texts = None
        if vectors is None:
            if not artifact.is_text:
                raise ApiError(400, "this model takes tensors: search with query vectors (lists of numbers)",
                               param="input")
            texts = parse_inputs(artifact, req.input, shape=None, param="input", max_items=state.max_request_items)
        return req, stages, vectors, texts

    @app.post("/v1/search", openapi_extra=body_schema(SearchRequest))
    async def search(request: Request) -> Response:
        """Adaptive search: texts are embedded at the index's dim in the shared batches."""
        req, stages, vectors, texts = await body(request, SearchRequest, prepare_search)
        index = state.index
        rows: dict[str, np.ndarray] = {}
        if texts is not None:
            output = artifact.embedding_output(index.full_dim)
            rows = await run(request, texts, [output])
            vectors = check_finite(Artifact.at_dim(rows[output], index.full_dim), "input")
            state.metrics.items.labels("/v1/search").inc(len(texts))

        def find() -> tuple:
            ids, scores = index.search(vectors, req.k, funnel=stages, expansion_search=req.expansion_search)
            documents = index.documents(ids) if getattr(index, "has_documents", False) else None
            return ids, scores, documents

        ids, scores, documents = await asyncio.to_thread(find)
        data = []
        for i, (row_ids, row_scores) in enumerate(zip(ids.tolist(), scores.tolist())):
            results = []
            for j, (key, score) in enumerate(zip(row_ids, row_scores)):
                if key < 0:
                    continue
                result = {"id": key, "score": score}
                if documents is not None and documents[i][j] is not None:
                    result.update(documents[i][j])
                results.append(result)
            data.append({"index": i, "results": results})
        return _json({"object": "list", "data": data, "model": state.model_name,
                      "search": {"k": req.k, "stages": [list(s) for s in stages]}, "usage": usage(rows)})

    # --- status ----------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Response:
        """200 once the model is loaded and warm; 503 while loading, after a failed load, or draining."""
        if state.draining:
            return _json({"status": "draining"}, 503)
        if state.error is not None:
            return _json({"status": "failed", "error": state.error}, 503)
        if not state.ready:
            response = _json({"status": "loading"}, 503)
            response.headers["Retry-After"] = "1"
            return response
        return _json({"status": "ok"})

    @app.get("/info")
    async def info() -> Response:
        """The model (dims, variants, runtime and device really used), the index, the limits."""
        manifest = artifact.manifest
        index = state.index
        index_info = None
        if index is not None:
            settings = getattr(index, "settings", {}) or {}
            index_info = {"size": len(index), "full_dim": index.full_dim,
                          "documents": bool(getattr(index, "has_documents", False)),
                          **{key: settings[key] for key in ("shortlist_dim", "rerank_dim", "dtype", "rerank_dtype",
                                                            "connectivity", "defaults") if key in settings}}
        return _json({
            "model": state.model_name, "status": "ready" if state.ready else ("failed" if state.error else "loading"),
            "modality": manifest.get("modality", "tensor"), "source": manifest["source"]["kind"],
            "full_dim": artifact.full_dim, "nesting_dims": artifact.nesting_dims, "exported_dims": exported,
            "logit_dims": artifact.logit_dims, "labels": artifact.labels,
            "cascade": {"dims": cascade_data["dims"], "thresholds": cascade_data["thresholds"]} if cascade_data else None,
            "variants": artifact.variants, "inputs": manifest["inputs"],
            "max_seq_length": (manifest.get("preprocessing") or {}).get("max_seq_length"),
            **state.runtime_info, "index": index_info, "limits": state.settings,
        })

    @app.get("/v1/models")
    async def models() -> Response:
        """OpenAI's model list: the one model served here."""
        return _json({"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                                  "owned_by": "mrl-deploy"}]})

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(state.metrics.render(), media_type=state.metrics.content_type)


# --- running it ----------------------------------------------------------------------------------------

def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8080, *, log_level: str = "warning") -> None:
    """Serve `app` with uvicorn until SIGTERM / SIGINT. SIGTERM drains: /health turns 503, the
    listener closes, requests in flight finish, then the process returns normally (exit 0)."""
    import signal
    import socket

    uvicorn = require("uvicorn", "serve", "the HTTP server")
    state: ServerState = app.state.mrl

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True
            super().handle_exit(sig, frame)

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        raise MRLDeployError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
    server = Server(config)
    state.on_fatal = lambda exc: setattr(server, "should_exit", True)
    # uvicorn re-raises the signal it drained for once it is done; with this no-op as the handler
    # it restores, that ends in a normal return (exit 0) instead of death by SIGTERM
    previous = signal.signal(signal.SIGTERM, lambda *args: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if state.error is not None:
        raise MRLDeployError(f"the model failed to load: {state.error}")
