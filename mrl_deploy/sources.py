"""Model sources: turn what a path holds into a SourceModel the exporter can trace.

Kinds, detected from the path:
  resnet50-mrl           an official RAIVNLab/MRL ResNet-50 checkpoint (.pt state dict)
  sentence-transformers  a sentence-transformers / Hugging Face model directory
  mrl-deploy             a checkpoint directory written by `mrl-deploy train` (mrl_model.json inside)
  factory                `package.module:factory`, a callable returning an nn.Module
A Hugging Face Hub id (`org/name`) that is not a local path is resolved to its snapshot directory
in the local Hugging Face cache (huggingface_hub.snapshot_download: downloaded where the machine is
online and HF_HUB_OFFLINE is not set); the repo id and the snapshot's commit become the source's
`origin`, recorded in the manifest.
torch is imported by the loaders, never at module import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import SourceError, check_number
from .feeds import random_feed, sample_texts


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


# --- detection ------------------------------------------------------------------------------

SOURCE_KINDS = ("resnet50-mrl", "sentence-transformers", "mrl-deploy", "factory")


def detect_kind(spec: str | Path) -> str:
    """Which loader a SOURCE string needs, from what the path holds."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        if (path / "mrl_model.json").is_file():
            return "mrl-deploy"
        if any((path / name).is_file() for name in ("modules.json", "config_sentence_transformers.json", "config.json")):
            return "sentence-transformers"
        raise SourceError(
            f"{path} is a directory but holds no mrl_model.json (mrl-deploy train checkpoint) and no "
            "modules.json / config.json (sentence-transformers or Hugging Face model)"
        )
    if path.is_file():
        if path.suffix.lower() in (".pt", ".pth", ".tar", ".ckpt", ".bin"):
            return "resnet50-mrl"
        raise SourceError(f"{path}: unsupported source file; expected an MRL ResNet-50 checkpoint (.pt/.pth)")
    if _looks_like_factory(text):
        return "factory"
    raise SourceError(f"source not found: {text} (a file, a model directory, or package.module:factory)")


def load_source(spec: str | Path, kind: str | None = None, **options: Any) -> SourceModel:
    """Load SOURCE as a SourceModel. `options` depend on the kind (nesting_dims, input_shape,
    pre_truncation, trust_remote_code, max_seq_length); unknown ones are refused."""
    origin: dict[str, Any] = {}
    if kind in (None, "sentence-transformers", "mrl-deploy") and is_hub_id(spec) and not Path(spec).exists():
        spec, origin = resolve_hub_id(str(spec))
    kind = kind or detect_kind(spec)
    options = {k: v for k, v in options.items() if v is not None}
    loaders = {
        "resnet50-mrl": _load_resnet,
        "sentence-transformers": load_sentence_transformers,
        "mrl-deploy": _load_trained,
        "factory": load_factory,
    }
    if kind not in loaders:
        raise SourceError(f"unknown source kind {kind!r}; known: {', '.join(SOURCE_KINDS)}")
    model = loaders[kind](str(spec), **options)
    model.origin = origin
    return model


# --- Hugging Face Hub ids ----------------------------------------------------------------------

def is_hub_id(spec: str | Path) -> bool:
    """`org/name` the way model cards spell it: one slash, no other path syntax."""
    import re

    return isinstance(spec, str) and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", spec) is not None


# weight formats the exporter never reads: a download skips them
HUB_IGNORE = ["*.onnx", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "*.tflite", "coreml/*", "tf_model*",
              "flax_model*", "rust_model*"]


def resolve_hub_id(repo_id: str) -> tuple[Path, dict[str, Any]]:
    """A Hub id's snapshot directory through huggingface_hub's cache (it honours HF_HUB_OFFLINE
    and HF_HUB_CACHE), and {repo_id, revision: the snapshot's commit hash}."""
    from .errors import require

    hub = require("huggingface_hub", "text", "Hugging Face Hub ids")
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        folder = Path(hub.snapshot_download(repo_id, ignore_patterns=HUB_IGNORE))
    except LocalEntryNotFoundError:
        offline = " (HF_HUB_OFFLINE is set)" if hub.constants.HF_HUB_OFFLINE else ""
        raise SourceError(
            f"source not found: {repo_id} is not a local path, and as a Hugging Face Hub id it is not in the "
            f"local cache {hub.constants.HF_HUB_CACHE}{offline}: fetch it where there is network with "
            f"`hf download {repo_id}` (and copy the cache, or point HF_HUB_CACHE at it), or give the model's directory"
        ) from None
    except (OSError, ValueError) as exc:   # not on the Hub, gated, bad id, the Hub unreachable
        message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise SourceError(f"cannot resolve the Hugging Face Hub id {repo_id}: {message}") from None
    return folder, {"repo_id": repo_id, "revision": folder.name}


def source_sha256(spec: str | Path) -> str | None:
    """sha256 of a file source; for a directory, of its files' names and hashes; None for factories."""
    import hashlib

    from .manifest import sha256_file

    path = Path(spec)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for item in sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts):
            digest.update(str(item.relative_to(path)).encode())
            digest.update(sha256_file(item).encode())
        return digest.hexdigest()
    return None


def _unexpected(kind: str, options: dict[str, Any]) -> None:
    if options:
        raise SourceError(f"options {sorted(options)} do not apply to {kind} sources")


def _load_resnet(path: str, **options: Any) -> SourceModel:
    from .resnet import load_resnet_mrl

    return load_resnet_mrl(path, **options)


def _load_trained(path: str, **options: Any) -> SourceModel:
    from .train import load_trained_source

    return load_trained_source(path, **options)


# --- package.module:factory -----------------------------------------------------------------

def _looks_like_factory(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep) and bool(attr) and all(part.isidentifier() for part in module.split(".") + attr.split("."))


def load_factory(spec: str, nesting_dims: Any = None, input_shape: Any = None, input_dtype: str = "float32",
                 **options: Any) -> SourceModel:
    """`package.module:factory`: factory() returns an nn.Module whose forward(x) returns the full
    embedding, or (embedding, [logits per nesting dim])."""
    import importlib
    import os
    import sys

    import torch

    from .dims import check_nesting_dims

    _unexpected("factory", options)
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a factory in the user's working directory
    try:
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"cannot import factory {spec}: {exc}") from None
    if not callable(target):
        raise SourceError(f"{spec} is not callable")
    module = target()
    if not isinstance(module, torch.nn.Module):
        raise SourceError(f"{spec}() returned {type(module).__name__}, not a torch.nn.Module")
    module.eval()
    shape = _parse_shape(input_shape)
    spec_in = InputSpec("x", input_dtype, ["batch", *shape])
    probe = SourceModel("factory", spec, module, 0, [], [spec_in])
    feed = probe.random_inputs(batch=2)
    with torch.no_grad():
        out = module(torch.from_numpy(feed["x"]))
    z, logits = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        raise SourceError(f"{spec}: forward must return a (batch, dim) embedding, got {getattr(z, 'shape', type(z).__name__)}")
    full_dim = int(z.shape[1])
    dims = check_nesting_dims(nesting_dims, full_dim, spec)   # not given: unknown, never guessed
    head_dims: list[int] = []
    num_classes = None
    if logits is not None:
        if dims is None:
            raise SourceError(f"{spec}: forward returns logits, one per nesting dim: pass --nesting-dims "
                              "(the dims its heads read, e.g. 8,16,32)")
        if not isinstance(logits, (list, tuple)) or len(logits) != len(dims):
            raise SourceError(
                f"{spec}: forward returned {len(logits) if isinstance(logits, (list, tuple)) else 'non-list'} "
                f"logits; expected a list with one tensor per nesting dim {dims} (pass --nesting-dims)"
            )
        head_dims = dims
        num_classes = int(logits[0].shape[-1])
    return SourceModel(
        kind="factory", path=spec, module=module, full_dim=full_dim, nesting_dims=dims, inputs=[spec_in],
        head_dims=head_dims, num_classes=num_classes,
        options={"nesting_dims": dims, "input_shape": shape, "input_dtype": input_dtype},
    )


def _parse_shape(value: Any) -> list[int]:
    if value is None:
        raise SourceError("factory sources need --input-shape (one sample's shape without the batch, e.g. 3,224,224)")
    parts = value.replace("x", ",").split(",") if isinstance(value, str) else list(value)
    try:
        shape = [int(p) for p in parts if str(p).strip()]
    except ValueError:
        raise SourceError(f"--input-shape must be integers like 3,224,224, got {value!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise SourceError(f"--input-shape must be positive integers, got {value!r}")
    return shape


# --- sentence-transformers / Hugging Face directories --------------------------------------

# Models known to need a step before truncation, matched against the path and _name_or_path.
KNOWN_PRE_TRUNCATION = {"nomic-embed-text-v1.5": "layer_norm"}
MATRYOSHKA_KEYS = ("matryoshka_dims", "matryoshka_dimensions", "nesting_dims")
def _st_module(st: Any):
    import torch

    class _Pipeline(torch.nn.Module):
        """The whole sentence-transformers pipeline (Transformer, Pooling, Dense..., Normalize)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            features = self.model({"input_ids": input_ids, "attention_mask": attention_mask})
            return features["sentence_embedding"]

    return _Pipeline(st).eval()


def load_sentence_transformers(path: str, nesting_dims: Any = None, pre_truncation: str | None = None,
                               trust_remote_code: bool = False, max_seq_length: int | None = None,
                               **options: Any) -> SourceModel:
    """A sentence-transformers (or plain Hugging Face: mean pooling is added) model directory,
    exported whole so the graph equals encode(truncate_dim=m, normalize_embeddings=True)."""
    import json
    import os

    from .dims import check_nesting_dims
    from .errors import require

    _unexpected("sentence-transformers", options)
    check_number(max_seq_length, "max_seq_length", 1, integer=True, optional=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network at run time
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    st_lib = require("sentence_transformers", "text", "exporting sentence-transformers models")
    directory = Path(path)
    try:
        st = st_lib.SentenceTransformer(str(directory), device="cpu", trust_remote_code=trust_remote_code,
                                        local_files_only=True)
    except Exception as exc:
        message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        if "trust_remote_code" in str(exc):
            message += " (the model has custom code: pass --trust-remote-code if you trust it)"
        raise SourceError(f"cannot load sentence-transformers model {directory}: {message}") from None
    if max_seq_length is not None:
        st.max_seq_length = int(max_seq_length)
    st.eval()
    configs = {}
    for name in ("config_sentence_transformers.json", "config.json", "mrl_deploy.json"):
        try:
            configs.update(json.loads((directory / name).read_text()))
        except (OSError, ValueError):
            pass
    full_dim = int((getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension)())
    # Which prefixes were trained: --nesting-dims, else the config, else the model card's
    # MatryoshkaLoss; else unknown (recorded as null), never guessed.
    if nesting_dims is not None:
        dims = check_nesting_dims(nesting_dims, full_dim, "--nesting-dims")
    elif (key := next((k for k in MATRYOSHKA_KEYS if configs.get(k)), None)) is not None:
        dims = check_nesting_dims(configs[key], full_dim, f"{directory}: the config's {key}")
    else:
        dims = check_nesting_dims(card_matryoshka_dims(directory), full_dim,
                                  f"{directory / 'README.md'}: the MatryoshkaLoss matryoshka_dims")
    if pre_truncation is None:
        pre_truncation = configs.get("pre_truncation") or next(
            (step for name, step in KNOWN_PRE_TRUNCATION.items()
             if name in str(directory) or name in str(configs.get("_name_or_path", ""))), None)
    if pre_truncation not in (None, "none", "layer_norm"):
        raise SourceError(f"unknown pre-truncation step {pre_truncation!r}: use layer_norm or none")
    pre_truncation = None if pre_truncation == "none" else pre_truncation
    tokenizer = st.tokenizer
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise SourceError(f"{directory} has no tokenizer.json and its tokenizer is not a fast tokenizer")
        import tempfile

        tokenizer_file = Path(tempfile.mkdtemp(prefix="mrl-tok-")) / "tokenizer.json"
        backend.save(str(tokenizer_file))
    preprocessing = {
        "tokenizer": "tokenizer.json",
        "max_seq_length": int(st.max_seq_length),
        "pad_token_id": int(tokenizer.pad_token_id or 0),
        "pad_token": str(tokenizer.pad_token or "[PAD]"),
    }
    model = SourceModel(
        kind="sentence-transformers", path=str(directory), module=_st_module(st), full_dim=full_dim,
        nesting_dims=dims,
        inputs=[InputSpec("input_ids", "int64", ["batch", "sequence"]),
                InputSpec("attention_mask", "int64", ["batch", "sequence"])],
        pre_truncation=pre_truncation, preprocessing=preprocessing, tokenizer_file=tokenizer_file,
        options={"nesting_dims": dims, "pre_truncation": pre_truncation or "none",
                 "trust_remote_code": trust_remote_code, "max_seq_length": int(st.max_seq_length)},
    )
    model.sample_inputs = lambda batch, seed, held_out=False: tokenize_texts(model, sample_texts(batch, seed, held_out))
    return model


def card_matryoshka_dims(directory: Path) -> list[int] | None:
    """The matryoshka_dims of a MatryoshkaLoss in the model's README.md: sentence-transformers
    writes each training loss's configuration into the card as a ```json block (the "Loss:
    MatryoshkaLoss with these parameters" line of the training section). Several losses: the
    dims any of them trained. None when the card names none."""
    import json
    import re
    import textwrap

    try:
        card = (directory / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found: set[int] = set()
    for block in re.findall(r"```json[ \t]*\n(.*?)```", card, flags=re.DOTALL):
        try:
            config = json.loads(textwrap.dedent(block))
        except ValueError:
            continue
        dims = config.get("matryoshka_dims") if isinstance(config, dict) else None
        if isinstance(dims, list) and dims and all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            found.update(dims)
    return sorted(found) or None


def tokenize_texts(model: SourceModel, texts: list[str]) -> dict[str, np.ndarray]:
    """Tokenize with the tokenizer file the artifact will carry, as Artifact.tokenize does."""
    from .tokenization import encode, load_tokenizer

    feed = encode(load_tokenizer(model.tokenizer_file, model.preprocessing), texts)
    return {spec.name: feed[spec.name] for spec in model.inputs}
