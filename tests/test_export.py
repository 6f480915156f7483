"""Export: outputs are exactly the chosen granularities, verified, atomic; errors are one line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch
from mrl_deploy.errors import ArtifactError, DimsError, InputError, SourceError, VerificationError

pytestmark = needs_torch
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mrl_deploy.cli"]


def export(source="factories:tiny_mrl", dims=(8, 16), output=None, **options):
    from mrl_deploy import export as run_export

    options.setdefault("input_shape", "20")
    options.setdefault("nesting_dims", [4, 8, 16, 32])
    return run_export(source, dims, output, **options)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export(dims=(8, 16), output=tmp_path_factory.mktemp("a") / "tiny")


def torch_reference(x):
    import torch

    from factories import tiny_mrl

    model = tiny_mrl().eval()
    with torch.no_grad():
        z, logits = model(torch.from_numpy(x))
    return z.numpy(), [l.numpy() for l in logits]


def test_outputs_are_the_chosen_dims(tiny):
    manifest = tiny.manifest
    assert manifest["exported_dims"] == [8, 16]
    assert [o["name"] for o in manifest["outputs"]] == ["embedding_8", "embedding_16", "logits_8", "logits_16"]
    assert manifest["head"] == "separate" and manifest["full_dim"] == 32
    assert manifest["nesting_dims"] == [4, 8, 16, 32]
    import onnx

    graph = onnx.load(tiny.path / "model.onnx").graph
    assert [o.name for o in graph.output] == ["embedding_8", "embedding_16", "logits_8", "logits_16"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_truncate_then_renormalise(tiny):
    x = np.random.default_rng(3).standard_normal((7, 20)).astype(np.float32)
    z, logits = torch_reference(x)
    for m in (8, 16):
        expected = z[:, :m] / np.linalg.norm(z[:, :m], axis=1, keepdims=True)
        got = tiny.encode(x, dim=m)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        # the classic bug: normalise the full vector, then slice (norms below 1)
        wrong = (z / np.linalg.norm(z, axis=1, keepdims=True))[:, :m]
        assert np.abs(got - wrong).max() > 1e-3
    np.testing.assert_allclose(tiny.logits(x, dim=8), logits[1], atol=1e-5)


def test_encode_any_dim_below_an_exported_one(tiny):
    x = np.random.default_rng(4).standard_normal((5, 20)).astype(np.float32)
    z, _ = torch_reference(x)
    got = tiny.encode(x, dim=5)  # sliced from embedding_8 and re-normalised
    np.testing.assert_allclose(got, z[:, :5] / np.linalg.norm(z[:, :5], axis=1, keepdims=True), atol=1e-5)
    with pytest.raises(InputError, match="above the largest exported dim"):
        tiny.encode(x, dim=17)
    with pytest.raises(InputError, match="no logits at dim 12"):
        tiny.logits(x, dim=12)


def test_encode_batches_and_single_sample(tiny):
    x = np.random.default_rng(5).standard_normal((130, 20)).astype(np.float32)
    full = tiny.encode(x, dim=16, batch_size=64)
    assert full.shape == (130, 16) and full.dtype == np.float32
    np.testing.assert_allclose(tiny.encode(x[3], dim=16)[0], full[3], atol=1e-6)
    with pytest.raises(InputError, match="shape"):
        tiny.encode(np.zeros((3, 21), np.float32), dim=8)
    with pytest.raises(InputError, match="NaN"):
        tiny.encode(np.full((2, 20), np.nan, np.float32), dim=8)


def test_manifest_records_verification_flops_and_files(tiny):
    manifest = tiny.manifest
    report = manifest["models"]["fp32"]["verification"]
    assert set(report) == {"embedding_8", "embedding_16", "logits_8", "logits_16"}
    assert all(s["min_cosine"] >= 0.99999 and s["max_abs_diff"] <= 1e-4 for s in report.values())
    assert manifest["flops"]["encoder"] == 2 * (20 * 64 + 64 * 32)  # two Linear layers, 2 x MACs
    assert manifest["flops"]["heads"]["8"] == 2 * 8 * 5
    assert set(manifest["files"]) == {"model.onnx"}
    assert manifest["source"]["kind"] == "factory" and manifest["normalization"] == "truncate-then-l2"


def test_all_dims_and_untrained_dim_warning(tmp_path):
    artifact = export(dims=(), output=tmp_path / "all", all_dims=True)
    assert artifact.exported_dims == [4, 8, 16, 32]
    assert [o["dim"] for o in artifact.manifest["outputs"] if o["kind"] == "logits"] == [4, 8, 16, 32]
    with pytest.warns(UserWarning, match=r"\[12\] are not in the model's nesting dims"):
        artifact = export(dims=(12,), output=tmp_path / "untrained")
    assert artifact.exported_dims == [12] and artifact.logit_dims == []  # no head was trained at 12


def test_embedding_only_model(tmp_path):
    artifact = export("factories:tiny_embedder", dims=(16,), output=tmp_path / "e", nesting_dims=None)
    assert artifact.manifest["nesting_dims"] == [8, 16, 32] and artifact.logit_dims == []
    assert artifact.manifest["head"] is None


@pytest.mark.parametrize("dims, message", [((0,), ">= 1"), ((33,), "exceed the model's full dim 32"),
                                           (("1.5",), "integers"), ((), "no dims chosen")])
def test_bad_dims(tmp_path, dims, message):
    with pytest.raises(DimsError, match=message):
        export(dims=dims, output=tmp_path / "bad")
    assert not list(tmp_path.iterdir())  # nothing partial left behind


def test_failed_verification_leaves_nothing_and_keeps_previous(tmp_path, monkeypatch, tiny):
    from mrl_deploy.exporters import onnx as onnx_exporter

    target = tmp_path / "art"
    export(dims=(8,), output=target)
    before = (target / "mrl.json").read_text()
    monkeypatch.setitem(onnx_exporter.TOLERANCE, "fp32", {"min_cosine": 1.5})
    with pytest.raises(VerificationError, match="does not match PyTorch"):
        export(dims=(16,), output=target)
    assert (target / "mrl.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not an artifact"):
        export(dims=(8,), output=tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_tampered_and_corrupt_files(tmp_path):
    from mrl_deploy import Artifact

    artifact = export(dims=(8,), output=tmp_path / "t")
    model = artifact.path / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        Artifact.load(artifact.path)
    model.write_bytes(b"not an onnx file at all")
    with pytest.raises(ArtifactError, match="cannot load"):
        Artifact.load(artifact.path, verify=False).encode(np.zeros((1, 20), np.float32), dim=8)
    (artifact.path / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        Artifact.load(artifact.path)
    with pytest.raises(ArtifactError, match="not an mrl-deploy artifact"):
        Artifact.load(tmp_path)


def test_source_errors(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        export("missing_file.pt", output=tmp_path / "x")
    with pytest.raises(SourceError, match="not a torch.nn.Module"):
        export("factories:not_a_module", output=tmp_path / "x")
    with pytest.raises(SourceError, match="cannot import"):
        export("no_such_module:factory", output=tmp_path / "x")
    with pytest.raises(SourceError, match="input-shape"):
        export(output=tmp_path / "x", input_shape=None)
    assert not list(tmp_path.iterdir())


def run_cli(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO / "tests")


def test_cli_errors_are_one_line_exit_2(tmp_path):
    for args in (["export", "factories:tiny_mrl", "--dims", "0", "-o", tmp_path / "x", "--input-shape", "20"],
                 ["export", tmp_path / "nothing.pt", "--dims", "8", "-o", tmp_path / "x"],
                 ["inspect", tmp_path],
                 ["export", "factories:tiny_mrl", "--dims", "8", "-o", tmp_path / "x", "--input-shape", "20",
                  "--nesting-dims", "4,8,16,32", "--format", "nope"]):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
        assert len(lines) == 1, result.stderr
    assert not (tmp_path / "x").exists()


def test_cli_export_inspect_embed(tmp_path):
    out = tmp_path / "cli"
    result = run_cli("export", "factories:tiny_mrl", "--dims", "8,16", "-o", out, "--input-shape", "20",
                     "--nesting-dims", "4,8,16,32", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["exported_dims"] == [8, 16]
    shown = run_cli("inspect", out)
    assert shown.returncode == 0 and "embedding_16" in shown.stdout
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((9, 20)).astype(np.float32))
    result = run_cli("embed", out, tmp_path / "x.npy", "--dim", "8", "-o", tmp_path / "v.npy", "--runtime", "ort-cpu")
    assert result.returncode == 0, result.stderr
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (9, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_help_does_not_import_torch():
    code = ("import sys; from mrl_deploy.cli import app, main; import typer.testing as t; "
            "r = t.CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "print(' '.join(m for m in ('torch', 'onnx', 'onnxruntime', 'usearch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
