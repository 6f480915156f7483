"""Model sources: turn what a path holds into a SourceModel the exporter can trace.

Kinds, detected from the path:
  resnet50-mrl           an official RAIVNLab/MRL ResNet-50 checkpoint (.pt state dict)
  sentence-transformers  a sentence-transformers / Hugging Face model directory
  mrl-deploy             a checkpoint directory written by `mrl-deploy train` (mrl_model.json inside)
  factory                `package.module:factory`, a callable returning an nn.Module
torch is imported by the loaders, never at module import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import SourceError


@dataclass
class InputSpec:
    name: str
    dtype: str                     # numpy dtype name: "float32", "int64"
    shape: list[int | str]         # axis names ("batch", "sequence") are dynamic

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class SourceModel:
    """Everything the exporter needs to know about a PyTorch MRL model.

    `module(*inputs)` (inputs in the order of `inputs`) returns the full embedding z (batch x
    full_dim) or `(z, logits)` where `logits` is a list aligned with `head_dims` (MRL: one head per
    nesting dim, fed z[:m]). For MRL-E, `shared_head` is one Linear(full_dim, classes): logits at
    any m are z[:m] @ W[:, :m].T + b. `pre_truncation` ("layer_norm") is applied to z before slicing.
    """

    kind: str
    path: str
    module: Any                                    # torch.nn.Module, in eval mode
    full_dim: int
    nesting_dims: list[int]
    inputs: list[InputSpec]
    head_dims: list[int] = field(default_factory=list)
    shared_head: Any = None                        # torch.nn.Linear or None
    num_classes: int | None = None
    labels: list[str] | None = None
    pre_truncation: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)   # enough to rebuild this source (torch runtime)
    tokenizer_file: Path | None = None             # text models: copied into the artifact
    sample_inputs: Callable[[int, int], dict[str, np.ndarray]] | None = None  # (batch, seed) -> feed

    @property
    def head(self) -> str | None:
        if self.shared_head is not None:
            return "shared"
        return "separate" if self.head_dims else None

    def logit_dims(self, dims: list[int]) -> list[int]:
        """The chosen dims that get a logits output."""
        if self.shared_head is not None:
            return list(dims)
        return [d for d in dims if d in self.head_dims]

    def random_inputs(self, batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
        """Inputs for verification: the source's own sampler, or random values of the right shape."""
        if self.sample_inputs is not None:
            return self.sample_inputs(batch, seed)
        rng = np.random.default_rng(seed)
        feed = {}
        for spec in self.inputs:
            shape = [batch if axis == "batch" else axis for axis in spec.shape]
            if any(isinstance(axis, str) for axis in shape):
                raise SourceError(f"input {spec.name} has a dynamic axis besides batch: the source must give sample_inputs")
            if spec.dtype.startswith("float"):
                feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            else:
                feed[spec.name] = rng.integers(0, 100, size=shape).astype(spec.dtype)
        return feed
