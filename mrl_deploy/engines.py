"""TensorRT engines as an artifact's manifest records them, and the checks on them that need no
TensorRT and no GPU: the models keys and file names per precision, version parsing, which engine
serves a variant, whether an engine built with one TensorRT version and GPU runs on another.

One home for what the engine builder (exporters/tensorrt.py), the runtime (runtimes/tensorrt.py),
the cheap availability probe and the Triton writer all read; it imports none of them."""

from __future__ import annotations

import re
from typing import Any

from .errors import ArtifactError, InputError, MRLDeployError, RuntimeUnavailableError

MIN_VERSION = (10, 0)
# Engines per precision: the manifest's models key and the engine file.
ENGINE_KEYS = {"fp32": "tensorrt", "fp16": "tensorrt-fp16"}
ENGINE_FILES = {"fp32": "model.plan", "fp16": "model.fp16.plan"}
TIMING_CACHE_FILE = "timing.cache"


def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); '11.0.0b1' -> (11, 0, 0)."""
    parts = []
    for piece in str(text).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    if not parts:
        raise MRLDeployError(f"cannot read a TensorRT version from {text!r}")
    return tuple(parts)


def check_version(text: str) -> tuple[int, ...]:
    version = parse_version(text)
    if version[:2] < MIN_VERSION:
        raise RuntimeUnavailableError(
            f"TensorRT {text} is installed; mrl-deploy needs TensorRT 10 or later (pip install 'mrl-deploy[tensorrt]')"
        )
    return version


def installed_version() -> str:
    """The installed TensorRT's version string (imports tensorrt)."""
    import tensorrt as trt

    return str(trt.__version__)


def find_engine(manifest: dict[str, Any], variant: str = "fp32") -> tuple[str, dict[str, Any]] | None:
    """(models key, entry) of the engine for `variant` ("fp32", "fp16", or a key such as
    "tensorrt-fp16"), or None."""
    models = manifest.get("models", {})
    key = variant if variant in ENGINE_KEYS.values() else ENGINE_KEYS.get(variant)
    if key and key in models:
        return key, models[key]
    return None


def engine_entry(manifest: dict[str, Any], variant: str, where: str = "the artifact") -> tuple[str, dict[str, Any]]:
    found = find_engine(manifest, variant)
    if found is not None:
        return found
    engines = [v for v, key in ENGINE_KEYS.items() if key in manifest.get("models", {})]
    if variant not in ENGINE_KEYS and variant not in ENGINE_KEYS.values():
        raise InputError(f"TensorRT engines are fp32 or fp16, not {variant!r} (int8 runs on ort-cpu)")
    hint = f"it has {', '.join(engines)} engines: use --variant {engines[0]}" if engines else "it has none"
    raise ArtifactError(
        f"{where} has no {variant} TensorRT engine ({hint}); build one with "
        f"mrl-deploy export ... --format tensorrt{' --precision fp16' if variant == 'fp16' else ''}"
    )


def engine_mismatch(entry: dict[str, Any], version: str, gpu: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """(errors, warnings) of running an engine built as `entry` records with TensorRT `version`
    on `gpu` ({name, compute_capability}, None if unknown). Engines are valid only for the exact
    TensorRT version and the compute capability they were built for; another GPU of the same
    compute capability runs them, maybe with tactics tuned for the other one."""
    errors, notes = [], []
    built = entry.get("tensorrt_version")
    if built and parse_version(built)[:3] != parse_version(version)[:3]:
        errors.append(f"the engine was built with TensorRT {built}, this is TensorRT {version}")
    if gpu:
        built_cc, here_cc = entry.get("compute_capability"), gpu.get("compute_capability")
        if built_cc and here_cc and str(built_cc) != str(here_cc):
            errors.append(
                f"the engine was built for compute capability {built_cc} ({entry.get('gpu', 'unknown GPU')}), "
                f"this GPU is {here_cc} ({gpu.get('name', 'unknown')})"
            )
        elif entry.get("gpu") and gpu.get("name") and entry["gpu"] != gpu["name"]:
            notes.append(
                f"the engine was built on {entry['gpu']} and runs on {gpu['name']} (same compute capability "
                f"{here_cc}): it works, but rebuild it (--rebuild) for tactics tuned to this GPU"
            )
    return errors, notes


def gpu_from_nvidia_smi(index: int = 0) -> dict[str, str] | None:
    """{name, compute_capability} of GPU `index` as nvidia-smi lists it (machine.nvidia_smi_gpus:
    no CUDA library loaded), or None."""
    from .machine import nvidia_smi_gpus

    gpus = nvidia_smi_gpus()
    if index >= len(gpus):
        return None
    return {"name": gpus[index]["name"], "compute_capability": gpus[index]["compute_capability"]}
