"""Errors as the server answers them: ApiError (a status and OpenAI's error body), the mapping of
every exception a request can raise to one JSON answer (4xx for the request's own problems, 503
when overloaded, 500 with no details otherwise), never a traceback."""

from __future__ import annotations

import json
import logging

from ..errors import MRLDeployError, require

require("fastapi", "serve", "the HTTP server")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import Response  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.requests import ClientDisconnect  # noqa: E402

from .batcher import Overloaded  # noqa: E402

log = logging.getLogger("mrl_deploy.serve")


class ApiError(Exception):
    """An answer other than 200, with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def busy(exc: Overloaded) -> ApiError:
    return ApiError(503, str(exc), type="server_error", code="overloaded",
                    headers={"Retry-After": str(exc.retry_after)})


def invalid_request(exc: Exception) -> ApiError:
    errors = exc.errors() if isinstance(exc, (ValidationError, RequestValidationError)) else []
    if not errors:
        return ApiError(400, "the request body is malformed", code="invalid_request")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    elif first.get("type") == "missing":
        message = "required field is missing"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return ApiError(400, f"{where}: {message}{more}", param=param, code="invalid_request")


def too_large_message(limit: int) -> str:
    return f"the request body is larger than {limit} bytes (--max-body-mb)"


def too_large(limit: int) -> Response:
    return error_response(413, too_large_message(limit), code="body_too_large")


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> Response:
        return await api_error(request, busy(exc))

    @app.exception_handler(MRLDeployError)
    async def library_error(request: Request, exc: MRLDeployError) -> Response:
        # the library's one-line errors are about what the request asked for
        return error_response(400, str(exc), code="invalid_request")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return await api_error(request, invalid_request(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(exc.status_code, str(exc.detail), code=codes.get(exc.status_code),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        return error_response(400, "the client went away before sending the whole body", code="client_disconnect")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}", type="server_error",
                              code="internal_error")
