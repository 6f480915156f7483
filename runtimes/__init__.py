"""Runtimes: one interface (runtimes.base.Runtime), several backends, imported lazily; the
registry of their names, the default choice, and the parser of runtime lists ("ort-cpu:int8,torch").

    from mrl_deploy.runtimes import create_runtime
    with create_runtime("ort-cpu", artifact) as runner:
        outputs = runner.infer({"x": batch})
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

from ..errors import InputError
from .base import Runtime

# name -> "module:Class", imported only when asked for.
RUNTIMES: dict[str, str] = {
    "torch": "mrl_deploy.runtimes.torch_runtime:TorchRuntime",
    "torch-cuda": "mrl_deploy.runtimes.torch_runtime:TorchCudaRuntime",
    "ort-cpu": "mrl_deploy.runtimes.ort:OrtCpuRuntime",
    "ort-cuda": "mrl_deploy.runtimes.ort:OrtCudaRuntime",
    "ort-trt": "mrl_deploy.runtimes.ort:OrtTensorrtRuntime",
    "tensorrt": "mrl_deploy.runtimes.tensorrt:TensorrtRuntime",
}


ORT_VARIANTS = ("fp32", "fp16", "int8")      # the model files ONNX Runtime runs
ENGINE_VARIANTS = ("fp32", "fp16")            # the TensorRT engines an artifact may have


def runtime_class(name: str) -> type[Runtime]:
    if name not in RUNTIMES:
        raise InputError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    module_name, _, attr = RUNTIMES[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def create_runtime(name: str, artifact, **options) -> Runtime:
    """An inactive runtime for `artifact`; use it as a context manager or call activate()."""
    return runtime_class(name)(artifact, **options)


def resolve_runtime(name: str | None, artifact, variant: str = "fp32") -> str:
    """The runtime a command uses: the one asked for (checked to exist), else the default."""
    if name:
        runtime_class(name)  # unknown names fail here with the list of known ones
        return name
    return default_runtime(artifact, variant)


# Deployment runtimes, best first. torch / torch-cuda are the reference, never a default
# while ONNX Runtime is installed.
PREFERENCE = ("tensorrt", "ort-cuda", "ort-cpu", "torch")


def default_runtime(artifact, variant: str = "fp32") -> str:
    """The best runtime available here that the artifact supports for `variant`: tensorrt (an
    engine for the variant built for this TensorRT and GPU), ort-cuda (onnxruntime-gpu and a
    GPU), ort-cpu, then torch (the export extra without onnxruntime). Cheap: no session is
    created and torch is never imported."""
    from . import availability

    for name in PREFERENCE:
        if availability.supports(name, artifact, variant):
            return name
    from ..errors import MissingExtraError

    raise MissingExtraError("onnxruntime", "cpu", "running artifacts")


def runtime_pairs(spec: str | Sequence[str], manifest: dict[str, Any], *, variants: bool = True) -> list[tuple[str, str]]:
    """(runtime, variant) pairs of a runtime list: 'torch,ort-cpu' -> [(torch, fp32), (ort-cpu,
    fp32), (ort-cpu, fp16), (ort-cpu, int8)]. A name alone brings (with `variants`) every variant
    of the artifact that runtime runs: each ONNX model for ONNX Runtime, each engine for tensorrt;
    the torch runtimes run the fp32 PyTorch reference. 'ort-cpu:int8' picks one variant, which
    the artifact must have."""
    from ..engines import find_engine

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
            if name == "tensorrt" and find_engine(manifest, variant) is None:
                raise InputError(f"{item}: the artifact has no {variant} TensorRT engine")
            if name != "tensorrt" and variant not in models:
                raise InputError(f"{item}: the artifact has no {variant} model (it has {', '.join(models)})")
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
        raise InputError("no runtimes given: name them, e.g. ort-cpu,torch")
    return pairs


__all__ = ["ENGINE_VARIANTS", "ORT_VARIANTS", "RUNTIMES", "Runtime", "create_runtime", "default_runtime",
           "resolve_runtime", "runtime_class", "runtime_pairs"]
