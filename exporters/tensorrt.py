"""ONNX -> TensorRT engine (model.plan) inside an artifact.

    from mrl_deploy.exporters.tensorrt import add_engine
    artifact = add_engine(artifact, precision="fp16", max_batch=64)

What is built, and how, is planned by pure functions (tested without TensorRT):
- `build_plan(version, precision)`: TensorRT 11 builds strongly typed networks only and has no
  BuilderFlag.FP16, so an fp16 engine comes from the fp16 ONNX graph (float16 weights and
  activations, fp32 I/O and norms); TensorRT 10 (JetPack 6, the ORT TensorRT EP) builds the fp32
  graph with BuilderFlag.FP16. A flag the plan needs and the module lacks is an error, never a
  silent fp32 build. fp32 engines clear BuilderFlag.TF32 (on by default; TF32 matmuls keep 10
  mantissa bits and would miss the fp32 bound against PyTorch).
- `profile_shapes(inputs, max_batch)`: the optimization profile (min/opt/max) of every input.
The build itself (`build_engine`) needs TensorRT and a GPU; the timing cache is saved in the
artifact (timing.cache) so rebuilds are fast, and the engine is verified against ONNX Runtime CPU
on the fp32 graph before it is recorded.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..engines import ENGINE_FILES, ENGINE_KEYS, TIMING_CACHE_FILE, check_version, engine_entry, parse_version
from ..errors import InputError, MRLDeployError, RuntimeUnavailableError, VerificationError, check_number
from ..manifest import MANIFEST_NAME, read_manifest, record_files, write_bytes_atomic, write_json_atomic
from ..runtimes.tensorrt import gpu_from_torch, require_cuda_torch, require_tensorrt

DEFAULT_WORKSPACE_GB = 4.0
DEFAULT_MAX_BATCH = 64
PRECISIONS = ("fp32", "fp16")
# A typical text length for the profile's opt point; the max is the artifact's max_seq_length.
OPT_SEQUENCE_LENGTH = 128
VERIFY_BATCH = 8


# --- planning (pure) --------------------------------------------------------------------------

def build_plan(version: str, precision: str) -> dict[str, Any]:
    """How to build a `precision` engine with TensorRT `version`: which ONNX graph, strongly
    typed or not, which builder flags to set and clear."""
    check_version(version)
    if precision == "int8":
        raise InputError("TensorRT int8 engines need explicit quantization (Q/DQ nodes) or calibration, which "
                         "mrl-deploy does not build: build an fp32 or fp16 engine (int8 runs on ort-cpu)")
    if precision not in PRECISIONS:
        raise InputError(f"unknown TensorRT precision {precision!r}: use fp32 or fp16")
    major = parse_version(version)[0]
    strongly_typed = major >= 11
    plan = {
        "tensorrt_version": version,
        "precision": precision,
        "strongly_typed": strongly_typed,
        # TensorRT 11 is strongly typed whatever the flag (deprecated there and ignored): no network flags.
        "network_flags": [],
        "onnx_variant": "fp16" if (precision == "fp16" and strongly_typed) else "fp32",
        "set_flags": ["FP16"] if (precision == "fp16" and not strongly_typed) else [],
        "clear_flags": ["TF32"] if precision == "fp32" else [],
    }
    plan["path"] = ("strongly typed network from the fp16 ONNX graph" if plan["onnx_variant"] == "fp16"
                    else "fp32 ONNX graph with BuilderFlag.FP16" if plan["set_flags"]
                    else "fp32 ONNX graph, TF32 off")
    return plan


def check_flags(trt: Any, plan: dict[str, Any]) -> None:
    """The module must have every flag the plan sets: a TensorRT reporting version 10 without
    BuilderFlag.FP16 is an error, not an fp32 engine labelled fp16."""
    missing = [flag for flag in plan["set_flags"] if not hasattr(trt.BuilderFlag, flag)]
    if missing:
        raise RuntimeUnavailableError(
            f"TensorRT {plan['tensorrt_version']} has no BuilderFlag.{', '.join(missing)}: cannot build a "
            f"{plan['precision']} engine with it"
        )


def profile_shapes(inputs: list[dict[str, Any]], max_batch: int, *, opt_batch: int | None = None,
                   max_seq_length: int | None = None) -> dict[str, dict[str, list[int]]]:
    """Optimization profile per input: batch 1..max_batch (opt: `opt_batch`, default max_batch,
    where throughput matters), a "sequence" axis 1..max_seq_length (opt: 128 tokens, capped),
    fixed axes as they are. Axis names come from the manifest's input shapes."""
    check_number(max_batch, "--max-batch", 1, integer=True)
    opt_batch = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch:
        raise InputError(f"the profile's opt batch {opt_batch} must be within 1..{max_batch}")
    shapes = {}
    for spec in inputs:
        axes = []  # (min, opt, max) per axis
        for position, axis in enumerate(spec["shape"]):
            if isinstance(axis, int):
                axes.append((axis, axis, axis))
            elif position == 0 or axis == "batch":
                axes.append((1, int(opt_batch), int(max_batch)))
            elif max_seq_length:
                axes.append((1, min(OPT_SEQUENCE_LENGTH, int(max_seq_length)), int(max_seq_length)))
            else:
                raise InputError(f"input {spec['name']} has a dynamic axis {axis!r} and the artifact gives no "
                                 "max_seq_length to bound it")
        low, opt, high = (list(column) for column in zip(*axes))
        shapes[spec["name"]] = {"min": low, "opt": opt, "max": high}
    return shapes


def engine_settings(manifest: dict[str, Any], precision: str, max_batch: int, workspace_gb: float,
                    version: str, opt_batch: int | None = None) -> dict[str, Any]:
    """Everything a build of this artifact needs, decided before TensorRT is touched."""
    check_number(workspace_gb, "the workspace limit (GB)", 0, low_open=True)
    plan = build_plan(version, precision)
    max_len = (manifest.get("preprocessing") or {}).get("max_seq_length")
    plan.update(
        file=ENGINE_FILES[precision],
        key=ENGINE_KEYS[precision],
        max_batch=int(max_batch),
        profiles=profile_shapes(manifest["inputs"], max_batch, opt_batch=opt_batch, max_seq_length=max_len),
        workspace_bytes=int(workspace_gb * (1 << 30)),
    )
    return plan


# --- building (TensorRT + a GPU) ------------------------------------------------------------

def configure(trt: Any, builder: Any, config: Any, plan: dict[str, Any], cache_bytes: bytes = b"") -> Any:
    """Apply the plan to a builder config: workspace limit, precision flags, the optimization
    profile, the timing cache. Returns the timing cache object."""
    check_flags(trt, plan)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan["workspace_bytes"])
    for flag in plan["set_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan["clear_flags"]:
        if hasattr(trt.BuilderFlag, flag):  # nothing to clear where the flag does not exist
            config.clear_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, shape in plan["profiles"].items():
        profile.set_shape(name, shape["min"], shape["opt"], shape["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):  # a cache from another version/GPU: start afresh
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def network_flags(trt: Any, plan: dict[str, Any]) -> int:
    flags = 0
    for name in plan["network_flags"]:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return flags


def parse_onnx(trt: Any, network: Any, logger: Any, path: Path) -> Any:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise MRLDeployError(f"TensorRT cannot parse {path.name}: {'; '.join(errors[:3]) or 'unknown error'}")
    return parser


def build_engine(artifact_dir: str | os.PathLike, manifest: dict[str, Any], precision: str = "fp32",
                 max_batch: int = DEFAULT_MAX_BATCH, workspace_gb: float = DEFAULT_WORKSPACE_GB, *,
                 opt_batch: int | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the `precision` engine of the artifact in `artifact_dir` and write it (model.plan or
    model.fp16.plan) and the timing cache there, each atomically; verify it against ONNX Runtime
    CPU on the fp32 graph. Returns the manifest entry (models[ENGINE_KEYS[precision]]); mrl.json
    is not touched (add_engine records it). Needs TensorRT 10+ and a GPU."""
    say = progress or (lambda message: None)
    trt = require_tensorrt()
    torch = require_cuda_torch("building and verifying TensorRT engines")
    directory = Path(artifact_dir)
    settings = engine_settings(manifest, precision, max_batch, workspace_gb, str(trt.__version__), opt_batch)
    check_flags(trt, settings)
    gpu = gpu_from_torch(torch)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mrl-trt-") as tmp:
        onnx_path = _onnx_for(directory, manifest, settings["onnx_variant"], Path(tmp))
        say(f"building a {precision} TensorRT {trt.__version__} engine ({settings['path']}) on {gpu['name']}")
        plan_bytes, cache_bytes = _build(trt, onnx_path, settings, _read(directory / TIMING_CACHE_FILE))
    entry = {
        "file": settings["file"],
        "precision": precision,
        "format": "tensorrt",
        "onnx": manifest["models"][settings["onnx_variant"]]["file"] if settings["onnx_variant"] in manifest["models"]
        else f"{manifest['models']['fp32']['file']} converted to fp16 (exporters.precision.make_fp16)",
        "tensorrt_version": str(trt.__version__),
        "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "strongly_typed": settings["strongly_typed"],
        "builder_flags": settings["set_flags"],
        "cleared_flags": settings["clear_flags"],
        "build_path": settings["path"],
        "max_batch": settings["max_batch"],
        "profiles": settings["profiles"],
        "workspace_bytes": settings["workspace_bytes"],
        "timing_cache": TIMING_CACHE_FILE,
        "verified_against": "onnxruntime CPU, fp32 graph (itself verified against PyTorch at export)",
        "build_seconds": round(time.perf_counter() - started, 2),
        "bytes": len(plan_bytes),
    }
    # The engine is verified under a temporary name and moved into place only if it passes:
    # a failed build or verification leaves the artifact as it was.
    staged = write_bytes_atomic(directory / f".{settings['file']}.staged", plan_bytes)
    try:
        say(f"built in {entry['build_seconds']:.1f} s; verifying against ONNX Runtime CPU")
        entry["verification"], entry["device_memory_bytes"] = verify_engine(
            directory, manifest, precision, dict(entry, file=staged.name))
        os.replace(staged, directory / settings["file"])
    finally:
        staged.unlink(missing_ok=True)
    write_bytes_atomic(directory / TIMING_CACHE_FILE, cache_bytes)
    return entry


def _build(trt: Any, onnx_path: Path, settings: dict[str, Any], cache_bytes: bytes) -> tuple[bytes, bytes]:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, settings))
    parse_onnx(trt, network, logger, onnx_path)
    config = builder.create_builder_config()
    configure(trt, builder, config, settings, cache_bytes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise MRLDeployError("TensorRT could not build the engine (see the TensorRT messages above)")
    return bytes(memoryview(serialized)), bytes(memoryview(config.get_timing_cache().serialize()))


def _onnx_for(directory: Path, manifest: dict[str, Any], variant: str, tmp: Path) -> Path:
    """The ONNX graph the plan builds from; an fp16 graph is made from the fp32 one when the
    artifact has none (TensorRT 11 without --precision fp16 at export)."""
    models = manifest["models"]
    base = variant if variant in models else "fp32"
    if (models[base].get("optimization") or {}).get("applied"):
        raise MRLDeployError(f"the {base} graph of {directory} is fused for ONNX Runtime (com.microsoft ops that "
                             "TensorRT cannot parse): re-export with --no-optimize (or --format tensorrt) to build an engine")
    if variant in models:
        return directory / models[variant]["file"]
    from .precision import make_fp16

    path = tmp / "model.fp16.onnx"
    make_fp16(directory / models["fp32"]["file"], path)
    return path


def verify_engine(directory: Path, manifest: dict[str, Any], precision: str,
                  entry: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """Run the new engine and the fp32 ONNX graph (ORT CPU) on the same random batch; raise
    VerificationError past the precision's bound (the exporter's bounds). Returns the report and
    the device memory an execution context of the engine needs (device_memory_size_v2)."""
    from ..artifact import Artifact
    from ..runtimes import create_runtime
    from ..comparison import check_output, compare_arrays, tolerance_for
    from ..feeds import artifact_feed

    staged = dict(manifest, models={**manifest["models"], ENGINE_KEYS[precision]: entry})
    artifact = Artifact(directory, staged)
    feed = artifact_feed(artifact, batch=min(VERIFY_BATCH, entry["max_batch"]), seed=0)
    with create_runtime("ort-cpu", artifact, variant="fp32") as reference:
        expected = reference.infer(feed)
    with create_runtime("tensorrt", artifact, variant=precision) as engine:
        actual = engine.infer(feed)
        device_memory = engine.device_memory_bytes
    bounds = tolerance_for(precision)
    report, failures = {}, []
    for output in manifest["outputs"]:
        stats = compare_arrays(actual[output["name"]], expected[output["name"]], kind=output["kind"])
        failures += check_output(output["name"], output["kind"], stats, bounds)
        report[output["name"]] = stats
    if failures:
        raise VerificationError(f"the {precision} TensorRT engine does not match ONNX Runtime: {'; '.join(failures[:3])}")
    return report, device_memory


def add_engine(artifact: Any, precision: str = "fp32", max_batch: int = DEFAULT_MAX_BATCH,
               workspace_gb: float = DEFAULT_WORKSPACE_GB, *, opt_batch: int | None = None,
               progress: Callable[[str], None] | None = None):
    """Build the engine into an existing artifact and record it (models entry, file checksums) in
    mrl.json atomically. Returns the reloaded Artifact."""
    from ..artifact import Artifact

    directory = Path(artifact.path)
    manifest = read_manifest(directory)
    entry = build_engine(directory, manifest, precision, max_batch, workspace_gb, opt_batch=opt_batch, progress=progress)
    manifest["models"][ENGINE_KEYS[precision]] = entry
    record_files(directory, manifest)
    write_json_atomic(directory / MANIFEST_NAME, manifest)
    return Artifact.load(directory)


def rebuild_engine(artifact: Any, variant: str = "fp32", progress: Callable[[str], None] | None = None):
    """Rebuild an engine for this TensorRT and GPU with the settings it was built with."""
    _, entry = engine_entry(artifact.manifest, variant, str(artifact.path))
    workspace_gb = entry.get("workspace_bytes", DEFAULT_WORKSPACE_GB * (1 << 30)) / (1 << 30)
    batch_profile = next(iter(entry.get("profiles", {}).values()), {})
    opt_batch = (batch_profile.get("opt") or [None])[0]
    return add_engine(artifact, entry["precision"], int(entry.get("max_batch", DEFAULT_MAX_BATCH)), workspace_gb,
                      opt_batch=opt_batch, progress=progress)


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.is_file() else b""


__all__ = [
    "DEFAULT_MAX_BATCH", "DEFAULT_WORKSPACE_GB", "add_engine", "build_engine", "build_plan", "check_flags",
    "configure", "engine_settings", "profile_shapes", "rebuild_engine", "require_tensorrt",
]
