"""Runtimes: one interface (runtimes.base.Runtime), several backends, imported lazily.

    from mrl_deploy.runtimes import create_runtime
    with create_runtime("ort-cpu", artifact) as runner:
        outputs = runner.infer({"x": batch})
"""

from __future__ import annotations

import importlib

from ..errors import MRLDeployError, RuntimeUnavailableError
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


def runtime_class(name: str) -> type[Runtime]:
    if name not in RUNTIMES:
        raise MRLDeployError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    module_name, _, attr = RUNTIMES[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an install that lacks the module (an older or partial copy)
        raise RuntimeUnavailableError(f"runtime {name} is not part of this install ({exc})") from None
    return getattr(module, attr)


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


__all__ = ["RUNTIMES", "Runtime", "create_runtime", "default_runtime", "resolve_runtime", "runtime_class"]
