"""MRL training: the Matryoshka loss, a seeded training loop, the baselines, data -> checkpoint.

    from mrl_deploy.train import train
    result = train("digits", "checkpoints/digits")            # MRL, nesting dims 8, 16, 32, 64
    result["accuracy"]["mrl"]                                  # {dim: validation accuracy %}

The loss (Kusupati et al. 2022): sum over m in the nesting dims of c_m * CE(W^(m) z[:m], y), with
one head per m (MRL) or one shared head sliced to its first m columns (MRL-E, `efficient=True`).
The baseline is the same network trained with the loss at the full dim only, evaluated
  truncated  by its own head on the prefix: z[:m] @ W[:, :m].T + b (what truncating a model that
             was not MRL-trained gives), and
  probe      by a linear head trained per m on its frozen, re-normalised prefix z[:m] (the
             cheapest stand-in for the paper's fixed-feature baselines);
for text adapters also `encoder_probe`: the same probe on the plain encoder's truncated embedding.

The checkpoint it writes: checkpoint.py; the frozen encoder's cached embeddings (text
adapters): encoder_cache.py; the progress display and accuracy table: training_ui.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from .data import Dataset, load_dataset, split_dataset, split_record
from .dims import parse_dims
from .encoder_cache import DEFAULT_ENCODER_PACKAGE, DEFAULT_MAX_SEQ_LENGTH, Progress, default_encoder_path, encode_texts
from .errors import DataError, DimsError, check_number, require

DEFAULT_FULL_DIM = 64
# Per architecture: small data, small nets; these train digits in seconds on 2 cores.
EPOCHS = {"cnn": 40, "mlp": 60, "adapter": 60}
LEARNING_RATE = {"cnn": 2e-3, "mlp": 1e-3, "adapter": 1e-3}


# --- nesting dims -------------------------------------------------------------------------------

def training_nesting_dims(full_dim: int, smallest: int = 8) -> list[int]:
    """Powers of two from `smallest` below the full dim, plus the full dim: 64 -> 8..64 (halving
    from the full dim), 384 -> 8, 16, ..., 256, 384 (so 32 and 64 exist for a 384-d encoder)."""
    dims = []
    m = smallest
    while m < full_dim:
        dims.append(m)
        m *= 2
    return dims + [full_dim]


def _check_nesting(nesting_dims: Any, full_dim: int) -> list[int]:
    dims = parse_dims(nesting_dims) if nesting_dims not in (None, "", []) else training_nesting_dims(full_dim)
    if not dims:
        raise DimsError("no nesting dims given")
    if dims[-1] > full_dim:
        raise DimsError(f"nesting dims {dims} exceed the embedding dim {full_dim}")
    return dims


def _check_weights(dim_weights: Any, dims: list[int]) -> list[float]:
    if dim_weights in (None, "", []):
        return [1.0] * len(dims)
    if isinstance(dim_weights, str):
        dim_weights = [w for w in dim_weights.split(",") if w.strip()]
    try:
        weights = [float(w) for w in dim_weights]
    except (TypeError, ValueError):
        raise DimsError(f"dim weights must be numbers, got {dim_weights!r}") from None
    if len(weights) != len(dims):
        raise DimsError(f"{len(weights)} dim weights for {len(dims)} nesting dims {dims}")
    if any(not np.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise DimsError(f"dim weights must be >= 0 and not all zero, got {weights}")
    return weights


# --- the loss -------------------------------------------------------------------------------

def mrl_loss(logits: Sequence[Any], y: Any, weights: Sequence[float] | None = None):
    """sum_m c_m * CE(logits_m, y): `logits` holds one tensor per nesting dim (from separate heads
    for MRL, or one shared head sliced to m columns for MRL-E: see nets.MRLHeads)."""
    import torch.nn.functional as F

    weights = [1.0] * len(logits) if weights is None else list(weights)
    if len(weights) != len(logits):
        raise ValueError(f"{len(weights)} weights for {len(logits)} heads")
    total = 0.0
    for weight, scores in zip(weights, logits):
        total = total + weight * F.cross_entropy(scores, y)
    return total


# --- training loop ----------------------------------------------------------------------------

def default_threads() -> int:
    """The cores this process may run on (train's default thread count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def passive_thread_waits() -> None:
    """Let torch's OpenMP threads sleep, not spin, while they wait for work (only where torch is
    not imported yet: the setting is read once). Spinning threads on a machine whose cores other
    processes keep busy trained 4-10x slower than one thread here (2 cores, load 4); sleeping
    ones, 1.3-2x. Set OMP_WAIT_POLICY yourself to choose otherwise."""
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextlib.contextmanager
def _seeded(seed: int, threads: int):
    """Seed torch's global generator (initialisation, dropout) and set torch's thread count while
    training. One thread is the bit-exact mode: the float reductions, hence the weights, are the
    same on every run; with several, torch may split them differently from run to run."""
    import torch

    previous = torch.get_num_threads()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit(net, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
        seed: int, weights: Sequence[float] | None = None, progress: Progress | None = None,
        stage: str = "mrl") -> list[float]:
    """Train `net` (an nets.MRLNet) with the MRL loss over its nesting dims; returns the mean loss
    per epoch. Shuffling comes from a generator seeded with `seed`, so runs repeat exactly."""
    import torch

    inputs = torch.from_numpy(np.ascontiguousarray(x))
    targets = torch.from_numpy(np.asarray(y, dtype=np.int64))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(targets) // batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    history = []
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(targets), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = mrl_loss(net.all_logits(net.embed(inputs[index])), targets[index], weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
            batches += 1
        history.append(total / max(batches, 1))
        if progress:
            progress({"stage": stage, "epoch": epoch + 1, "epochs": epochs, "loss": history[-1]})
    net.eval()
    return history


def embed(net, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out.append(net.embed(torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size]))).numpy())
    return np.concatenate(out).astype(np.float32)


def accuracy_per_dim(net, x: np.ndarray, y: np.ndarray) -> dict[int, float]:
    """Validation top-1 (%) of every head of `net`, from one pass of the encoder."""
    import torch

    z = torch.from_numpy(embed(net, x))
    with torch.no_grad():
        logits = net.all_logits(z)
    return {m: _accuracy(scores.numpy(), y) for m, scores in zip(net.nesting_dims, logits)}


def truncated_accuracy(net, x: np.ndarray, y: np.ndarray, dims: Sequence[int]) -> dict[int, float]:
    """A full-dim-only model evaluated by truncation: its full head's first m columns on z[:m]."""
    import torch
    import torch.nn.functional as F

    z = torch.from_numpy(embed(net, x))
    full = net.heads.shared if net.heads.shared is not None else net.heads.heads[-1]
    with torch.no_grad():
        return {m: _accuracy(F.linear(z[:, :m], full.weight[:, :m], full.bias).numpy(), y) for m in dims}


def probe_accuracy(z_train: np.ndarray, y_train: np.ndarray, z_eval: np.ndarray, y_eval: np.ndarray,
                   dims: Sequence[int], num_classes: int, weight_decay: float = 1e-3) -> dict[int, float]:
    """A linear head trained per m on the frozen, re-normalised prefix z[:m] (standardised with
    the training statistics; full-batch L-BFGS, L2-regularised, deterministic)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # small problems, and deterministic
    try:
        return {m: _accuracy(_probe_logits(z_train[:, :m], y_train, z_eval[:, :m], num_classes, weight_decay), y_eval)
                for m in dims}
    finally:
        torch.set_num_threads(previous)


def _probe_logits(train: np.ndarray, y: np.ndarray, evaluate: np.ndarray, num_classes: int,
                  weight_decay: float) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    from .dims import renormalize

    train, evaluate = renormalize(train), renormalize(evaluate)   # float32 already (embed, encode_texts)
    mean, std = train.mean(0), train.std(0) + 1e-6
    a = torch.from_numpy(((train - mean) / std).astype(np.float32))
    b = torch.from_numpy(((evaluate - mean) / std).astype(np.float32))
    target = torch.from_numpy(np.asarray(y, dtype=np.int64))
    weight = torch.zeros(num_classes, a.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(F.linear(a, weight, bias), target) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return F.linear(b, weight, bias).numpy()


def _accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float(100.0 * np.mean(np.asarray(scores).argmax(1) == np.asarray(y)))


# --- train: data -> checkpoint -----------------------------------------------------------------

def train(data: str | Path | Dataset, output: str | Path, *, efficient: bool = False, nesting_dims: Any = None,
          full_dim: int | None = None, dim_weights: Any = None, architecture: str | None = None,
          epochs: int | None = None, batch_size: int = 64, lr: float | None = None, weight_decay: float = 1e-4,
          seed: int = 0, val_fraction: float = 0.3, baseline: bool = True, encoder: str | Path | None = None,
          max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, threads: int | None = None,
          progress: Progress | None = None) -> dict[str, Any]:
    """Train an MRL (or MRL-E) model on DATA, evaluate every nesting dim on the validation split
    (and the full-dim-only baseline by truncation and by probes), and write the checkpoint
    directory `output` atomically. Returns the summary (also stored in mrl_model.json).

    `threads`: torch's threads for training (default: every core this process may use); 1 is
    the bit-exact mode (the same seed gives the same weights on every run)."""
    check_number(epochs, "epochs", 1, integer=True, optional=True)
    check_number(batch_size, "batch_size", 1, integer=True)
    check_number(full_dim, "full_dim", 1, integer=True, optional=True)
    check_number(seed, "seed", 0, integer=True)
    check_number(max_seq_length, "max_seq_length", 1, integer=True)
    check_number(weight_decay, "weight_decay", 0)
    check_number(lr, "lr", 0, low_open=True, optional=True)
    check_number(val_fraction, "val_fraction", 0, 1, low_open=True, high_open=True)
    threads = default_threads() if threads is None else check_number(threads, "threads", 1, integer=True)
    passive_thread_waits()
    require("torch", "export", "training")
    require("safetensors", "export", "saving checkpoints")
    started = time.perf_counter()
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    train_set, val_set = split_dataset(dataset, seed=seed, val_fraction=val_fraction)
    say = progress or (lambda event: None)

    text = dataset.kind == "text"
    encoder_info = None
    if text:
        encoder_path = Path(encoder) if encoder else default_encoder_path()
        x_train = encode_texts(train_set.x, encoder_path, max_seq_length, progress=say)
        x_val = encode_texts(val_set.x, encoder_path, max_seq_length, progress=say)
        arch_name = "adapter"
        if architecture not in (None, "adapter"):
            raise DataError(f"text data trains an adapter on a frozen encoder, not {architecture!r}")
        input_shape = [int(x_train.shape[1])]
        if full_dim not in (None, input_shape[0]):
            raise DimsError(f"the adapter is d -> d: --full-dim must be the encoder's dim {input_shape[0]}")
        full_dim = input_shape[0]
        hyper: dict[str, Any] = {}
        encoder_info = {"kind": "sentence-transformers", "path": str(encoder_path.resolve()),
                        "package": DEFAULT_ENCODER_PACKAGE if not encoder else None,
                        "max_seq_length": int(max_seq_length), "dim": full_dim}
    else:
        x_train, x_val = train_set.x, val_set.x
        input_shape = train_set.sample_shape
        arch_name = architecture or ("cnn" if dataset.kind == "image" else "mlp")
        if arch_name not in ("cnn", "mlp"):
            raise DataError(f"unknown architecture {architecture!r} for {dataset.kind} data: use cnn or mlp")
        if arch_name == "cnn" and dataset.kind != "image":
            raise DataError(f"cnn needs image-shaped x (N x C x H x W, N x H x W, N x H x W x C); got samples of shape {input_shape}")
        if full_dim is None:
            full_dim = parse_dims(nesting_dims)[-1] if nesting_dims else DEFAULT_FULL_DIM
        full_dim = int(full_dim)
        values = np.asarray(x_train, dtype=np.float32)
        hyper = {"mean": float(values.mean()), "std": float(values.std() + 1e-6)}
        if arch_name == "cnn":
            from .nets import CNN_STAGES

            hyper["stages"] = [list(stage) for stage in CNN_STAGES]
    dims = _check_nesting(nesting_dims, full_dim)
    weights = _check_weights(dim_weights, dims)
    say({"stage": "data", "train": len(train_set), "validation": len(val_set), "summary": dataset.summary()})
    settings = {"loss": "mrl-e" if efficient else "mrl",
                "epochs": int(EPOCHS[arch_name] if epochs is None else epochs), "batch_size": int(batch_size),
                "lr": float(LEARNING_RATE[arch_name] if lr is None else lr),
                "weight_decay": float(weight_decay), "dim_weights": weights, "seed": int(seed),
                "threads": int(threads), "optimizer": "AdamW, one-cycle schedule"}
    architecture_entry = {"name": arch_name, "hyperparameters": hyper}
    num_classes = dataset.num_classes

    net, history = _train_one(architecture_entry, input_shape, full_dim, dims, num_classes, efficient,
                              x_train, train_set.y, settings, weights, say, "mrl")
    accuracy: dict[str, dict[int, float]] = {"mrl": accuracy_per_dim(net, x_val, val_set.y)}
    if baseline:
        base, _ = _train_one(architecture_entry, input_shape, full_dim, [full_dim], num_classes, efficient,
                             x_train, train_set.y, settings, [1.0], say, "baseline")
        accuracy["baseline_truncated"] = truncated_accuracy(base, x_val, val_set.y, dims)
        probes = {"baseline_probe": (embed(base, x_train), embed(base, x_val))}
        if text:  # the plain frozen encoder, truncated: what the adapter must beat
            probes["encoder_probe"] = (x_train, x_val)
        for done, (name, (features_train, features_val)) in enumerate(probes.items()):
            say({"stage": "probes", "done": done, "total": len(probes)})
            accuracy[name] = probe_accuracy(features_train, train_set.y, features_val, val_set.y, dims, num_classes)
        say({"stage": "probes", "done": len(probes), "total": len(probes)})

    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "architecture": architecture_entry,
        "full_dim": full_dim,
        "nesting_dims": dims,
        "efficient": bool(efficient),
        "num_classes": num_classes,
        "labels": dataset.labels,
        "input": ({"kind": "text", "names": ["input_ids", "attention_mask"]} if text else
                  {"name": "x", "dtype": "float32", "shape": ["batch", *input_shape],
                   "data_dtype": str(np.asarray(x_train).dtype)}),
        "preprocessing": _preprocessing(dataset, hyper, text, max_seq_length),
        "encoder": encoder_info,
        # the split, recorded: export carries it into the artifact, so calibrate and classify split
        # this data exactly as training did (and recognise it by its fingerprint)
        "data": {**split_record(dataset, seed, val_fraction), "train": len(train_set), "validation": len(val_set),
                 "classes": num_classes, "sample_shape": dataset.sample_shape},
        "training": {**settings, "final_loss": history[-1] if history else None,
                     "seconds": round(time.perf_counter() - started, 2)},
        "accuracy": {name: {str(m): round(v, 3) for m, v in table.items()} for name, table in accuracy.items()},
        "accuracy_split": f"validation ({len(val_set)} samples, never trained on)",
    }
    save_checkpoint(net, meta, output)
    say({"stage": "saved", "path": str(Path(output).resolve())})
    return {**meta, "path": str(Path(output).resolve()), "accuracy_by_dim": accuracy}


def _train_one(architecture: dict, input_shape, full_dim, dims, num_classes, efficient, x, y, settings,
               weights, say, stage):
    from .nets import build_net

    with _seeded(settings["seed"], settings.get("threads", 1)):
        net = build_net(architecture, input_shape, full_dim, dims, num_classes, efficient)
        history = fit(net, x, y, epochs=settings["epochs"], batch_size=settings["batch_size"], lr=settings["lr"],
                      weight_decay=settings["weight_decay"], seed=settings["seed"], weights=weights,
                      progress=say, stage=stage)
    return net, history


def _preprocessing(dataset: Dataset, hyper: dict, text: bool, max_seq_length: int) -> dict[str, Any]:
    if text:
        return {"tokenizer": "tokenizer.json", "max_seq_length": int(max_seq_length),
                "text": "the raw text; tokenized with the encoder's tokenizer"}
    out = {"input": "x as the data holds it; standardisation ((x - mean) / std) is inside the model",
           "mean": hyper["mean"], "std": hyper["std"]}
    if dataset.name == "digits":
        out["digits"] = "sklearn load_digits pixels / 16, shape N x 1 x 8 x 8 (mrl_deploy.data.load_digits)"
    return out
