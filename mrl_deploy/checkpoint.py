"""The checkpoint `mrl-deploy train` writes, and reading it back.

Checkpoint directory (what `mrl-deploy export` takes, detected by mrl_model.json):
  mrl_model.json     format "mrl-deploy-checkpoint", format_version 1; architecture {name,
                     hyperparameters}; full_dim; nesting_dims; efficient; num_classes; labels;
                     input {name, dtype, shape}; preprocessing; encoder (text adapters: kind,
                     path, package, max_seq_length, dim); data (name, kind, samples, fingerprint,
                     seed, val_fraction, test_fraction: data.split_record; split sizes);
                     training (loss, epochs, batch_size, lr, weight_decay, dim_weights, seed,
                     threads, seconds); accuracy {mrl, baseline_truncated, baseline_probe, encoder_probe}
                     per dim (validation split, %).
  model.safetensors  the MRLNet's weights (encoder or adapter, and heads; a text adapter's frozen
                     encoder is not copied: it is loaded from encoder.path).
`load_trained_source(path)` rebuilds it as a SourceModel (kind "mrl-deploy"); for text adapters
the whole pipeline (tokens -> encoder -> adapter), so an export holds everything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .dims import parse_dims
from .errors import DataError, SourceError, check_number
from .encoder_cache import DEFAULT_ENCODER_PACKAGE, DEFAULT_MAX_SEQ_LENGTH, default_encoder_path

CHECKPOINT_FORMAT = "mrl-deploy-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_JSON = "mrl_model.json"
WEIGHTS_FILE = "model.safetensors"
# What an exported artifact records about the checkpoint's training data (data.split_record)
TRAINING_DATA_KEYS = ("name", "kind", "samples", "fingerprint", "seed", "val_fraction", "test_fraction")


def save_checkpoint(net, meta: dict[str, Any], output: str | Path) -> Path:
    """Write mrl_model.json + model.safetensors into `output` atomically (manifest.staged_directory:
    an existing checkpoint there is replaced only once the new one is complete, and restored if
    that fails); any other non-empty directory is refused."""
    from safetensors.torch import save_file

    from .manifest import staged_directory, write_json_atomic

    target = Path(output).resolve()
    if target.is_dir() and any(target.iterdir()) and not is_trained_checkpoint(target):
        raise DataError(f"{target} exists and is not an mrl-deploy checkpoint: refusing to overwrite it")
    with staged_directory(target, marker=CHECKPOINT_JSON, what="an mrl-deploy checkpoint", error=DataError) as staging:
        state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
        write_json_atomic(staging / CHECKPOINT_JSON, meta)
    return target


def is_trained_checkpoint(path: str | Path) -> bool:
    """A directory written by `mrl-deploy train` (holds mrl_model.json of our format)."""
    meta_path = Path(path) / CHECKPOINT_JSON
    if not meta_path.is_file():
        return False
    try:
        return json.loads(meta_path.read_text()).get("format") == CHECKPOINT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / CHECKPOINT_JSON
    if not meta_path.is_file():
        raise SourceError(f"{path} is not an mrl-deploy checkpoint: no {CHECKPOINT_JSON}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise SourceError(f"{meta_path} is not an mrl-deploy checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if int(meta.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise SourceError(f"{path} has checkpoint format {meta['format_version']}; this mrl-deploy reads up to "
                          f"{CHECKPOINT_VERSION}: upgrade mrl-deploy")
    if not (path / WEIGHTS_FILE).is_file():
        raise SourceError(f"{path}: checkpoint weights {WEIGHTS_FILE} missing")
    return meta


def load_checkpoint(path: str | Path):
    """(MRLNet in eval mode, mrl_model.json as a dict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .nets import build_net

    meta = read_checkpoint(path)
    input_shape = [meta["encoder"]["dim"]] if meta.get("encoder") else meta["input"]["shape"][1:]
    try:
        net = build_net(meta["architecture"], input_shape, meta["full_dim"], meta["nesting_dims"],
                        meta["num_classes"], meta.get("efficient", False))
        state = load_file(str(Path(path) / WEIGHTS_FILE))
        net.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError, SafetensorError) as exc:
        raise SourceError(f"{path}: cannot rebuild the trained model: {str(exc).splitlines()[0][:300]}") from None
    return net.eval(), meta


def load_trained_source(path: str | Path, max_seq_length: int | None = None, encoder: str | Path | None = None,
                        nesting_dims: Any = None, pre_truncation: str | None = None, **options: Any):
    """An `mrl-deploy train` checkpoint as a SourceModel (kind "mrl-deploy"). Text adapters come
    back whole: tokens -> frozen sentence-transformers pipeline -> adapter (+ heads)."""
    from .source_model import InputSpec, SourceModel

    if options:
        raise SourceError(f"options {sorted(options)} do not apply to mrl-deploy checkpoints")
    net, meta = load_checkpoint(path)
    if nesting_dims is not None and parse_dims(nesting_dims) != meta["nesting_dims"]:
        raise SourceError(f"{path} was trained at nesting dims {meta['nesting_dims']}; they cannot be changed at export")
    if pre_truncation not in (None, "none"):
        raise SourceError("trained checkpoints take no pre-truncation step")
    efficient = bool(meta.get("efficient"))
    data = meta.get("data") or {}
    common = dict(
        kind="mrl-deploy", path=str(path), full_dim=int(meta["full_dim"]), nesting_dims=list(meta["nesting_dims"]),
        head_dims=[] if efficient else list(meta["nesting_dims"]),
        shared_head=net.heads.shared if efficient else None,
        num_classes=int(meta["num_classes"]), labels=meta.get("labels"),
        training_data={k: data[k] for k in TRAINING_DATA_KEYS if k in data} if data.get("name") else None,
    )
    if not meta.get("encoder"):
        if max_seq_length is not None or encoder is not None:
            raise SourceError("--max-seq-length and encoder options apply to text adapters only")
        spec = meta["input"]
        return SourceModel(module=net, inputs=[InputSpec(spec.get("name", "x"), spec.get("dtype", "float32"), spec["shape"])],
                           preprocessing=dict(meta.get("preprocessing") or {}), options={}, **common)
    return _text_source(net, meta, path, max_seq_length, encoder, common)


def _text_source(net, meta, path, max_seq_length, encoder, common):
    from .nets import TextPipeline
    from .source_model import SourceModel
    from .text_source import load_sentence_transformers

    info = meta["encoder"]
    encoder_path = Path(encoder) if encoder else Path(info["path"])
    if not encoder_path.is_dir() and not encoder and info.get("package") == DEFAULT_ENCODER_PACKAGE:
        encoder_path = default_encoder_path()  # the checkpoint moved to another environment
    if not encoder_path.is_dir():
        raise SourceError(f"{path}: the adapter's encoder {encoder_path} is not there (pass encoder=PATH)")
    check_number(max_seq_length, "max_seq_length", 1, integer=True, optional=True)
    length = int(max_seq_length if max_seq_length is not None else info.get("max_seq_length", DEFAULT_MAX_SEQ_LENGTH))
    base = load_sentence_transformers(str(encoder_path), max_seq_length=length)
    if base.full_dim != info["dim"]:
        raise SourceError(f"{path}: the adapter takes {info['dim']}-d embeddings but {encoder_path} gives {base.full_dim}")
    model = SourceModel(
        module=TextPipeline(base.module, net).eval(), inputs=base.inputs, pre_truncation=None,
        preprocessing=dict(base.preprocessing), tokenizer_file=base.tokenizer_file,
        sample_inputs=base.sample_inputs, options={"max_seq_length": length, "encoder": str(encoder_path)},
        **common,
    )
    return model
