"""Deployment: serve, bench, triton."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import MRLDeployError
from .common import app, console, emit_json, number, parse_csv


@app.command()
def serve(
    artifact_dir: Path = typer.Argument(..., help="The artifact to serve."),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="An index (`mrl-deploy index`, built with this artifact) for /v1/search; default: none (/v1/search answers 404)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 listens on every interface)."),
    port: int = number(8080, "--port", low=1, high=65535, help="TCP port to listen on."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="ort-cpu, ort-cuda, ort-trt, tensorrt or torch (default: the best available here)."),
    variant: str = typer.Option("fp32", "--variant", help="Model variant to run: fp32, fp16, int8 (those the artifact has)."),
    threads: Optional[int] = number(None, "--threads", low=1, help="CPU threads for ONNX Runtime (default: its own choice, the core count)."),
    max_batch: int = number(64, "--max-batch", low=1, help="Most items in one runtime call: concurrent requests are merged up to this (1 turns dynamic batching off)."),
    max_delay_ms: float = number(2.0, "--max-delay-ms", low=0, high=10000, help="Most milliseconds a request waits for others to share its runtime call (a request with no other on its way never waits)."),
    max_queue: int = number(1024, "--max-queue", low=1, help="Items waiting for the model past which requests are refused at once with 503 and Retry-After."),
    max_request_items: int = number(2048, "--max-request-items", low=1, help="Most inputs in one request (more: 413)."),
    max_body_mb: float = number(32.0, "--max-body-mb", low=0, high=4096, low_open=True, help="Largest request body in MiB (larger: 413)."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Name of an environment variable holding the API key: every endpoint but /health then needs `Authorization: Bearer <key>`. Default: no key. The key is never printed or logged."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="The model name clients send and see (default: the artifact directory's name)."),
    ray: bool = typer.Option(False, "--ray", help="Serve on Ray Serve: the same app as the ingress, --replicas embedding replicas with @serve.batch, one deployment per shard of a sharded --index."),
    replicas: int = number(1, "--replicas", low=1, help="--ray: embedding replicas (each one runtime session)."),
    address: Optional[str] = typer.Option(None, "--address", help="--ray: the Ray cluster to join (auto, ray://HOST:10001); default: a local Ray instance, shut down on exit."),
    num_cpus: float = number(1.0, "--num-cpus", low=0, help="--ray: CPUs Ray reserves per embedding replica (ONNX Runtime threads default to it)."),
    num_gpus: Optional[float] = number(None, "--num-gpus", low=0, help="--ray: GPUs per embedding replica (fractions share one); default 1 for GPU runtimes, 0 otherwise."),
) -> None:
    """Serve an artifact over HTTP: OpenAI /v1/embeddings (with dimensions), TEI /embed, /v1/classify (cascade), /v1/search (with --index), /health, /info, /metrics; dynamic batching and backpressure. SIGTERM drains and exits 0.

    Example: mrl-deploy serve artifacts/minilm --index docs.index --port 8080
    """
    import logging
    import os

    from ..artifact import Artifact
    from ..errors import require
    from ..runtimes import resolve_runtime

    for module in ("fastapi", "uvicorn", "prometheus_client"):
        require(module, "serve", "mrl-deploy serve")
    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise MRLDeployError(f"--api-key-env {api_key_env}: that environment variable is not set or is empty")
    artifact = Artifact.load(artifact_dir, verify=False)   # checksums are checked while the server loads
    runtime = resolve_runtime(runtime, artifact, variant)
    if runtime != "tensorrt":
        artifact.model_file(variant)    # a variant the artifact lacks: fail now, not while loading
    if ray:
        from ..scale.serve import build_application
        from ..scale.serve import run as run_on_ray

        application = build_application(
            artifact_dir, index_dir, replicas=replicas, runtime=runtime, variant=variant, threads=threads,
            num_cpus=num_cpus, num_gpus=num_gpus, max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue,
            model_name=model_name, max_request_items=max_request_items, max_body_bytes=int(max_body_mb * 2**20),
            api_key=api_key)
        run_on_ray(application, host=host, port=port, address=address,
                   say=lambda message: console.print(message, highlight=False))
        console.print("stopped", highlight=False)
        return
    ray_only = {"--replicas": replicas != 1, "--address": address is not None, "--num-cpus": num_cpus != 1.0,
                "--num-gpus": num_gpus is not None}
    if any(ray_only.values()):
        raise MRLDeployError(f"{', '.join(k for k, v in ray_only.items() if v)}: only with --ray")
    from ..serve import create_app, run_server
    from ..sharded import load_index

    index = None
    if index_dir is not None:
        index = load_index(index_dir, view=True)
    app = create_app(artifact_dir, index, model_name=model_name, runtime=runtime, variant=variant, threads=threads,
                     max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue,
                     max_request_items=max_request_items, max_body_bytes=int(max_body_mb * 2**20), api_key=api_key)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("mrl_deploy.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    name = app.state.mrl.model_name
    console.print(f"serving {artifact_dir} as {name!r} on http://{host}:{port} (runtime {runtime}, {variant}"
                  + (f"; index {index_dir}, {len(index):,} vectors" if index is not None else "")
                  + ("; API key required" if api_key else "") + ")", highlight=False)
    run_server(app, host, port)
    console.print("stopped", highlight=False)


@app.command()
def bench(
    artifact_dir: Path = typer.Argument(..., help="An artifact directory."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="Comma-separated runtimes to time side by side: ort-cpu, torch, ort-cuda, ... A name alone runs every variant the artifact has (fp32, fp16, int8); name:variant picks one (ort-cpu:int8). Default: ort-cpu,torch, skipping torch where it is not installed."),
    batch: str = typer.Option("1,8,64", "--batch", "-b", help="Comma-separated batch sizes to time."),
    dims: Optional[List[str]] = typer.Option(None, "--dims", help="Dims to report costs (and quality) for, e.g. 8,16,64 (default: every nesting dim up to the largest exported one)."),
    data: Optional[str] = typer.Option(None, "--data", help="Measure quality: digits, bbc-news, a .npz with x and y (accuracy per head and retrieval recall), or .npy/.txt inputs (recall only)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every number and the machine as JSON to this file ('-' for stdout)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: latency vs batch per runtime, quality vs dims, quality vs cost."),
    duration: float = number(3.0, "--duration", low=0, low_open=True, help="Seconds of timed runs per runtime and batch size (after a warm-up)."),
    threads: Optional[int] = number(None, "--threads", low=1, help="CPU threads for every runtime (ONNX Runtime intra-op, torch.set_num_threads); default: the runtime's own choice."),
    corpus_size: int = number(1_000_000, "--corpus-size", low=1, help="Corpus size N for the retrieval FLOPs per query (exact N*d vs adaptive N*Ds + k*Dr)."),
    shortlist_size: int = number(200, "--shortlist-size", low=1, help="Shortlist size k of adaptive retrieval (FLOPs and recall)."),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help="Time on these inputs (.npy/.npz/.txt) instead of random tensors or a sample text."),
    seq_len: int = number(128, "--seq-len", low=2, help="Text models: tokens per input when timing without --inputs."),
    limit: int = number(2000, "--limit", low=1, help="At most this many --data samples (a seeded subset), to bound the time."),
) -> None:
    """Time every runtime and batch size, and report what each dim costs (bytes, FLOPs) and buys (quality)."""
    from ..artifact import Artifact, load_inputs
    from ..bench import DEFAULT_RUNTIMES, run_bench
    from ..report import plot_report, print_report, write_report_json

    if plot is not None and plot.suffix.lower() != ".png":
        raise MRLDeployError(f"--plot writes a PNG: give a file name ending in .png, got {plot}")
    feed = load_inputs(inputs, Artifact.load(artifact_dir)) if inputs is not None else None
    with console.status("benchmarking") as status:
        report = run_bench(
            artifact_dir, runtimes=runtime or DEFAULT_RUNTIMES, batches=batch, dims=dims, data=data,
            duration=duration, threads=threads, corpus_size=corpus_size, shortlist_size=shortlist_size,
            seq_len=seq_len, inputs=feed, limit=limit, skip_unavailable=runtime is None,
            progress=lambda message: status.update(message),
        )
    print_report(report, console)
    if plot is not None:
        console.print(f"plot: {plot_report(report, plot)}", highlight=False)
    if json_out is not None:
        if str(json_out) == "-":
            emit_json(report)
        else:
            console.print(f"json: {write_report_json(report, json_out)}", highlight=False)


@app.command()
def triton(
    source: Path = typer.Argument(..., help="An artifact directory (written by `mrl-deploy export`); with --check and no --output, a model repository to check."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Model repository to write (an existing one there is replaced only once the new one is complete; any other non-empty directory is refused)."),
    check: bool = typer.Option(False, "--check", help="Check a repository without a Triton server: every config.pbtxt parsed with Triton's schema, inputs/outputs/types/dims against the ONNX graphs, ensemble wiring, each ONNX model run on ONNX Runtime CPU at max_batch_size. With --output, the new repository is checked before it replaces anything. Needs the triton extra."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default: the artifact directory's name, with characters Triton does not allow replaced by _)."),
    max_batch: int = number(64, "--max-batch", low=1, help="max_batch_size of every model."),
    preferred_batch: Optional[str] = typer.Option(None, "--preferred-batch", help="Dynamic batching's preferred batch sizes, comma-separated (default: those of 8,16,32 up to --max-batch)."),
    max_queue_delay_us: int = number(100, "--max-queue-delay-us", low=0, help="Longest wait (microseconds) of a request for others to batch with."),
    instances: int = number(1, "--instances", low=1, help="Instances (copies) of each model per GPU, or on the CPU."),
    kind: str = typer.Option("gpu", "--kind", help="gpu or cpu: the instance kind of config.pbtxt (configs/cpu.pbtxt is always written for --model-config-name=cpu; int8 models are always CPU)."),
    trt_accelerator: bool = typer.Option(False, "--trt-accelerator", help="Run the ONNX models through ONNX Runtime's TensorRT execution provider on GPU instances (engine cache, one profile up to --max-batch)."),
    trt_fp16: bool = typer.Option(False, "--trt-fp16", help="With --trt-accelerator: let TensorRT use fp16 (precision_mode FP16; default FP32)."),
    variants: Optional[str] = typer.Option(None, "--variants", help="Variants to serve besides fp32 (always written), comma-separated: fp16, int8, tensorrt, tensorrt-fp16 (default: every one the artifact has)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary (models, settings, check report) as JSON."),
) -> None:
    """Write a Triton Inference Server model repository for an artifact, or check one (--check).

    Examples: mrl-deploy triton artifacts/minilm -o triton-repo --check   |   mrl-deploy triton --check triton-repo
    """
    from ..triton import check_repository, parse_batch_sizes, write_repository

    if output is None:
        if not check:
            raise MRLDeployError("give --output REPO to write a repository, or --check to check the repository SOURCE")
        with console.status("checking...") as status:
            report = check_repository(source, progress=lambda message: status.update(message))
        if json_out:
            emit_json(report)
        else:
            console.print(f"[green]ok[/green] {source}: {len(report['models'])} models pass the check "
                          f"({', '.join(report['models'])})", highlight=False)
        return
    sizes = parse_batch_sizes(preferred_batch, "--preferred-batch") if preferred_batch is not None else None
    with console.status("writing the repository...") as status:
        summary = write_repository(
            source, output, name=name, max_batch=max_batch, preferred_batch=sizes, max_queue_delay_us=max_queue_delay_us,
            instances=instances, kind=kind, trt_accelerator=trt_accelerator, trt_fp16=trt_fp16,
            variants=parse_csv(variants) if variants is not None else None, check=check,
            progress=lambda message: status.update(message),
        )
    if json_out:
        emit_json(summary)
        return
    for note in summary["notes"]:
        console.print(f"note: {note}", highlight=False)
    checked = " (checked)" if check else ""
    console.print(f"[green]wrote[/green] {summary['repository']}{checked}: models {', '.join(summary['models'])}; "
                  f"see its README.md", highlight=False)
