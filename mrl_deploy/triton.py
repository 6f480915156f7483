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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InputError, MissingExtraError, MRLDeployError, RepositoryError, check_number, parse_integers, require

MARKER = "mrl-triton.json"
FORMAT_VERSION = 1
TEXT_INPUT = "text"
CHECK_SEQUENCE_LENGTH = 8          # the dynamic (sequence) axis of the check's batches
CHECK_TEXTS = ["Matryoshka embeddings nest coarse to fine.", "short", ""]
DEFAULT_PREFERRED = (8, 16, 32)
KINDS = ("gpu", "cpu")
TOKENIZER_FILES = ("model.py", "tokenization.py", "preprocessing.json")

# numpy dtype name <-> Triton data type; ONNX Runtime names float32 "float" and float64 "double".
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16", "string": "TYPE_STRING",
}
NUMPY_TYPES = {triton: numpy for numpy, triton in TRITON_TYPES.items()}
ORT_TYPES = {"float": "float32", "double": "float64"}
ONNX_VARIANTS = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}   # model name suffixes
ENGINE_VARIANTS = {"tensorrt": "_trt", "tensorrt-fp16": "_trt_fp16"}


# --- the ONNX graph's interface ----------------------------------------------------------------

def _ort_session(path: Path, optimize: bool = True):
    ort = require("onnxruntime", "cpu", "reading and running ONNX graphs")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:  # reading names, types and shapes only: no need to optimise a large graph
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _tensors(args) -> list[dict[str, Any]]:
    out = []
    for arg in args:
        inner = arg.type[len("tensor("):-1] if arg.type.startswith("tensor(") else arg.type
        # symbolic axes come as names, unknown ones as None: both are dynamic for Triton
        shape = [axis if isinstance(axis, int) and axis >= 0 else None for axis in arg.shape]
        out.append({"name": arg.name, "dtype": ORT_TYPES.get(inner, inner), "shape": shape})
    return out


def graph_io(path: str | os.PathLike, session=None) -> dict[str, list[dict[str, Any]]]:
    """{inputs, outputs}: [{name, dtype (numpy name), shape (ints, None for dynamic axes)}] of the
    ONNX graph at `path`, read with ONNX Runtime's session metadata."""
    session = session or _ort_session(Path(path), optimize=False)
    return {"inputs": _tensors(session.get_inputs()), "outputs": _tensors(session.get_outputs())}


def triton_dims(shape: Sequence[int | None], batched: bool) -> list[int]:
    """Config dims of a graph tensor: the batch axis left out when Triton batches, -1 for dynamic."""
    return [-1 if axis is None else int(axis) for axis in (shape[1:] if batched else shape)]


def _triton_type(dtype: str, where: str) -> str:
    if dtype not in TRITON_TYPES:
        raise RepositoryError(f"{where} has dtype {dtype}, which Triton has no type for")
    return TRITON_TYPES[dtype]


# --- writing a repository -----------------------------------------------------------------------

def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _numbers(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def _tensor_lines(field: str, tensors: Sequence[dict[str, Any]]) -> list[str]:
    """`input [ ... ]` / `output [ ... ]`; tensors: {name, data_type, dims}."""
    blocks = []
    for tensor in tensors:
        lines = [f"    name: {_quote(tensor['name'])}", f"    data_type: {tensor['data_type']}"]
        if tensor["dims"]:
            lines.append(f"    dims: {_numbers(tensor['dims'])}")
        else:  # a batched scalar per sample: Triton wants a non-empty shape, reshaped away
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        blocks.append("  {\n" + "\n".join(lines) + "\n  }")
    return [f"{field} [", ",\n".join(blocks), "]"]


def _config_text(lines: Sequence[str]) -> str:
    return "\n".join(lines) + "\n"


def _batching_lines(preferred: Sequence[int], delay_us: int) -> list[str]:
    inner = [f"  preferred_batch_size: {_numbers(preferred)}"] if preferred else []
    return ["dynamic_batching {", *inner, f"  max_queue_delay_microseconds: {int(delay_us)}", "}"]


def _instance_lines(kind: str, count: int) -> list[str]:
    return ["instance_group [", f"  {{ count: {int(count)} kind: {'KIND_GPU' if kind == 'gpu' else 'KIND_CPU'} }}", "]"]


def _accelerator_lines(name: str, io: dict[str, Any], settings: dict[str, Any], max_seq_length: int | None) -> list[str]:
    """ONNX Runtime's TensorRT execution provider on GPU instances, with an engine cache and one
    optimization profile from batch 1 to max_batch_size (and sequence 1 to max_seq_length), so
    that ORT does not rebuild an engine for every new input shape."""
    def shapes(batch: int, sequence: int) -> str:
        parts = []
        for tensor in io["inputs"]:
            axes = [batch] + [sequence if axis is None else axis for axis in tensor["shape"][1:]]
            parts.append(f"{tensor['name']}:{'x'.join(str(a) for a in axes)}")
        return ",".join(parts)

    longest = int(max_seq_length or 512)
    parameters = [
        ("precision_mode", "FP16" if settings["trt_fp16"] else "FP32"),
        ("trt_engine_cache_enable", "1"),
        ("trt_engine_cache_path", f"/tmp/triton-trt-cache/{name}"),
        ("trt_profile_min_shapes", shapes(1, 1)),
        ("trt_profile_opt_shapes", shapes(max(1, settings["preferred_batch"][-1] if settings["preferred_batch"] else 1),
                                          min(128, longest))),
        ("trt_profile_max_shapes", shapes(settings["max_batch"], longest)),
    ]
    lines = ["optimization { execution_accelerators {", "  gpu_execution_accelerator : [ {", '    name : "tensorrt"']
    lines += [f"    parameters {{ key: {_quote(key)} value: {_quote(value)} }}" for key, value in parameters]
    return lines + ["  } ]", "} }"]


def _io_lines(io: dict[str, Any], batched: bool, where: str) -> list[str]:
    def entries(tensors):
        return [{"name": t["name"], "data_type": _triton_type(t["dtype"], f"{where}: {t['name']}"),
                 "dims": triton_dims(t["shape"], batched)} for t in tensors]

    return _tensor_lines("input", entries(io["inputs"])) + _tensor_lines("output", entries(io["outputs"]))


def _model_config(name: str, platform: str, io: dict[str, Any], settings: dict[str, Any], kind: str,
                  accelerator: list[str] | None = None, extra: Sequence[str] = ()) -> str:
    lines = [f"name: {_quote(name)}", f"platform: {_quote(platform)}", f"max_batch_size: {settings['max_batch']}",
             *extra, *_io_lines(io, True, name), *_batching_lines(settings["preferred_batch"], settings["max_queue_delay_us"]),
             *_instance_lines(kind, settings["instances"])]
    return _config_text(lines + (accelerator or []))


def _tokenizer_config(name: str, io: dict[str, Any], settings: dict[str, Any]) -> str:
    outputs = [{"name": t["name"], "data_type": _triton_type(t["dtype"], f"{name}: {t['name']}"), "dims": [-1]}
               for t in io["inputs"]]
    lines = [f"name: {_quote(name)}", 'backend: "python"', f"max_batch_size: {settings['max_batch']}",
             *_tensor_lines("input", [{"name": TEXT_INPUT, "data_type": "TYPE_STRING", "dims": [1]}]),
             *_tensor_lines("output", outputs),
             # the encoder's batcher merges equal shapes only: batching texts here pads them alike
             *_batching_lines(settings["preferred_batch"], settings["max_queue_delay_us"]),
             *_instance_lines("cpu", settings["instances"])]
    return _config_text(lines)


def _ensemble_config(name: str, tokenizer: str, encoder: str, io: dict[str, Any], settings: dict[str, Any]) -> str:
    outputs = [{"name": t["name"], "data_type": _triton_type(t["dtype"], f"{name}: {t['name']}"),
                "dims": triton_dims(t["shape"], True)} for t in io["outputs"]]
    step_tokenize = [f"      model_name: {_quote(tokenizer)}", "      model_version: -1",
                     f"      input_map {{ key: {_quote(TEXT_INPUT)} value: {_quote(TEXT_INPUT)} }}"]
    step_tokenize += [f"      output_map {{ key: {_quote(t['name'])} value: {_quote(t['name'])} }}" for t in io["inputs"]]
    step_encode = [f"      model_name: {_quote(encoder)}", "      model_version: -1"]
    step_encode += [f"      input_map {{ key: {_quote(t['name'])} value: {_quote(t['name'])} }}" for t in io["inputs"]]
    step_encode += [f"      output_map {{ key: {_quote(t['name'])} value: {_quote(t['name'])} }}" for t in io["outputs"]]
    lines = [f"name: {_quote(name)}", 'platform: "ensemble"', f"max_batch_size: {settings['max_batch']}",
             *_tensor_lines("input", [{"name": TEXT_INPUT, "data_type": "TYPE_STRING", "dims": [1]}]),
             *_tensor_lines("output", outputs),
             "ensemble_scheduling {", "  step [", "    {", *step_tokenize, "    },", "    {", *step_encode, "    }",
             "  ]", "}"]
    return _config_text(lines)


TOKENIZER_MODEL_PY = '''\
"""Triton Python-backend model {name}: texts -> token ids, written by mrl-deploy.

It tokenizes exactly as the artifact does: tokenization.py beside this file is a verbatim copy of
mrl_deploy/tokenization.py, and tokenizer.json / preprocessing.json are the artifact's. Needs numpy
and the `tokenizers` package in the Python backend's environment.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent


def _load_tokenization():
    # by file path, under a name of its own: nothing on sys.path can shadow it
    spec = importlib.util.spec_from_file_location("mrl_deploy_tokenization", HERE / "tokenization.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]
        preprocessing = json.loads((HERE / "preprocessing.json").read_text())
        self.tokenization = _load_tokenization()
        self.tokenizer = self.tokenization.load_tokenizer(HERE / preprocessing["tokenizer"], preprocessing)

    def execute(self, requests):
        # One encode over every request of the batch pads them all to one length, so that the
        # encoder's dynamic batcher (which merges equal shapes only) can run them together.
        texts, spans = [], []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            try:
                items = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
            except UnicodeDecodeError as exc:
                spans.append(pb_utils.TritonError(f"{{self.input_name}} must be UTF-8 text: {{exc}}"))
                continue
            spans.append((len(texts), len(texts) + len(items)))
            texts.extend(items)
        feed = self.tokenization.encode(self.tokenizer, texts) if texts else {{}}
        responses = []
        for span in spans:
            if isinstance(span, pb_utils.TritonError):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=span))
                continue
            start, stop = span
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(feed[name][start:stop])) for name in self.output_names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


def model_name(text: str) -> str:
    """A Triton model name from a directory name: [A-Za-z0-9_.-], starting with a letter or digit."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip("_.-")
    return name or "model"


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name or ""):
        raise InputError(f"--name {name!r} is not a usable Triton model name: use letters, digits, '_', '.', '-' "
                         "(starting with a letter or digit)")
    return name


def _settings(max_batch: int, preferred_batch: Sequence[int] | None, max_queue_delay_us: int, instances: int,
              kind: str, trt_accelerator: bool, trt_fp16: bool) -> dict[str, Any]:
    check_number(max_batch, "--max-batch", 1, integer=True)
    check_number(max_queue_delay_us, "--max-queue-delay-us", 0, integer=True)
    check_number(instances, "--instances", 1, integer=True)
    if kind not in KINDS:
        raise InputError(f"--kind must be gpu or cpu, got {kind!r}")
    if preferred_batch is None:
        preferred = [size for size in DEFAULT_PREFERRED if size <= max_batch]
    else:
        preferred = sorted(set(parse_integers(preferred_batch, "--preferred-batch sizes")))
        above = [size for size in preferred if size > max_batch]
        if above:
            raise InputError(f"--preferred-batch sizes {above} exceed --max-batch {max_batch}")
    if trt_fp16 and not trt_accelerator:
        raise InputError("--trt-fp16 sets the precision of --trt-accelerator: give both")
    if trt_accelerator and kind == "cpu":
        raise InputError("--trt-accelerator runs on GPU instances: it has no effect with --kind cpu")
    return {"max_batch": max_batch, "preferred_batch": preferred, "max_queue_delay_us": max_queue_delay_us,
            "instances": instances, "kind": kind, "trt_accelerator": trt_accelerator, "trt_fp16": trt_fp16}


def parse_batch_sizes(text: str, option: str) -> list[int]:
    """'8,16,32' -> [8, 16, 32]; anything but positive integers is an error."""
    return parse_integers(text, option)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)   # artifacts are replaced, never edited in place: a link stays valid
    except OSError:         # another file system, or links not allowed
        shutil.copy2(src, dst)


def _batched_graph(io: dict[str, Any], where: str) -> None:
    for tensor in io["inputs"] + io["outputs"]:
        if not tensor["shape"] or tensor["shape"][0] is not None:
            raise RepositoryError(f"{where}: {tensor['name']} has no dynamic batch axis (shape {tensor['shape']}): "
                                  "Triton cannot batch it")


def _choose_variants(artifact, variants: Sequence[str] | None) -> list[str]:
    have = artifact.variants
    known = list(ONNX_VARIANTS) + list(ENGINE_VARIANTS)
    if variants is None:
        chosen = [v for v in known if v in have]
    else:
        chosen = []
        for variant in variants:
            if variant not in known:
                raise InputError(f"unknown variant {variant!r}: use {', '.join(known)}")
            if variant not in have:
                raise InputError(f"{artifact.path} has no {variant} model (it has: {', '.join(have)})")
            if variant not in chosen:
                chosen.append(variant)
    # the fp32 graph is the repository's main model (and the text ensemble's encoder)
    return ["fp32"] + [v for v in chosen if v != "fp32"]


def write_repository(artifact: Any, output: str | os.PathLike, *, name: str | None = None, max_batch: int = 64,
                     preferred_batch: Sequence[int] | None = None, max_queue_delay_us: int = 100,
                     instances: int = 1, kind: str = "gpu", trt_accelerator: bool = False, trt_fp16: bool = False,
                     variants: Sequence[str] | None = None, check: bool = False,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write a Triton model repository for `artifact` (an Artifact or its directory) at `output`,
    atomically: a repository already there is replaced only once the new one is complete (and,
    with `check`, has passed check_repository); a directory that is not one is never replaced.

    `variants`: the artifact's variants to serve besides fp32 (default: every one it has).
    `preferred_batch` defaults to those of 8, 16, 32 up to `max_batch`. Returns a summary: the
    models written, the settings, and notes on what was chosen."""
    from .artifact import Artifact
    from .manifest import staged_directory, write_json_atomic
    from . import tokenization
    from .version import __version__

    say = progress or (lambda message: None)
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    settings = _settings(max_batch, preferred_batch, max_queue_delay_us, instances, kind, trt_accelerator, trt_fp16)
    name = _check_name(name) if name is not None else model_name(artifact.path.resolve().name)
    chosen = _choose_variants(artifact, variants)
    manifest = artifact.manifest
    max_seq_length = (manifest.get("preprocessing") or {}).get("max_seq_length") if artifact.is_text else None
    models: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    target = Path(output)
    with staged_directory(target, marker=MARKER, what="a Triton model repository written by mrl-deploy",
                          error=RepositoryError) as staging:
        fp32_io = None
        for variant in [v for v in chosen if v in ONNX_VARIANTS]:
            model = name + ONNX_VARIANTS[variant]
            source = artifact.model_file(variant)
            say(f"writing {model} ({variant}, {source.name})")
            io = graph_io(source)
            _batched_graph(io, f"{source.name}")
            fp32_io = io if variant == "fp32" else fp32_io
            _link_or_copy(source, staging / model / "1" / "model.onnx")
            # int8 graphs use ONNX Runtime's dynamic int8 kernels, which are CPU kernels
            model_kind = "cpu" if variant == "int8" else settings["kind"]
            accelerator = (_accelerator_lines(model, io, settings, max_seq_length)
                           if settings["trt_accelerator"] and model_kind == "gpu" else None)
            (staging / model / "config.pbtxt").write_text(
                _model_config(model, "onnxruntime_onnx", io, settings, model_kind, accelerator))
            (staging / model / "configs").mkdir()
            (staging / model / "configs" / "cpu.pbtxt").write_text(_model_config(model, "onnxruntime_onnx", io, settings, "cpu"))
            models[model] = {"variant": variant, "platform": "onnxruntime_onnx", "file": "1/model.onnx", "kind": model_kind,
                             "accelerator": "tensorrt" if accelerator else None}
            if variant == "int8" and settings["kind"] == "gpu":
                notes.append(f"{model} runs on CPU instances: int8 graphs use ONNX Runtime's CPU int8 kernels")
        for variant in [v for v in chosen if v in ENGINE_VARIANTS]:
            model = name + ENGINE_VARIANTS[variant]
            entry = manifest["models"][variant]
            engine_settings = dict(settings)
            engine_batch = int(entry.get("max_batch") or settings["max_batch"])
            if engine_batch < settings["max_batch"]:
                engine_settings.update(max_batch=engine_batch,
                                       preferred_batch=[s for s in settings["preferred_batch"] if s <= engine_batch])
                notes.append(f"{model}: max_batch_size {engine_batch}, the largest batch of the engine's profile")
            capability = str(entry.get("compute_capability") or "")
            if not capability:
                raise RepositoryError(f"{artifact.path}: the {variant} engine has no compute capability in mrl.json: rebuild it")
            say(f"writing {model} ({variant}, {entry['file']}, compute capability {capability})")
            _link_or_copy(artifact.path / entry["file"], staging / model / "1" / "model.plan")
            extra = [f"cc_model_filenames {{ key: {_quote(capability)} value: \"model.plan\" }}"]
            (staging / model / "config.pbtxt").write_text(
                _model_config(model, "tensorrt_plan", fp32_io, engine_settings, "gpu", extra=extra))
            models[model] = {"variant": variant, "platform": "tensorrt_plan", "file": "1/model.plan", "kind": "gpu",
                             "compute_capability": capability, "tensorrt_version": entry.get("tensorrt_version"),
                             "max_batch": engine_settings["max_batch"], "interface_of": name}
        if artifact.is_text:
            tokenizer, ensemble = f"{name}_tokenize", f"{name}_text"
            say(f"writing {tokenizer} (Python backend) and the ensemble {ensemble}")
            version = staging / tokenizer / "1"
            version.mkdir(parents=True)
            pre = manifest["preprocessing"]
            (version / "model.py").write_text(TOKENIZER_MODEL_PY.format(name=tokenizer))
            shutil.copyfile(tokenization.__file__, version / "tokenization.py")
            shutil.copyfile(artifact.path / pre["tokenizer"], version / Path(pre["tokenizer"]).name)
            (version / "preprocessing.json").write_text(
                json.dumps(dict(pre, tokenizer=Path(pre["tokenizer"]).name), indent=2) + "\n")
            (staging / tokenizer / "config.pbtxt").write_text(_tokenizer_config(tokenizer, fp32_io, settings))
            (staging / ensemble).mkdir()
            (staging / ensemble / "1").mkdir()  # Triton wants a version directory, even an empty one
            (staging / ensemble / "config.pbtxt").write_text(_ensemble_config(ensemble, tokenizer, name, fp32_io, settings))
            models[tokenizer] = {"variant": None, "platform": "python", "kind": "cpu"}
            models[ensemble] = {"variant": None, "platform": "ensemble", "steps": [tokenizer, name]}
        (staging / "README.md").write_text(_readme(artifact, name, models, settings, fp32_io))
        summary = {
            "format_version": FORMAT_VERSION, "mrl_deploy_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "artifact": str(artifact.path.resolve()), "name": name, "settings": settings, "models": models,
            "notes": notes,
        }
        write_json_atomic(staging / MARKER, summary)
        if check:
            say("checking the repository")
            summary["check"] = check_repository(staging, progress=say)
    summary["repository"] = str(target.resolve())
    if check:
        summary["check"]["repository"] = summary["repository"]
    return summary


# --- the repository's README --------------------------------------------------------------------

def _readme(artifact, name: str, models: dict[str, dict[str, Any]], settings: dict[str, Any], io) -> str:
    manifest = artifact.manifest
    embedding_dims = sorted(o["dim"] for o in manifest["outputs"] if o["kind"] == "embedding")
    dim = 64 if 64 in embedding_dims else embedding_dims[0]
    logit_dims = artifact.logit_dims
    text = artifact.is_text
    target = f"{name}_text" if text else name
    lines = [
        f"# Triton model repository for `{name}`",
        "",
        f"Written by `mrl-deploy triton` from the artifact `{artifact.path.resolve()}` "
        f"({manifest['source']['kind']}, dims {', '.join(map(str, manifest['exported_dims']))}).",
        "Nothing here has been run on a Triton server by mrl-deploy: `mrl-deploy triton --check` parses every",
        "config.pbtxt with Triton's own schema, compares it with the ONNX graphs and runs each ONNX model",
        "on ONNX Runtime CPU. The smoke test at the end is how to try it on a machine with Docker (and a GPU).",
        "",
        "| model | platform | what |",
        "| --- | --- | --- |",
    ]
    for model, info in models.items():
        if info["platform"] == "python":
            what = "texts -> token ids (tokenization.py: the same code as the artifact's)"
        elif info["platform"] == "ensemble":
            what = f"texts -> every output ({' -> '.join(info['steps'])})"
        elif info["platform"] == "tensorrt_plan":
            what = (f"{info['variant']} engine: compute capability {info['compute_capability']}, TensorRT "
                    f"{info.get('tensorrt_version')} only (the container's TensorRT must be that version)")
        else:
            what = f"{info['variant']} ONNX graph, {info['kind'].upper()} instances" + (
                ", ONNX Runtime TensorRT accelerator" if info.get("accelerator") else "")
        lines.append(f"| `{model}` | {info['platform']} | {what} |")
    outputs = ", ".join(f"`{o['name']}`" for o in manifest["outputs"])
    lines += [
        "",
        f"Outputs are named per dim ({outputs}): a client asks for the granularity it needs and only",
        "that comes back. Each `embedding_{m}` is the first m dims, re-normalised (z[:m] / ||z[:m]||).",
        "Triton's ONNX Runtime backend computes every output its config.pbtxt lists for each batch (the",
        "slices and heads are cheap next to the encoder): export with fewer `--dims` to compute fewer.",
        "",
        "## Start Triton",
        "",
        "Pick a Triton release (`<yy.mm>`) whose ONNX Runtime reads this graph's opset "
        f"({manifest.get('opset')}).",
        "",
        "```bash",
    ]
    serve = "tritonserver --model-repository=/models"
    if text:  # the stock image has no `tokenizers`; a derived image saves the install per start
        gpu_command = f'bash -c "pip install tokenizers && {serve}"'
        cpu_command = f'bash -c "pip install tokenizers && {serve} --model-config-name=cpu"'
    else:
        gpu_command, cpu_command = serve, f"{serve} --model-config-name=cpu"
    if text:
        lines.append("# the tokenizer model needs the `tokenizers` package in the Python backend's environment")
    lines += [
        "# GPU machine",
        'docker run --rm --gpus=all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD":/models \\',
        f"  nvcr.io/nvidia/tritonserver:<yy.mm>-py3 {gpu_command}",
        "# CPU-only machine: every ONNX model on CPU instances (configs/cpu.pbtxt)",
        'docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD":/models \\',
        f"  nvcr.io/nvidia/tritonserver:<yy.mm>-py3 {cpu_command}",
        "```",
        "",
        "Run it from this directory (it is mounted at /models).",
    ]
    engines = [m for m, info in models.items() if info["platform"] == "tensorrt_plan"]
    if engines:
        keep = " ".join(f"--load-model={m}" for m in models if m not in engines)
        lines += [f"TensorRT engines ({', '.join(engines)}) load only on a GPU of their compute capability with "
                  "their TensorRT version; elsewhere start Triton with `--model-control-mode=explicit "
                  f"{keep}`."]
    lines += [
        "",
        "## Query it (tritonclient)",
        "",
        "```python",
        "import numpy as np",
        "import tritonclient.grpc as grpcclient",
        "",
        'client = grpcclient.InferenceServerClient("localhost:8001")',
    ]
    if text:
        lines += [
            'texts = ["Matryoshka embeddings nest coarse to fine.", "another text"]',
            "batch = np.array([[t.encode()] for t in texts], dtype=object)   # one text per row",
            f'inputs = [grpcclient.InferInput("{TEXT_INPUT}", list(batch.shape), "BYTES")]',
            "inputs[0].set_data_from_numpy(batch)",
        ]
    else:
        spec = manifest["inputs"][0]
        shape = ", ".join(str(a) for a in [2] + [a for a in spec["shape"][1:]]) + ("," if len(spec["shape"]) == 1 else "")
        triton_type = TRITON_TYPES.get(spec["dtype"], "TYPE_FP32")[len("TYPE_"):]
        lines += [
            f"batch = np.random.default_rng(0).standard_normal(({shape})).astype(np.{spec['dtype']})"
            "   # your inputs, as mrl.json's preprocessing says",
            f'inputs = [grpcclient.InferInput("{spec["name"]}", list(batch.shape), "{triton_type}")]',
            "inputs[0].set_data_from_numpy(batch)",
        ]
    lines += [
        "",
        f"# only the {dim}-d embedding comes back",
        f'result = client.infer("{target}", inputs, outputs=[grpcclient.InferRequestedOutput("embedding_{dim}")])',
        f'vectors = result.as_numpy("embedding_{dim}")   # float32, one unit-norm row per input',
    ]
    if logit_dims:
        cascade = manifest.get("cascade")
        if cascade:
            make = (f"cascade = Cascade({cascade['dims']}, {cascade['thresholds']}, "
                    f"confidence={cascade.get('confidence', 'softmax')!r})   # the artifact's calibrated cascade")
        else:
            make = (f'cascade = Cascade.from_manifest(json.load(open("{artifact.path.resolve() / "mrl.json"}")))'
                    f"   # after `mrl-deploy calibrate` (heads at {', '.join(map(str, logit_dims))})")
        lines += [
            "",
            "# cascaded classification: the logits of the cascade's heads (tiny next to the encoder),",
            "# then each sample stops at the first head confident enough",
            "import json",
            "from mrl_deploy.cascade import Cascade",
            make,
            "wanted = [grpcclient.InferRequestedOutput(f\"logits_{m}\") for m in cascade.dims]",
            f'result = client.infer("{target}", inputs, outputs=wanted)',
            'decided = cascade.run({m: result.as_numpy(f"logits_{m}") for m in cascade.dims})',
            "decided.predictions, decided.stop_dims",
        ]
    lines += [
        "```",
        "",
        "## Settings",
        "",
        f"max_batch_size {settings['max_batch']}, dynamic batching (preferred sizes "
        f"{settings['preferred_batch'] or 'none'}, queue delay {settings['max_queue_delay_us']} us), "
        f"{settings['instances']} instance(s) per model. Regenerate with other `mrl-deploy triton` options "
        "rather than editing the configs, and check with `mrl-deploy triton --check REPO`.",
    ]
    lines += [
        "",
        "## Smoke test (a machine with Docker; a GPU for the GPU configs)",
        "",
        "1. Start Triton as above and wait for `curl -sf localhost:8000/v2/health/ready` to succeed; the log",
        "   lists every model READY (a model that fails to load is named there with the reason).",
        f"2. `curl -s localhost:8000/v2/models/{target}/config` shows the config Triton loaded.",
        "3. Run the client above, and compare with the artifact on the same inputs:",
        f"   `Artifact.load(ARTIFACT).encode(inputs, dim={dim})` (mrl_deploy) should agree to a cosine",
        "   above 0.9999 per row for fp32 (fp16 / int8 variants: 0.999 / 0.99).",
    ]
    if text:
        lines += [
            "",
            "The tokenizer pads every execute() batch to its longest text (as the artifact does), so the",
            "encoder batches requests that arrive together; texts are truncated to "
            f"{manifest['preprocessing'].get('max_seq_length')} tokens.",
        ]
    return "\n".join(lines) + "\n"


# --- checking a repository ----------------------------------------------------------------------

def _schema():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise MissingExtraError("tritonclient[grpc]", "triton", "checking Triton configs") from None
    return model_config_pb2, text_format


def _parse_config(path: Path, model: str):
    pb, text_format = _schema()
    config = pb.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except text_format.ParseError as exc:
        raise RepositoryError(f"{model}: {path.name} does not parse with Triton's schema: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{model}: cannot read {path.name}: {exc}") from None
    if config.name and config.name != model:
        raise RepositoryError(f"{model}: {path.name} names the model {config.name!r}, not its directory's name")
    if config.max_batch_size < 0:
        raise RepositoryError(f"{model}: {path.name}: max_batch_size must be >= 0, got {config.max_batch_size}")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            raise RepositoryError(f"{model}: {path.name}: dynamic batching needs max_batch_size > 0")
        above = [s for s in config.dynamic_batching.preferred_batch_size if s > config.max_batch_size or s < 1]
        if above:
            raise RepositoryError(f"{model}: {path.name}: preferred_batch_size {above} outside 1..max_batch_size "
                                  f"{config.max_batch_size}")
    return config


def _type_name(data_type: int) -> str:
    pb, _ = _schema()
    return pb.DataType.Name(data_type)


def _config_tensors(tensors) -> dict[str, dict[str, Any]]:
    out = {}
    for tensor in tensors:
        dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        out[tensor.name] = {"type": _type_name(tensor.data_type), "dims": dims, "config_dims": list(tensor.dims)}
    return out


def _platform(config) -> str:
    if config.platform:
        return config.platform
    return {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}.get(config.backend, config.backend)


def _versions(directory: Path, model: str) -> list[Path]:
    versions = sorted((p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise RepositoryError(f"{model}: no version directory (e.g. {model}/1)")
    return versions


def _compare_interface(model: str, where: str, config, io: dict[str, Any]) -> None:
    """The config's inputs and outputs against the graph's: names, types, dims."""
    batched = config.max_batch_size > 0
    for field, tensors, graph in (("input", config.input, io["inputs"]), ("output", config.output, io["outputs"])):
        declared = _config_tensors(tensors)
        by_name = {t["name"]: t for t in graph}
        for tensor_name, spec in declared.items():
            if tensor_name not in by_name:
                raise RepositoryError(f"{model}: {where}: {field} {tensor_name!r} is not an {field} of the graph "
                                      f"(it has: {', '.join(by_name)})")
            tensor = by_name[tensor_name]
            expected_type = _triton_type(tensor["dtype"], f"{model}: {tensor_name}")
            if spec["type"] != expected_type:
                raise RepositoryError(f"{model}: {where}: {field} {tensor_name!r} is {spec['type']}, the graph's is {expected_type}")
            if batched and (not tensor["shape"] or tensor["shape"][0] is not None):
                raise RepositoryError(f"{model}: {where}: max_batch_size {config.max_batch_size} but the graph's "
                                      f"{tensor_name!r} has no dynamic batch axis (shape {tensor['shape']})")
            expected = triton_dims(tensor["shape"], batched)
            if spec["dims"] != expected:
                raise RepositoryError(f"{model}: {where}: {field} {tensor_name!r} has dims {spec['dims']}, the graph's are "
                                      f"{expected}")
        if field == "input":
            missing = [name for name in by_name if name not in declared]
            if missing:
                raise RepositoryError(f"{model}: {where}: the graph's inputs {missing} are missing from the config")


def _check_feed(model: str, config, vocab: int | None, seed: int = 0) -> dict[str, Any]:
    """A batch of max_batch_size rows built from the config's dims (feeds.random_feed): standard-
    normal floats, token ids within the vocabulary (0 and 1 without one: valid ids of any), an
    all-ones attention mask, zero token types, a short sequence for every dynamic axis."""
    from .feeds import random_feed

    specs = []
    for name, spec in _config_tensors(config.input).items():
        dtype = NUMPY_TYPES.get(spec["type"])
        if dtype is None or dtype in ("string", "bfloat16"):
            raise RepositoryError(f"{model}: cannot build a check input of type {spec['type']} for {name!r}")
        dims = ["dynamic" if d < 0 else d for d in spec["dims"]]
        specs.append({"name": name, "dtype": dtype, "shape": (["batch"] if config.max_batch_size > 0 else []) + dims})
    return random_feed(specs, {"batch": max(1, config.max_batch_size), "dynamic": CHECK_SEQUENCE_LENGTH}, seed,
                       int_high=vocab or 2)


def _run_onnx(model: str, path: Path, config, vocab: int | None, session) -> dict[str, Any]:
    import numpy as np

    feed = _check_feed(model, config, vocab)
    declared = _config_tensors(config.output)
    started = time.perf_counter()
    try:
        results = session.run(list(declared), feed)
    except Exception as exc:  # ONNX Runtime's errors carry no common base class
        raise RepositoryError(f"{model}: ONNX Runtime CPU failed on a batch of {config.max_batch_size} built from the "
                              f"config: {str(exc).splitlines()[0][:300]}") from None
    seconds = time.perf_counter() - started
    batch = [max(1, config.max_batch_size)] if config.max_batch_size > 0 else []
    for (name, spec), value in zip(declared.items(), results):
        expected = batch + spec["dims"]
        if value.dtype.name != NUMPY_TYPES[spec["type"]] or len(value.shape) != len(expected) or any(
                e >= 0 and e != got for e, got in zip(expected, value.shape)):
            raise RepositoryError(f"{model}: output {name!r} came back {value.dtype}{list(value.shape)} from ONNX Runtime; "
                                  f"the config says {spec['type']}{expected}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise RepositoryError(f"{model}: output {name!r} has NaN or infinite values on the check batch")
    return {"batch": int(max(1, config.max_batch_size)), "seconds": round(seconds, 4),
            "inputs": {name: list(value.shape) for name, value in feed.items()}}


def _load_repo_tokenization(path: Path):
    """The repository's tokenization.py as a module of its own (compiled from source: a check
    writes no __pycache__ into the repository)."""
    import types

    module = types.ModuleType("_mrl_triton_tokenization")
    module.__file__ = str(path)
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    return module


def _check_tokenizer(model: str, version: Path, config) -> int:
    """The Python tokenizer model: its files are there and tokenization.py (the code model.py
    calls) turns texts into every output the config declares, int64 batch x sequence. Returns the
    vocabulary size."""
    missing = [f for f in TOKENIZER_FILES if not (version / f).is_file()]
    if missing:
        raise RepositoryError(f"{model}: {version.name}/ lacks {', '.join(missing)}")
    require("tokenizers", "text", "checking the tokenizer model")
    try:
        preprocessing = json.loads((version / "preprocessing.json").read_text())
        module = _load_repo_tokenization(version / "tokenization.py")
        tokenizer = module.load_tokenizer(version / preprocessing["tokenizer"], preprocessing)
        feed = module.encode(tokenizer, CHECK_TEXTS)
    except MRLDeployError:
        raise
    except Exception as exc:
        raise RepositoryError(f"{model}: its tokenizer does not load or run: {str(exc).splitlines()[0][:300]}") from None
    for name, spec in _config_tensors(config.output).items():
        if name not in feed:
            raise RepositoryError(f"{model}: output {name!r} is not produced by tokenization.encode (it gives: {', '.join(feed)})")
        value = feed[name]
        if value.dtype.name != NUMPY_TYPES.get(spec["type"]) or value.ndim != 1 + len(spec["dims"]):
            raise RepositoryError(f"{model}: output {name!r} comes out {value.dtype}{list(value.shape)}, the config says "
                                  f"{spec['type']}{spec['dims']}")
    return int(tokenizer.get_vocab_size())


def _check_ensemble(model: str, config, configs: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every step's maps name real tensors of the step's model and of the ensemble, with matching
    types; every ensemble output is produced. Returns (producer model, consumer model, tensor)
    links between steps."""
    if not config.HasField("ensemble_scheduling") or not config.ensemble_scheduling.step:
        raise RepositoryError(f"{model}: an ensemble needs ensemble_scheduling steps")
    inputs, outputs = _config_tensors(config.input), _config_tensors(config.output)
    produced: dict[str, tuple[str, dict[str, Any]]] = {}   # ensemble tensor -> (step model, its output spec)
    for step in config.ensemble_scheduling.step:
        if step.model_name not in configs:
            raise RepositoryError(f"{model}: step model {step.model_name!r} is not in the repository")
        step_config = configs[step.model_name]
        if step_config.max_batch_size < config.max_batch_size:
            raise RepositoryError(f"{model}: max_batch_size {config.max_batch_size} exceeds step {step.model_name!r}'s "
                                  f"{step_config.max_batch_size}")
        step_outputs = _config_tensors(step_config.output)
        for key, value in step.output_map.items():
            if key not in step_outputs:
                raise RepositoryError(f"{model}: step {step.model_name!r} output_map names {key!r}, which is not an output "
                                      f"of {step.model_name} (it has: {', '.join(step_outputs)})")
            if value in produced or value in inputs:
                raise RepositoryError(f"{model}: tensor {value!r} is produced twice")
            produced[value] = (step.model_name, step_outputs[key])
    links = []
    for step in config.ensemble_scheduling.step:
        step_inputs = _config_tensors(configs[step.model_name].input)
        for key, value in step.input_map.items():
            if key not in step_inputs:
                raise RepositoryError(f"{model}: step {step.model_name!r} input_map names {key!r}, which is not an input "
                                      f"of {step.model_name} (it has: {', '.join(step_inputs)})")
            if value in inputs:
                source = inputs[value]
            elif value in produced:
                producer, source = produced[value]
                if producer == step.model_name:
                    raise RepositoryError(f"{model}: step {step.model_name!r} consumes its own output {value!r}")
                links.append((producer, step.model_name, key))
            else:
                raise RepositoryError(f"{model}: step {step.model_name!r} input_map reads {value!r}, which is neither an "
                                      "ensemble input nor any step's output")
            if source["type"] != step_inputs[key]["type"]:
                raise RepositoryError(f"{model}: {value!r} is {source['type']} but {step.model_name} input {key!r} is "
                                      f"{step_inputs[key]['type']}")
        unmapped = [name for name in step_inputs if name not in step.input_map]
        if unmapped:
            raise RepositoryError(f"{model}: step {step.model_name!r} leaves its inputs {unmapped} unmapped")
    for name, spec in outputs.items():
        if name not in produced:
            raise RepositoryError(f"{model}: ensemble output {name!r} is produced by no step's output_map")
        _, source = produced[name]
        if source["type"] != spec["type"] or len(source["dims"]) != len(spec["dims"]) or any(
                a != b and a >= 0 and b >= 0 for a, b in zip(source["dims"], spec["dims"])):
            raise RepositoryError(f"{model}: ensemble output {name!r} is {spec['type']}{spec['dims']} but its step gives "
                                  f"{source['type']}{source['dims']}")
    return links


def check_repository(repo: str | os.PathLike, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Check a Triton model repository without a server: every config.pbtxt (and configs/*.pbtxt)
    parses with Triton's schema, ONNX models' inputs/outputs/types/dims match their graphs and run
    on ONNX Runtime CPU with a batch of max_batch_size, TensorRT models match the graph they were
    built from, the Python tokenizer runs, and ensembles are wired to real tensors. The first
    problem raises RepositoryError naming the model and tensor; returns a report per model."""
    say = progress or (lambda message: None)
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"model repository not found: {repo}")
    if (repo / "mrl.json").is_file():
        raise RepositoryError(f"{repo} is an artifact, not a model repository: write one with "
                              f"`mrl-deploy triton {repo} -o REPO`")
    marker = {}
    if (repo / MARKER).is_file():
        try:
            marker = json.loads((repo / MARKER).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RepositoryError(f"{repo / MARKER} is not valid JSON: {exc}") from None
    directories = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not directories:
        raise RepositoryError(f"{repo} holds no models")
    configs: dict[str, Any] = {}
    extra_configs: dict[str, list[tuple[str, Any]]] = {}
    for directory in directories:
        model = directory.name
        if not (directory / "config.pbtxt").is_file():
            raise RepositoryError(f"{model}: no config.pbtxt")
        configs[model] = _parse_config(directory / "config.pbtxt", model)
        extra_configs[model] = [(f"configs/{p.name}", _parse_config(p, model))
                                for p in sorted((directory / "configs").glob("*.pbtxt"))]
        platform = _platform(configs[model])
        for where, other in extra_configs[model]:
            if _platform(other) != platform:
                raise RepositoryError(f"{model}: {where} is {_platform(other)}, config.pbtxt is {platform}")
    report: dict[str, Any] = {"repository": str(repo), "models": {}}
    vocab: dict[str, int] = {}
    tokenizers: set[str] = set()
    for model, config in configs.items():   # Python models first: their vocabulary feeds the encoders' checks
        if _platform(config) != "python":
            continue
        for version in _versions(repo / model, model):
            if not (version / "model.py").is_file():
                raise RepositoryError(f"{model}: {version.name}/model.py is missing")
            if (version / "tokenization.py").is_file():
                say(f"checking {model}: the tokenizer")
                vocab[model] = _check_tokenizer(model, version, config)
                tokenizers.add(model)
        report["models"][model] = {"platform": "python", "tokenizer": model in tokenizers}
    for model, config in configs.items():
        if _platform(config) != "ensemble":
            continue
        links = _check_ensemble(model, config, configs)
        for producer, consumer, _ in links:
            if producer in vocab:
                vocab[consumer] = vocab[producer]
        report["models"][model] = {"platform": "ensemble", "steps": [s.model_name for s in config.ensemble_scheduling.step]}
    for model, config in configs.items():
        platform = _platform(config)
        if platform in ("python", "ensemble"):
            continue
        if platform == "onnxruntime_onnx":
            report["models"][model] = _check_onnx_model(repo, model, config, extra_configs[model], vocab.get(model), say)
        elif platform == "tensorrt_plan":
            report["models"][model] = _check_engine_model(repo, model, config, configs, marker)
        else:
            raise RepositoryError(f"{model}: platform {platform!r} is not one this check knows "
                                  "(onnxruntime_onnx, tensorrt_plan, python, ensemble)")
    return report


def _check_onnx_model(repo: Path, model: str, config, extra: list[tuple[str, Any]], vocab: int | None,
                      say: Callable[[str], None]) -> dict[str, Any]:
    filename = config.default_model_filename or "model.onnx"
    runs = {}
    for version in _versions(repo / model, model):
        path = version / filename
        if not path.is_file():
            raise RepositoryError(f"{model}: {version.name}/{filename} is missing")
        say(f"checking {model}/{version.name}: {filename}")
        try:
            session = _ort_session(path)
        except MRLDeployError:
            raise
        except Exception as exc:
            raise RepositoryError(f"{model}: {version.name}/{filename} does not load in ONNX Runtime: "
                                  f"{str(exc).splitlines()[0][:300]}") from None
        io = graph_io(path, session)
        done = set()
        for where, each in [("config.pbtxt", config)] + extra:
            _compare_interface(model, where, each, io)
            key = (each.max_batch_size, str(each.input), str(each.output))
            if key not in done:   # configs/cpu.pbtxt usually asks for the very same run
                done.add(key)
                say(f"running {model}/{version.name} on ONNX Runtime CPU (batch {max(1, each.max_batch_size)}, {where})")
                runs[f"{version.name}/{where}"] = _run_onnx(model, path, each, vocab, session)
    return {"platform": "onnxruntime_onnx", "runs": runs}


def _check_engine_model(repo: Path, model: str, config, configs: dict[str, Any], marker: dict[str, Any]) -> dict[str, Any]:
    """A TensorRT engine cannot be opened without TensorRT and a GPU: check that its files are
    there and that its config matches the ONNX graph it was built from (mrl-triton.json says which)."""
    for version in _versions(repo / model, model):
        names = set(config.cc_model_filenames.values()) or {config.default_model_filename or "model.plan"}
        for filename in sorted(names):
            if not (version / filename).is_file():
                raise RepositoryError(f"{model}: {version.name}/{filename} is missing")
    reference = (marker.get("models", {}).get(model) or {}).get("interface_of")
    if reference is None:
        return {"platform": "tensorrt_plan", "interface": "not checked (no ONNX reference recorded)"}
    if reference not in configs:
        raise RepositoryError(f"{model}: its reference ONNX model {reference!r} is not in the repository")
    ref_config = configs[reference]
    path = _versions(repo / reference, reference)[-1] / (ref_config.default_model_filename or "model.onnx")
    _compare_interface(model, "config.pbtxt", config, graph_io(path))
    return {"platform": "tensorrt_plan", "interface": f"matches {reference}'s ONNX graph",
            "compute_capabilities": sorted(config.cc_model_filenames)}
