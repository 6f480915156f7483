"""Triton Inference Server model repositories from an artifact, and their check without a server.

    from mrl_deploy.triton import write_repository, check_repository
    summary = write_repository("artifacts/minilm", "triton-repo", name="minilm", max_batch=64)
    report = check_repository("triton-repo")        # needs the `triton` extra (tritonclient[grpc])

A repository holds, for an artifact written by `mrl-deploy export`:
- `<name>/config.pbtxt` + `<name>/1/model.onnx`: the fp32 graph on the ONNX Runtime backend, every
  input and output with its dims read from the graph (batch axis left out, -1 for dynamic axes),
  dynamic batching and an instance group; `<name>/configs/cpu.pbtxt` is the same model on CPU
  instances (Triton's `--model-config-name=cpu`).
- one model per variant: `<name>_fp16`, `<name>_int8` (CPU instances: dynamic int8 kernels are
  CPU kernels), `<name>_trt` / `<name>_trt_fp16` (`tensorrt_plan`, the engine's compute
  capability in `cc_model_filenames`).
- text artifacts: `<name>_tokenize` (Python backend: model.py calls mrl_deploy/tokenization.py,
  copied verbatim beside it, on the artifact's tokenizer.json) and the ensemble `<name>_text`
  from TYPE_STRING texts to every output.
- README.md (how to start Triton on it and query it) and mrl-triton.json (what was written from
  what; it marks the directory as ours, so a rewrite may replace it and nothing else).

Configs are written as text here (no tritonclient needed to write a repository); the check parses
them with Triton's own schema (tritonclient.grpc.model_config_pb2.ModelConfig), compares them with
the ONNX graphs (read with onnxruntime, which every runtime install has) and runs every ONNX model
on ONNX Runtime CPU. No Triton server runs here.

    interface.py  what both sides read: an ONNX graph's inputs and outputs, Triton's data types,
                  the model names per variant, the marker file
    write.py      writing a repository (configs as text, models, the tokenizer's Python backend)
    readme.py     the repository's README.md
    check.py      checking a repository against Triton's schema and the graphs, offline
"""

from __future__ import annotations

from .check import check_repository
from .write import model_name, parse_batch_sizes, write_repository

__all__ = ["check_repository", "model_name", "parse_batch_sizes", "write_repository"]
