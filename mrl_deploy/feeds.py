"""Inputs made up to check and time a model: random tensors from input specs, sample sentences.

    feed = random_feed(artifact.manifest["inputs"], {"batch": 8}, seed=0)
    feed = artifact_feed(artifact, batch=8)          # sample sentences, tokenized, for a text model

The one home of these inputs: export verification (SourceModel.random_inputs), `mrl-deploy
compare`, TensorRT engine verification, `bench` and the Triton repository check all draw from
here. numpy only.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from .errors import InputError, check_number

SAMPLE_TEXTS = [
    "Matryoshka embeddings nest coarse-to-fine information in their prefixes.",
    "A short query.",
    "The central bank raised interest rates by a quarter point on Thursday, citing persistent inflation "
    "in services and a labour market that remains tighter than policymakers had expected.",
    "Striker scores twice as the home side comes back from two goals down.",
    "New smartphone chips promise longer battery life.",
    "Parliament debates the budget.",
]
# Never shown to int8 calibration: the exporter checks int8's bounds on these (and on held-out
# rows of --sample).
HELD_OUT_TEXTS = [
    "How do nested embeddings let one model serve several vector sizes?",
    "weather tomorrow",
    "The museum reopened its east wing after a two-year renovation that restored the original "
    "skylights, added climate control for the manuscripts and doubled the space for visiting exhibitions.",
    "Coach praises young defender after a clean sheet away from home.",
    "Researchers report a cheaper catalyst for splitting water.",
    "Shares fell sharply.",
]


def sample_texts(batch: int, seed: int = 0, held_out: bool = False) -> list[str]:
    """`batch` sentences of different lengths (padding and masks get exercised), in a seeded
    order; held_out=True draws from HELD_OUT_TEXTS, which the other pool never repeats."""
    pool = HELD_OUT_TEXTS if held_out else SAMPLE_TEXTS
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[order[i % len(order)]] for i in range(batch)]


def random_feed(specs: Iterable[Mapping[str, Any]], sizes: Mapping[str, int], seed: Any = 0, *,
                int_high: int = 100, hint: str = "pass real inputs") -> dict[str, np.ndarray]:
    """One batch from input specs ({name, dtype, shape}, shape entries ints or axis names, as the
    manifest's inputs): every named axis takes its length from `sizes` ("batch": 8); floats are
    standard normal, an attention mask all ones, token types zeros, booleans true, other integers
    uniform in [0, int_high). `seed` seeds numpy's generator (an int or a sequence of ints). An
    axis `sizes` does not name is an InputError ending with `hint`."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        name, dtype = spec["name"], spec["dtype"]
        unknown = [axis for axis in spec["shape"] if isinstance(axis, str) and axis not in sizes]
        if unknown:
            raise InputError(f"input {name} has a dynamic axis {unknown[0]!r} besides batch: {hint}")
        shape = [sizes[axis] if isinstance(axis, str) else int(axis) for axis in spec["shape"]]
        if dtype.startswith("float"):
            feed[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            feed[name] = np.ones(shape, dtype=bool)
        elif name == "attention_mask":
            feed[name] = np.ones(shape, dtype=dtype)
        elif name == "token_type_ids":
            feed[name] = np.zeros(shape, dtype=dtype)
        else:
            feed[name] = rng.integers(0, int_high, size=shape).astype(dtype)
    return feed


def artifact_feed(artifact: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One batch for an Artifact: sample sentences tokenized as the artifact tokenizes (text
    models), else random tensors from the manifest's input specs."""
    check_number(batch, "batch", 1, integer=True)
    if artifact.is_text:
        return artifact.tokenize(sample_texts(batch, seed))
    return random_feed(artifact.manifest["inputs"], {"batch": batch}, seed, hint="pass --inputs with real inputs")
