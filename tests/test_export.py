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


def test_embedding_only_model_with_unknown_nesting_dims(tmp_path):
    """A factory that does not declare its nesting dims: recorded as unknown (null), not as
    invented halvings; no "not trained" warning; --all-dims asks for them; --nesting-dims declares them."""
    import warnings

    from mrl_deploy import Artifact

    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a "not in the model's nesting dims" warning would fail here
        artifact = export("factories:tiny_embedder", dims=(12,), output=tmp_path / "e", nesting_dims=None)
    assert artifact.manifest["nesting_dims"] is None and artifact.nesting_dims is None
    assert json.loads((tmp_path / "e" / "mrl.json").read_text())["nesting_dims"] is None
    assert artifact.logit_dims == [] and artifact.manifest["head"] is None
    assert Artifact.load(tmp_path / "e").nesting_dims is None
    with pytest.raises(DimsError, match="does not declare its nesting dims.*--nesting-dims"):
        export("factories:tiny_embedder", dims=(), all_dims=True, output=tmp_path / "all", nesting_dims=None)
    assert not (tmp_path / "all").exists()
    declared = export("factories:tiny_embedder", dims=(), all_dims=True, output=tmp_path / "all", nesting_dims="8,32")
    assert declared.manifest["nesting_dims"] == [8, 32] and declared.exported_dims == [8, 32]
    with pytest.raises(DimsError, match="exceed the model's full dim 32"):
        export("factories:tiny_embedder", dims=(8,), output=tmp_path / "big", nesting_dims="8,64")
    # a model with heads cannot be read without them: the heads are one per nesting dim
    with pytest.raises(SourceError, match="pass --nesting-dims"):
        export("factories:tiny_mrl", dims=(8,), output=tmp_path / "heads", nesting_dims=None)


def test_inspect_and_bench_dims_with_unknown_nesting_dims(tmp_path):
    from mrl_deploy.bench import default_dims

    export("factories:tiny_embedder", dims=(8, 16), output=tmp_path / "e", nesting_dims=None)
    shown = run_cli("inspect", tmp_path / "e")
    assert shown.returncode == 0, shown.stderr
    assert any("nesting dims" in line and "unknown" in line for line in shown.stdout.splitlines()), shown.stdout
    manifest = json.loads((tmp_path / "e" / "mrl.json").read_text())
    assert default_dims(manifest) == [8, 16]   # the exported dims: no invented ones


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


def test_verification_never_passes_nan(tiny):
    """NaN in an output fails verification (NaN compares false with every bound, so a check
    written `value < bound: fail` lets it through: the exporter's did before comparison.py)."""
    from mrl_deploy.exporters.onnx import verify_variant

    feed = {"x": np.random.default_rng(6).standard_normal((3, 20)).astype(np.float32)}
    outputs = tiny.manifest["outputs"]
    reference = tiny.run(feed["x"])
    verify_variant(tiny.path / "model.onnx", "fp32", [feed], [reference], outputs)   # the graph matches itself
    broken = dict(reference, embedding_8=np.full_like(reference["embedding_8"], np.nan))
    with pytest.raises(VerificationError, match="embedding_8 has NaN"):
        verify_variant(tiny.path / "model.onnx", "fp32", [feed], [broken], outputs)


def _files(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _cli_export_tensorrt(target):
    from typer.testing import CliRunner

    from mrl_deploy.cli import app

    return CliRunner().invoke(app, ["export", "factories:tiny_mrl", "--dims", "16", "-o", str(target), "--input-shape",
                                    "20", "--nesting-dims", "4,8,16,32", "--format", "tensorrt", "--max-batch", "8"])


def test_failed_engine_build_leaves_the_old_artifact_untouched(tmp_path, monkeypatch):
    """TensorRT cannot be installed here: the engine build fails as it would on a machine where
    it does. The artifact already at -o must come out byte-identical, manifest included."""
    from mrl_deploy.errors import MRLDeployError
    from mrl_deploy.exporters import tensorrt as trt_export

    target = tmp_path / "art"
    export(dims=(8,), output=target)
    before = _files(target)
    calls = []

    def failing_build(directory, *args, **kwargs):
        calls.append(Path(directory))
        raise MRLDeployError("TensorRT could not build the engine")

    monkeypatch.setattr(trt_export, "require_tensorrt", lambda *args, **kwargs: None)
    monkeypatch.setattr(trt_export, "build_engine", failing_build)
    result = _cli_export_tensorrt(target)
    assert calls, result.output                 # the build was reached
    assert isinstance(result.exception, MRLDeployError) and "could not build" in str(result.exception)
    assert _files(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]   # no staging directory left


def test_engine_is_built_in_the_staged_artifact(tmp_path, monkeypatch):
    """The engine is built into the export's staging directory (never into the live one) and is
    recorded, checksummed, in the manifest the artifact is moved into place with."""
    from mrl_deploy import Artifact
    from mrl_deploy.exporters import tensorrt as trt_export

    target = tmp_path / "art"
    export(dims=(8,), output=target)
    seen = []

    def fake_build(directory, manifest, precision, max_batch, **kwargs):
        directory = Path(directory)
        seen.append((directory, (target / "mrl.json").read_bytes(), precision, max_batch))
        (directory / "model.plan").write_bytes(b"engine bytes")
        return {"file": "model.plan", "precision": precision, "format": "tensorrt", "max_batch": max_batch}

    monkeypatch.setattr(trt_export, "require_tensorrt", lambda *args, **kwargs: None)
    monkeypatch.setattr(trt_export, "build_engine", fake_build)
    old_manifest = (target / "mrl.json").read_bytes()
    result = _cli_export_tensorrt(target)
    assert result.exit_code == 0, result.output
    (staged, live_manifest, precision, max_batch), = seen
    assert staged != target.resolve() and staged.parent == target.resolve().parent
    assert live_manifest == old_manifest   # the live artifact was untouched while the engine was built
    artifact = Artifact.load(target)       # checksums include the engine
    assert artifact.exported_dims == [16] and artifact.manifest["models"]["tensorrt"]["file"] == "model.plan"
    assert (precision, max_batch) == ("fp32", 8) and "model.plan" in artifact.manifest["files"]


def test_int8_is_verified_on_inputs_calibration_never_saw(tmp_path, monkeypatch):
    """--sample is split: one part (with its own random inputs) calibrates int8, the other is held
    out; the recorded held-out numbers are ORT int8 against torch fp32 on inputs calibration never
    saw, and the calibration-set numbers are recorded beside them."""
    import onnxruntime as ort

    from mrl_deploy.exporters import precision as precision_module
    from mrl_deploy.exporters.onnx import verification_feeds
    from mrl_deploy.sources import load_source

    calibrated_on = []
    real = precision_module.make_int8

    def spy(src, dst, **options):
        calibrated_on.extend(options["sample"])
        return real(src, dst, **options)

    monkeypatch.setattr(precision_module, "make_int8", spy)
    sample = np.random.default_rng(7).standard_normal((40, 20)).astype(np.float32)
    sample = np.concatenate([sample, sample[:5]])   # duplicates: dropped, not split across the parts
    artifact = export("factories:tiny_embedder", dims=(8, 16), output=tmp_path / "q", precision=["fp32", "int8"],
                      sample=sample)
    info = artifact.manifest["models"]["int8"]

    parts = verification_feeds(load_source("factories:tiny_embedder", input_shape="20", nesting_dims=[4, 8, 16, 32]),
                               sample)
    rows = lambda feeds: {row.tobytes() for feed in feeds for row in feed["x"]}  # noqa: E731
    held_out, seen = rows(parts["held_out"]), rows(calibrated_on)
    assert seen == rows(parts["calibration"]) and not held_out & seen     # calibration never saw them
    sample_rows = {row.tobytes() for row in sample}
    assert len(held_out & sample_rows) == 20 and len(seen & sample_rows) == 20   # the sample, split in half
    assert info["verification_inputs"] == {"calibration": 24, "held_out": 24}

    # independent recomputation: ORT int8 against the torch fp32 model, by hand. Feed by feed as
    # the exporter ran them: dynamic int8 quantizes activations per run, so rows of one batch
    # change each other's results.
    session = ort.InferenceSession(str(artifact.path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    runs = [dict(zip(names, session.run(None, {"x": feed["x"]}))) for feed in parts["held_out"]]
    got = {name: np.concatenate([run[name] for run in runs]) for name in names}
    x = np.concatenate([feed["x"] for feed in parts["held_out"]])
    z, _ = torch_reference(x)   # tiny_embedder is tiny_mrl's encoder without the heads
    want = {f"embedding_{m}": z[:, :m] / np.linalg.norm(z[:, :m], axis=1, keepdims=True) for m in (8, 16)}
    assert set(info["verification"]) == set(want)
    for name, expected in want.items():
        actual = got[name].astype(np.float64)
        cosine = np.sum(actual * expected, axis=1) / (np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1))
        stats = info["verification"][name]
        assert stats["min_cosine"] == pytest.approx(cosine.min(), abs=1e-6)
        assert stats["max_abs_diff"] == pytest.approx(np.abs(actual - expected).max(), rel=1e-3, abs=1e-6)
        assert set(stats["calibration_set"]) >= {"min_cosine", "max_abs_diff"}
    # fp32 is checked on both parts
    assert artifact.manifest["models"]["fp32"]["verification"]["embedding_8"]["min_cosine"] >= 0.99999


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
