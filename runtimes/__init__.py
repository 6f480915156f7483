"""Runtimes: one interface (runtimes.base.Runtime), several backends, imported lazily.

    from mrl_deploy.runtimes import create_runtime
    with create_runtime("ort-cpu", artifact) as runner:
        outputs = runner.infer({"x": batch})
"""

from __future__ import annotations

import importlib

from ..errors import MRLDeployError
from .base import Runtime

# name -> "module:Class", imported only when asked for.
RUNTIMES: dict[str, str] = {
    "torch": "mrl_deploy.runtimes.torch_runtime:TorchRuntime",
    "ort-cpu": "mrl_deploy.runtimes.ort:OrtCpuRuntime",
    "ort-cuda": "mrl_deploy.runtimes.ort:OrtCudaRuntime",
    "ort-trt": "mrl_deploy.runtimes.ort:OrtTensorrtRuntime",
    "tensorrt": "mrl_deploy.runtimes.tensorrt:TensorrtRuntime",
}


def runtime_class(name: str) -> type[Runtime]:
    if name not in RUNTIMES:
        raise MRLDeployError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    module_name, _, attr = RUNTIMES[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def create_runtime(name: str, artifact, **options) -> Runtime:
    """An inactive runtime for `artifact`; use it as a context manager or call activate()."""
    return runtime_class(name)(artifact, **options)


def resolve_runtime(name: str | None, artifact) -> str:
    """The runtime a command uses: the one asked for (checked to exist), else the default."""
    if name:
        runtime_class(name)  # unknown names fail here with the list of known ones
        return name
    chooser = globals().get("default_runtime")
    return chooser(artifact) if chooser else "ort-cpu"


__all__ = ["RUNTIMES", "Runtime", "create_runtime", "resolve_runtime", "runtime_class"]
