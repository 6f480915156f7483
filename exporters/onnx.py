"""torch -> ONNX: a graph whose outputs are exactly the chosen granularities, verified against
PyTorch before the artifact is moved into place.

    from mrl_deploy import export
    artifact = export("model_dir", dims=[64, 256], output="artifacts/model")
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..comparison import TOLERANCE, check_output, compare_arrays
from ..dims import check_dims, format_nesting_dims
from ..errors import DimsError, SourceError, VerificationError, check_number, require
from ..graph import MRLExportModule, plan_outputs
from ..manifest import FORMAT_VERSION, MANIFEST_NAME, record_files, staged_directory, write_json_atomic
from ..source_model import SourceModel
from ..sources import load_source, source_sha256
from ..version import __version__

DEFAULT_OPSET = 20
PRECISIONS = ("fp32", "fp16", "int8")
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
VERIFY_BATCH = 4
SAMPLE_ROWS = 64   # rows of --sample in each part (calibration, held-out) of the verification inputs
FLOPS_SEQUENCE_LENGTH = 128


# --- export -----------------------------------------------------------------------------------

def export(
    source: str | Path | SourceModel,
    dims: Iterable[int] | None = None,
    output: str | Path = "artifact",
    *,
    all_dims: bool = False,
    precision: Sequence[str] = ("fp32",),
    sample: Any = None,
    opset: int = DEFAULT_OPSET,
    format: str = "onnx",
    max_batch: int | None = None,
    optimize: bool | None = None,
    progress: Callable[[str], None] | None = None,
    **source_options: Any,
):
    """Export SOURCE at `dims` (or every nesting dim) into the artifact directory `output`.

    Every output of every variant is checked against PyTorch on random inputs (and on `sample`,
    an array / dict / list of texts, if given); a failed check raises VerificationError and
    leaves nothing behind. format="tensorrt" also builds a TensorRT engine (fp16 when fp16 is
    among the precisions, else fp32; optimization profile up to `max_batch`) inside the staged
    directory: a failed build leaves an artifact already at `output` untouched, like any other
    failure. `optimize` fuses transformer ops for ONNX Runtime (exporters.optimize; None: for
    text models only, never for format="tensorrt") where the fused graph verifies too. Returns
    the loaded Artifact."""
    if format not in ("onnx", "tensorrt"):
        raise SourceError(f"unknown format {format!r}: use onnx or tensorrt")
    optimize = check_optimize_format(optimize, format)
    if format == "tensorrt":
        from .tensorrt import require_tensorrt

        require_tensorrt()  # fail before the (slow) ONNX export, not after
    require("torch", "export", "exporting")
    require("onnx", "export", "exporting")
    require("onnxscript", "export", "exporting with torch.onnx (dynamo)")
    from ..artifact import Artifact

    say = progress or (lambda message: None)
    precision = _check_precision(precision)
    import onnx.defs

    # past the newest opset onnx knows, torch.onnx quietly writes an opset-18 graph
    check_number(opset, "opset", 18, onnx.defs.onnx_opset_version(), integer=True)
    model = source if isinstance(source, SourceModel) else load_source(source, **source_options)
    if model.origin:
        say(f"{model.origin['repo_id']}: revision {model.origin['revision']} from the Hugging Face cache ({model.path})")
    say(f"loaded {model.kind} source: full dim {model.full_dim}, nesting dims {format_nesting_dims(model.nesting_dims)}")
    if all_dims and model.nesting_dims is None:
        raise DimsError(f"{model.path} does not declare its nesting dims, so --all-dims has nothing to export: "
                        "pass --nesting-dims (the dims it was trained at) or choose --dims")
    chosen = list(model.nesting_dims) if all_dims else check_dims(dims or [], model.full_dim, model.nesting_dims)
    if all_dims and dims:
        chosen = sorted(set(chosen) | set(check_dims(dims, model.full_dim, model.nesting_dims)))
    module = MRLExportModule(model, chosen)
    outputs = plan_outputs(model, chosen)
    parts = verification_feeds(model, sample)
    optimize, not_optimized = _resolve_optimize(optimize, model)

    with staged_directory(output) as stage:
        started = time.perf_counter()
        say(f"exporting {len(outputs)} outputs ({', '.join(o['name'] for o in outputs)}) to ONNX")
        _torch_to_onnx(module, model, outputs, stage / VARIANT_FILES["fp32"], opset)
        say(f"exported in {time.perf_counter() - started:.1f} s; verifying against PyTorch")
        reference = {part: [_run_torch(module, feed, outputs) for feed in feeds] for part, feeds in parts.items()}
        every_feed, every_reference = [f for p in parts.values() for f in p], [r for p in reference.values() for r in p]
        models = {}
        for variant in precision:
            info = {"file": VARIANT_FILES[variant], "precision": variant}
            if variant == "int8":
                # calibrated on one part, verified on the other: the bound holds on inputs that
                # calibration never saw, and the calibration-set numbers are kept beside it
                info.update(_make_variant(variant, stage / VARIANT_FILES["fp32"], stage / info["file"], parts["calibration"],
                                          smooth=optimize))
                info["verification"] = _verify_int8(stage / info["file"], parts, reference, outputs)
                info["verification_inputs"] = {part: _feed_rows(feeds) for part, feeds in parts.items()}
                say(f"{variant}: held out: " + _summary(info["verification"]) + "; calibration set: "
                    + _summary({name: stats["calibration_set"] for name, stats in info["verification"].items()}))
            else:
                if variant == "fp16":
                    info.update(_make_variant(variant, stage / VARIANT_FILES["fp32"], stage / info["file"], every_feed))
                info["verification"] = verify_variant(stage / info["file"], variant, every_feed, every_reference, outputs)
                say(f"{variant}: " + _summary(info["verification"]))
            models[variant] = info
        _optimize_variants(stage, models, optimize, not_optimized, parts, reference, outputs, say)
        if model.tokenizer_file is not None:
            shutil.copyfile(model.tokenizer_file, stage / "tokenizer.json")
        manifest = _manifest(model, chosen, outputs, models, opset, _flops(model, module, chosen))
        if format == "tensorrt":
            from ..engines import ENGINE_KEYS
            from .tensorrt import DEFAULT_MAX_BATCH, build_engine

            engine = "fp16" if "fp16" in precision else "fp32"
            manifest["models"][ENGINE_KEYS[engine]] = build_engine(
                stage, manifest, engine, DEFAULT_MAX_BATCH if max_batch is None else max_batch, progress=say)
        record_files(stage, manifest)
        write_json_atomic(stage / MANIFEST_NAME, manifest)
    return Artifact.load(output)


def _verify_int8(path: Path, parts, reference, outputs) -> dict[str, dict[str, float]]:
    """int8's verification: its bounds enforced on the held-out part; the calibration part's
    numbers kept beside them (`calibration_set`)."""
    report = verify_variant(path, "int8", parts["held_out"], reference["held_out"], outputs)
    seen = verify_variant(path, "int8", parts["calibration"], reference["calibration"], outputs, enforce=False)
    for name, stats in report.items():
        stats["calibration_set"] = seen[name]
    return report


# The variants whose graphs are fused, each after it was made from the plain fp32 graph:
# - fp32: the fused graph (com.microsoft Attention with packed QKV, BiasGelu).
# - int8 is quantized from the plain graph (smoothed first: exporters/smoothing.py), then fused
#   (MultiHeadAttention between int8 Q/K/V projections). Quantizing the fused graph instead
#   leaves its packed-QKV Attention in fp32 (its int8 form, QAttention, has no input for the
#   additive attention mask the dynamo graph computes): a quarter of the encoder's weights stayed
#   fp32 and that int8 graph ran 1.2-1.3x slower than int8 of the plain graph (MiniLM, 1 thread,
#   128 tokens); fused after quantization it ran ~5% faster than the unfused int8 at the same
#   verified cosine.
# - fp16 stays unfused: it serves GPUs and TensorRT builds fp16 engines from it (TensorRT cannot
#   parse com.microsoft ops), and on CPU fp16 is no faster than fp32.
OPTIMIZED_VARIANTS = ("fp32", "int8")


def check_optimize_format(optimize: bool | None, format: str) -> bool | None:
    """`optimize` for an export to `format`: TensorRT cannot parse the fused ops, so a TensorRT
    export is never optimized (and asking for both is an error)."""
    if format != "tensorrt":
        return optimize
    if optimize:
        raise SourceError("--optimize fuses ops that TensorRT cannot parse: drop it for --format tensorrt")
    return False


def _resolve_optimize(optimize: bool | None, model: SourceModel) -> tuple[bool, str]:
    """Whether to optimize (None: text sources, which are transformer encoders), and the note
    the manifest carries when not."""
    if optimize is None:
        return model.tokenizer_file is not None, "not a text (transformer) model: optimize=True / --optimize tries anyway"
    return bool(optimize), "turned off (optimize=False: --no-optimize, or --format tensorrt)"


def _optimize_variants(stage: Path, models: dict[str, Any], optimize: bool, not_optimized: str,
                       parts, reference, outputs, say: Callable[[str], None]) -> None:
    """Fuse the fp32 / int8 graphs where that verifies against PyTorch like the plain graph did
    (fp32 on every verification input, int8 on the held-out ones); record what happened in each
    variant's `optimization` entry."""
    if not optimize:
        for variant in OPTIMIZED_VARIANTS:
            if variant in models:
                models[variant]["optimization"] = {"applied": False, "note": not_optimized}
        return
    from .optimize import OptimizationWarning, optimize_variant, summary

    every_feed, every_reference = [f for p in parts.values() for f in p], [r for p in reference.values() for r in p]
    verifiers = {"fp32": lambda path: verify_variant(path, "fp32", every_feed, every_reference, outputs),
                 "int8": lambda path: _verify_int8(path, parts, reference, outputs)}
    for variant in OPTIMIZED_VARIANTS:
        if variant not in models:
            continue
        info = models[variant]
        with _quiet():  # the optimizers log every pattern they try
            result = optimize_variant(stage / info["file"], verify=verifiers[variant])
        warn = result.pop("warning", False)
        if result["applied"]:
            info["verification"] = result.pop("verification")
            if "bytes" in info:
                info["bytes"] = (stage / info["file"]).stat().st_size
        elif warn:
            warnings.warn(f"{variant}: {result['note']}", OptimizationWarning, stacklevel=3)
        say(f"{variant}: {'warning: ' if warn else ''}{summary(result)}")
        info["optimization"] = result


def _check_precision(precision: Sequence[str] | str) -> list[str]:
    from ..errors import MRLDeployError

    wanted = [precision] if isinstance(precision, str) else list(precision)
    unknown = [p for p in wanted if p not in PRECISIONS]
    if unknown:
        raise MRLDeployError(f"unknown precision {unknown}; choose from {', '.join(PRECISIONS)}")
    return ["fp32"] + [p for p in PRECISIONS[1:] if p in wanted]  # fp32 is the base of the others


def verification_feeds(model: SourceModel, sample: Any) -> dict[str, list[dict[str, np.ndarray]]]:
    """The inputs every variant is verified on, in two parts that share no input:
      calibration  int8's calibration (which nodes stay fp32) is fitted on these;
      held_out     calibration never sees these: int8's bounds are enforced on them.
    Each part has VERIFY_BATCH random inputs (separate random streams; for texts, separate pools
    of sentences) and, with `sample`, half of the sample's distinct rows (a seeded shuffle, at
    most SAMPLE_ROWS per part; a one-row sample goes to calibration). fp32 and fp16 are verified
    on both parts."""
    parts = {"calibration": [model.random_inputs(batch=VERIFY_BATCH, seed=0)],
             "held_out": [model.random_inputs(batch=VERIFY_BATCH, seed=0, held_out=True)]}
    if sample is not None:
        for part, feed in zip(parts, _split_sample(model, sample)):
            if feed is not None:
                parts[part].append(feed)
    return parts


def _feed_rows(feeds: list[dict[str, np.ndarray]]) -> int:
    return sum(len(next(iter(feed.values()))) for feed in feeds)


def _split_sample(model: SourceModel, sample: Any) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray] | None]:
    """--sample as (calibration feed, held-out feed): its distinct rows, shuffled with a fixed
    seed (a file sorted by class still gives both halves every class), split in half. Duplicate
    rows are dropped first so that no input is in both halves."""
    from ..errors import InputError

    rng = np.random.default_rng(0)
    if isinstance(sample, (list, tuple)) and sample and isinstance(sample[0], str):
        if model.tokenizer_file is None:
            raise InputError("--sample holds texts but the model takes tensors")
        from ..source_model import tokenize_texts

        texts = list(dict.fromkeys(sample))
        order = rng.permutation(len(texts))
        halves = _halves(order)
        return tuple(tokenize_texts(model, [texts[i] for i in half]) if len(half) else None for half in halves)
    if not isinstance(sample, dict):
        sample = {model.inputs[0].name: sample}
    feed = {}
    for spec in model.inputs:
        if spec.name not in sample:
            raise InputError(f"--sample lacks input {spec.name!r}")
        value = np.asarray(sample[spec.name]).astype(spec.dtype)
        fixed = [a for a in spec.shape[1:]]
        if value.ndim != len(spec.shape) or any(isinstance(a, int) and a != v for a, v in zip(fixed, value.shape[1:])):
            raise InputError(f"--sample {spec.name} has shape {value.shape}; expected {spec.shape}")
        feed[spec.name] = value
    counts = {len(value) for value in feed.values()}
    if len(counts) != 1 or 0 in counts:
        raise InputError(f"--sample inputs must have the same number of rows, at least one; got {sorted(counts)}")
    rows = [b"".join(np.ascontiguousarray(value[i]).tobytes() for value in feed.values()) for i in range(counts.pop())]
    distinct = np.array(sorted({row: i for i, row in reversed(list(enumerate(rows)))}.values()), dtype=np.int64)
    halves = _halves(distinct[rng.permutation(len(distinct))])
    return tuple({name: value[half] for name, value in feed.items()} if len(half) else None for half in halves)


def _halves(order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first = min((len(order) + 1) // 2, SAMPLE_ROWS)
    return order[:first], order[first:first + SAMPLE_ROWS]


@contextlib.contextmanager
def _quiet():
    """torch.onnx (dynamo) is chatty on stdout, stderr and logging: keep the user's terminal clean."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _torch_to_onnx(module, model: SourceModel, outputs, path: Path, opset: int) -> None:
    import torch

    example = model.random_inputs(batch=VERIFY_BATCH, seed=1)
    args = tuple(torch.from_numpy(example[spec.name]) for spec in model.inputs)
    dynamic = tuple(
        {axis: torch.export.Dim.AUTO for axis, name in enumerate(spec.shape) if isinstance(name, str)}
        for spec in model.inputs
    )
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                module, args, str(path), input_names=[spec.name for spec in model.inputs],
                output_names=[o["name"] for o in outputs], dynamo=True, opset_version=opset,
                dynamic_shapes=(dynamic,), external_data=params > 1_800_000_000, verbose=False,
            )
    except Exception as exc:
        raise SourceError(f"torch.onnx.export failed for {model.path}: {_export_error_summary(exc)}") from None
    if program is not None and not path.exists():
        program.save(str(path))


def _export_error_summary(exc: Exception) -> str:
    """torch.onnx errors are pages long; the line after 'Exception summary' says what went wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "Exception summary" in line and i + 1 < len(lines):
            return lines[i + 1][:400]
    return (lines[0] if lines else type(exc).__name__)[:400]


def _run_torch(module, feed: dict[str, np.ndarray], outputs) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        values = module(*(torch.from_numpy(value) for value in feed.values()))
    return {o["name"]: v.detach().float().numpy() for o, v in zip(outputs, values)}


def _make_variant(variant: str, fp32_path: Path, path: Path, feeds: list[dict[str, np.ndarray]],
                  smooth: bool = False) -> dict[str, Any]:
    from . import precision as precision_mod

    if variant == "fp16":
        return precision_mod.make_fp16(fp32_path, path) or {}
    # the calibration part of the verification feeds calibrates int8 (layers whose quantization
    # misses the bounds on it stay fp32); the held-out part is kept for verifying the result
    if smooth:  # optimize: move activation outliers into the weights first, so fewer layers stay fp32
        from .smoothing import smooth_activations

        with tempfile.TemporaryDirectory(prefix=".smooth.", dir=path.parent) as tmp:
            smoothed = Path(tmp) / fp32_path.name
            smoothing = smooth_activations(fp32_path, smoothed, feeds)
            if smoothing is not None:
                try:
                    return dict(precision_mod.make_int8(smoothed, path, sample=feeds) or {}, smoothing=smoothing)
                except VerificationError as exc:  # quantize the graph as exported instead
                    failed = dict(smoothing, applied=False, note=f"int8 of the smoothed graph failed: {exc}")
                    return dict(precision_mod.make_int8(fp32_path, path, sample=feeds) or {}, smoothing=failed)
    return precision_mod.make_int8(fp32_path, path, sample=feeds) or {}


def verify_variant(path: Path, variant: str, feeds, references, outputs, enforce: bool = True) -> dict[str, dict[str, float]]:
    """Run the ONNX file with ORT CPU on every feed and compare each output with PyTorch;
    VerificationError past the variant's bounds (unless enforce=False: measure only)."""
    from ..runtimes.ort import create_session

    session = create_session(path, ["CPUExecutionProvider"])
    names = [o["name"] for o in outputs]
    actual = [dict(zip(names, session.run(names, feed))) for feed in feeds]
    report = {}
    for output in outputs:
        name = output["name"]
        got = np.concatenate([a[name] for a in actual]).astype(np.float32)
        want = np.concatenate([r[name] for r in references])
        report[name] = compare_arrays(got, want, kind=output["kind"])
    if enforce:
        # fp32 and fp16 against PyTorch with their bounds; int8 also with top-1 agreement
        failures = [f for output in outputs
                    for f in check_output(output["name"], output["kind"], report[output["name"]], TOLERANCE[variant])]
        if failures:
            where = " on held-out inputs (calibration never saw them)" if variant == "int8" else ""
            raise VerificationError(f"{variant} graph does not match PyTorch{where}: {'; '.join(failures[:3])}")
    return report


def _summary(report: dict[str, dict[str, float]]) -> str:
    worst_cos = min(s["min_cosine"] for s in report.values())
    worst_abs = max(s["max_abs_diff"] for s in report.values())
    return f"min cosine {worst_cos:.7f}, max abs diff {worst_abs:.2e} over {len(report)} outputs"


def _flops(model: SourceModel, module, dims: Sequence[int]) -> dict[str, Any]:
    import torch

    from ..flops import FLOPS_UNIT, count_flops, head_flops

    feed = model.random_inputs(batch=1, seed=2)
    if model.tokenizer_file is not None:  # count text encoders at a stated, typical length
        length = min(FLOPS_SEQUENCE_LENGTH, int(model.preprocessing.get("max_seq_length", FLOPS_SEQUENCE_LENGTH)))
        feed = {name: np.resize(value, (1, length)) for name, value in feed.items()}
        if "attention_mask" in feed:
            feed["attention_mask"] = np.ones_like(feed["attention_mask"])
    total = count_flops(model.module, tuple(torch.from_numpy(v) for v in feed.values()), batch=1)
    classes = model.num_classes or 0
    inner_heads = sum(head_flops(m, classes) for m in model.head_dims)  # MRL modules compute every head
    # MRL-E: the shared head sliced at every nesting dim and at every exported dim
    shared = sorted(set(model.nesting_dims or []) | set(dims)) if model.shared_head is not None else []
    flops = {
        "unit": FLOPS_UNIT,
        "encoder": int(total - inner_heads),
        "heads": {str(m): head_flops(m, classes) for m in (model.head_dims or shared)},
    }
    if model.tokenizer_file is not None:
        flops["sequence_length"] = int(feed[model.inputs[0].name].shape[1])
        flops["note"] = "encoder FLOPs grow with the sequence length; counted at sequence_length tokens"
    return flops


def _manifest(model: SourceModel, dims, outputs, models, opset: int, flops) -> dict[str, Any]:
    import onnx
    import torch

    return {
        "format_version": FORMAT_VERSION,
        "mrl_deploy_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"kind": model.kind, "path": str(Path(model.path).resolve()) if Path(model.path).exists() else model.path,
                   "sha256": source_sha256(model.path), "options": model.options, **model.origin},
        "modality": "text" if model.tokenizer_file is not None else "tensor",
        "full_dim": model.full_dim,
        "nesting_dims": None if model.nesting_dims is None else list(model.nesting_dims),
        "exported_dims": list(dims),
        "normalization": "truncate-then-l2",
        "pre_truncation": model.pre_truncation,
        "head": model.head,
        "inputs": [spec.to_json() for spec in model.inputs],
        "preprocessing": model.preprocessing,
        "outputs": outputs,
        "labels": model.labels,
        "training_data": model.training_data,
        "opset": opset,
        "models": models,
        "flops": flops,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        "cascade": None,
    }
