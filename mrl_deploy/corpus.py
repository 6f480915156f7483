"""An embedded corpus directory: what `mrl-deploy embed --ray` writes and `mrl-deploy index
--vectors DIR` reads. Nothing here imports ray (mrl_deploy.scale.embed runs it on Ray Data).

    plan = plan_corpus(artifact, "texts/*.txt", "out/", dim=64)     # files, records, shards
    embed_shard(artifact, plan, 3, "out/")                         # one shard (what an actor does)
    write_manifest("out/", plan, ...)                               # last, once every shard is there
    corpus = read_corpus("out/")                                    # the manifest, checked

Inputs: a file, a directory (its .txt / .parquet / .npy files, recursively) or a glob, in sorted
path order. A record is a non-blank line of a .txt (one text per line; blank lines are skipped but
counted in line numbers), a row of a Parquet file's text column, or a row of an .npy (tensor
models). Global row ids are 0..N-1 in (file, record) order.

The directory:
  plan.json              written first: inputs (path, size, mtime, records), the shards (file,
                         first record, count, first id), artifact sha256, dim, dtype
  part-00000.npy         a shard's vectors (count x dim, float16 or float32), rows in input order
  part-00000.rows.npy    its rows: id (int64), file (int32, an index into the inputs), line (the
                         record's 1-based line number in a .txt, or 1-based row in .parquet / .npy)
  embeddings.json        the manifest, written last (atomically): the plan plus count, shards,
                         runtime. No manifest: the run did not finish (resume it with --resume).

Shard files are written to a temp name and renamed, rows before vectors: a shard counts as done
when both files are there with the planned shape, so a resumed run redoes only unfinished shards.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, InputError, require
from .manifest import MANIFEST_NAME, atomic_path, read_description, write_json_atomic

FORMAT = "mrl-deploy-embeddings"
FORMAT_VERSION = 1
PLAN_JSON = "plan.json"
MANIFEST_JSON = "embeddings.json"
ROW_DTYPE = np.dtype([("id", "<i8"), ("file", "<i4"), ("line", "<i8")])
KINDS = {".txt": "txt", ".parquet": "parquet", ".npy": "npy"}
DTYPES = {"f16": np.float16, "f32": np.float32}
DEFAULT_SHARD_ROWS = 50_000


# --- planning ---------------------------------------------------------------------------------------

def list_inputs(inputs: str | os.PathLike) -> list[Path]:
    """The input files: INPUTS itself, the supported files under a directory, or a glob's matches."""
    text = str(inputs)
    path = Path(text)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in KINDS)
    elif glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
    else:
        raise InputError(f"inputs not found: {text} (give a file, a directory or a glob)")
    if not files:
        raise InputError(f"no .txt, .parquet or .npy files in {text}")
    unsupported = [p for p in files if p.suffix.lower() not in KINDS]
    if unsupported:
        raise InputError(f"{unsupported[0]} is not .txt, .parquet or .npy")
    return [p.resolve() for p in files]


def artifact_sha256(artifact: Any) -> str:
    """The artifact's identity: the sha256 of its mrl.json (which holds every model file's sha256)."""
    return hashlib.sha256((Path(artifact.path) / MANIFEST_NAME).read_bytes()).hexdigest()


def plan_corpus(artifact: Any, inputs: str | os.PathLike, *, dim: int | None = None, dtype: str = "f32",
                column: str = "text", shard_rows: int = DEFAULT_SHARD_ROWS) -> dict[str, Any]:
    """Count the records of every input file and cut them into shards of at most `shard_rows`
    (a shard never spans two files)."""
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use f16 or f32")
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1:
        raise InputError(f"shard rows must be a positive integer, got {shard_rows!r}")
    artifact.embedding_output(dim)          # validates dim against the artifact's exported dims
    files = list_inputs(inputs)
    kinds = {KINDS[p.suffix.lower()] for p in files}
    if artifact.is_text and "npy" in kinds:
        raise InputError(f"{artifact.path} is a text model: give .txt or .parquet inputs, not .npy")
    if not artifact.is_text:
        if kinds != {"npy"}:
            raise InputError(f"{artifact.path} takes tensors: give .npy inputs (one sample per row)")
        if len(artifact.input_names) != 1:
            raise InputError(f"{artifact.path} has several inputs {artifact.input_names}: embed it in-process "
                             "(mrl-deploy embed with an .npz)")
    entries, shards, next_id = [], [], 0
    for number, path in enumerate(files):
        kind = KINDS[path.suffix.lower()]
        stat = path.stat()
        starts = _record_starts(path, kind, column, artifact)
        entries.append({"path": str(path), "kind": kind, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                        "records": len(starts)})
        for first in range(0, len(starts), shard_rows):
            count = min(shard_rows, len(starts) - first)
            line, offset = starts[first]
            shards.append({"name": f"part-{len(shards):05d}", "input": number, "first_record": first,
                           "count": count, "first_id": next_id, "first_line": line, "offset": offset})
            next_id += count
    if next_id == 0:
        raise InputError(f"no records in {inputs} (empty files or only blank lines)")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "artifact": str(Path(artifact.path).resolve()),
            "artifact_sha256": artifact_sha256(artifact), "modality": "text" if artifact.is_text else "tensor",
            "dim": int(dim or max(artifact.exported_dims)), "dtype": dtype, "column": column if "parquet" in kinds else None,
            "shard_rows": shard_rows, "count": next_id, "inputs": entries, "shards": shards}


def _record_starts(path: Path, kind: str, column: str, artifact: Any) -> list[tuple[int, int]]:
    """(line, byte offset) of every record: offsets for .txt (so a shard seeks to its first line),
    0 for the others (their rows are addressed by number)."""
    if kind == "txt":
        starts, offset = [], 0
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if raw.strip():
                    starts.append((number, offset))
                offset += len(raw)
        return starts
    if kind == "parquet":
        pq = require("pyarrow.parquet", "ray", "Parquet inputs")
        try:
            meta = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow's errors: ArrowInvalid, OSError
            raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        if column not in meta.schema_arrow.names:
            raise InputError(f"{path} has no column {column!r} (it has {', '.join(meta.schema_arrow.names)}): "
                             "name the text column with --column")
        return [(row, 0) for row in range(1, meta.metadata.num_rows + 1)]
    array = _open_npy(path)
    spec = artifact.manifest["inputs"][0]
    if array.ndim != len(spec["shape"]) or any(isinstance(e, int) and e != got
                                               for e, got in zip(spec["shape"][1:], array.shape[1:])):
        raise InputError(f"{path} holds {array.dtype}{list(array.shape)}; the model takes one sample per row of "
                         f"shape {spec['shape'][1:]}")
    return [(row, 0) for row in range(1, len(array) + 1)]


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


# --- one shard --------------------------------------------------------------------------------------

def read_records(plan: dict[str, Any], shard: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """(records, line numbers) of one shard: texts, or an array of samples for tensor models.
    Fails if the input file changed since it was planned."""
    entry = plan["inputs"][shard["input"]]
    path = Path(entry["path"])
    try:
        stat = path.stat()
    except OSError:
        raise InputError(f"input {path} is gone since the run was planned") from None
    if (stat.st_size, stat.st_mtime_ns) != (entry["size"], entry["mtime_ns"]):
        raise InputError(f"input {path} changed since the run was planned: start a new run (without --resume)")
    first, count = shard["first_record"], shard["count"]
    if entry["kind"] == "txt":
        texts, lines = [], []
        with open(path, "rb") as handle:
            handle.seek(shard["offset"])
            number = shard["first_line"]
            while len(texts) < count:
                raw = handle.readline()
                if not raw:
                    raise InputError(f"{path} ended before its planned records: it changed since planning")
                if raw.strip():
                    try:
                        texts.append(raw.decode("utf-8").rstrip("\r\n"))
                    except UnicodeDecodeError:
                        raise InputError(f"{path} line {number} is not UTF-8") from None
                    lines.append(number)
                number += 1
        return texts, np.asarray(lines, dtype=np.int64)
    lines = np.arange(first + 1, first + count + 1, dtype=np.int64)
    if entry["kind"] == "parquet":
        return _parquet_texts(path, plan["column"], first, count), lines
    return np.asarray(_open_npy(path)[first:first + count]), lines


def _parquet_texts(path: Path, column: str, first: int, count: int) -> list[str]:
    """Rows [first, first + count) of a string column, reading only the row groups they are in."""
    pq = require("pyarrow.parquet", "ray", "Parquet inputs")
    handle = pq.ParquetFile(path)
    groups, start = [], 0
    begin = None
    for group in range(handle.metadata.num_row_groups):
        rows = handle.metadata.row_group(group).num_rows
        if start + rows > first and start < first + count:
            groups.append(group)
            begin = start if begin is None else begin
        start += rows
    values = handle.read_row_groups(groups, columns=[column]).column(column).slice(first - begin, count).to_pylist()
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise InputError(f"{path} row {first + i + 1} of column {column!r} is "
                             f"{'null' if value is None else type(value).__name__}, not a string")
    return values


def shard_files(directory: Path, shard: dict[str, Any]) -> tuple[Path, Path]:
    return directory / f"{shard['name']}.npy", directory / f"{shard['name']}.rows.npy"


def shard_done(directory: str | os.PathLike, plan: dict[str, Any], shard: dict[str, Any]) -> bool:
    """Both files of the shard are there with the planned shape and dtype."""
    vectors, rows = shard_files(Path(directory), shard)
    try:
        v = np.load(vectors, mmap_mode="r", allow_pickle=False)
        r = np.load(rows, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return (v.shape == (shard["count"], plan["dim"]) and v.dtype == DTYPES[plan["dtype"]]
            and r.shape == (shard["count"],) and r.dtype == ROW_DTYPE)


def embed_shard(artifact: Any, plan: dict[str, Any], number: int, directory: str | os.PathLike,
                **run_options: Any) -> dict[str, Any]:
    """Embed shard `number` with artifact.encode (run_options: runtime, variant, batch_size,
    threads) and write its two files; returns {shard, count, seconds}."""
    import time

    started = time.perf_counter()
    shard = plan["shards"][number]
    records, lines = read_records(plan, shard)
    vectors = artifact.encode(records, dim=plan["dim"], **run_options).astype(DTYPES[plan["dtype"]])
    rows = np.empty(shard["count"], dtype=ROW_DTYPE)
    rows["id"] = np.arange(shard["first_id"], shard["first_id"] + shard["count"])
    rows["file"] = shard["input"]
    rows["line"] = lines
    vectors_file, rows_file = shard_files(Path(directory), shard)
    for path, array in ((rows_file, rows), (vectors_file, vectors)):   # vectors last: they mark the shard done
        with atomic_path(path) as tmp:
            np.save(tmp, array)
    return {"shard": number, "count": int(shard["count"]), "seconds": time.perf_counter() - started}


# --- the run as a whole -----------------------------------------------------------------------------

def prepare_directory(directory: str | os.PathLike, plan: dict[str, Any], resume: bool) -> list[int]:
    """Create or check the output directory; returns the shards still to embed. A new run needs
    an empty (or new) directory; --resume needs the same plan (same inputs, unchanged, same
    artifact, dim, dtype and shard size)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory} exists and is not a directory")
    existing = directory.is_dir() and any(directory.iterdir())
    if not resume:
        if existing:
            raise InputError(f"{directory} is not empty: give a new output directory, or --resume to finish the "
                             "run that wrote it")
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / PLAN_JSON, plan)
        return list(range(len(plan["shards"])))
    if not (directory / PLAN_JSON).is_file():
        if existing:
            raise InputError(f"{directory} has no {PLAN_JSON}: it is not an `embed --ray` output to resume")
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / PLAN_JSON, plan)
        return list(range(len(plan["shards"])))
    previous = read_description(directory, PLAN_JSON, "embedding run")
    if previous != _json_roundtrip(plan):
        changed = [key for key in plan if previous.get(key) != _json_roundtrip(plan).get(key)]
        raise InputError(f"cannot resume {directory}: the run differs from the one that wrote it "
                         f"({', '.join(changed)}); start a new run in a new directory")
    return [i for i, shard in enumerate(plan["shards"]) if not shard_done(directory, plan, shard)]


def _json_roundtrip(data: Any) -> Any:
    import json

    return json.loads(json.dumps(data))


def write_manifest(directory: str | os.PathLike, plan: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """embeddings.json, once every shard is done (checked here)."""
    directory = Path(directory)
    missing = [s["name"] for s in plan["shards"] if not shard_done(directory, plan, s)]
    if missing:
        raise ArtifactError(f"{len(missing)} shards are not written ({', '.join(missing[:5])}...): no manifest")
    manifest = {**plan, "shards": [{**s, "vectors": shard_files(directory, s)[0].name,
                                     "rows": shard_files(directory, s)[1].name} for s in plan["shards"]], **extra}
    write_json_atomic(directory / MANIFEST_JSON, manifest)
    return manifest


# --- reading it back ---------------------------------------------------------------------------------

def read_corpus(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a finished embedding run, with every shard file checked."""
    directory = Path(directory)
    if (directory / PLAN_JSON).is_file() and not (directory / MANIFEST_JSON).is_file():
        raise InputError(f"{directory} is an unfinished embedding run (no {MANIFEST_JSON}): finish it with "
                         "`mrl-deploy embed ... --ray --resume`")
    manifest = read_description(directory, MANIFEST_JSON, "embedded corpus")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{directory / MANIFEST_JSON} is not an mrl-deploy embeddings manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"{directory} has embeddings format {manifest['format_version']}; upgrade mrl-deploy")
    for shard in manifest["shards"]:
        if not shard_done(directory, manifest, shard):
            raise ArtifactError(f"{directory}: shard {shard['name']} is missing or damaged")
    return manifest


def corpus_slices(directory: str | os.PathLike, manifest: dict[str, Any]) -> tuple[list, list]:
    """(vector Slices, id Slices) over every shard in id order: what a sharded build reads."""
    from .sharded import Slice

    directory = Path(directory).resolve()
    vectors, ids = [], []
    for shard in sorted(manifest["shards"], key=lambda s: s["first_id"]):
        vectors.append(Slice(str(directory / shard["vectors"]), 0, shard["count"]))
        ids.append(Slice(str(directory / shard["rows"]), 0, shard["count"], "id"))
    return vectors, ids


def corpus_rows(directory: str | os.PathLike) -> tuple[Any, np.ndarray]:
    """(vectors read on demand, ids) of a finished run, in id order: the vectors as
    `sharded.SliceRows` over the shard files, so `AdaptiveIndex.build(vectors, keys=ids,
    output=...)` never holds the corpus in RAM."""
    from .sharded import SliceRows

    manifest = read_corpus(directory)
    vector_slices, id_slices = corpus_slices(directory, manifest)
    return SliceRows(vector_slices), np.concatenate([s.read() for s in id_slices])


def load_corpus(directory: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(vectors as float32, ids) of a finished run, in id order, in memory."""
    manifest = read_corpus(directory)
    vector_slices, id_slices = corpus_slices(directory, manifest)
    return (np.concatenate([s.read() for s in vector_slices]).astype(np.float32, copy=False),
            np.concatenate([s.read() for s in id_slices]))
