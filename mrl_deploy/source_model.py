"""What a model source is, once loaded: `SourceModel` (the module, its inputs and heads, what the
manifest records) and `InputSpec`. A leaf: the loaders of every source kind (sources.py's
dispatch, resnet.py, checkpoint.py, text_source.py, factory_source.py) build these, and
the exporter and the torch runtime read them; it imports none of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import SourceError
from .feeds import random_feed


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
    nesting_dims: list[int] | None                 # None: unknown (the model does not declare them)
    inputs: list[InputSpec]
    head_dims: list[int] = field(default_factory=list)
    shared_head: Any = None                        # torch.nn.Linear or None
    num_classes: int | None = None
    labels: list[str] | None = None
    pre_truncation: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)   # enough to rebuild this source (torch runtime)
    tokenizer_file: Path | None = None             # text models: copied into the artifact
    # `mrl-deploy train` checkpoints: the data and split they were trained on (data.split_record)
    training_data: dict[str, Any] | None = None
    origin: dict[str, Any] = field(default_factory=dict)   # a Hub id's {repo_id, revision}
    # (batch, seed, held_out) -> feed; held_out=True draws from inputs the other calls never give
    sample_inputs: Callable[..., dict[str, np.ndarray]] | None = None

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

    def random_inputs(self, batch: int = 4, seed: int = 0, held_out: bool = False) -> dict[str, np.ndarray]:
        """Inputs for verification: the source's own sampler, or random values of the right shape
        (feeds.random_feed). held_out=True: from a separate stream (texts: a separate pool), so
        these inputs never coincide with those of held_out=False (which calibrate int8)."""
        if self.sample_inputs is not None:
            return self.sample_inputs(batch, seed, held_out=held_out)
        return random_feed([spec.to_json() for spec in self.inputs], {"batch": batch}, [seed, 1] if held_out else seed,
                           hint="the source must give sample_inputs")


def unexpected_options(kind: str, options: dict[str, Any]) -> None:
    """Refuse the options a loader of `kind` does not take."""
    if options:
        raise SourceError(f"options {sorted(options)} do not apply to {kind} sources")


def tokenize_texts(model: SourceModel, texts: list[str]) -> dict[str, np.ndarray]:
    """Tokenize with the tokenizer file the artifact will carry, as Artifact.tokenize does."""
    from .tokenization import encode, load_tokenizer

    feed = encode(load_tokenizer(model.tokenizer_file, model.preprocessing), texts)
    return {spec.name: feed[spec.name] for spec in model.inputs}
