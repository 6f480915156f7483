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
Each kind's loader lives in its own module (resnet.py, text_source.py, checkpoint.py,
factory_source.py); this one detects the kind and dispatches. torch is imported by the loaders,
never at module import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import SourceError
from .factory_source import load_factory, looks_like_factory
from .source_model import SourceModel
from .text_source import load_sentence_transformers


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
    if looks_like_factory(text):
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


def _load_resnet(path: str, **options: Any) -> SourceModel:
    from .resnet import load_resnet_mrl

    return load_resnet_mrl(path, **options)


def _load_trained(path: str, **options: Any) -> SourceModel:
    from .checkpoint import load_trained_source

    return load_trained_source(path, **options)
