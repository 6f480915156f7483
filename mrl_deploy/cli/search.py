"""Adaptive retrieval: index, search, tune (and the embedding with a progress bar they share)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from ..errors import MRLDeployError
from .common import app, console, emit_json, number, parse_counts, parse_csv
from .render import print_search, print_tune


def _load_vectors(path: Path, what: str):
    import numpy as np

    if path.suffix != ".npy" or not path.is_file():
        raise MRLDeployError(f"{what} must be an existing .npy file, got {path}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        from ..artifact import numpy_load_problem

        raise MRLDeployError(f"cannot read {path}: {numpy_load_problem(exc)}") from None


@contextmanager
def _progress(label: str):
    """A transient progress bar; yields the (done, total) callback the library functions take."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _embed_with_progress(artifact_dir: Path, inputs: Path, dim, runtime, batch_size: int):
    """Embed an INPUTS file with an artifact in chunks, with a progress bar; returns (vectors,
    artifact path, the texts or None)."""
    from ..artifact import Artifact, load_inputs
    from ..retrieval import encode_inputs
    from ..runtimes import resolve_runtime

    artifact = Artifact.load(artifact_dir)
    data = load_inputs(inputs, artifact)
    runtime = resolve_runtime(runtime, artifact)
    console.print(f"embedding {artifact.path} with runtime {runtime}", highlight=False)
    with _progress("embedding") as report:
        vectors = encode_inputs(artifact, data, dim, chunk=max(batch_size, 1024), runtime=runtime,
                                batch_size=batch_size, progress=report)
    return vectors, artifact.path.resolve(), data if artifact.is_text else None


def _vectors_or_embedding(vectors: Optional[Path], artifact_dir: Optional[Path], inputs: Optional[Path], runtime,
                          batch_size: int):
    """--vectors FILE, or DIR INPUTS embedded here: (vectors, source of the vectors or None, the
    texts or None)."""
    if vectors is not None:
        return _load_vectors(vectors, "--vectors"), None, None
    if artifact_dir is None or inputs is None:
        given = artifact_dir or inputs
        hint = f" (precomputed vectors: --vectors {given})" if given is not None and given.is_file() else ""
        raise MRLDeployError(f"embedding needs both the artifact DIR and the INPUTS file{hint}")
    data, artifact_path, texts = _embed_with_progress(artifact_dir, inputs, None, runtime, batch_size)
    return data, {"artifact": str(artifact_path), "inputs": str(inputs)}, texts


@app.command("index")
def index_command(
    artifact_dir: Optional[Path] = typer.Argument(None, help="An artifact to embed INPUTS with (leave out with --vectors)."),
    inputs: Optional[Path] = typer.Argument(None, help="Inputs for the artifact: .npy/.npz for tensor models, .txt (one text per line) for text models."),
    vectors: Optional[Path] = typer.Option(None, "--vectors", help="Precomputed N x d float32 vectors in MRL order (.npy), or a directory written by `embed --ray` (ids from it), instead of DIR INPUTS."),
    output: Path = typer.Option(..., "--output", "-o", help="Index directory to write (an existing index there is replaced only once the new one is complete)."),
    shortlist_dim: Optional[int] = number(None, "--shortlist-dim", low=1, help="Ds: dims of the HNSW shortlist index (default: min(64, Dr/4), at least 8)."),
    rerank_dim: Optional[int] = number(None, "--rerank-dim", low=1, help="Dr: dims of the rerank store (default: the vectors' full dim)."),
    dtype: str = typer.Option("f16", "--dtype", help="Shortlist index dtype: f32, f16, i8 (loses recall at high Ds) or b1 (sign bits, Hamming distance) for an HNSW graph; ivf for inverted lists of int8 codes (fast batches where k' must be large)."),
    rerank_dtype: str = typer.Option("f16", "--rerank-dtype", help="Rerank store dtype (memory-mapped from disk): f16 or f32."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="One non-negative int64 id per vector (.npy); default 0..N-1 (with --append: after the largest id)."),
    connectivity: int = number(16, "--connectivity", low=2, help="HNSW M, edges per node: more gives better recall and a bigger index."),
    expansion_add: int = number(128, "--expansion-add", low=1, help="HNSW build width: more gives a better graph and a slower build."),
    expansion_search: int = number(64, "--expansion-search", low=1, help="Default HNSW search width (a larger shortlist size widens it)."),
    shortlist_size: int = number(200, "--shortlist-size", low=1, help="Default shortlist size k' of `search` (`tune --save` can change it)."),
    append: bool = typer.Option(False, "--append", help="Add the vectors to the existing index at --output (its settings stay; the other index options are ignored)."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="Per-row metadata, a JSONL file (one JSON object per vector, in order) kept beside the vectors and returned by search. Texts embedded from a .txt INPUTS are kept the same way."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="Runtime for embedding DIR INPUTS: torch, ort-cpu, ... (default: the best available)."),
    batch_size: int = number(64, "--batch-size", low=1, help="Inputs per inference call when embedding."),
    shards: Optional[int] = number(None, "--shards", low=1, help="Split the corpus into this many AdaptiveIndex shards (contiguous parts, searched together, top-k merged); default: one index."),
    ray: bool = typer.Option(False, "--ray", help="With --shards: build the shards as parallel Ray tasks (default: one after another here)."),
    address: Optional[str] = typer.Option(None, "--address", help="--ray: the Ray cluster to join (auto, ray://HOST:10001); default: a local Ray instance for this run."),
    json_out: bool = typer.Option(False, "--json", help="Print the index summary (sizes, bytes, build time) as JSON."),
) -> None:
    """Build an adaptive retrieval index: a usearch HNSW shortlist over the first Ds dims and a memory-mapped rerank store of the first Dr dims.

    Example: mrl-deploy index --vectors corpus.npy -o corpus.index --shortlist-dim 64   |   mrl-deploy index --vectors corpus.emb -o corpus.index --shards 8 --ray
    """
    import time

    from ..retrieval import AdaptiveIndex

    if (vectors is None) == (artifact_dir is None and inputs is None):
        raise MRLDeployError("give --vectors FILE.npy, or an artifact DIR and its INPUTS (not both)")
    from ..retrieval import read_metadata

    if shards is not None or ray or address is not None:
        if shards is None:
            raise MRLDeployError("--ray and --address build a sharded index: give --shards S")
        if append:
            raise MRLDeployError("--append adds to a single index; a sharded index is rebuilt with --shards")
        _index_sharded(vectors, artifact_dir, inputs, output, shards=shards, ray=ray, address=address,
                       metadata=metadata, keys=keys, runtime=runtime, batch_size=batch_size, json_out=json_out,
                       options=dict(shortlist_dim=shortlist_dim, rerank_dim=rerank_dim, dtype=dtype,
                                    rerank_dtype=rerank_dtype, connectivity=connectivity, expansion_add=expansion_add,
                                    expansion_search=expansion_search, shortlist_size=shortlist_size))
        return
    source, texts = None, None
    corpus_ids = None
    if vectors is not None and vectors.is_dir():
        from ..corpus import load_corpus

        if keys is not None:
            raise MRLDeployError("--keys: an `embed --ray` directory brings its own ids")
        data, corpus_ids = load_corpus(vectors)
    else:
        data, source, texts = _vectors_or_embedding(vectors, artifact_dir, inputs, runtime, batch_size)
    rows = read_metadata(metadata) if metadata is not None else None
    ids = _load_vectors(keys, "--keys") if keys is not None else corpus_ids
    started = time.perf_counter()
    with _progress("indexing") as report:
        if append:
            index = AdaptiveIndex.load(output, view=False)
            index.add(data, ids, progress=report, texts=texts, metadata=rows)
        else:
            index = AdaptiveIndex.build(data, shortlist_dim=shortlist_dim, rerank_dim=rerank_dim, dtype=dtype,
                                        rerank_dtype=rerank_dtype, keys=ids, connectivity=connectivity,
                                        expansion_add=expansion_add, expansion_search=expansion_search,
                                        shortlist_size=shortlist_size, progress=report, texts=texts, metadata=rows)
            if source:
                index.settings["source"] = source
    seconds = time.perf_counter() - started
    index.save(output)
    summary = {"index": str(output), "count": len(index), "added": len(data), "full_dim": index.full_dim,
               "shortlist_dim": index.shortlist_dim, "rerank_dim": index.rerank_dim, "dtype": index.dtype,
               "rerank_dtype": index.rerank_dtype, "shortlist_bytes": index.shortlist_bytes,
               "rerank_bytes": index.rerank_bytes, "seconds": seconds, "vectors_per_second": len(data) / seconds}
    if json_out:
        emit_json(summary)
        return
    console.print(f"[green]wrote[/green] {output}: {len(index):,} vectors, shortlist {index.shortlist_dim}-d {index.dtype} "
                  f"({index.shortlist_bytes / 2**20:.1f} MiB in RAM), rerank {index.rerank_dim}-d {index.rerank_dtype} "
                  f"({index.rerank_bytes / 2**20:.1f} MiB memory-mapped), {seconds:.1f} s", highlight=False)


def _index_sharded(vectors, artifact_dir, inputs, output: Path, *, shards: int, ray: bool, address, metadata, keys,
                   runtime, batch_size: int, json_out: bool, options: dict) -> None:
    """`index --shards S [--ray]`: a ShardedIndex from vectors (.npy or an `embed --ray` directory)
    or from DIR INPUTS embedded here."""
    import time
    from contextlib import nullcontext

    from ..retrieval import read_metadata
    from ..sharded import ShardedIndex

    texts, source, ids = None, None, None
    if vectors is not None and vectors.is_dir():
        from ..corpus import corpus_slices, read_corpus

        if keys is not None:
            raise MRLDeployError("--keys: an `embed --ray` directory brings its own ids")
        manifest = read_corpus(vectors)
        data, ids = corpus_slices(vectors, manifest)
        source = {"artifact": manifest["artifact"], "inputs": str(vectors)}
    else:
        data, source, texts = _vectors_or_embedding(vectors, artifact_dir, inputs, runtime, batch_size)
    if keys is not None:
        ids = _load_vectors(keys, "--keys")
    rows = read_metadata(metadata) if metadata is not None else None
    if ray:
        from ..scale.cluster import connect

        session = connect(address)
    else:
        session = nullcontext()
    started = time.perf_counter()
    with session, _progress("shards") as report:
        index = ShardedIndex.build(data, output, shards=shards, keys=ids, texts=texts, metadata=rows, ray=ray,
                                   progress=report, source=source, **options)
    seconds = time.perf_counter() - started
    summary = {"index": str(output), "count": len(index), "shards": len(index.shards), "full_dim": index.full_dim,
               "shortlist_dim": index.shortlist_dim, "rerank_dim": index.rerank_dim, "dtype": index.dtype,
               "rerank_dtype": index.rerank_dtype, "shortlist_bytes": index.shortlist_bytes,
               "rerank_bytes": index.rerank_bytes, "seconds": seconds, "vectors_per_second": len(index) / seconds,
               "ray": ray}
    if json_out:
        emit_json(summary)
        return
    console.print(f"[green]wrote[/green] {output}: {len(index):,} vectors in {len(index.shards)} shards"
                  f"{' (Ray tasks)' if ray else ''}, shortlist {index.shortlist_dim}-d {index.dtype} "
                  f"({index.shortlist_bytes / 2**20:.1f} MiB in RAM), rerank {index.rerank_dim}-d {index.rerank_dtype} "
                  f"({index.rerank_bytes / 2**20:.1f} MiB memory-mapped), {seconds:.1f} s", highlight=False)


@app.command()
def search(
    index_dir: Path = typer.Argument(..., help="An index directory written by `mrl-deploy index` (single or sharded)."),
    queries: Optional[Path] = typer.Option(None, "--queries", "-q", help="Query vectors (.npy, Q x d, from the same model as the index)."),
    texts: Optional[Path] = typer.Option(None, "--texts", "--inputs", help="Raw queries embedded with the artifact: .txt (one per line) or .npy/.npz model inputs."),
    artifact_dir: Optional[Path] = typer.Option(None, "--artifact", help="Artifact that embeds --texts (default: the one the index was built with)."),
    k: int = number(10, "-k", "--k", low=1, help="Results per query."),
    shortlist: Optional[int] = number(None, "--shortlist", low=1, help="Shortlist size k' from the HNSW stage (default: the index's tuned default)."),
    funnel: Optional[str] = typer.Option(None, "--funnel", help="Stages DIM:SIZE,... e.g. 16:800,64:200,768:10: the first is the HNSW shortlist (the index's Ds), each next one reranks at DIM and keeps SIZE."),
    exact: bool = typer.Option(False, "--exact", help="Brute-force search at the rerank dim (the ground truth; slow on large corpora)."),
    expansion_search: Optional[int] = number(None, "--expansion-search", low=1, help="HNSW search width (default: the index's; a larger shortlist widens it)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write ids, scores and timing to this .npz."),
    show: int = number(5, "--show", low=0, help="Queries shown in the table (without --json)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="Runtime for embedding --texts (default: the best available)."),
    verify: bool = typer.Option(False, "--verify", help="Check every index file's sha256 before searching (reads every byte; default: sizes only)."),
    json_out: bool = typer.Option(False, "--json", help="Print ids, scores, seconds and QPS as JSON."),
) -> None:
    """Search an index (single or sharded: every shard searched, top-k merged): HNSW shortlist at Ds, rerank at Dr (or a --funnel, or --exact).

    Example: mrl-deploy search corpus.index --queries q.npy -k 10 --funnel 16:800,64:200,768:10
    """
    import time

    import numpy as np

    from ..sharded import load_index

    if (queries is None) == (texts is None):
        raise MRLDeployError("give --queries FILE.npy or --texts FILE (embedded with the artifact), exactly one")
    index = load_index(index_dir, view=True, verify=verify)
    if queries is not None:
        vectors = np.asarray(_load_vectors(queries, "--queries"), dtype=np.float32)
    else:
        source = artifact_dir or (index.settings.get("source") or {}).get("artifact")
        if source is None:
            raise MRLDeployError(f"{index_dir} was built from vectors: give --artifact DIR to embed --texts, "
                                 f"or query vectors with --queries")
        vectors, _, _ = _embed_with_progress(Path(source), texts, index.full_dim, runtime, 64)
    started = time.perf_counter()
    ids, scores = index.search(vectors, k, shortlist_size=shortlist, funnel=funnel, exact=exact,
                               expansion_search=expansion_search)
    seconds = time.perf_counter() - started
    mode = "exact" if exact else (funnel or f"{index.shortlist_dim}:{index.defaults['shortlist_size'] if shortlist is None else shortlist},{index.rerank_dim}:{k}")
    result = {"queries": len(ids), "k": k, "mode": mode, "seconds": seconds, "qps": len(ids) / seconds,
              "ids": ids, "scores": scores}
    if index.has_documents:
        result["documents"] = index.documents(ids)
    if output is not None:
        from ..manifest import atomic_path

        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(output) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, ids=ids, scores=scores, seconds=seconds)
    if json_out:
        emit_json(result)
        return
    print_search(result, show)
    if output is not None:
        console.print(f"[green]wrote[/green] {output}", highlight=False)


@app.command()
def tune(
    index_dir: Path = typer.Argument(..., help="An index directory written by `mrl-deploy index`."),
    queries: Path = typer.Option(..., "--queries", "-q", help="Representative query vectors (.npy, Q x d); a few hundred to a few thousand."),
    k: int = number(10, "-k", "--k", low=1, help="Results per query (recall@k is measured)."),
    recall: float = number(0.95, "--recall", low=0, high=1, low_open=True, help="Target recall@k against exact search at the rerank dim."),
    dims: Optional[str] = typer.Option(None, "--dims", help="Shortlist dims Ds to sweep, e.g. 32,64,128 (default: Ds/2, Ds, 2Ds; each other Ds builds a shortlist index)."),
    dtypes: Optional[str] = typer.Option(None, "--dtypes", help="Shortlist dtypes to sweep, e.g. f16,i8,b1 (default: the index's)."),
    shortlists: Optional[str] = typer.Option(None, "--shortlists", help="Shortlist sizes to sweep (default: 5k, 10k, 20k, 40k)."),
    expansions: Optional[str] = typer.Option(None, "--expansions", help="HNSW search widths to sweep (default: 64,128,256,512; widths below a shortlist size act as that size)."),
    repeats: int = number(2, "--repeats", low=1, help="Timed runs per setting (the best is kept)."),
    save: bool = typer.Option(False, "--save", help="Make the recommended setting the index's default (rebuilding its shortlist index if Ds or dtype change)."),
    verify: bool = typer.Option(False, "--verify", help="Check every index file's sha256 before tuning (reads every byte; default: sizes only)."),
    json_out: bool = typer.Option(False, "--json", help="Print every measured point, the Pareto frontier and the recommendation as JSON."),
) -> None:
    """Sweep Ds, shortlist size, HNSW search width and dtype against exact ground truth; print the Pareto frontier of recall@k vs QPS vs bytes per vector and recommend the fastest setting that meets --recall.

    Example: mrl-deploy tune corpus.index --queries q.npy --recall 0.95 --save
    """
    import numpy as np

    from ..retrieval import AdaptiveIndex, apply_recommendation, tune as run_tune

    from ..sharded import is_sharded

    if is_sharded(index_dir):
        raise MRLDeployError(f"{index_dir} is a sharded index: tune one of its shards (its shards share the settings), "
                             f"e.g. mrl-deploy tune {index_dir / 'shard-0000'} --queries ...")
    index = AdaptiveIndex.load(index_dir, view=not save, verify=verify)
    vectors = np.asarray(_load_vectors(queries, "--queries"), dtype=np.float32)
    with console.status("tuning...") as status:
        tuned = run_tune(index, vectors, k=k, recall=recall, dims=parse_counts(dims, "--dims"),
                         dtypes=parse_csv(dtypes) or None, shortlist_sizes=parse_counts(shortlists, "--shortlists"),
                         expansions=parse_counts(expansions, "--expansions"), repeats=repeats,
                         say=lambda message: status.update(message))
    report = tuned["report"]
    if save:
        with console.status("saving the recommended setting..."):
            apply_recommendation(index, tuned, index_dir)
        report["saved"] = True
    if json_out:
        emit_json(report)
        return
    print_tune(report, index_dir if save else None)
