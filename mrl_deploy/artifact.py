"""Artifact: an exported directory (mrl.json + model files) that encodes inputs at any exported dim.

    artifact = Artifact.load("artifacts/resnet")
    vectors = artifact.encode(images, dim=64)        # float32, re-normalised 64-d prefixes
    logits = artifact.logits(images, dim=64)

Needs numpy and onnxruntime (and tokenizers for text models), never torch.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .dims import renormalize
from .errors import ArtifactError, InputError, MRLDeployError, check_number, require
from .manifest import read_manifest, verify_files
from .tokenization import encode, load_tokenizer, overflowing


class Artifact:
    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self._runtimes: dict[tuple, Any] = {}
        self._tokenizer = None
        # One runtime per key even when many threads (a server's workers) ask at once: without
        # it two threads could each create a session, and one would leak un-deactivated.
        self._lock = threading.RLock()

    # --- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "Artifact":
        """Read mrl.json and (by default) check every file's sha256 against it."""
        path = Path(path)
        manifest = read_manifest(path)
        if verify:
            verify_files(path, manifest)
        return cls(path, manifest)

    # --- what it holds ------------------------------------------------------------------------
    @property
    def full_dim(self) -> int:
        return int(self.manifest["full_dim"])

    @property
    def nesting_dims(self) -> list[int] | None:
        """The dims the model was trained at; None where the model does not declare them."""
        dims = self.manifest.get("nesting_dims")
        return None if dims is None else list(dims)

    @property
    def exported_dims(self) -> list[int]:
        return list(self.manifest["exported_dims"])

    @property
    def logit_dims(self) -> list[int]:
        return sorted(o["dim"] for o in self.manifest["outputs"] if o["kind"] == "logits")

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.get("labels")

    @property
    def is_text(self) -> bool:
        return self.manifest.get("modality") == "text"

    @property
    def input_names(self) -> list[str]:
        return [spec["name"] for spec in self.manifest["inputs"]]

    @property
    def variants(self) -> list[str]:
        return list(self.manifest.get("models", {}))

    def model_file(self, variant: str = "fp32") -> Path:
        models = self.manifest.get("models", {})
        if variant not in models:
            raise ArtifactError(
                f"{self.path} has no {variant} model (it has: {', '.join(models) or 'none'}); "
                f"re-export with --precision {variant}" if variant in ("fp16", "int8") else
                f"{self.path} has no {variant} model (it has: {', '.join(models) or 'none'})"
            )
        return self.path / models[variant]["file"]

    # --- running ------------------------------------------------------------------------------
    def runtime(self, name: str | None = None, variant: str = "fp32", threads: int | None = None):
        """An active runtime, cached per (name, variant, threads). Default: the best available."""
        from .runtimes import create_runtime, resolve_runtime

        name = resolve_runtime(name, self, variant)
        key = (name, variant, threads)
        with self._lock:
            if key not in self._runtimes:
                self._runtimes[key] = create_runtime(name, self, variant=variant, threads=threads).activate()
            return self._runtimes[key]

    def close(self) -> None:
        with self._lock:
            for runner in self._runtimes.values():
                runner.deactivate()
            self._runtimes.clear()

    def __enter__(self) -> "Artifact":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, inputs: Any, outputs: Sequence[str] | None = None, *, batch_size: int = 64,
            runtime: str | None = None, variant: str = "fp32", threads: int | None = None) -> dict[str, np.ndarray]:
        """Run raw inputs (array, dict of arrays, or strings for text models) in batches;
        returns the named outputs (default: all) concatenated over batches."""
        runner = self.runtime(runtime, variant, threads)
        names = list(outputs) if outputs else [o["name"] for o in self.manifest["outputs"]]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for feed in self.batches(inputs, batch_size):
            result = runner.infer(feed, names)
            for name in names:
                parts[name].append(result[name])
        if not any(parts.values()):
            raise InputError("no inputs given")
        return {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items()}

    def encode(self, inputs: Any, dim: int | None = None, **run_options: Any) -> np.ndarray:
        """Re-normalised `dim`-d embeddings (float32, one row per input). `dim` defaults to the
        largest exported dim; any dim up to it works: a prefix of a normalised prefix, normalised
        again, equals z[:dim] / ||z[:dim]||."""
        output = self.embedding_output(dim)
        return self.at_dim(self.run(inputs, [output], **run_options)[output], dim)

    def embedding_output(self, dim: int | None) -> str:
        """The graph output that serves `dim`: embedding_m for the smallest exported m >= dim."""
        return f"embedding_{self._embedding_source_dim(dim)}"

    @staticmethod
    def at_dim(rows: np.ndarray, dim: int | None) -> np.ndarray:
        """Rows of an embedding output (re-normalised prefixes) cut to `dim` and re-normalised
        again: z[:dim] / ||z[:dim]||. What encode does with embedding_output(dim)'s rows."""
        if dim is not None and dim != rows.shape[1]:
            rows = renormalize(rows[:, :dim])
        return rows.astype(np.float32, copy=False)

    def logits(self, inputs: Any, dim: int, **run_options: Any) -> np.ndarray:
        if dim not in self.logit_dims:
            raise InputError(
                f"no logits at dim {dim} in {self.path}: it has logits at {self.logit_dims or 'no dims (no classifier heads)'}"
            )
        return self.run(inputs, [f"logits_{dim}"], **run_options)[f"logits_{dim}"]

    def _embedding_source_dim(self, dim: int | None) -> int:
        exported = self.exported_dims
        if dim is None:
            return max(exported)
        check_number(dim, "dim", 1, integer=True)
        candidates = [d for d in exported if d >= dim]
        if not candidates:
            raise InputError(f"dim {dim} is above the largest exported dim {max(exported)} of {self.path}")
        return min(candidates)

    # --- inputs -------------------------------------------------------------------------------
    def batches(self, inputs: Any, batch_size: int = 64) -> Iterator[dict[str, np.ndarray]]:
        """Split inputs into feeds of at most `batch_size` rows, tokenizing text."""
        check_number(batch_size, "batch_size", 1, integer=True)
        if self.is_text:
            texts = self._texts(inputs)
            for start in range(0, len(texts), batch_size):
                yield self.tokenize(texts[start:start + batch_size])
            return
        feed = self.tensor_feed(inputs)
        count = len(next(iter(feed.values())))
        for start in range(0, count, batch_size):
            yield {name: value[start:start + batch_size] for name, value in feed.items()}

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The model's inputs for `texts` (mrl_deploy.tokenization: the code the Triton tokenizer
        model runs too)."""
        feed = encode(self._text_tokenizer(), texts)
        return {name: feed[name] for name in self.input_names}

    def overlong(self, texts: list[str]) -> list[int]:
        """Indices of the texts past the artifact's max_seq_length tokens: `tokenize` truncates
        them (as sentence-transformers does)."""
        return overflowing(self._text_tokenizer(), texts)

    def _text_tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                require("tokenizers", "text", "text artifacts")
                pre = self.manifest["preprocessing"]
                self._tokenizer = load_tokenizer(self.path / pre["tokenizer"], pre)
        return self._tokenizer

    def _texts(self, inputs: Any) -> list[str]:
        if isinstance(inputs, str):
            inputs = [inputs]
        texts = list(inputs) if isinstance(inputs, Iterable) else None
        if texts is None or not all(isinstance(t, str) for t in texts):
            raise InputError(f"{self.path} is a text model: give a list of strings")
        return texts

    def tensor_feed(self, inputs: Any) -> dict[str, np.ndarray]:
        """Tensor inputs (an array, or a dict of arrays) checked against the manifest's input specs
        (shape, numeric, finite) and cast to their dtypes; one unbatched sample gets a batch axis."""
        specs = self.manifest["inputs"]
        if isinstance(inputs, dict):
            feed = {k: np.asarray(v) for k, v in inputs.items()}
        elif isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str):
            raise InputError(f"{self.path} takes tensors {self._shape_text()}, not text")
        else:
            if len(specs) != 1:
                raise InputError(f"{self.path} has inputs {self.input_names}: give a dict of arrays")
            feed = {specs[0]["name"]: np.asarray(inputs)}
        for spec in specs:
            if spec["name"] not in feed:
                raise InputError(f"missing input {spec['name']!r}; the model takes {self._shape_text()}")
            value = feed[spec["name"]]
            expected = spec["shape"]
            if value.ndim == len(expected) - 1 and value.size and "batch" == expected[0]:
                # one unbatched sample
                feed[spec["name"]] = value = value[None]
            if value.ndim != len(expected) or any(
                isinstance(e, int) and e != got for e, got in zip(expected, value.shape)
            ):
                raise InputError(
                    f"input {spec['name']!r} has shape {tuple(value.shape)}; the model takes {self._shape_text()}"
                )
            if spec["dtype"].startswith("float") and not np.issubdtype(value.dtype, np.number):
                raise InputError(f"input {spec['name']!r} must be numeric, got {value.dtype}")
            with np.errstate(over="ignore", invalid="ignore"):   # checked right below
                value = np.ascontiguousarray(value.astype(spec["dtype"], copy=False))
            # after the cast: a finite float64 past float32's range becomes inf there
            if spec["dtype"].startswith("float") and not np.all(np.isfinite(value)):
                raise InputError(f"input {spec['name']!r} contains NaN or infinite values "
                                 f"(or values past {spec['dtype']}'s range)")
            feed[spec["name"]] = value
        counts = {len(v) for v in feed.values()}
        if len(counts) != 1:
            raise InputError(f"inputs have different batch sizes: {sorted(counts)}")
        return feed

    def _shape_text(self) -> str:
        return ", ".join(
            f"{s['name']}: {s['dtype']}[{', '.join(str(a) for a in s['shape'])}]" for s in self.manifest["inputs"]
        )

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, dims={self.exported_dims}, source={self.manifest['source']['kind']})"


def load_inputs(path: str | Path, artifact: Artifact | None = None) -> Any:
    """INPUTS files: .npy / .npz (tensor models; an .npz with the input names, or `x`) and .txt
    (one text per line, text models)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"inputs file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            texts = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
            texts = [t for t in texts if t.strip()]
            if not texts:
                raise InputError(f"{path} has no non-empty lines")
            return texts
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                names = artifact.input_names if artifact is not None else []
                if names and all(n in data for n in names):
                    return {n: data[n] for n in names}
                if "x" in data:
                    return data["x"]
                raise InputError(f"{path} has arrays {list(data.keys())}; expected 'x' or {names}")
    except (ValueError, OSError) as exc:
        if isinstance(exc, MRLDeployError):
            raise
        raise InputError(f"cannot read {path}: {numpy_load_problem(exc)}") from None
    raise InputError(f"unsupported inputs file {path}: use .npy, .npz or .txt")


def numpy_load_problem(exc: Exception) -> str:
    """np.load's reason, without its advice to allow pickles (never done here: files are data)."""
    if "pickle" in str(exc):
        return "not a numeric numpy file (neither an array saved with numpy.save nor numpy.savez)"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
