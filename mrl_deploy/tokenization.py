"""Texts -> token ids: the one tokenization path of text artifacts.

`Artifact.tokenize`, the exporter's verification inputs and the Triton tokenizer model all call
these two functions. `mrl-deploy triton` copies this file verbatim beside the tokenizer model's
model.py, so the code Triton runs is the code the tests run: it must stay importable on its own
(numpy and tokenizers only, no imports from the package).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np


def load_tokenizer(path: str | os.PathLike, preprocessing: Mapping[str, Any]):
    """The tokenizers.Tokenizer in `path` (a tokenizer.json) set up as the manifest's
    `preprocessing` says: truncation to max_seq_length, padding to the longest text of a batch
    with the pad id / token."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=int(preprocessing["max_seq_length"]))
    tokenizer.enable_padding(pad_id=int(preprocessing.get("pad_token_id", 0)),
                             pad_token=str(preprocessing.get("pad_token", "[PAD]")))
    return tokenizer


def encode(tokenizer, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """input_ids, attention_mask and token_type_ids (int64, batch x longest) of `texts`; a model
    takes the ones it names."""
    encodings = tokenizer.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def overflowing(tokenizer, texts: Sequence[str]) -> list[int]:
    """Indices of the `texts` longer than the tokenizer's max_seq_length (the ones `encode` cuts
    short): for callers that must refuse such texts instead (TEI's truncate=false)."""
    return [i for i, e in enumerate(tokenizer.encode_batch(list(texts))) if e.overflowing]
