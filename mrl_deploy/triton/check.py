"""Checking a Triton repository without a server: every config parsed with Triton's own schema
(tritonclient.grpc.model_config_pb2), compared with its ONNX graph, and every ONNX model run on
ONNX Runtime CPU; the tokenizer and the ensemble run end to end."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import MissingExtraError, MRLDeployError, RepositoryError, require
from .interface import MARKER, NUMPY_TYPES, TOKENIZER_FILES, graph_io, ort_session, triton_dims, triton_type

CHECK_SEQUENCE_LENGTH = 8          # the dynamic (sequence) axis of the check's batches


CHECK_TEXTS = ["Matryoshka embeddings nest coarse to fine.", "short", ""]


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
            expected_type = triton_type(tensor["dtype"], f"{model}: {tensor_name}")
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
    from ..feeds import random_feed

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
            session = ort_session(path)
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
