"""Edge precision variants of an exported fp32 graph: fp16 and dynamic int8.

Both variants keep the fp32 graph's interface (float32 inputs and outputs, same names and
shapes), so a caller feeds them exactly like model.onnx. Each maker returns a small dict for the
manifest's `models[variant]` entry; verification against PyTorch is the exporter's job.

    info = make_fp16(art / "model.onnx", art / "model.fp16.onnx")
    info = make_int8(art / "model.onnx", art / "model.int8.onnx", sample=feeds)

make_int8 chooses the op types from the graph (never Conv), quantizes weights per channel, and
with a sample keeps the few nodes with outlier activations in fp32 until the variant agrees with
the fp32 graph (MiniLM: plain int8 reached only cosine ~0.98 on random token ids).

Needs onnx and onnxruntime (its bundled fp16 converter and quantizer); no torch.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..comparison import compare_arrays
from ..errors import ArtifactError, MRLDeployError, VerificationError, require
from ..manifest import atomic_path

# Kept in fp32 in the fp16 variant. Norms square their input: the sum of squares leaves fp16's
# range (65504) once the vector's norm passes 256, which unnormalised embeddings reach. ORT CPU
# computes them in fp32 anyway; CUDA / TensorRT kernels may not. One reduction per vector: free.
FP16_KEEP_FP32_OPS: tuple[str, ...] = ("ReduceL2", "LpNormalization", "ReduceSumSquare")

# Integer kernels for these are faster than fp32 on CPU. Conv is left out on purpose: ORT's
# ConvInteger made a CNN ~5x slower than fp32 here (ENVIRONMENT.md), so CNNs get MatMul/Gemm only.
INT8_DENSE_OPS: tuple[str, ...] = ("MatMul", "Gemm")
INT8_ATTENTION_OPS: tuple[str, ...] = ("Attention",)   # com.microsoft fused attention, if present
WEIGHT_TYPES = ("qint8", "quint8")
# QInt8 weights, measured on this AMD EPYC (AVX-512 VNNI), MiniLM batch 32: 1.9x faster than fp32
# against 1.3x for QUInt8 at the same cosine (per channel). Per-channel weight scales cost ~5% of
# speed and lift MiniLM's worst cosine from 0.92 to 0.99 (per-tensor scales lose small channels).
DEFAULT_WEIGHT_TYPE = "qint8"
# With a sample, make_int8 keeps the worst nodes in fp32 until the variant reaches these against
# the fp32 graph: a margin above the exporter's PyTorch bounds (cosine 0.99, top-1 0.99).
INT8_MIN_COSINE = 0.993
INT8_MIN_TOP1 = 0.99
# The integer kernels dynamic quantization leaves in the graph (counted as "nodes_quantized").
INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QAttention", "MatMulIntegerToFloat")


def _load(model_or_path: Any):
    onnx = require("onnx", "export", "building precision variants")
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = Path(model_or_path)
    if not path.is_file():
        raise ArtifactError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends for corrupt files
        raise ArtifactError(f"cannot read {path} as an ONNX model: {str(exc).splitlines()[0][:200]}") from None


def op_counts(model_or_path: Any) -> Counter:
    """How many nodes of each op type the main graph has (subgraphs and functions included)."""
    model = _load(model_or_path)
    counts: Counter = Counter()

    def walk(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    for function in model.functions:
        for node in function.node:
            counts[node.op_type] += 1
    return counts


def has_op(model_or_path: Any, op_type: str) -> bool:
    """Whether the graph has at least one node of `op_type` (e.g. "Conv")."""
    return op_counts(model_or_path)[op_type] > 0


def has_embedding_table(model_or_path: Any) -> bool:
    """Whether a Gather looks up rows of a float weight (a token embedding table)."""
    model = _load(model_or_path)
    floats = {t.name for t in model.graph.initializer if t.data_type == 1}  # TensorProto.FLOAT
    return any(n.op_type == "Gather" and n.input and n.input[0] in floats for n in model.graph.node)


def int8_op_types(model_or_path: Any) -> list[str]:
    """The op types to quantize dynamically for this graph: MatMul/Gemm always; Gather when it
    reads an embedding table (int8 rows halve a text model's file at no measurable cosine cost);
    fused Attention when present; never Conv (ConvInteger is slower than fp32 Conv on CPU)."""
    model = _load(model_or_path)
    counts = op_counts(model)
    chosen = list(INT8_DENSE_OPS)
    if has_embedding_table(model):
        chosen.append("Gather")
    return chosen + [op for op in INT8_ATTENTION_OPS if counts[op]]


def _io_dtypes(model) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}


def make_fp16(src: str | os.PathLike, dst: str | os.PathLike, *,
              keep_fp32_ops: Iterable[str] | None = None) -> dict[str, Any]:
    """Write an fp16 variant of the fp32 graph `src` to `dst`.

    Weights and activations become float16; inputs and outputs stay float32 (Cast nodes at the
    boundary), so callers feed and read float32 as before. Ops in `keep_fp32_ops` (default
    FP16_KEEP_FP32_OPS, plus ORT's list of ops without fp16 kernels) run in fp32 between Casts.
    Returns the manifest info: precision, method, ops kept in fp32 (and how many nodes), counts.
    """
    require("onnxruntime", "cpu", "building the fp16 variant")
    from onnxruntime.transformers import float16

    src, dst = Path(src), Path(dst)
    model = _load(src)
    onnx = require("onnx", "export", "building precision variants")
    wanted = tuple(FP16_KEEP_FP32_OPS if keep_fp32_ops is None else keep_fp32_ops)
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(wanted))
    io_dtypes, counts = _io_dtypes(model), op_counts(model)  # the converter edits `model` in place
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    except Exception as exc:
        raise MRLDeployError(f"fp16 conversion of {src} failed: {str(exc).splitlines()[0][:300]}") from None
    if _io_dtypes(converted) != io_dtypes:  # the interface promise callers rely on
        raise MRLDeployError(f"fp16 conversion of {src} changed the input/output dtypes")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        onnx.save_model(converted, str(tmp))

    kept = {op: counts[op] for op in block if counts[op]}
    dtypes = Counter(t.data_type for t in converted.graph.initializer)
    return {
        "precision": "fp16",
        "method": "onnxruntime.transformers.float16 (keep_io_types)",
        "io_dtype": "float32",
        "ops_kept_fp32": sorted(kept),
        "nodes_kept_fp32": sum(kept.values()),
        "initializers_fp16": dtypes[onnx.TensorProto.FLOAT16],
        "initializers_fp32": dtypes[onnx.TensorProto.FLOAT],
        "bytes": dst.stat().st_size,
    }


def _preprocess(src: Path, tmp_dir: Path) -> Path | None:
    """ORT's quantization pre-processing (graph optimisation + ONNX shape inference), or None if it
    fails. Symbolic shape inference is skipped: it crashes on graphs with F.normalize."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp_dir / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    except Exception:
        return None  # pre-processing only helps; quantize the graph as exported instead
    return out


def _feeds(sample: Any) -> list[dict[str, np.ndarray]]:
    if sample is None:
        return []
    return [sample] if isinstance(sample, dict) else list(sample)


def _session(path: Path):
    from ..runtimes.ort import create_session

    return create_session(path, ["CPUExecutionProvider"])


def _run(path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    session = _session(path)
    names = [o.name for o in session.get_outputs()]
    results: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            results[name].append(np.asarray(value, dtype=np.float64).reshape(len(value), -1))
    return results


def agreement(actual: dict[str, list[np.ndarray]], expected: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Worst row-wise cosine over all outputs, and worst top-1 agreement over `logits*` outputs
    (mrl_deploy.comparison's statistics; NaN propagates, so it never passes a bound)."""
    stats = [compare_arrays(np.concatenate(actual[name]), np.concatenate(chunks),
                            kind="logits" if name.startswith("logits") else "embedding")
             for name, chunks in expected.items()]
    return {"min_cosine": float(np.min([s["min_cosine"] for s in stats] + [1.0])),
            "top1_agreement": float(np.min([s["top1_agreement"] for s in stats if "top1_agreement" in s] + [1.0]))}


def _quantizable_nodes(model, op_types: list[str]) -> list[Any]:
    """MatMul/Gemm nodes with an initializer weight: the ones dynamic quantization turns into int8."""
    constants = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and n.op_type in op_types
            and len(n.input) > 1 and n.input[1] in constants and n.name]


def tensor_values(path: str | os.PathLike, names: list[str], feeds: list[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Per feed, the values of the named tensors of the graph at `path` (graph inputs or any node's
    output): a copy of the graph that also outputs them is run on ONNX Runtime CPU (written
    beside `path` while it runs, then deleted)."""
    onnx = require("onnx", "export", "building precision variants")
    path = Path(path)
    model = _load(path)
    graph_inputs = {i.name for i in model.graph.input}
    present = {o.name for o in model.graph.output}
    computed = [name for name in dict.fromkeys(names) if name not in graph_inputs]
    for name in computed:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    probe = path.parent / f".probe.{path.name}"
    onnx.save_model(model, str(probe))
    try:
        session = _session(probe)
        for feed in feeds:
            values = dict(zip(computed, session.run(computed, feed))) if computed else {}
            yield {name: feed[name] if name in graph_inputs else values[name] for name in names}
    finally:
        probe.unlink(missing_ok=True)


def rank_by_activation_range(path: str | os.PathLike, feeds: list[dict[str, np.ndarray]], op_types: list[str]) -> list[tuple[str, float]]:
    """Quantizable nodes, worst first, by (max - min) / rms of their activation input on `feeds`.

    Dynamic quantization maps each activation tensor's [min, max] onto 256 uint8 steps, so its
    error relative to the signal grows with this ratio: outlier features (e.g. the input of a
    transformer's FFN down-projection) make it large, and those nodes lose the most accuracy."""
    nodes = _quantizable_nodes(_load(path), op_types)
    ratio: dict[str, float] = {}
    for values in tensor_values(path, [n.input[0] for n in nodes], feeds):
        for node in nodes:
            x = np.asarray(values[node.input[0]], dtype=np.float64)
            rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
            spread = max(float(x.max(initial=0.0)), 0.0) - min(float(x.min(initial=0.0)), 0.0)
            ratio[node.name] = max(ratio.get(node.name, 0.0), spread / rms if rms > 0 else 0.0)
    return sorted(ratio.items(), key=lambda item: -item[1])


def fewest_fp32_nodes(attempt: Callable[[int], dict[str, float]], count: int,
                      passes: Callable[[dict[str, float]], bool]) -> tuple[int | None, dict[int, dict[str, float]]]:
    """The smallest k < count for which `attempt(k)` (quantize with the k worst nodes kept in fp32,
    then measure) passes: tries k = 0, 1, 2, 4, 8, ... then bisects the last gap. Returns
    (k or None, every measurement by k). Keeping nodes in fp32 only brings the graph closer to
    fp32, so passing is taken to be monotone in k."""
    tried: dict[int, dict[str, float]] = {}
    failed, k = -1, 0
    while True:
        tried[k] = attempt(k)
        if passes(tried[k]):
            break
        failed = k
        if k >= count - 1:  # only the all-fp32 graph is left: int8 does not work here
            return None, tried
        k = min(1 if k == 0 else 2 * k, count - 1)
    good = k
    while good - failed > 1:  # passes at good, fails at failed: bisect
        middle = (good + failed) // 2
        tried[middle] = attempt(middle)
        good, failed = (middle, failed) if passes(tried[middle]) else (good, middle)
    return good, tried


def make_int8(src: str | os.PathLike, dst: str | os.PathLike, *,
              op_types: Iterable[str] | None = None,
              weight_type: str = DEFAULT_WEIGHT_TYPE,
              per_channel: bool = True,
              preprocess: bool = True,
              sample: dict[str, np.ndarray] | list[dict[str, np.ndarray]] | None = None,
              min_cosine: float = INT8_MIN_COSINE,
              min_top1: float = INT8_MIN_TOP1,
              exclude_nodes: Iterable[str] = ()) -> dict[str, Any]:
    """Write a dynamically quantized int8 variant of the fp32 graph `src` to `dst`.

    Weights of the quantized ops are stored as int8 (`weight_type` "qint8" or "quint8"; per output
    channel by default), activations are quantized to uint8 at run time; inputs and outputs stay
    float32. `op_types=None` chooses from the graph (see int8_op_types): MatMul/Gemm, Gather on
    embedding tables, Attention if fused; never Conv.

    With `sample` (one feed dict or a list of them), the variant is checked against the fp32 graph
    on it: while the worst row cosine over all outputs is below `min_cosine` or the top-1 agreement
    of `logits*` outputs is below `min_top1`, the nodes with the widest activation ranges (see
    rank_by_activation_range) are kept in fp32, 1, 2, 4, ... at a time. If only an all-fp32 graph
    passes, VerificationError. Returns the manifest info: op types quantized, weight type, nodes
    quantized and kept in fp32, the sample agreement, size.
    """
    require("onnxruntime", "cpu", "building the int8 variant")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    model = _load(src)
    if weight_type.lower() not in WEIGHT_TYPES:
        raise MRLDeployError(f"unknown int8 weight type {weight_type!r}; choose from {', '.join(WEIGHT_TYPES)}")
    chosen = list(int8_op_types(model) if op_types is None else op_types)
    if not chosen:
        raise MRLDeployError("make_int8 needs at least one op type to quantize")
    qtype = QuantType.QInt8 if weight_type.lower() == "qint8" else QuantType.QUInt8
    feeds = _feeds(sample)
    counts = op_counts(model)

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".int8.", dir=dst.parent) as tmp:
        tmp_dir = Path(tmp)
        base = (_preprocess(src, tmp_dir) if preprocess else None) or src
        out = tmp_dir / "quantized.onnx"

        def quantize(excluded: list[str]) -> None:
            # The quantizer first rewrites Gemm "g" into MatMul "g_MatMul" (+ Add), then matches
            # nodes_to_exclude against the new names: name both.
            names = [name for node in excluded for name in (node, f"{node}_MatMul")]
            try:
                quantize_dynamic(str(base), str(out), op_types_to_quantize=chosen, weight_type=qtype,
                                 per_channel=per_channel, nodes_to_exclude=names)
            except Exception as exc:
                raise MRLDeployError(f"int8 quantization of {src} failed: {str(exc).splitlines()[0][:300]}") from None

        kept = list(exclude_nodes)
        measured = None
        if not feeds:
            quantize(kept)
        else:
            reference = _run(src, feeds)
            ranked = [name for name, _ in rank_by_activation_range(Path(base), feeds, chosen) if name not in kept]

            def attempt(k: int) -> dict[str, float]:
                quantize(kept + ranked[:k])
                return agreement(_run(out, feeds), reference)

            def passes(measured: dict[str, float]) -> bool:
                return measured["min_cosine"] >= min_cosine and measured["top1_agreement"] >= min_top1

            best, tried = fewest_fp32_nodes(attempt, len(ranked), passes)
            if best is None:
                closest = max(tried.values(), key=lambda m: m["min_cosine"])
                raise VerificationError(
                    f"int8 variant of {src} stays below cosine {min_cosine} / top-1 {min_top1} against "
                    f"fp32 on the sample unless every quantizable node is kept in fp32 (best: "
                    f"cosine {closest['min_cosine']:.4f}, top-1 {closest['top1_agreement']:.3f})")
            if list(tried)[-1] != best:  # `out` holds the last attempt, not the best one
                quantize(kept + ranked[:best])
            kept += ranked[:best]
            measured = tried[best]
        quantized = _load(out)
        if _io_dtypes(quantized) != _io_dtypes(model):
            raise MRLDeployError(f"int8 quantization of {src} changed the input/output dtypes")
        os.replace(out, dst)

    after = op_counts(quantized)
    info = {
        "precision": "int8",
        "method": "onnxruntime.quantization.quantize_dynamic",
        "op_types_quantized": chosen,
        "op_types_left_fp32": sorted(op for op in ("Conv", "MatMul", "Gemm", "Attention")
                                     if counts[op] and op not in chosen),
        "weight_type": "QInt8" if qtype == QuantType.QInt8 else "QUInt8",
        "activation_type": "QUInt8 (dynamic, per tensor)",
        "per_channel": per_channel,
        "preprocessed": base != src,
        "nodes_quantized": sum(after[op] for op in INTEGER_OPS),
        "nodes_kept_fp32": kept,
        "bytes": dst.stat().st_size,
    }
    if measured is not None:
        info["sample_agreement"] = measured
    return info
