"""ShardedIndex (mrl_deploy.sharded) without Ray: recall against the single index and numpy
ground truth, the exact merge, global keys and documents through shards, files, the CLI's
`index --shards` / `search` on a sharded index, embedded-corpus directories (mrl_deploy.corpus)
written without Ray, and that no command but the --ray ones imports ray."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mrl_deploy.errors import ArtifactError, InputError
from mrl_deploy.metrics import recall_at_k
from mrl_deploy.retrieval import AdaptiveIndex, prefix
from mrl_deploy.sharded import ShardedIndex, load_index, merge_top_k, split_rows

pytest.importorskip("usearch")

CLI = [sys.executable, "-m", "mrl_deploy.cli"]
K = 10
SETTINGS = dict(shortlist_dim=8, connectivity=8, expansion_add=64, expansion_search=16, shortlist_size=20)


def mrl_like(count, dim=64, clusters=30, seed=0, stream=0):
    """Clustered vectors whose variance decays with the dim index (an MRL embedding's shape)."""
    scale = (1.0 + np.arange(dim)) ** -0.35
    centres = np.random.default_rng(seed).standard_normal((clusters, dim)) * scale
    rng = np.random.default_rng([seed, stream + 1])
    x = centres[rng.integers(0, clusters, count)] + 0.6 * rng.standard_normal((count, dim)) * scale
    return x.astype(np.float32)


def numpy_top_k(corpus, queries, k):
    scores = prefix(queries, corpus.shape[1]) @ prefix(corpus, corpus.shape[1]).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, 1)


@pytest.fixture(scope="module")
def data():
    corpus, queries = mrl_like(4000), mrl_like(200, stream=1)
    return {"corpus": corpus, "queries": queries, "truth": numpy_top_k(corpus, queries, K)[0]}


@pytest.fixture(scope="module")
def sharded(data, tmp_path_factory):
    return ShardedIndex.build(data["corpus"], tmp_path_factory.mktemp("sharded") / "s.index", shards=4, **SETTINGS)


def test_recall_is_at_least_the_single_index(data, sharded):
    """Same data and settings (a small shortlist, so the single index is well short of exact)."""
    single = AdaptiveIndex.build(data["corpus"], **SETTINGS)
    single_recall = recall_at_k(single.search(data["queries"], K)[0], data["truth"])
    sharded_recall = recall_at_k(sharded.search(data["queries"], K)[0], data["truth"])
    assert single_recall < 0.97, "the test needs a setting where the funnel is not exact"
    assert sharded_recall >= single_recall - 0.005, (sharded_recall, single_recall)
    assert len(sharded) == 4000 and len(sharded.shards) == 4
    assert [e["count"] for e in sharded.settings["shards"]] == [1000] * 4


def test_merge_is_exact_over_the_shards(data, sharded):
    """Exact search per shard, merged, is numpy's exact top k (up to the f16 rerank store's
    rounding of near-ties); a wide funnel nearly so, and its scores are the returned rows' cosines."""
    truth_ids, truth_scores = numpy_top_k(data["corpus"], data["queries"], K)
    exact_ids, exact_scores = sharded.search(data["queries"], K, exact=True)
    assert np.allclose(exact_scores, truth_scores, atol=2e-3)
    assert recall_at_k(exact_ids, truth_ids) >= 0.99
    ids, scores = sharded.search(data["queries"], K, shortlist_size=1000, expansion_search=1000)
    assert recall_at_k(ids, truth_ids) >= 0.99
    cosines = np.einsum("qd,qkd->qk", prefix(data["queries"], 64), prefix(data["corpus"], 64)[ids])
    assert np.allclose(scores, cosines, atol=2e-3)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_merge_top_k_by_hand():
    a = (np.array([[5, 7, -1]]), np.array([[0.9, 0.2, np.nan]], dtype=np.float32))
    b = (np.array([[1, 2, 3]]), np.array([[0.95, 0.5, 0.1]], dtype=np.float32))
    ids, scores = merge_top_k([a, b], 4)
    assert ids.tolist() == [[1, 5, 2, 7]]
    assert np.allclose(scores, [[0.95, 0.9, 0.5, 0.2]])
    ids, scores = merge_top_k([a], 4)        # fewer found than k: padded with -1 / NaN
    assert ids.tolist() == [[5, 7, -1, -1]] and np.isnan(scores[0, 2:]).all()


def test_split_rows():
    assert split_rows(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert split_rows(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(InputError, match="at least one vector"):
        split_rows(2, 3)
    with pytest.raises(InputError, match="positive integer"):
        split_rows(5, 0)


def test_global_keys_and_documents_through_shards(data, tmp_path):
    corpus = data["corpus"][:300]
    keys = 10_000 + 3 * np.arange(300)[::-1]            # not sorted, not contiguous
    texts = [f"text of row {i}" for i in range(300)]
    metadata = [{"row": i} for i in range(300)]
    index = ShardedIndex.build(corpus, tmp_path / "docs.index", shards=3, keys=keys, texts=texts,
                               metadata=metadata, **SETTINGS)
    index = ShardedIndex.load(tmp_path / "docs.index")
    assert index.has_documents
    ids, _ = index.search(data["queries"][:20], 5, shortlist_size=100, expansion_search=100)
    truth_rows = numpy_top_k(corpus, data["queries"][:20], 5)[0]
    assert recall_at_k(ids, keys[truth_rows]) >= 0.95     # the user's ids come back, not row numbers
    documents = index.documents(ids)
    row_of = {int(k): i for i, k in enumerate(keys)}
    for id_row, doc_row in zip(ids.tolist(), documents):
        for key, document in zip(id_row, doc_row):
            assert document == {"text": texts[row_of[key]], "metadata": {"row": row_of[key]}}
    assert index.documents([[-1, 12345]]) == [[None, None]]


def test_vectors_and_keys_as_slices_of_npy_files(data, tmp_path):
    """A corpus and its ids in .npy files, handed over as Slices (what a Ray task reads): the
    vectors are read lazily, the 1-D keys whole, and the search returns those keys."""
    from mrl_deploy.sharded import Slice

    corpus = data["corpus"][:600]
    keys = (7 + 5 * np.arange(600)).astype(np.int64)
    np.save(tmp_path / "corpus.npy", corpus)
    np.save(tmp_path / "ids.npy", keys)
    vectors = [Slice(str(tmp_path / "corpus.npy"), 0, 250), Slice(str(tmp_path / "corpus.npy"), 250, 600)]
    ids = [Slice(str(tmp_path / "ids.npy"), 0, 250), Slice(str(tmp_path / "ids.npy"), 250, 600)]
    ShardedIndex.build(vectors, tmp_path / "s.index", shards=3, keys=ids, **SETTINGS)
    index = ShardedIndex.load(tmp_path / "s.index")
    truth = keys[numpy_top_k(corpus, data["queries"][:20], 5)[0]]
    exact, _ = index.search(data["queries"][:20], 5, exact=True)
    np.testing.assert_array_equal(exact, truth)
    # a shortlist as large as a shard (200 rows) leaves the funnel nothing to miss; a smaller one
    # made this test depend on how a multi-threaded HNSW build happened to link the graph
    found, _ = index.search(data["queries"][:20], 5, shortlist_size=200, expansion_search=200)
    assert recall_at_k(found, truth) >= 0.99


def test_save_load_and_damage(data, sharded, tmp_path):
    again = ShardedIndex.load(sharded.path)
    a, sa = sharded.search(data["queries"][:30], K)
    b, sb = again.search(data["queries"][:30], K)
    assert np.array_equal(a, b) and np.allclose(sa, sb)
    assert isinstance(load_index(sharded.path), ShardedIndex)
    import shutil

    broken = tmp_path / "broken.index"
    shutil.copytree(sharded.path, broken)
    shutil.rmtree(broken / "shard-0002")
    with pytest.raises(ArtifactError, match="shard missing"):
        ShardedIndex.load(broken)
    AdaptiveIndex.build(data["corpus"][:100], **SETTINGS).save(tmp_path / "single.index")
    assert isinstance(load_index(tmp_path / "single.index"), AdaptiveIndex)
    with pytest.raises(InputError, match="single index"):
        load_index(tmp_path / "single.index", ray=True)


def test_search_errors(sharded, data):
    with pytest.raises(InputError, match="larger than the corpus"):
        sharded.search(data["queries"][:2], 5000)
    with pytest.raises(InputError, match="dims"):
        sharded.search(data["queries"][:2, :20], 5)
    with pytest.raises(InputError, match="funnel"):
        sharded.search(data["queries"][:2], 5, funnel="16:100,64:5")
    with pytest.raises(InputError, match="NaN"):
        sharded.search(np.full((1, 64), np.nan), 5)


def cli(*args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=180)


def test_cli_index_shards_and_search(data, tmp_path):
    np.save(tmp_path / "x.npy", data["corpus"][:1000])
    np.save(tmp_path / "q.npy", data["queries"][:20])
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(1000)))
    built = cli("index", "--vectors", tmp_path / "x.npy", "-o", tmp_path / "x.index", "--shards", 3,
                "--shortlist-dim", 8, "--metadata", tmp_path / "meta.jsonl", "--json")
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    assert summary["shards"] == 3 and summary["count"] == 1000
    found = cli("search", tmp_path / "x.index", "-q", tmp_path / "q.npy", "-k", 5, "--json")
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    direct = ShardedIndex.load(tmp_path / "x.index").search(data["queries"][:20], 5)[0]
    assert np.array_equal(result["ids"], direct)
    assert [[d["metadata"]["n"] for d in row] for row in result["documents"]] == direct.tolist()
    for args, message in [(("--shards", 0), "--shards must be >= 1"), (("--ray",), "give --shards"),
                          (("--shards", 2, "--append"), "--append")]:
        bad = cli("index", "--vectors", tmp_path / "x.npy", "-o", tmp_path / "y.index", *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


def test_commands_without_ray_never_import_ray(data, tmp_path):
    """--help, and a sharded build + search, run without importing ray (or pyarrow)."""
    np.save(tmp_path / "x.npy", data["corpus"][:200])
    code = (
        "import sys\n"
        "from mrl_deploy.cli import app\n"
        "for args in (['--help'], ['embed', '--help'], ['serve', '--help'],\n"
        f"             ['index', '--vectors', r'{tmp_path / 'x.npy'}', '-o', r'{tmp_path / 'i'}', '--shards', '2'],\n"
        f"             ['search', r'{tmp_path / 'i'}', '-q', r'{tmp_path / 'x.npy'}', '-k', '3', '--json']):\n"
        "    try:\n"
        "        app(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'pyarrow', 'torch'))\n"
        "print('IMPORTED', bad)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stdout, result.stdout[-500:]
