"""Writing a Triton model repository from an artifact: configs as text (no tritonclient needed),
models linked or copied in, the tokenizer's Python backend and the text ensemble, staged and
moved into place whole."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InputError, RepositoryError, check_number, parse_integers
from .check import check_repository
from .interface import ENGINE_VARIANTS, FORMAT_VERSION, KINDS, MARKER, ONNX_VARIANTS, TEXT_INPUT, graph_io, triton_dims, triton_type
from .readme import readme

DEFAULT_PREFERRED = (8, 16, 32)


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
        return [{"name": t["name"], "data_type": triton_type(t["dtype"], f"{where}: {t['name']}"),
                 "dims": triton_dims(t["shape"], batched)} for t in tensors]

    return _tensor_lines("input", entries(io["inputs"])) + _tensor_lines("output", entries(io["outputs"]))


def _model_config(name: str, platform: str, io: dict[str, Any], settings: dict[str, Any], kind: str,
                  accelerator: list[str] | None = None, extra: Sequence[str] = ()) -> str:
    lines = [f"name: {_quote(name)}", f"platform: {_quote(platform)}", f"max_batch_size: {settings['max_batch']}",
             *extra, *_io_lines(io, True, name), *_batching_lines(settings["preferred_batch"], settings["max_queue_delay_us"]),
             *_instance_lines(kind, settings["instances"])]
    return _config_text(lines + (accelerator or []))


def _tokenizer_config(name: str, io: dict[str, Any], settings: dict[str, Any]) -> str:
    outputs = [{"name": t["name"], "data_type": triton_type(t["dtype"], f"{name}: {t['name']}"), "dims": [-1]}
               for t in io["inputs"]]
    lines = [f"name: {_quote(name)}", 'backend: "python"', f"max_batch_size: {settings['max_batch']}",
             *_tensor_lines("input", [{"name": TEXT_INPUT, "data_type": "TYPE_STRING", "dims": [1]}]),
             *_tensor_lines("output", outputs),
             # the encoder's batcher merges equal shapes only: batching texts here pads them alike
             *_batching_lines(settings["preferred_batch"], settings["max_queue_delay_us"]),
             *_instance_lines("cpu", settings["instances"])]
    return _config_text(lines)


def _ensemble_config(name: str, tokenizer: str, encoder: str, io: dict[str, Any], settings: dict[str, Any]) -> str:
    outputs = [{"name": t["name"], "data_type": triton_type(t["dtype"], f"{name}: {t['name']}"),
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
    from ..artifact import Artifact
    from ..manifest import staged_directory, write_json_atomic
    from .. import tokenization
    from ..version import __version__

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
        (staging / "README.md").write_text(readme(artifact, name, models, settings, fp32_io))
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
