"""The machine numbers were measured on: CPU, cores, memory, GPUs, OS, Python, package versions
and the load of a shared machine. Never imports torch (reads it from sys.modules if imported)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from typing import Any

PACKAGES = ("mrl-deploy", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "torch", "usearch", "tokenizers",
            "tensorrt")
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
            "CUDA_VISIBLE_DEVICES")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU, OS, Python and package versions: enough to tell whose
    numbers these are. Never imports torch (reads it from sys.modules if already imported)."""
    from importlib import metadata

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_available": available,
        "memory_bytes": _meminfo_total(),
        "gpus": _gpus(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": versions,
        "env": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
        "load_average": _load_average(),
    }


def _load_average() -> list[float] | None:
    """1/5/15-minute load: other processes on a shared machine skew timings; this says how much."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_name(machine: dict[str, Any]) -> str:
    """One line: 'AMD EPYC, 2 cores' (+ the GPU)."""
    text = f"{machine.get('cpu') or 'unknown CPU'}, {machine.get('cores_available')} cores"
    gpus = machine.get("gpus") or []
    if gpus:
        text += ", " + ", ".join(g["name"] for g in gpus)
    return text


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gpus() -> list[dict[str, Any]]:
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True).stdout
            gpus = []
            for line in out.strip().splitlines():
                name, memory, driver = [part.strip() for part in line.split(",")]
                gpus.append({"name": name, "memory_bytes": int(float(memory)) * 2**20, "driver": driver})
            return gpus
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return [{"name": torch.cuda.get_device_name(i),
                 "memory_bytes": torch.cuda.get_device_properties(i).total_memory} for i in range(torch.cuda.device_count())]
    return []
