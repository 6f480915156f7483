"""`mrl-deploy embed ARTIFACT INPUTS --ray`: a corpus embedded by a pool of Ray Data actors.

The run is planned here (mrl_deploy.corpus: files, records, shards of at most `shard_rows`, global
ids), then Ray Data maps the shards still to do through `ShardEmbedder`, a callable class: each
actor loads the artifact once and holds one runtime session (ORT CPU, or a GPU runtime with
`num_gpus` per actor), reads its shard's records, embeds them in batches of `batch_size` with
Artifact.encode and writes the shard's files. Ray Data runs the actor pool (`concurrency`
actors), feeds it, retries and shows progress; the manifest is written here once every shard is
there. Why shards and not rows through Ray Data: a shard written whole by one actor keeps rows in
input order, makes a dead run resumable shard by shard, and never funnels the vectors through this
process. Output files go to a directory every node can write (a shared file system on a cluster).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .cluster import connect, failure

GPU_RUNTIMES = ("ort-cuda", "ort-trt", "tensorrt", "torch-cuda")


class ShardEmbedder:
    """The map_batches class: one artifact and one runtime session per actor."""

    def __init__(self, artifact_dir: str, directory: str, runtime: str, variant: str, threads: int | None,
                 batch_size: int):
        from ..artifact import Artifact
        from ..corpus import PLAN_JSON
        from ..manifest import read_description

        self.artifact = Artifact.load(artifact_dir)
        # the plan from the output directory (written before the run): a large corpus's plan is
        # megabytes, better not carried in every actor's constructor arguments
        self.plan, self.directory = read_description(directory, PLAN_JSON, "embedding run"), directory
        self.options = {"runtime": runtime, "variant": variant, "threads": threads, "batch_size": batch_size}
        self.artifact.runtime(runtime, variant, threads)      # start the session now, once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..corpus import embed_shard

        import ray

        from ..errors import MRLDeployError

        node = ray.get_runtime_context().get_node_id()
        done = []
        for number in batch["shard"]:
            try:
                done.append({**embed_shard(self.artifact, self.plan, int(number), self.directory, **self.options),
                             "error": ""})
            except MRLDeployError as exc:
                # a user's error (a bad input line) comes back as a row: Ray Data's own wrapping of an
                # exception keeps only its traceback text, and the user gets one clear line
                done.append({"shard": int(number), "count": 0, "seconds": 0.0, "error": str(exc)})
        return {**{key: np.asarray([d[key] for d in done]) for key in ("shard", "count", "seconds", "error")},
                "node": np.asarray([node] * len(done))}


def embed_corpus(artifact: Any, inputs: str, output: str | Path, *, dim: int | None = None, dtype: str = "f32",
                 column: str = "text", shard_rows: int | None = None, resume: bool = False,
                 concurrency: int = 1, batch_size: int = 64, runtime: str | None = None, variant: str = "fp32",
                 threads: int | None = None, num_cpus: float = 1, num_gpus: float | None = None,
                 address: str | None = None, say: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Plan, embed the missing shards on Ray, write the manifest; returns the manifest."""
    from ..corpus import DEFAULT_SHARD_ROWS, plan_corpus, prepare_directory, write_manifest
    from ..errors import InputError, check_number
    from ..runtimes import resolve_runtime

    check_number(concurrency, "concurrency", 1, integer=True)
    check_number(batch_size, "batch_size", 1, integer=True)
    check_number(threads, "threads", 1, integer=True, optional=True)
    check_number(num_cpus, "num_cpus", 0)
    check_number(num_gpus, "num_gpus", 0, optional=True)
    runtime = resolve_runtime(runtime, artifact, variant)
    gpus = (1.0 if runtime in GPU_RUNTIMES else 0.0) if num_gpus is None else float(num_gpus)
    if runtime in GPU_RUNTIMES and gpus == 0:
        raise InputError(f"runtime {runtime} runs on a GPU: give each actor one (--num-gpus, e.g. 0.5 or 1)")
    # ONNX Runtime's threads default to the actor's CPUs, so that actors sharing a node do not
    # oversubscribe it
    threads = threads if threads is not None else (max(1, int(num_cpus)) if runtime != "torch" else None)
    plan = plan_corpus(artifact, inputs, dim=dim, dtype=dtype, column=column,
                       shard_rows=DEFAULT_SHARD_ROWS if shard_rows is None else shard_rows)
    output = Path(output).resolve()
    todo = prepare_directory(output, plan, resume)
    say(f"{plan['count']:,} records in {len(plan['inputs'])} files -> {len(plan['shards'])} shards of at most "
        f"{plan['shard_rows']:,}; {len(todo)} to embed" + (f" ({len(plan['shards']) - len(todo)} already done)"
                                                           if resume else "")
        + f"; {concurrency} actors, runtime {runtime}, {threads or 'default'} threads, {gpus:g} GPUs each")
    started = time.perf_counter()
    if todo:
        with connect(address) as ray:
            import ray.data

            # start the whole pool before the first shard goes out (and fail, not hang, when the
            # cluster cannot hold it): otherwise the first actor up takes most of a small corpus
            context = ray.data.DataContext.get_current()
            waited, context.wait_for_min_actors_s = context.wait_for_min_actors_s, 300
            dataset = ray.data.from_items([{"shard": number} for number in todo], override_num_blocks=len(todo))
            mapped = dataset.map_batches(
                ShardEmbedder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(concurrency, len(todo))),
                num_cpus=num_cpus, num_gpus=gpus,
                fn_constructor_kwargs={"artifact_dir": str(artifact.path), "directory": str(output),
                                       "runtime": runtime, "variant": variant, "threads": threads,
                                       "batch_size": batch_size})
            rows = []
            try:
                for row in mapped.iter_rows():
                    if row["error"]:
                        raise InputError(str(row["error"]))
                    rows.append(row)
            except InputError:
                raise
            except Exception as exc:
                raise failure(exc, "embedding") from None
            finally:
                context.wait_for_min_actors_s = waited
    else:
        rows = []
    seconds = time.perf_counter() - started
    manifest = write_manifest(output, plan, runtime=runtime, variant=variant, concurrency=concurrency,
                              batch_size=batch_size, embedded=sum(int(row["count"]) for row in rows),
                              nodes=len({str(row["node"]) for row in rows}), seconds=seconds)
    return manifest
