"""The PyTorch reference runtime: rebuilds the exported module from the artifact's source.

The artifact's ONNX graph was verified against exactly this module at export; running it again
here (on CPU or CUDA) is what `compare` measures every other runtime against. Needs the export
extra (torch); the source model must still be where the manifest says (and unchanged).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError, RuntimeUnavailableError, require
from .base import Runtime


class TorchRuntime(Runtime):
    """`torch`: the fp32 PyTorch reference on `device` ("cpu", "cuda", "cuda:1")."""

    name = "torch"
    default_device = "cpu"

    def __init__(self, artifact, *, variant: str = "fp32", threads: int | None = None, device: str | None = None):
        super().__init__(artifact, variant=variant, threads=threads)
        self.requested_device = device or self.default_device
        self.module = None
        self._device = None
        self._torch = None
        self._output_names: list[str] = []

    def _activate(self) -> None:
        if self.variant != "fp32":
            raise InputError(
                f"the torch runtime runs the fp32 PyTorch reference, not the {self.variant} variant: "
                f"use --runtime ort-cpu for {self.variant}"
            )
        torch = require("torch", "export", "the torch runtime (the PyTorch reference)")
        self._torch = torch
        self._device = _torch_device(torch, self.requested_device)
        if self.threads and self._device.type == "cpu":
            torch.set_num_threads(int(self.threads))  # process-wide: torch has no per-module setting
        self.module, self._output_names = build_reference(self.artifact.manifest, self.artifact.path)
        self.module.to(self._device)

    def _infer(self, feed: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        torch = self._torch
        specs = self.artifact.manifest["inputs"]
        missing = [s["name"] for s in specs if s["name"] not in feed]
        if missing:
            raise InputError(f"missing inputs {missing}; the model takes {[s['name'] for s in specs]}")
        args = [
            torch.from_numpy(np.ascontiguousarray(np.asarray(feed[s["name"]]).astype(s["dtype"], copy=False))).to(self._device)
            for s in specs
        ]
        with torch.inference_mode():
            values = self.module(*args)
        wanted = outputs or self._output_names
        unknown = [name for name in wanted if name not in self._output_names]
        if unknown:
            raise InputError(f"unknown outputs {unknown}; the artifact has {self._output_names}")
        result = dict(zip(self._output_names, values))
        return {name: result[name].detach().float().cpu().numpy() for name in wanted}

    def _deactivate(self) -> None:
        self.module = None
        if self._device is not None and self._device.type == "cuda":
            self._torch.cuda.empty_cache()

    @property
    def device(self) -> str:
        if self._device is None:
            return "inactive"
        torch = self._torch
        if self._device.type == "cuda":
            index = self._device.index if self._device.index is not None else torch.cuda.current_device()
            return f"cuda:{index} ({torch.cuda.get_device_name(index)}, torch {torch.__version__})"
        return f"cpu (torch {torch.__version__}, {torch.get_num_threads()} threads)"


class TorchCudaRuntime(TorchRuntime):
    """`torch-cuda`: the PyTorch reference on the first CUDA GPU."""

    name = "torch-cuda"
    default_device = "cuda"


def _torch_device(torch, requested: str):
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown torch device {requested!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if not torch.version.cuda else f"torch built for CUDA {torch.version.cuda}"
            raise RuntimeUnavailableError(f"the torch runtime on {requested} needs a CUDA GPU: none is visible here ({build})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeUnavailableError(f"no {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise InputError(f"unsupported torch device {requested!r}: use cpu, cuda or cuda:N")
    return device


def build_reference(manifest: dict[str, Any], artifact_path: Any = None):
    """(module, output names): the export wrapper around the source model, rebuilt from the
    manifest's source (kind, path, options) at the exported dims, in eval mode on CPU."""
    from ..graph import MRLExportModule, plan_outputs
    from ..sources import load_source, source_sha256

    source = manifest["source"]
    expected = source.get("sha256")
    if expected and source_sha256(source["path"]) not in (None, expected):
        raise ArtifactError(
            f"the source model {source['path']} changed since {artifact_path or 'the artifact'} was exported "
            "(sha256 differs): the torch runtime would not run the exported model; re-export it"
        )
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        # transformers' weight-loading progress bars are noise on a runtime's load
        model = load_source(source["path"], kind=source.get("kind"), **(source.get("options") or {}))
    dims = list(manifest["exported_dims"])
    names = [o["name"] for o in plan_outputs(model, dims)]
    recorded = [o["name"] for o in manifest["outputs"]]
    if names != recorded:
        raise ArtifactError(
            f"the source model now gives outputs {names}, the artifact has {recorded}: re-export it"
        )
    return MRLExportModule(model, dims), names


__all__ = ["TorchRuntime", "TorchCudaRuntime", "build_reference"]
