"""Official MRL ResNet-50 checkpoints: variants detected from their keys, BlurPool really applied,
the full network exported and verified, and checkpoints of anything else refused in one line."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch
from mrl_deploy.errors import SourceError

pytestmark = needs_torch
REPO = Path(__file__).resolve().parents[1]
DIMS = [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
BN_BUFFERS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
SMALL = (2, 3, 64, 64)  # the network is size-agnostic (adaptive pool): small images keep tests fast


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One small-head checkpoint per variant, written once for the module."""
    from mrl_deploy.resnet import make_random_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    return {
        "mrl": make_random_checkpoint(root / "mrl.pt", num_classes=10),
        "mrl-e": make_random_checkpoint(root / "mrle.pt", efficient=True, num_classes=10, seed=1),
        "blur": make_random_checkpoint(root / "blur.pt", blurpool=True, module_prefix=True, num_classes=10, seed=2),
    }


def load(path, **options):
    from mrl_deploy.resnet import load_resnet_mrl

    return load_resnet_mrl(str(path), **options)


def forward(source, x):
    import torch

    with torch.no_grad():
        return source.module(torch.from_numpy(x))


def images(shape=SMALL, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def rewrite(src, dst, change):
    """Save `change(state_dict)` of the checkpoint at src to dst (wrappers, renamed keys, ...)."""
    import torch

    torch.save(change(torch.load(src, weights_only=True)), dst)
    return dst


def unblurred(state):
    """The same weights as plain torchvision convs: `.conv.weight` -> `.weight`, no blur_filter."""
    return {k.replace(".conv.weight", ".weight"): v for k, v in state.items() if not k.endswith("blur_filter")}


# --- detection and round trips ------------------------------------------------------------------

def test_detection_from_keys(checkpoints):
    import torch

    from mrl_deploy.resnet import blurpool_convs, is_resnet_checkpoint

    plain = torch.load(checkpoints["mrl"], weights_only=True)
    blur = torch.load(checkpoints["blur"], weights_only=True)
    assert is_resnet_checkpoint(plain) and is_resnet_checkpoint(blur)
    assert all(k.startswith("module.") for k in blur) and "module.layer2.0.conv2.blur_filter" in blur
    # FFCV's rule (stride > 1, in_channels >= 16): the 3x3 and projection of each strided block, not the stem
    assert blurpool_convs(blur) == [f"layer{s}.0.{c}" for s in (2, 3, 4) for c in ("conv2", "downsample.0")]
    assert blurpool_convs(plain) == []
    assert not is_resnet_checkpoint([k for k in plain if k != "layer4.2.conv3.weight"])
    assert not is_resnet_checkpoint([k for k in plain if not k.startswith("fc.")])
    assert not is_resnet_checkpoint(["conv1.weight", "fc.weight"])


@pytest.mark.parametrize("variant, wrap", [("mrl", None), ("mrl", "state_dict"), ("mrl-e", "model"), ("blur", None)])
def test_round_trip(checkpoints, tmp_path, variant, wrap):
    import torch

    path = checkpoints[variant]
    if wrap:  # how training loops save: {'state_dict': ..., 'epoch': ...}
        path = rewrite(path, tmp_path / "wrapped.pt", lambda sd: {wrap: sd, "epoch": 40, "arch": "resnet50"})
    source = load(path)
    assert source.kind == "resnet50-mrl" and source.full_dim == 2048 and source.nesting_dims == DIMS
    assert source.num_classes == 10 and source.options == {}
    assert [s.to_json() for s in source.inputs] == [{"name": "x", "dtype": "float32", "shape": ["batch", 3, 224, 224]}]
    pre = source.preprocessing
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    assert (pre["resize"], pre["center_crop"], pre["color"], pre["layout"]) == (256, 224, "RGB", "NCHW")
    assert not source.module.training
    out = forward(source, images())
    if variant == "mrl-e":
        assert source.head == "shared" and source.head_dims == []
        assert source.shared_head is source.module.fc.nesting_classifier_0
        assert isinstance(out, torch.Tensor) and out.shape == (2, 2048)
        assert tuple(source.shared_head.weight.shape) == (10, 2048)
    else:
        assert source.head == "separate" and source.head_dims == DIMS and source.shared_head is None
        z, logits = out
        assert z.shape == (2, 2048) and [tuple(l.shape) for l in logits] == [(2, 10)] * 9
        head = source.module.fc.nesting_classifier_3  # head i sees z[:, :dims[i]]
        torch.testing.assert_close(logits[3], z[:, :64] @ head.weight.T + head.bias)
    assert torch.isfinite(out[0] if isinstance(out, tuple) else out).all()


def test_weights_are_the_checkpoints(checkpoints):
    import torch

    state = torch.load(checkpoints["blur"], weights_only=True)
    loaded = load(checkpoints["blur"]).module.state_dict()
    assert set(loaded) == {k[len("module."):] for k in state}
    for key, value in state.items():
        assert torch.equal(loaded[key[len("module."):]], value), key


def test_plain_fc_is_a_shared_head(checkpoints, tmp_path):
    """The released MRL-E format (fc.weight, 2048 columns) and a fixed-feature baseline (r columns,
    classifying z[:r]): one shared head; the FF model's embedding is z[:r]."""
    import torch

    def plain_fc(columns):
        def change(sd):
            sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
            sd["fc.weight"] = torch.randn(10, columns)
            sd["fc.bias"] = torch.randn(10)
            return sd
        return change

    mrl_e = load(rewrite(checkpoints["mrl"], tmp_path / "e.pt", plain_fc(2048)))
    assert mrl_e.head == "shared" and mrl_e.full_dim == 2048 and mrl_e.nesting_dims == DIMS
    assert mrl_e.shared_head is mrl_e.module.fc
    ff = load(rewrite(checkpoints["mrl"], tmp_path / "ff.pt", plain_fc(512)))
    # a fixed-feature baseline was trained at its one dim r: no halvings of r are invented
    assert ff.full_dim == 512 and ff.nesting_dims == [512] and ff.num_classes == 10
    assert load(tmp_path / "ff.pt", nesting_dims="64,512").nesting_dims == [64, 512]
    z = forward(ff, images())
    assert z.shape == (2, 512)
    torch.testing.assert_close(z, forward(mrl_e, images())[:, :512])  # same backbone weights


def test_nesting_dims_option_and_missing_buffers(checkpoints, tmp_path):
    import torch

    assert load(checkpoints["mrl-e"], nesting_dims="16,64,2048").nesting_dims == [16, 64, 2048]
    assert load(checkpoints["mrl-e"], nesting_dims=[16, 64]).options == {"nesting_dims": [16, 64]}
    assert load(checkpoints["mrl"], nesting_dims=DIMS).head_dims == DIMS
    with pytest.raises(SourceError, match=r"differ from the checkpoint's heads"):
        load(checkpoints["mrl"], nesting_dims=[8, 2048])
    with pytest.raises(SourceError, match=r"options \['input_shape'\] do not apply to resnet50-mrl"):
        load(checkpoints["mrl"], input_shape="3,224,224")
    # torch < 0.4.1 wrote no num_batches_tracked; a BlurPool checkpoint without its filter gets FFCV's
    bare = rewrite(checkpoints["blur"], tmp_path / "bare.pt",
                   lambda sd: {k: v for k, v in sd.items() if not k.endswith(("num_batches_tracked", "blur_filter"))})
    x = images()
    torch.testing.assert_close(forward(load(bare), x)[0], forward(load(checkpoints["blur"]), x)[0])


# --- BlurPool ---------------------------------------------------------------------------------------

def test_blurpool_conv_is_blur_then_strided_conv(checkpoints):
    """Hand-computed: a [1 2 1]x[1 2 1]/16 blur (zero padding) by shifted sums, then the stride-2 conv."""
    import torch
    import torch.nn.functional as F

    layer = load(checkpoints["blur"]).module.layer2[0].conv2
    assert type(layer).__name__ == "BlurPoolConv2d" and layer.conv.stride == (2, 2)
    x = torch.from_numpy(images((2, 128, 9, 9), seed=3))
    padded = F.pad(x, (1, 1, 1, 1))
    weights = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    blurred = sum(weights[i, j] * padded[:, :, i:i + 9, j:j + 9] for i in range(3) for j in range(3))
    expected = F.conv2d(blurred, layer.conv.weight, stride=2, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        assert (layer(x) - layer.conv(x)).abs().max() > 1e-3  # the blur is not a no-op


def test_blurpool_changes_the_network_and_uses_the_checkpoint_filter(checkpoints, tmp_path):
    import torch

    x = images(seed=4)
    blur = forward(load(checkpoints["blur"]), x)[0]
    plain = forward(load(rewrite(checkpoints["blur"], tmp_path / "plain.pt", unblurred)), x)[0]
    assert (blur - plain).abs().max() > 1e-4

    def identity_filter(sd):  # a delta kernel makes each BlurPoolConv2d its bare conv
        out = dict(sd)
        for key in (k for k in sd if k.endswith("blur_filter")):
            out[key] = torch.zeros_like(sd[key])
            out[key][:, :, 1, 1] = 1.0
        return out

    delta = forward(load(rewrite(checkpoints["blur"], tmp_path / "delta.pt", identity_filter)), x)[0]
    torch.testing.assert_close(delta, plain)


# --- errors -----------------------------------------------------------------------------------------

def resnet18_state():
    """A torchvision ResNet-18's key names (basic blocks: conv1/conv2, no conv3; a 512-d fc)."""
    import torch

    def conv_bn(conv, bn):
        return {f"{conv}.weight": torch.zeros(1), **{f"{bn}.{n}": torch.zeros(1) for n in BN_BUFFERS}}

    state = conv_bn("conv1", "bn1")
    for stage in range(1, 5):
        for block in range(2):
            for i in (1, 2):
                state.update(conv_bn(f"layer{stage}.{block}.conv{i}", f"layer{stage}.{block}.bn{i}"))
            if stage > 1 and block == 0:
                state.update(conv_bn(f"layer{stage}.0.downsample.0", f"layer{stage}.0.downsample.1"))
    state.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    return state


def bad_checkpoints(good, root):
    import torch

    def save(name, obj):
        torch.save(obj, root / name)
        return root / name

    (root / "corrupt.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "truncated.pt").write_bytes(Path(good).read_bytes()[:100_000])
    (root / "nothing.pt").write_bytes(b"")
    return {
        "corrupt": (root / "corrupt.pt", r"cannot read checkpoint .*corrupt\.pt: .*or the file is corrupt"),
        "truncated": (root / "truncated.pt", r"cannot read checkpoint .*truncated\.pt: PytorchStreamReader failed"),
        "no bytes": (root / "nothing.pt", r"cannot read checkpoint .*nothing\.pt: EOFError"),
        "resnet18": (save("r18.pt", resnet18_state()), r"not an MRL ResNet-50 checkpoint: missing layer1\.0\.conv3\.weight"),
        "random dict": (save("rand.pt", {"a": torch.zeros(3), "b.c": torch.ones(2)}),
                        r"not an MRL ResNet-50 checkpoint: missing conv1\.weight, bn1\.weight, bn1\.bias \(\+\d+ more\); no classifier"),
        "empty": (save("empty.pt", {}), "not an MRL ResNet-50 checkpoint: the state dict is empty"),
        "tensor": (save("tensor.pt", torch.zeros(3)), "it holds a Tensor, not a state dict"),
        "deeper": (rewrite(good, root / "r101.pt", lambda sd: {**sd, "layer3.6.conv1.weight": torch.zeros(256, 1024, 1, 1)}),
                   r"unexpected keys layer3\.6\.conv1\.weight"),
        "shape": (rewrite(good, root / "shape.pt", lambda sd: {**sd, "layer1.0.conv1.weight": torch.zeros(32, 64, 1, 1)}),
                  r"shape mismatch layer1\.0\.conv1\.weight \[32, 64, 1, 1\] \(expected \[64, 64, 1, 1\]\)"),
        "classes": (rewrite(good, root / "classes.pt", lambda sd: {**sd, "fc.nesting_classifier_2.weight": torch.zeros(7, 32)}),
                    r"MRL heads disagree on the number of classes: \[7, 10\]"),
        "mrl-e width": (rewrite(good, root / "width.pt", lambda sd: {
            **{k: v for k, v in sd.items() if not k.startswith("fc.")},
            "fc.nesting_classifier_0.weight": torch.zeros(10, 1024), "fc.nesting_classifier_0.bias": torch.zeros(10)}),
            r"the MRL-E head fc\.nesting_classifier_0 takes 1024 features"),
        "pickle": (save("pickle.pt", {"conv1.weight": torch.zeros(1), "net": Path("x")}),
                   r"cannot read checkpoint .*pickle\.pt: Unsupported global: GLOBAL pathlib\.\w*Path \(read with"),
    }


def test_other_files_are_one_line_source_errors(checkpoints, tmp_path):
    for name, (path, message) in bad_checkpoints(checkpoints["mrl"], tmp_path).items():
        with pytest.raises(SourceError, match=message) as info:
            load(path)
        assert "\n" not in str(info.value) and len(str(info.value)) < 500, name


def test_cli_refuses_a_bad_checkpoint(checkpoints, tmp_path):
    bad = bad_checkpoints(checkpoints["mrl"], tmp_path)
    for name in ("corrupt", "resnet18"):
        out = tmp_path / f"out-{name.replace(' ', '')}"
        result = subprocess.run([sys.executable, "-m", "mrl_deploy.cli", "export", str(bad[name][0]), "--dims", "8",
                                 "-o", str(out)], capture_output=True, text=True, cwd=REPO / "tests")
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and ("cannot read checkpoint" in lines[0] or "not an MRL ResNet-50" in lines[0]), result.stderr
        assert not out.exists()


# --- the full export ----------------------------------------------------------------------------------

def cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_export_mrl_resnet50(tmp_path):
    """The paper's network (9 heads, 1000 classes) through the real exporter; the artifact agrees
    with the torch module, via ONNX Runtime and via the torch runtime rebuilt from the manifest."""
    from mrl_deploy import Artifact, export
    from mrl_deploy.resnet import make_random_checkpoint

    checkpoint = make_random_checkpoint(tmp_path / "r50.pt")
    export(str(checkpoint), dims=[8, 64, 2048], output=tmp_path / "art")
    artifact = Artifact.load(tmp_path / "art")
    manifest = artifact.manifest
    assert [o["name"] for o in manifest["outputs"]] == [
        "embedding_8", "embedding_64", "embedding_2048", "logits_8", "logits_64", "logits_2048"]
    assert manifest["source"]["kind"] == "resnet50-mrl" and manifest["source"]["options"] == {}
    assert manifest["head"] == "separate" and manifest["nesting_dims"] == DIMS and manifest["full_dim"] == 2048
    assert manifest["inputs"][0]["shape"] == ["batch", 3, 224, 224] and manifest["preprocessing"]["resize"] == 256
    assert all(s["min_cosine"] >= 0.99999 for s in manifest["models"]["fp32"]["verification"].values())
    assert 7e9 < manifest["flops"]["encoder"] < 9e9  # ResNet-50: ~4.1 G multiply-adds

    x = images((3, 3, 224, 224), seed=5)
    source = load(checkpoint)
    z, logits = forward(source, x)
    z = z.numpy()
    for m, index in ((8, 0), (64, 3), (2048, 8)):
        assert cosines(artifact.encode(x, dim=m), z[:, :m]).min() > 0.9999
        np.testing.assert_allclose(np.linalg.norm(artifact.encode(x, dim=m), axis=1), 1.0, atol=1e-5)
        assert cosines(artifact.logits(x, dim=m), logits[index].numpy()).min() > 0.9999
    assert cosines(artifact.encode(x, dim=64, runtime="torch"), z[:, :64]).min() > 0.99999


@pytest.mark.slow
def test_export_mrl_e_blurpool_resnet50(tmp_path):
    """MRL-E with FFCV BlurPool convs and a `module.` prefix: logits at m from the one shared head."""
    import torch

    from mrl_deploy import export
    from mrl_deploy.resnet import make_random_checkpoint

    checkpoint = make_random_checkpoint(tmp_path / "r50e.pt", efficient=True, blurpool=True, module_prefix=True,
                                        num_classes=10, seed=7)
    artifact = export(str(checkpoint), dims=[16, 2048], output=tmp_path / "art")
    assert artifact.manifest["head"] == "shared" and artifact.logit_dims == [16, 2048]
    state = torch.load(checkpoint, weights_only=True)
    weight, bias = state["module.fc.nesting_classifier_0.weight"].numpy(), state["module.fc.nesting_classifier_0.bias"].numpy()
    x = images((2, 3, 224, 224), seed=6)
    z = forward(load(checkpoint), x).numpy()
    for m in (16, 2048):
        assert cosines(artifact.encode(x, dim=m), z[:, :m]).min() > 0.9999
        expected = z[:, :m] @ weight[:, :m].T + bias
        assert cosines(artifact.logits(x, dim=m), expected).min() > 0.9999


# --- an independent reference: torchvision's ResNet-50 ------------------------------------------------

# `make install` puts torchvision (0.28, the release made for torch 2.13) in a directory of its own
# inside the venv, not in site-packages: the wheel is a CUDA build whose C++ ops do not load on the
# CPU build of torch, and an importable but broken torchvision breaks transformers' imports. The
# reference therefore runs in a subprocess with that directory on its path.
TORCHVISION = Path(sys.prefix) / "torchvision-reference"
TORCHVISION_REFERENCE = r"""
import sys

import numpy as np
import torch
import torch.library

# torchvision 0.28 registers fake kernels for its C++ ops (nms, roi_align: detection ops that a
# ResNet never calls) at import, without checking that the ops loaded: skip those registrations
# alone; the model code is torchvision's, unchanged.
register_fake = torch.library.register_fake

def lenient(op, *args, **kwargs):
    def decorate(fn):
        try:
            return register_fake(op, *args, **kwargs)(fn)
        except RuntimeError as exc:
            if "does not exist" not in str(exc):
                raise
            return fn
    return decorate

torch.library.register_fake = lenient
import torchvision.models
torch.library.register_fake = register_fake

out, dims, classes = sys.argv[1], [8, 64, 2048], 10
torch.manual_seed(11)
net = torchvision.models.resnet50(weights=None).eval()
with torch.no_grad():   # default statistics (mean 0, var 1, weight 1, bias 0) would hide a swapped buffer
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0.0, 0.1)
state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
heads = {}
for i, m in enumerate(dims):
    heads[f"fc.nesting_classifier_{i}.weight"] = torch.randn(classes, m) / m ** 0.5
    heads[f"fc.nesting_classifier_{i}.bias"] = torch.randn(classes)
# saved as the official checkpoints are: a training loop's dict, DataParallel `module.` keys
torch.save({"state_dict": {f"module.{k}": v for k, v in {**state, **heads}.items()}, "epoch": 40}, f"{out}/official.pt")
net.fc = torch.nn.Identity()   # torchvision's forward up to the average pool and flatten
x = torch.from_numpy(np.random.default_rng(12).standard_normal((3, 3, 224, 224)).astype(np.float32))
with torch.no_grad():
    z = net(x)
np.savez(f"{out}/reference.npz", x=x.numpy(), z=z.numpy(), torchvision=torchvision.__version__,
         **{k: v.numpy() for k, v in heads.items()})
"""


@pytest.mark.slow
def test_export_equals_torchvision_resnet50(tmp_path):
    """The loader and the export against torchvision's resnet50 (the architecture the official
    checkpoints are, with the same trunk keys): torchvision makes the checkpoint (its own seeded
    state dict, batch norms given non-trivial statistics, plus three MRL heads) and the pooled
    features of a batch. The artifact's embedding at m is those features z[:m], normalised, and
    its logits each head applied to z[:m], within the fp32 bound (cosine >= 0.99999, max abs diff
    <= 1e-4)."""
    from mrl_deploy import export

    if not (TORCHVISION / "torchvision").is_dir():
        pytest.skip(f"torchvision is not in {TORCHVISION} (make install puts it there)")
    subprocess.run([sys.executable, "-c", TORCHVISION_REFERENCE, str(tmp_path)], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(TORCHVISION)})
    with np.load(tmp_path / "reference.npz") as reference:
        ref = {k: reference[k] for k in reference.files}
    assert str(ref["torchvision"]).startswith("0.28")
    x, z = ref["x"], ref["z"].astype(np.float64)
    assert z.shape == (3, 2048) and np.isfinite(z).all() and np.abs(z).max() > 0
    checkpoint = tmp_path / "official.pt"

    z_loaded, _ = forward(load(checkpoint), x)   # the loader alone, before any export
    np.testing.assert_allclose(z_loaded.numpy(), z, rtol=1e-4, atol=1e-4 * np.abs(z).max())

    dims = [8, 64, 2048]
    artifact = export(str(checkpoint), dims=dims, output=tmp_path / "art")
    assert artifact.manifest["nesting_dims"] == dims and artifact.manifest["head"] == "separate"
    for i, m in enumerate(dims):
        expected = z[:, :m] / np.linalg.norm(z[:, :m], axis=1, keepdims=True)
        embedding = artifact.encode(x, dim=m)
        assert cosines(embedding, expected).min() >= 0.99999, m
        assert np.abs(embedding - expected).max() <= 1e-4, m
        weight, bias = ref[f"fc.nesting_classifier_{i}.weight"], ref[f"fc.nesting_classifier_{i}.bias"]
        logits = z[:, :m] @ weight.astype(np.float64).T + bias
        actual = artifact.logits(x, dim=m)
        assert cosines(actual, logits).min() >= 0.99999, m
        assert np.abs(actual - logits).max() <= 1e-4 * np.abs(logits).max(), m
