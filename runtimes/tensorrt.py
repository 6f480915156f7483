"""Native TensorRT: run a serialized engine (model.plan) built by exporters/tensorrt.py.

An engine is tied to the TensorRT version and the GPU it was built on: the manifest records
both (mrl_deploy/engines.py reads them), and loading it elsewhere is a clear error (or, given
`rebuild` (exporters.tensorrt.rebuild_engine, as `compare --rebuild` passes it), a rebuild from
the ONNX graph in the artifact: the runtime never imports the exporter, which runs it to verify). Runs with the TensorRT 10/11 API: deserialize_cuda_engine,
set_input_shape for the dynamic batch, set_tensor_address, execute_async_v3.

Device buffers and the CUDA stream come from torch.cuda: of the Python CUDA libraries, torch is the
one most likely installed on a GPU box (cuda-python and pycuda rarely are). TensorRT and torch
are imported only when the runtime activates; a missing one, or a missing GPU, is one line.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from ..engines import check_version, engine_entry, engine_mismatch
from ..errors import ArtifactError, InputError, MissingExtraError, MRLDeployError, RuntimeUnavailableError
from .base import Runtime


# --- TensorRT and CUDA torch, imported when needed --------------------------------------------

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

    def __init__(self, artifact, *, variant: str = "fp32", threads: int | None = None,
                 rebuild: Callable[..., Any] | None = None, device_index: int = 0):
        super().__init__(artifact, variant=variant, threads=threads)
        if rebuild is not None and not callable(rebuild):
            raise InputError("rebuild takes the function that rebuilds a stale engine "
                             "(mrl_deploy.exporters.tensorrt.rebuild_engine), or None to refuse stale engines")
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
        if errors and self.rebuild is not None:
            self.artifact.manifest = self.rebuild(self.artifact, self.variant).manifest
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


__all__ = ["TensorrtRuntime", "gpu_from_torch", "require_cuda_torch", "require_tensorrt"]
