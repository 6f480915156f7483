"""What can run here, checked cheaply (no session, no engine, never torch): used to pick the
default runtime. A runtime asked for by name is checked for real when it activates."""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
from typing import Any


def module_installed(name: str) -> bool:
    """Whether `name` can be imported, without importing it (find_spec reads no module code)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def gpu_present() -> bool:
    """An NVIDIA GPU is visible: a driver-listed GPU, a device node, or Jetson's integrated GPU.
    onnxruntime-gpu lists CUDA even without one, so its provider list proves nothing."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(
        glob.glob("/proc/driver/nvidia/gpus/*")
        or os.path.exists("/dev/nvidia0")
        or os.path.exists("/dev/nvhost-ctrl-gpu")  # Jetson (JetPack)
    )


@functools.lru_cache(maxsize=1)
def ort_providers() -> tuple[str, ...]:
    if not module_installed("onnxruntime"):
        return ()
    try:
        import onnxruntime

        return tuple(onnxruntime.get_available_providers())
    except Exception:  # a broken install (onnxruntime and onnxruntime-gpu both installed)
        return ()


def supports(name: str, artifact: Any, variant: str = "fp32") -> bool:
    """Whether runtime `name` is available here and can run `variant` of `artifact`."""
    if name == "ort-cpu":
        return "CPUExecutionProvider" in ort_providers()
    if name == "ort-cuda":
        return "CUDAExecutionProvider" in ort_providers() and gpu_present()
    if name == "ort-trt":
        return "TensorrtExecutionProvider" in ort_providers() and gpu_present()
    if name == "torch":
        return variant == "fp32" and module_installed("torch")
    if name == "tensorrt":
        return tensorrt_supports(artifact.manifest, variant)
    return False


def tensorrt_supports(manifest: dict, variant: str) -> bool:
    """An engine for `variant`, TensorRT and torch (CUDA buffers) installed, a GPU, and an engine
    built by this TensorRT version for this GPU's compute capability (when nvidia-smi tells it)."""
    from .. import engines

    if engines.find_engine(manifest, variant) is None:
        return False
    if not (gpu_present() and module_installed("tensorrt") and module_installed("torch")):
        return False
    try:
        version = engines.installed_version()
    except Exception:
        return False
    _, entry = engines.find_engine(manifest, variant)
    errors, _ = engines.engine_mismatch(entry, version, engines.gpu_from_nvidia_smi())
    return not errors
