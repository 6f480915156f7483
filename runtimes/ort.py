"""ONNX Runtime with the CPU, CUDA and TensorRT execution providers.

ORT falls back to CPU silently when a provider cannot start (onnxruntime-gpu even lists CUDA on a
machine without a GPU), so every session's get_providers() is checked against what was asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError, MissingExtraError, RuntimeUnavailableError, require
from .base import Runtime


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# ORT's graph optimisations that CPU-only sessions skip: its CPU kernel for SkipLayerNormalization
# is slower than the Add + LayerNormalization it replaces (MiniLM, 1 thread, CPU time per run: the
# whole graph 7-8% faster in fp32 without the fusion, 14% in int8; exporters/optimize.py splits
# the op in optimized graphs for the same reason). CUDA sessions keep it.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def session_options(threads: int | None = None):
    ort = require("onnxruntime", "cpu", "the ONNX Runtime runtimes")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # keep ORT's warnings off the user's terminal
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


def create_session(model_path: str | Path, providers: list, threads: int | None = None):
    """An InferenceSession that runs on exactly `providers` (CPU may be appended as the
    fallback for unsupported nodes only when it is listed); raises if ORT silently dropped one."""
    ort = require("onnxruntime", "cpu", "the ONNX Runtime runtimes")
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ArtifactError(f"model file not found: {model_path}")
    wanted = [p if isinstance(p, str) else p[0] for p in providers]
    available = ort.get_available_providers()
    missing = [p for p in wanted if p not in available]
    if missing:
        raise RuntimeUnavailableError(
            f"ONNX Runtime here has no {', '.join(missing)} (available: {', '.join(available)}); "
            "install mrl-deploy[gpu] (onnxruntime-gpu) on a machine with a GPU, or use --runtime ort-cpu"
        )
    gpu_providers = [p for p in wanted if p in GPU_PROVIDERS]
    if gpu_providers:
        from .availability import gpu_present

        if not gpu_present():  # onnxruntime-gpu lists them anyway, then falls back to CPU
            raise RuntimeUnavailableError(
                f"{', '.join(gpu_providers)} needs an NVIDIA GPU and none is visible here; use --runtime ort-cpu"
            )
    disabled = list(CPU_DISABLED_OPTIMIZERS) if wanted == ["CPUExecutionProvider"] else []
    try:
        session = ort.InferenceSession(str(model_path), sess_options=session_options(threads), providers=providers,
                                       disabled_optimizers=disabled)
    except Exception as exc:  # ORT raises its own exception types for corrupt or invalid graphs
        if any(tag in type(exc).__name__ for tag in ("InvalidProtobuf", "InvalidGraph", "Fail", "NoSuchFile")):
            raise ArtifactError(f"cannot load {model_path}: {str(exc).splitlines()[0][:300]}") from None
        raise
    got = session.get_providers()
    dropped = [p for p in wanted if p not in got]
    if dropped:
        raise RuntimeUnavailableError(
            f"ONNX Runtime could not start {', '.join(dropped)} (it fell back to {', '.join(got)}): "
            "check the GPU, CUDA/cuDNN and TensorRT libraries, or use --runtime ort-cpu"
        )
    return session


class OrtRuntime(Runtime):
    name = "ort"
    providers: list = ["CPUExecutionProvider"]
    extra = "cpu"
    # Where IO binding puts the outputs (None: plain session.run). On CUDA the outputs stay on
    # the GPU until the requested ones are copied back, and unrequested ones are never fetched.
    binding_device: str | None = None

    def __init__(self, artifact, *, variant: str = "fp32", threads: int | None = None,
                 model_path: str | Path | None = None, io_binding: bool | None = None):
        super().__init__(artifact, variant=variant, threads=threads)
        self.model_path = Path(model_path) if model_path else artifact.model_file(variant)
        self.session = None
        if io_binding is not None:
            self.binding_device = (self.binding_device or "cpu") if io_binding else None

    def provider_list(self) -> list:
        return list(self.providers)

    def _activate(self) -> None:
        self.session = create_session(self.model_path, self.provider_list(), self.threads)
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}

    def _infer(self, feed, outputs):
        feed = {name: _as_ort_type(value, self._input_types.get(name)) for name, value in feed.items()}
        names = outputs or [o.name for o in self.session.get_outputs()]
        values = self._run_bound(names, feed) if self.binding_device else self.session.run(names, feed)
        return {name: np.asarray(value, dtype=np.float32) if value.dtype == np.float16 else value for name, value in zip(names, values)}

    def _run_bound(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        for name in names:
            binding.bind_output(name, self.binding_device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def _deactivate(self) -> None:
        self.session = None

    @property
    def device(self) -> str:
        return ",".join(self.session.get_providers()) if self.session else "inactive"


class OrtCpuRuntime(OrtRuntime):
    name = "ort-cpu"
    providers = ["CPUExecutionProvider"]


class OrtCudaRuntime(OrtRuntime):
    name = "ort-cuda"
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    extra = "gpu"
    binding_device = "cuda"


class OrtTensorrtRuntime(OrtRuntime):
    name = "ort-trt"
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    extra = "gpu"
    binding_device = "cuda"

    def provider_list(self) -> list:
        cache = engine_cache_dir(self.artifact, self.variant, self.model_path)
        cache.mkdir(parents=True, exist_ok=True)  # the provider creates the last level only
        fp16 = self.variant == "fp16"
        return [
            ("TensorrtExecutionProvider", {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache), "trt_fp16_enable": fp16}),
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]


def engine_cache_dir(artifact, variant: str, model_path: Path) -> Path:
    """Where the TensorRT provider caches the engines it builds for this model file: a per-user
    cache directory keyed by the file's sha256, never the artifact itself. Inside the artifact
    the cache would be swept into (or fail) its checksums, could not be written where artifacts
    are read-only (installed, shared, mounted into a server), and would be shipped with the
    artifact to machines whose GPU or TensorRT cannot use it. Keyed by content, a re-exported
    model never meets a stale engine, and copies of one artifact share theirs."""
    from ..cache import cache_dir
    from ..manifest import sha256_file

    models = artifact.manifest.get("models", {})
    name = models.get(variant, {}).get("file")
    digest = artifact.manifest.get("files", {}).get(name) if name else None
    if digest is None or Path(model_path).name != name:  # a model path given by hand: hash the file
        digest = sha256_file(model_path)
    return cache_dir() / "ort-trt" / digest[:32]


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
}


def _as_ort_type(value, ort_type):
    dtype = _ORT_TYPES.get(ort_type)
    value = np.asarray(value)
    if dtype is not None and value.dtype != dtype:
        value = value.astype(dtype)
    return np.ascontiguousarray(value)


__all__ = ["OrtCpuRuntime", "OrtCudaRuntime", "OrtTensorrtRuntime", "create_session", "MissingExtraError"]
