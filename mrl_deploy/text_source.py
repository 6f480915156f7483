"""Sentence-transformers and plain Hugging Face model directories as sources: the whole pipeline
(tokens -> transformer -> pooling -> dense -> normalize) exported so the graph equals
encode(truncate_dim=m, normalize_embeddings=True). torch is imported when one is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import SourceError, check_number
from .feeds import sample_texts
from .source_model import InputSpec, SourceModel, tokenize_texts, unexpected_options


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

    unexpected_options("sentence-transformers", options)
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
