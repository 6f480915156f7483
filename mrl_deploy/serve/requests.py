"""Request bodies and inputs, validated (all validation lives here, before anything reaches the
backend): the request models, the JSON body parsed into them, a request's inputs as items for the
backend (texts, or per-sample tensor feeds from nested lists or base64 float32), query vectors."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Literal, Optional, Union

import numpy as np

from ..errors import MRLDeployError, require

require("fastapi", "serve", "the HTTP server")

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError  # noqa: E402

from ..artifact import Artifact  # noqa: E402
from .api_errors import ApiError, invalid_request  # noqa: E402

MAX_K = 1000
MAX_EXPANSION = 65536


MAX_K = 1000


MAX_EXPANSION = 65536


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingsRequest(Body):
    """OpenAI's embeddings request."""
    input: Any
    model: Optional[StrictStr] = None
    dimensions: Optional[StrictInt] = None
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[StrictStr] = None
    shape: Optional[list[StrictInt]] = None


class EmbedRequest(Body):
    """text-embeddings-inference's /embed request (the fields TEI clients such as
    huggingface_hub's InferenceClient send: truncate, truncation_direction, prompt_name)."""
    inputs: Any
    dimensions: Optional[StrictInt] = None
    normalize: StrictBool = True
    truncate: Optional[StrictBool] = None
    truncation_direction: Optional[Literal["Left", "Right", "left", "right"]] = None
    prompt_name: Optional[StrictStr] = None
    shape: Optional[list[StrictInt]] = None


class ClassifyRequest(Body):
    input: Any
    model: Optional[StrictStr] = None
    cascade: Optional[StrictBool] = None
    dimensions: Optional[StrictInt] = None
    shape: Optional[list[StrictInt]] = None


class SearchRequest(Body):
    input: Any
    model: Optional[StrictStr] = None
    k: StrictInt = 10
    shortlist: Optional[StrictInt] = None
    funnel: Optional[Union[StrictStr, list[tuple[StrictInt, StrictInt]]]] = None
    expansion_search: Optional[StrictInt] = None


def body_schema(model: type[Body]) -> dict[str, Any]:
    """The request body's schema for /docs (the routes read and validate the body themselves, so
    that a large one is parsed off the event loop)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def parse_body(model: type[Body], raw: bytes) -> Any:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {str(exc)[:200]}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        return model.model_validate(data)
    except (ValidationError, RecursionError) as exc:
        raise invalid_request(exc) from None


def parse_inputs(artifact: Artifact, value: Any, *, shape: list[int] | None, param: str, max_items: int) -> list:
    """A request's inputs as items for the backend: texts for text models, per-sample feeds
    {input name: array} for tensor models (nested numbers, or base64 float32 with `shape`)."""
    if artifact.is_text:
        if shape is not None:
            raise ApiError(400, "shape is only for base64 tensor inputs; this is a text model", param="shape")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            if isinstance(texts, list) and not texts:
                raise ApiError(400, f"{param} is empty: give a string or a list of strings", param=param)
            if isinstance(texts, list) and all(isinstance(t, (int, list)) and not isinstance(t, bool) for t in texts):
                raise ApiError(400, f"{param}: token ids are not accepted, send text (the server tokenizes it)",
                               param=param)
            raise ApiError(400, f"{param} must be a string or a list of strings (this is a text model)", param=param)
        _check_count(len(texts), max_items, param)
        empty = next((i for i, t in enumerate(texts) if not t), None)
        if empty is not None:
            raise ApiError(400, f"{param}[{empty}] is an empty string", param=param)
        return texts
    if isinstance(value, str):
        array = _from_base64(value, shape, param)
    elif shape is not None:
        raise ApiError(400, "shape goes with a base64 string input; nested lists carry their own shape", param="shape")
    elif isinstance(value, dict):
        array = {str(name): _numbers(v, f"{param}.{name}") for name, v in value.items()}
    else:
        array = _numbers(value, param)
    try:
        feed = artifact.tensor_feed(array)
    except MRLDeployError as exc:
        raise ApiError(400, f"{param}: {exc}", param=param) from None
    count = len(next(iter(feed.values())))
    if count == 0:
        raise ApiError(400, f"{param} is empty", param=param)
    _check_count(count, max_items, param)
    return [{name: rows[i] for name, rows in feed.items()} for i in range(count)]


def _check_count(count: int, max_items: int, param: str) -> None:
    if count > max_items:
        raise ApiError(413, f"{param} has {count} items; this server takes at most {max_items} per request "
                            "(--max-request-items)", param=param, code="too_many_items")


def _numbers(value: Any, param: str) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise ApiError(400, f"{param} must be a non-empty (nested) list of numbers with the model's input shape",
                       param=param)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ApiError(400, f"{param} is not a rectangular list of numbers", param=param) from None
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ApiError(400, f"{param} must hold numbers only", param=param)
    return array


def _from_base64(value: str, shape: list[int] | None, param: str) -> np.ndarray:
    if shape is None:
        raise ApiError(400, f"{param} is a string: for a tensor model that is base64 float32 and needs a shape field",
                       param="shape")
    if not 1 <= len(shape) <= 16 or any(s < 0 for s in shape):
        raise ApiError(400, f"shape must be 1 to 16 non-negative integers, got {shape[:20]}", param="shape")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param} is not valid base64", param=param) from None
    if len(raw) != 4 * math.prod(shape):
        raise ApiError(400, f"{param} holds {len(raw)} bytes; shape {shape} of float32 needs {4 * math.prod(shape)}",
                       param=param)
    return np.frombuffer(raw, dtype="<f4").reshape(shape)


def check_finite(rows: np.ndarray, param: str) -> np.ndarray:
    """The model's rows, or a 400 for the first input it could not represent (inputs far outside
    the range it was trained on can overflow inside the graph)."""
    bad = ~np.isfinite(rows).reshape(len(rows), -1).all(axis=1)
    if bad.any():
        raise ApiError(400, f"{param}[{int(np.argmax(bad))}]: the model's output is not finite for this input "
                            "(values far outside its range?)", param=param, code="non_finite_output")
    return rows


def parse_vectors(value: Any, max_items: int) -> np.ndarray | None:
    """Query vectors (a list of numbers, or of lists of numbers) or None for texts."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        return None
    array = _numbers(value, "input").astype(np.float32)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise ApiError(400, f"input vectors must be a list of numbers or a list of lists, got shape {array.shape}",
                       param="input")
    _check_count(len(array), max_items, "input")
    return array
