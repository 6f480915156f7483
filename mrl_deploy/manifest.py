"""mrl.json: the single source of truth about an artifact, and the atomic writes around it.

Fields (FORMAT_VERSION 1):
  format_version, mrl_deploy_version, created
  source        {kind, path, sha256, options}   options rebuild the torch reference
  full_dim, nesting_dims, exported_dims
  normalization "truncate-then-l2" (emb_m = z[:m] / ||z[:m]||)
  pre_truncation null | "layer_norm" (applied to the full z before slicing)
  head          null | "separate" (MRL: one head per nesting dim) | "shared" (MRL-E)
  inputs        [{name, dtype, shape}]  shape entries are ints or axis names ("batch", "sequence")
  preprocessing {...}  e.g. image mean/std/size, or tokenizer file and max_seq_length
  outputs       [{name, kind: embedding|logits, dim, classes?}]
  labels        class names or null
  training_data null | {name, kind, samples, fingerprint, seed, val_fraction, test_fraction}: the
                data and split an `mrl-deploy train` checkpoint was trained on (data.split_record);
                calibrate / classify / bench split that data (and only it) the same way
  opset
  models        {variant: {file, precision, verification: {output: {max_abs_diff, mean_abs_diff,
                 min_cosine, top1_agreement?}}, ...}}   variants: fp32, fp16, int8, tensorrt
  flops         {unit, encoder, heads: {dim: flops}}
  files         {relative path: sha256}   every file but mrl.json
  cascade       null | calibrated thresholds and summary
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST_NAME = "mrl.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_description(directory: str | os.PathLike, name: str, what: str) -> dict[str, Any]:
    """The JSON file `name` that makes `directory` an mrl-deploy `what` (artifact, index), parsed."""
    directory = Path(directory)
    path = directory / name
    if not directory.is_dir():
        raise ArtifactError(f"{what} directory not found: {directory}")
    if not path.is_file():
        raise ArtifactError(f"{directory} is not an mrl-deploy {what}: no {name}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} is not an mrl-deploy {what} description")
    return data


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    manifest = read_description(directory, MANIFEST_NAME, "artifact")
    if "format_version" not in manifest:
        raise ArtifactError(f"{path} is not an mrl-deploy manifest")
    if manifest["format_version"] > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {manifest['format_version']}; this mrl-deploy reads "
            f"up to {FORMAT_VERSION}: upgrade mrl-deploy"
        )
    return manifest


def verify_files(directory: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists must exist and match its sha256."""
    directory = Path(directory)
    for name, expected in manifest.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"artifact file missing: {path}")
        if sha256_file(path) != expected:
            raise ArtifactError(f"checksum mismatch for {path}: the file was modified or corrupted")


def record_files(directory: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Fill manifest['files'] with the sha256 of every file in the directory but mrl.json.

    Hidden files and everything under a hidden directory are left out: they are temporaries
    (staged engines, atomic-write temp files) or a runtime's cache (an ONNX Runtime TensorRT
    `.trt_cache/` from an older mrl-deploy), which change after export and would then fail the
    checksums."""
    directory = Path(directory)
    relative = {path: path.relative_to(directory) for path in sorted(directory.rglob("*")) if path.is_file()}
    manifest["files"] = {
        str(name): sha256_file(path) for path, name in relative.items()
        if name != Path(MANIFEST_NAME) and not any(part.startswith(".") for part in name.parts)
    }


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for a writer to fill (it ends like `path`, so writers that
    add a suffix, as numpy's save does, add none); once the block succeeds it is flushed to disk
    and renamed over `path`, and if the block fails it is deleted. Readers never see half a file,
    and a file already at `path` stays whole until the new one is complete."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make a shared file unreadable to others
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON through atomic_path: readers never see half a file."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=json_default)
        handle.write("\n")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` through atomic_path; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def update_manifest(directory: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Set top-level manifest fields (e.g. cascade=...) atomically; returns the new manifest."""
    manifest = read_manifest(directory)
    manifest.update(fields)
    write_json_atomic(Path(directory) / MANIFEST_NAME, manifest)
    return manifest


@contextmanager
def staged_directory(target: str | os.PathLike, marker: str = MANIFEST_NAME, what: str = "an artifact",
                     error: type[Exception] = ArtifactError) -> Iterator[Path]:
    """Build a directory in a temp sibling and move it into place only if the block succeeds.

    A failure leaves nothing behind, and a directory already at `target` stays intact until the
    new one is complete. A non-empty `target` without `marker` (not `what`) is refused, never
    replaced: it may hold a user's files.
    """
    target = Path(target).resolve()
    if target.exists():
        if not target.is_dir():
            raise error(f"{target} exists and is not a directory")
        if any(target.iterdir()) and not (target / marker).is_file():
            raise error(f"{target} is a non-empty directory that is not {what}: refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would make a shared directory unreadable to others
    try:
        yield staging
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            backup.rmdir()
            os.replace(target, backup)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(backup, target)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def output_names(manifest: dict[str, Any], kind: str | None = None) -> list[str]:
    return [o["name"] for o in manifest["outputs"] if kind is None or o["kind"] == kind]


def json_default(value: Any) -> Any:
    """json.dump's `default` for the values reports hold: numpy scalars and arrays, paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
