"""What writing and checking a Triton repository both read: an ONNX graph's inputs and outputs
(onnxruntime), Triton's data types, the model name suffix of each variant, the marker file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import RepositoryError, require

MARKER = "mrl-triton.json"


FORMAT_VERSION = 1


TEXT_INPUT = "text"


KINDS = ("gpu", "cpu")


TOKENIZER_FILES = ("model.py", "tokenization.py", "preprocessing.json")


# numpy dtype name <-> Triton data type; ONNX Runtime names float32 "float" and float64 "double".
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16", "string": "TYPE_STRING",
}


NUMPY_TYPES = {triton: numpy for numpy, triton in TRITON_TYPES.items()}


ORT_TYPES = {"float": "float32", "double": "float64"}


ONNX_VARIANTS = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}   # model name suffixes


ENGINE_VARIANTS = {"tensorrt": "_trt", "tensorrt-fp16": "_trt_fp16"}


def ort_session(path: Path, optimize: bool = True):
    ort = require("onnxruntime", "cpu", "reading and running ONNX graphs")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:  # reading names, types and shapes only: no need to optimise a large graph
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _tensors(args) -> list[dict[str, Any]]:
    out = []
    for arg in args:
        inner = arg.type[len("tensor("):-1] if arg.type.startswith("tensor(") else arg.type
        # symbolic axes come as names, unknown ones as None: both are dynamic for Triton
        shape = [axis if isinstance(axis, int) and axis >= 0 else None for axis in arg.shape]
        out.append({"name": arg.name, "dtype": ORT_TYPES.get(inner, inner), "shape": shape})
    return out


def graph_io(path: str | os.PathLike, session=None) -> dict[str, list[dict[str, Any]]]:
    """{inputs, outputs}: [{name, dtype (numpy name), shape (ints, None for dynamic axes)}] of the
    ONNX graph at `path`, read with ONNX Runtime's session metadata."""
    session = session or ort_session(Path(path), optimize=False)
    return {"inputs": _tensors(session.get_inputs()), "outputs": _tensors(session.get_outputs())}


def triton_dims(shape: Sequence[int | None], batched: bool) -> list[int]:
    """Config dims of a graph tensor: the batch axis left out when Triton batches, -1 for dynamic."""
    return [-1 if axis is None else int(axis) for axis in (shape[1:] if batched else shape)]


def triton_type(dtype: str, where: str) -> str:
    if dtype not in TRITON_TYPES:
        raise RepositoryError(f"{where} has dtype {dtype}, which Triton has no type for")
    return TRITON_TYPES[dtype]
