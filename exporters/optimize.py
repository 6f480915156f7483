"""Graph optimisation of exported transformer encoders for ONNX Runtime: attention,
SkipLayerNormalization and BiasGelu fusion, kept only where the fused graph verifies.

    info = optimize_variant(art / "model.onnx", verify=check_against_pytorch, say=print)

Two passes over the graph torch.onnx (dynamo) wrote:
1. onnxscript.rewriter.ort_fusions.optimize_for_ort: rewrite rules written for the dynamo
   exporter's graphs (its decomposed scaled_dot_product_attention, LayerNormalization after a
   residual Add, Gelu after a bias Add) -> com.microsoft Attention / MultiHeadAttention,
   SkipLayerNormalization, BiasGelu. ORT's transformer optimizer alone knows the TorchScript
   exporter's patterns only: on the dynamo graph of all-MiniLM-L6-v2 it fused 6 BiasGelu and no
   attention or SkipLayerNormalization (onnxruntime 1.32).
2. onnxruntime.transformers.optimizer.optimize_model(model_type="bert", opt_level=1): ORT's BERT
   fusions for whatever the first pass left, and ORT's basic (portable, not hardware-specific)
   graph optimisations: constant folding packs the Q, K, V weights into one initializer and
   drops the shape arithmetic the fused ops no longer need. Its get_fused_operator_statistics()
   gives the counts the manifest records.
3. SkipLayerNormalization is split again into Add + LayerNormalization (split_skip_layer_norms):
   ONNX Runtime's CPU kernel for it is slower than the pair; CUDA sessions re-fuse it at load.

The fused graph keeps the plain graph's interface (input and output names, dtypes, dynamic batch
and sequence axes), checked here; whether it computes the same thing is the caller's `verify`
(the exporter checks it against PyTorch with the fp32 bounds). A graph that does not verify, or
in which nothing was fused, is left exactly as it was.

Needs onnx, onnxscript and onnxruntime (export time only); the fused ops run on ONNX Runtime's
CPU and CUDA providers, not in a TensorRT engine (TensorRT cannot parse com.microsoft ops).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import MRLDeployError, VerificationError, require
from .precision import op_counts

OPTIMIZER_MODEL_TYPE = "bert"   # BERT-like encoders: MiniLM, MPNet, BGE, E5, nomic-bert ...
OPTIMIZER_OPT_LEVEL = 1         # ORT's basic optimisations only: the saved graph stays portable


class OptimizationWarning(UserWarning):
    """The fused graph was not kept (it did not verify, or could not be built)."""


def optimizer_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("onnxscript", "onnxruntime", "onnxruntime-gpu"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _interface(model) -> dict[str, list[tuple]]:
    """Names, element types and axes (an int for a fixed size, None for a dynamic one)."""
    def describe(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 tuple(d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim))
                for v in values]

    initializers = {t.name for t in model.graph.initializer}
    return {"inputs": describe(i for i in model.graph.input if i.name not in initializers),
            "outputs": describe(model.graph.output)}


def interface_changes(before, after) -> list[str]:
    """How the fused graph's inputs and outputs differ from the plain graph's (empty: none)."""
    old, new = _interface(before), _interface(after)
    changes = []
    for kind in ("inputs", "outputs"):
        if [v[0] for v in old[kind]] != [v[0] for v in new[kind]]:
            changes.append(f"{kind} {[v[0] for v in old[kind]]} became {[v[0] for v in new[kind]]}")
            continue
        for (name, dtype, axes), (_, new_dtype, new_axes) in zip(old[kind], new[kind]):
            if dtype != new_dtype:
                changes.append(f"{name}: element type {dtype} became {new_dtype}")
            elif axes != new_axes:
                changes.append(f"{name}: axes {list(axes)} became {list(new_axes)} (None: dynamic)")
    return changes


def _has_external_data(model) -> bool:
    from onnx import TensorProto

    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def split_skip_layer_norms(model) -> int:
    """Turn every SkipLayerNormalization back into Add (bias, then residual) + LayerNormalization,
    in place; returns how many. ONNX Runtime's CPU kernel for SkipLayerNormalization is slower
    than its LayerNormalization kernel after an Add: MiniLM (1 thread, CPU time per run) ran 7-8%
    faster as a whole at 16 and 128 tokens without it in fp32, 14% in int8. CUDA sessions fuse the
    pair again when they load the graph (ORT's SkipLayerNormFusion); CPU sessions leave it apart
    (runtimes/ort.py). Nodes whose mean / inverse-std outputs are used are left alone."""
    from onnx import helper

    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    nodes, split = [], 0
    for node in model.graph.node:
        outputs = list(node.output) + [""] * (4 - len(node.output))
        if node.op_type != "SkipLayerNormalization" or node.domain != "com.microsoft" or any(o in used for o in outputs[1:3]):
            nodes.append(node)
            continue
        x, skip, gamma, beta, bias = (list(node.input) + [""] * 5)[:5]
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        if bias:  # the order of the graph before fusion: (x @ W + b) + residual
            nodes.append(helper.make_node("Add", [x, bias], [f"{node.name}_biased"], name=f"{node.name}_bias"))
            x = f"{node.name}_biased"
        total = outputs[3] or f"{node.name}_sum"
        nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{node.name}_residual"))
        nodes.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []), [outputs[0]],
                                      name=f"{node.name}_layer_norm", axis=-1, epsilon=epsilon))
        split += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return split


def fuse_graph(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Write the fused graph of `src` to `dst` (both passes, see the module docstring) and return
    what was fused: `fused_operators` (fused op types whose count rose, with their count after),
    `fusions` (the rewrite counts of the first pass), nodes before and after. Raises
    MRLDeployError if the optimizer is missing or changed the graph's interface."""
    onnx = require("onnx", "export", "optimizing graphs")
    require("onnxruntime", "cpu", "optimizing graphs")
    try:
        import onnx_ir as ir
        from onnxscript.rewriter.ort_fusions import optimize_for_ort
    except ImportError as exc:
        raise MRLDeployError(f"the transformer fusions need onnxscript >= 0.3 with onnxscript.rewriter.ort_fusions ({exc})") from None
    from onnxruntime.transformers.optimizer import optimize_model

    src, dst = Path(src), Path(dst)
    plain = onnx.load(str(src))
    if _has_external_data(plain):
        raise MRLDeployError("graphs with external data (over 2 GB) are not optimized")
    before = op_counts(plain)
    with tempfile.TemporaryDirectory(prefix=".optimize.", dir=dst.parent) as tmp:
        first = Path(tmp) / "fused.onnx"
        model, fusions = optimize_for_ort(ir.from_proto(plain))
        ir.save(model, str(first))
        optimized = optimize_model(str(first), model_type=OPTIMIZER_MODEL_TYPE, opt_level=OPTIMIZER_OPT_LEVEL,
                                   num_heads=0, hidden_size=0, use_gpu=False)
        statistics = optimized.get_fused_operator_statistics()
        fused = optimized.model
    split = split_skip_layer_norms(fused)
    changes = interface_changes(plain, fused)
    if changes:
        raise MRLDeployError(f"the optimizer changed the graph's interface: {'; '.join(changes[:3])}")
    after = op_counts(fused)
    grown = {op: after[op] for op in statistics if after[op] > before[op]}
    if grown:
        onnx.save_model(fused, str(dst))
    return {
        "fused_operators": grown,
        "fusions": {name: count for name, count in fusions.items() if count},
        "split_for_cpu": {"SkipLayerNormalization": split} if split else {},
        "nodes_before": int(sum(before.values())),
        "nodes_after": int(sum(after.values())) if grown else int(sum(before.values())),
    }


def optimize_variant(path: str | os.PathLike, *, verify: Callable[[Path], Any]) -> dict[str, Any]:
    """Fuse the graph at `path` in place if that fuses anything and `verify(fused_path)` passes
    (it returns the verification report or raises VerificationError). Returns the manifest's
    `optimization` entry: applied or not, what was fused, the fused graph's verification
    (applied), or a `note` on why the graph at `path` was left as it was, with `warning` set
    when that is a failure the user should hear about (not for "nothing to fuse")."""
    path = Path(path)
    started = time.perf_counter()
    info: dict[str, Any] = {"applied": False, "optimizer": f"onnxscript ort_fusions + onnxruntime.transformers "
                                                          f"optimizer ({OPTIMIZER_MODEL_TYPE}, opt_level {OPTIMIZER_OPT_LEVEL})",
                            "versions": optimizer_versions()}
    with tempfile.TemporaryDirectory(prefix=".optimize.", dir=path.parent) as tmp:
        fused_path = Path(tmp) / path.name
        try:
            info.update(fuse_graph(path, fused_path))
        except MRLDeployError as exc:
            return dict(info, note=f"not optimized: {exc}", warning=True)
        except Exception as exc:  # the optimizer's own failures on a graph it does not understand
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            return dict(info, note=f"the optimizer failed ({type(exc).__name__}: {first_line}); kept the plain graph",
                        warning=True)
        if not info["fused_operators"]:
            return dict(info, note="nothing to fuse: the graph is unchanged", warning=False)
        try:
            info["verification"] = verify(fused_path)
        except VerificationError as exc:
            return dict(info, note=f"the fused graph did not verify ({exc}); kept the plain graph", warning=True)
        os.replace(fused_path, path)
    return dict(info, applied=True, seconds=round(time.perf_counter() - started, 2))


def summary(info: dict[str, Any]) -> str:
    """One line for the export's progress output."""
    if info.get("applied"):
        fused = ", ".join(f"{op} x{n}" for op, n in info["fused_operators"].items())
        return f"fused {fused} ({info['nodes_before']} -> {info['nodes_after']} nodes); verified"
    return info.get("note", "not optimized")
