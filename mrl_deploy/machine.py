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


NVIDIA_SMI_FIELDS = ("name", "memory.total", "driver_version", "compute_cap")


def nvidia_smi_gpus() -> list[dict[str, Any]]:
    """The GPUs nvidia-smi lists, in its order: {name, memory_bytes, driver, compute_capability}
    ("8.0"); empty where there is no nvidia-smi or it fails. No CUDA library is loaded: the one
    place that asks nvidia-smi (machine_info, and the runtimes' check of an engine's GPU)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    for fields in (NVIDIA_SMI_FIELDS, NVIDIA_SMI_FIELDS[:3]):   # drivers before 510 know no compute_cap
        try:
            out = subprocess.run([smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout
            break
        except subprocess.CalledProcessError:
            continue
        except (OSError, subprocess.SubprocessError):
            return []
    else:
        return []
    gpus = []
    for line in out.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != len(fields):
            continue
        name, memory, driver, capability = parts + [None] * (len(NVIDIA_SMI_FIELDS) - len(parts))
        try:
            memory_bytes = int(float(memory)) * 2**20
        except ValueError:
            memory_bytes = None
        gpus.append({"name": name, "memory_bytes": memory_bytes, "driver": driver, "compute_capability": capability})
    return gpus


def _gpus() -> list[dict[str, Any]]:
    gpus = nvidia_smi_gpus()
    if gpus:
        return gpus
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return [{"name": torch.cuda.get_device_name(i),
                 "memory_bytes": torch.cuda.get_device_properties(i).total_memory} for i in range(torch.cuda.device_count())]
    return []
