"""The middleware in front of every route: API key, body limit, request metrics, and the count of
model requests on their way to the batcher."""

from __future__ import annotations

import hmac
import time
from typing import Any, Callable

from ..errors import require

require("fastapi", "serve", "the HTTP server")

from fastapi.responses import Response  # noqa: E402

from .api_errors import ApiError, error_response, too_large, too_large_message  # noqa: E402
from .state import ServerState  # noqa: E402

MODEL_PATHS = ("/v1/embeddings", "/embed", "/", "/v1/classify", "/v1/search")


class Gate:
    """Pure ASGI (cheaper than BaseHTTPMiddleware): times every request for /metrics, counts the
    model requests on their way to the batcher (its `arriving` hint), refuses requests without
    the API key (401) and bodies past the limit (413) before they are read."""

    def __init__(self, app: Any, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state, path, started, status = self.state, scope["path"], time.perf_counter(), [500]

        async def send_and_see(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if path in MODEL_PATHS:
            scope["mrl.arriving"] = True
            state.arriving += 1
        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_and_see)
                return
            await self.app(scope, self._limited(receive), send_and_see)
        finally:
            if scope.pop("mrl.arriving", False):
                state.arriving -= 1
            state.metrics.observe_request(path, status[0], time.perf_counter() - started)

    def _refusal(self, scope: dict) -> Response | None:
        state = self.state
        headers = dict(scope.get("headers") or [])
        if state.api_key is not None and scope["path"] != "/health":
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + state.api_key):
                return error_response(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                      code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return error_response(400, "Content-Length is not a number", code="invalid_request")
            if size > state.max_body_bytes:
                return too_large(state.max_body_bytes)
        return None

    def _limited(self, receive: Callable) -> Callable:
        limit, seen = self.state.max_body_bytes, [0]

        async def receive_limited() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise ApiError(413, too_large_message(limit), code="body_too_large")
            return message

        return receive_limited
