"""Native TensorRT: run a serialized engine (model.plan) built by exporters/tensorrt.py.

An engine is tied to the TensorRT version and the GPU it was built on: the manifest records
both, and loading it elsewhere is a clear error (or, with rebuild=True / --rebuild, a rebuild
from the ONNX graph in the artifact). Runs with the TensorRT 10/11 API: deserialize_cuda_engine,
set_input_shape for the dynamic batch, set_tensor_address, execute_async_v3.

Device buffers and the CUDA stream come from torch.cuda: of the Python CUDA libraries, torch is the
one most likely installed on a GPU box (cuda-python and pycuda rarely are). TensorRT and torch
are imported only when the runtime activates; a missing one, or a missing GPU, is one line.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError, MissingExtraError, MRLDeployError, RuntimeUnavailableError
from .base import Runtime

MIN_VERSION = (10, 0)
# Engines per precision: the manifest's models key and the engine file.
ENGINE_KEYS = {"fp32": "tensorrt", "fp16": "tensorrt-fp16"}
ENGINE_FILES = {"fp32": "model.plan", "fp16": "model.fp16.plan"}
TIMING_CACHE_FILE = "timing.cache"


# --- versions, GPUs, engines in the manifest (pure: no TensorRT, no GPU) -------------------

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


def require_tensorrt(check_gpu: bool = True):
    """Import TensorRT (10 or later) or raise one line naming what is missing: the package, or a GPU."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != "tensorrt":
            raise RuntimeUnavailableError(f"TensorRT is installed but does not load: {exc}") from None
        raise RuntimeUnavailableError(
            "TensorRT is not installed: it needs an NVIDIA GPU and NVIDIA's tensorrt wheels "
            "(pip install 'mrl-deploy[tensorrt]' on the GPU machine); use --runtime ort-cpu here"
        ) from None
    except OSError as exc:  # the wheel is there but libnvinfer / CUDA libraries are not
        raise RuntimeUnavailableError(f"TensorRT is installed but its libraries do not load: {exc}") from None
    check_version(getattr(trt, "__version__", "0"))
    if check_gpu:
        from .availability import gpu_present

        if not gpu_present():
            raise RuntimeUnavailableError("TensorRT needs an NVIDIA GPU and none is visible here; use --runtime ort-cpu")
    return trt


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
    from ..machine import nvidia_smi_gpus

    gpus = nvidia_smi_gpus()
    if index >= len(gpus):
        return None
    return {"name": gpus[index]["name"], "compute_capability": gpus[index]["compute_capability"]}


def gpu_from_torch(torch, index: int = 0) -> dict[str, str]:
    major, minor = torch.cuda.get_device_capability(index)
    return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def require_cuda_torch(what: str = "TensorRT buffers"):
    """torch with a visible CUDA GPU, or one line saying what is missing."""
    try:
        import torch
    except ImportError:
        raise MissingExtraError("torch", "export", f"{what} (torch.cuda allocates them)") from None
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if not torch.version.cuda else f"torch for CUDA {torch.version.cuda}"
        raise RuntimeUnavailableError(f"{what} need a CUDA GPU and torch sees none ({build})")
    return torch


# --- the runtime ----------------------------------------------------------------------------

class TensorrtRuntime(Runtime):
    """`tensorrt`: the artifact's engine for `variant` (fp32: model.plan, fp16: model.fp16.plan)."""

    name = "tensorrt"

    def __init__(self, artifact, *, variant: str = "fp32", threads: int | None = None, rebuild: bool = False,
                 device_index: int = 0):
        super().__init__(artifact, variant=variant, threads=threads)
        self.rebuild = rebuild
        self.device_index = device_index
        self.engine = self.context = self.stream = None
        self._gpu: dict[str, str] | None = None
        self._version = ""

    def _activate(self) -> None:
        where = str(self.artifact.path)
        trt = require_tensorrt()  # what is missing here comes first, then what the artifact lacks
        key, entry = engine_entry(self.artifact.manifest, self.variant, where)
        torch = require_cuda_torch()
        self._trt, self._torch = trt, torch
        self._version = str(trt.__version__)
        torch.cuda.set_device(self.device_index)
        self._gpu = gpu_from_torch(torch, self.device_index)
        errors, notes = engine_mismatch(entry, self._version, self._gpu)
        if errors and self.rebuild:
            from ..exporters.tensorrt import rebuild_engine

            self.artifact.manifest = rebuild_engine(self.artifact, self.variant).manifest
            key, entry = engine_entry(self.artifact.manifest, self.variant, where)
        elif errors:
            raise ArtifactError(f"cannot run {where}/{entry['file']}: {'; '.join(errors)}: rebuild it with --rebuild "
                                "(from the ONNX graph in the artifact)")
        for note in notes:
            warnings.warn(note, UserWarning, stacklevel=2)
        self.entry = entry
        self.engine = self._deserialize(self.artifact.path / entry["file"])
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeUnavailableError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = torch.cuda.Stream(device=self.device_index)
        self._io = self._io_tensors()

    def _deserialize(self, path):
        if not path.is_file():
            raise ArtifactError(f"engine file missing: {path}")
        logger = self._trt.Logger(self._trt.Logger.ERROR)
        self._runtime = self._trt.Runtime(logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ArtifactError(f"TensorRT {self._version} cannot deserialize {path}: corrupt, or built by another "
                                "TensorRT version or GPU (rebuild it with --rebuild)")
        return engine

    def _io_tensors(self) -> dict[str, dict[str, Any]]:
        """name -> {input, numpy dtype, max shape of profile 0}: what the buffers need."""
        trt, engine = self._trt, self.engine
        io = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            info = {"input": is_input, "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name)))}
            if is_input:
                info["min"], _, info["max"] = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
            io[name] = info
        return io

    @property
    def device_memory_bytes(self) -> int | None:
        """Device memory an execution context needs (activations, scratch), beside the weights."""
        size = getattr(self.engine, "device_memory_size_v2", None)  # TensorRT 10.x/11; _v1 is gone in 11
        return int(size) if size is not None else None

    @property
    def max_batch(self) -> int:
        return min(info["max"][0] for info in self._io.values() if info["input"])

    def _infer(self, feed: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        inputs = [name for name, info in self._io.items() if info["input"]]
        missing = [name for name in inputs if name not in feed]
        if missing:
            raise InputError(f"missing inputs {missing}; the engine takes {inputs}")
        produced = [name for name, info in self._io.items() if not info["input"]]
        wanted = outputs or produced
        unknown = [name for name in wanted if name not in produced]
        if unknown:
            raise InputError(f"unknown outputs {unknown}; the engine gives {produced}")
        count = len(next(iter(feed.values())))
        step = self.max_batch  # batches above the optimization profile run in chunks
        parts = [self._run_chunk({n: np.asarray(feed[n])[s:s + step] for n in inputs}, wanted)
                 for s in range(0, count, step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in wanted}

    def _run_chunk(self, feed: dict[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
        torch, context = self._torch, self.context
        device = torch.device("cuda", self.device_index)
        keep = []  # device buffers must outlive execute_async_v3 until the stream synchronises
        with torch.cuda.stream(self.stream):
            for name, info in self._io.items():
                if not info["input"]:
                    continue
                value = np.ascontiguousarray(feed[name].astype(info["dtype"], copy=False))
                if any(v < lo or v > hi for v, lo, hi in zip(value.shape, info["min"], info["max"])):
                    raise InputError(f"input {name} has shape {value.shape}; the engine's profile allows "
                                     f"{info['min']} to {info['max']}: rebuild it with a larger --max-batch")
                tensor = torch.from_numpy(value).to(device, non_blocking=False)
                keep.append(tensor)
                context.set_input_shape(name, tuple(value.shape))
                context.set_tensor_address(name, tensor.data_ptr())
            results = {}
            for name, info in self._io.items():
                if info["input"]:
                    continue
                shape = tuple(context.get_tensor_shape(name))
                tensor = torch.empty(shape, dtype=_TORCH_DTYPES[info["dtype"].name](torch), device=device)
                results[name] = tensor
                context.set_tensor_address(name, tensor.data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise MRLDeployError("TensorRT execution failed (see the TensorRT messages above)")
        self.stream.synchronize()
        return {name: results[name].float().cpu().numpy() for name in wanted}

    def _deactivate(self) -> None:
        self.context = self.engine = self.stream = None
        self._runtime = None

    @property
    def device(self) -> str:
        if self.engine is None:
            return "inactive"
        gpu = self._gpu or {}
        return (f"cuda:{self.device_index} ({gpu.get('name')}, sm {gpu.get('compute_capability')}), "
                f"TensorRT {self._version}, {self.entry.get('precision', self.variant)} engine")


_TORCH_DTYPES = {
    "float32": lambda torch: torch.float32,
    "float16": lambda torch: torch.float16,
    "int64": lambda torch: torch.int64,
    "int32": lambda torch: torch.int32,
    "int8": lambda torch: torch.int8,
    "uint8": lambda torch: torch.uint8,
    "bool": lambda torch: torch.bool,
}


__all__ = [
    "ENGINE_FILES", "ENGINE_KEYS", "TIMING_CACHE_FILE", "TensorrtRuntime", "check_version", "engine_entry",
    "engine_mismatch", "find_engine", "gpu_from_nvidia_smi", "parse_version", "require_tensorrt",
]
