"""Activation smoothing before int8 (exporters/smoothing.py): the smoothed fp32 graph computes the
same function, and int8 of it no longer needs the outlier layer kept in fp32."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _outlier_graph(path):
    """x[b, 8] @ W1 + b1 -> Relu -> @ W2: hidden channel 5 is ~100x the others (a bias of 200)
    and still carries a little signal, as a transformer's outlier features do."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 64)) * 0.3).astype(np.float32)
    b1 = np.zeros(64, np.float32)
    b1[5] = 200.0
    w2 = (rng.standard_normal((64, 16)) * 0.3).astype(np.float32)
    w2[5] *= 0.001
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"), helper.make_node("Add", ["h", "b1"], ["hb"], name="bias"),
         helper.make_node("Relu", ["hb"], ["r"], name="relu"), helper.make_node("MatMul", ["r", "w2"], ["y"], name="second")],
        "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _feed(seed):
    return {"x": np.random.default_rng(seed).standard_normal((64, 8)).astype(np.float32)}


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _min_cosine(a, b):
    return float(np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


@pytest.fixture()
def graphs(tmp_path):
    from mrl_deploy.exporters.smoothing import smooth_activations

    src = _outlier_graph(tmp_path / "model.onnx")
    info = smooth_activations(src, tmp_path / "smoothed.onnx", [_feed(1)])
    return src, tmp_path / "smoothed.onnx", info


def test_smoothed_graph_computes_the_same_function(graphs):
    src, smoothed, info = graphs
    fresh = _feed(2)
    want, got = _run(src, fresh), _run(smoothed, fresh)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert info["applied"] and info["activations_smoothed"] == 2 and info["matmuls_rescaled"] == 2
    assert info["worst_channel_spread_before"] > 50 > 2 > info["worst_channel_spread_after"]
    ops = [n.op_type for n in onnx.load(str(smoothed)).graph.node]
    assert ops.count("Mul") == 2 and ops.count("MatMul") == 2  # one Mul before each MatMul's input


def test_int8_of_the_smoothed_graph_quantizes_the_outlier_layer(graphs, tmp_path):
    from mrl_deploy.exporters.precision import make_int8

    src, smoothed, _ = graphs
    plain = make_int8(src, tmp_path / "plain.int8.onnx", sample=_feed(1), preprocess=False)
    assert plain["nodes_kept_fp32"] == ["second"]  # without smoothing the outlier layer stays fp32
    info = make_int8(smoothed, tmp_path / "smoothed.int8.onnx", sample=_feed(1), preprocess=False)
    assert info["nodes_kept_fp32"] == [] and info["nodes_quantized"] == 2
    fresh = _feed(3)  # against the original fp32 graph, on inputs the smoothing never saw
    assert _min_cosine(_run(tmp_path / "smoothed.int8.onnx", fresh), _run(src, fresh)) >= 0.995


def test_nothing_to_smooth(tmp_path):
    from onnx import TensorProto, helper

    from mrl_deploy.exporters.smoothing import smooth_activations

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph), str(tmp_path / "relu.onnx"))
    assert smooth_activations(tmp_path / "relu.onnx", tmp_path / "out.onnx", [{"x": np.ones((2, 4), np.float32)}]) is None
    assert smooth_activations(_outlier_graph(tmp_path / "m.onnx"), tmp_path / "out.onnx", []) is None
    assert not (tmp_path / "out.onnx").exists()
