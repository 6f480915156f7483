"""AdaptiveIndex (mrl_deploy.retrieval), the retrieval metrics, and the index / search / tune commands."""

import json
import subprocess
import sys
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import needs_torch
from mrl_deploy.errors import ArtifactError, InputError
from mrl_deploy.metrics import average_precision_at_k, map_at_k, precision_at_k, recall_at_k
from mrl_deploy.retrieval import AdaptiveIndex, exact_search, parse_funnel, prefix, tune

pytest.importorskip("usearch")

CLI = [sys.executable, "-m", "mrl_deploy.cli"]
K = 10


def mrl_like(count, dim=64, clusters=20, seed=0, stream=0):
    """Clustered vectors whose variance decays with the dim index (an MRL embedding's shape)."""
    scale = (1.0 + np.arange(dim)) ** -0.35
    centres = np.random.default_rng(seed).standard_normal((clusters, dim)) * scale
    rng = np.random.default_rng([seed, stream + 1])
    x = centres[rng.integers(0, clusters, count)] + 0.6 * rng.standard_normal((count, dim)) * scale
    return x.astype(np.float32)


def numpy_top_k(corpus, queries, k, dim=None):
    dim = dim or corpus.shape[1]
    scores = prefix(queries, dim) @ prefix(corpus, dim).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k], np.sort(scores, axis=1)[:, ::-1][:, :k]


@pytest.fixture(scope="module")
def data():
    corpus, queries = mrl_like(2000), mrl_like(100, stream=1)
    return {"corpus": corpus, "queries": queries, "truth": numpy_top_k(corpus, queries, K)[0]}


@pytest.fixture(scope="module")
def index(data):
    return AdaptiveIndex.build(data["corpus"], shortlist_dim=16, dtype="f16")


# --- search quality ---------------------------------------------------------------------------------

def test_funnel_recall_against_brute_force(data, index):
    truncated = numpy_top_k(data["corpus"], data["queries"], K, dim=16)[0]
    ids, scores = index.search(data["queries"], k=K, shortlist_size=100)
    assert ids.shape == scores.shape == (100, K) and ids.dtype == np.int64
    assert recall_at_k(ids, data["truth"]) >= 0.95
    # the rerank is what buys the recall: the 16-d prefix alone finds much less
    assert recall_at_k(truncated, data["truth"]) < 0.8
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    three, _ = index.search(data["queries"], k=K, funnel=[(16, 400), (32, 100), (64, 10)])
    assert recall_at_k(three, data["truth"]) >= 0.95
    same, _ = index.funnel(data["queries"], "16:400,32:100,64:10")
    np.testing.assert_array_equal(same, three)


@pytest.mark.parametrize("dtype, shortlist_dim, size, floor", [("f32", 16, 100, 0.95), ("i8", 16, 100, 0.95),
                                                               ("b1", 64, 400, 0.9)])
def test_shortlist_dtypes(data, dtype, shortlist_dim, size, floor):
    index = AdaptiveIndex.build(data["corpus"], shortlist_dim=shortlist_dim, dtype=dtype, connectivity=8)
    ids, _ = index.search(data["queries"], k=K, shortlist_size=size)
    assert recall_at_k(ids, data["truth"]) >= floor
    assert index.shortlist_bytes < 4 * 64 * len(index)  # smaller than an f32 flat index at the full dim


def test_a_shortlist_of_the_whole_corpus_is_exact(data):
    """Asked for a shortlist as large as the corpus, the search scores every row: numpy's top-k
    exactly, even from a sparse graph that an HNSW search need not walk end to end."""
    corpus = data["corpus"][:300]
    index = AdaptiveIndex.build(corpus, shortlist_dim=8, connectivity=2, expansion_add=4)
    truth, truth_scores = numpy_top_k(corpus, data["queries"], K)
    for size in (300, 1000):
        ids, scores = index.search(data["queries"], k=K, shortlist_size=size, expansion_search=1)
        # the store keeps f16 rows: near-ties may swap, so compare the true scores of what came back
        true_scores = np.take_along_axis(prefix(data["queries"], 64) @ prefix(corpus, 64).T, ids, 1)
        np.testing.assert_allclose(true_scores, truth_scores, atol=2e-3)
        np.testing.assert_allclose(scores, truth_scores, atol=2e-3)
        assert (ids == truth).mean() > 0.99
    # the same index with a shortlist one row short goes through the graph and misses rows
    assert recall_at_k(index.search(data["queries"], k=K, shortlist_size=299, expansion_search=1)[0], truth) < 1


def test_scores_are_cosines_of_the_renormalised_prefixes(data, index):
    ids, scores = index.search(data["queries"][:5], k=K)
    full = prefix(data["queries"][:5], 64) @ prefix(data["corpus"], 64).T
    expected = np.take_along_axis(full, ids, axis=1)
    np.testing.assert_allclose(scores, expected, atol=2e-3)  # f16 store


def test_exact_mode_equals_numpy(data):
    index = AdaptiveIndex.build(data["corpus"], shortlist_dim=16, rerank_dtype="f32")
    truth, truth_scores = numpy_top_k(data["corpus"], data["queries"], K)
    ids, scores = index.search(data["queries"], k=K, exact=True)
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
    rows, _ = exact_search(data["corpus"], data["queries"], K, chunk_rows=300, query_block=7)  # merging chunks
    np.testing.assert_array_equal(rows, truth)


def test_user_keys_and_adding(data, tmp_path):
    keys = np.arange(len(data["corpus"]), dtype=np.int64) * 7 + 10**12
    index = AdaptiveIndex.build(data["corpus"][:1500], shortlist_dim=16, keys=keys[:1500])
    added = index.add(data["corpus"][1500:], keys[1500:])
    np.testing.assert_array_equal(added, keys[1500:])
    ids, _ = index.search(data["queries"], k=K)
    assert recall_at_k(ids, keys[data["truth"]]) >= 0.95
    assert index.add(data["queries"][:2]).tolist() == [keys[-1] + 1, keys[-1] + 2]  # next ids by default
    with pytest.raises(InputError, match="already in the index"):
        index.add(data["queries"][:1], keys[:1])
    with pytest.raises(InputError, match="non-negative"):
        AdaptiveIndex.build(data["corpus"][:20], shortlist_dim=16, keys=-np.arange(1, 21))


# --- saving and loading -------------------------------------------------------------------------------

def test_save_load_and_view_round_trip(data, index, tmp_path):
    path = index.save(tmp_path / "index")
    assert sorted(p.name for p in path.iterdir()) == ["index.json", "keys.npy", "rerank.npy", "shortlist.usearch"]
    settings = json.loads((path / "index.json").read_text())
    assert settings["shortlist_dim"] == 16 and settings["rerank_dtype"] == "f16" and settings["count"] == 2000
    expected = index.search(data["queries"], k=K)
    view = AdaptiveIndex.load(path, view=True)
    assert isinstance(view._store, np.memmap)  # the rerank store is read from disk
    for loaded in (view, AdaptiveIndex.load(path, view=False)):
        ids, scores = loaded.search(data["queries"], k=K)
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_allclose(scores, expected[1])
    with pytest.raises(InputError, match="view=True"):
        view.add(data["queries"])
    writable = AdaptiveIndex.load(path, view=False)
    writable.add(data["queries"][:50])
    writable.save(path)  # over the index it was memory-mapped from
    again = AdaptiveIndex.load(path)
    assert len(again) == 2050
    ids, _ = again.search(data["queries"][:5], k=1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(2000, 2005))  # each query finds itself
    view.save(tmp_path / "copy")  # a view saves too (store and keys hard-linked from its files)
    assert len(AdaptiveIndex.load(tmp_path / "copy")) == 2000


def test_interrupted_save_leaves_the_previous_index(data, index, tmp_path, monkeypatch):
    import mrl_deploy.retrieval.index as retrieval_index

    path = index.save(tmp_path / "index")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    other = AdaptiveIndex.build(data["corpus"][:500], shortlist_dim=32)

    def fail(target, array):
        target.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(retrieval_index, "save_npy", fail)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no staging directory left behind
    assert len(AdaptiveIndex.load(path)) == 2000


def test_damaged_or_foreign_directories(index, tmp_path):
    with pytest.raises(ArtifactError, match="not an mrl-deploy index"):
        AdaptiveIndex.load(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="refusing to overwrite"):
        index.save(tmp_path)
    path = index.save(tmp_path / "index")
    with open(path / "rerank.npy", "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(ArtifactError, match="truncated"):
        AdaptiveIndex.load(path)


def _flip_a_byte(path, offset=-3):
    """Change one byte in place: same size, so only a hash can tell."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checksums_recorded_and_verified(data, index, tmp_path):
    import hashlib

    path = index.save(tmp_path / "index")
    files = json.loads((path / "index.json").read_text())["files"]
    assert set(files) == {"shortlist.usearch", "rerank.npy", "keys.npy"}
    for name, entry in files.items():   # against hashlib, not the module's own helper
        assert entry["sha256"] == hashlib.sha256((path / name).read_bytes()).hexdigest()
        assert entry["bytes"] == (path / name).stat().st_size
    AdaptiveIndex.load(path, verify=True)
    # a hard-linked save (a view saved elsewhere) records the same hashes
    copy = AdaptiveIndex.load(path).save(tmp_path / "copy")
    assert json.loads((copy / "index.json").read_text())["files"] == files
    np.save(tmp_path / "q.npy", data["queries"])
    assert run_cli("search", copy, "--queries", tmp_path / "q.npy", "--verify", "--json").returncode == 0
    _flip_a_byte(path / "rerank.npy")
    AdaptiveIndex.load(path)   # the cheap default checks sizes only: the change goes unseen
    with pytest.raises(ArtifactError, match=r"checksum mismatch for .*rerank\.npy") as info:
        AdaptiveIndex.load(path, verify=True)
    assert "\n" not in str(info.value)
    for command in ("search", "tune"):
        result = run_cli(command, path, "--queries", tmp_path / "q.npy", "--verify")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines() == [l for l in result.stderr.splitlines() if l.startswith("error:")]
        assert "checksum mismatch" in result.stderr


def test_indexes_without_checksums_still_load(data, index, tmp_path):
    path = index.save(tmp_path / "old")
    settings = json.loads((path / "index.json").read_text())
    settings["files"] = {name: entry["bytes"] for name, entry in settings["files"].items()}  # as saved before
    (path / "index.json").write_text(json.dumps(settings))
    assert len(AdaptiveIndex.load(path)) == 2000
    with pytest.warns(UserWarning, match="records no checksums.*only file sizes were checked"):
        AdaptiveIndex.load(path, verify=True)
    np.save(tmp_path / "q.npy", data["queries"])
    result = run_cli("search", path, "--queries", tmp_path / "q.npy", "--verify", "--json")
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "records no checksums" in result.stderr
    with open(path / "keys.npy", "r+b") as handle:   # sizes are still checked
        handle.truncate(100)
    with pytest.raises(ArtifactError, match="truncated"):
        AdaptiveIndex.load(path)


# --- errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda ix, q: ix.search(q[:, :32]), "queries have 32 dims; this index takes 64"),
    (lambda ix, q: ix.search(q, k=2001), "larger than the corpus"),
    (lambda ix, q: ix.search(q[:0]), "no queries given"),
    (lambda ix, q: ix.search(np.where(np.arange(64) == 3, np.nan, q)), "NaN"),
    (lambda ix, q: ix.search(q, k=0), "k must be >= 1"),
    # a 0 is refused, never taken for "the default"
    (lambda ix, q: ix.search(q, shortlist_size=0), "shortlist_size must be >= 1"),
    (lambda ix, q: ix.search(q, expansion_search=0), "expansion_search must be >= 1"),
    (lambda ix, q: ix.search(q, expansion_search=-1), "expansion_search must be >= 1"),
    (lambda ix, q: ix.funnel(q, "16:100,64:10", k=0), "k must be >= 1"),
    (lambda ix, q: exact_search(ix._store, q, 10, dim=0), "dim must be between 1 and"),
    (lambda ix, q: recall_at_k(ix.search(q)[0], ix.exact(q)[0], k=0), "k must be between 1 and 10"),
    (lambda ix, q: tune(ix, q, repeats=0), "repeats must be >= 1"),
    (lambda ix, q: tune(ix, q, recall=0), "recall must be in"),
    (lambda ix, q: tune(ix, q, shortlist_sizes=[5, 100]), "shortlist size must be >= 10"),
    (lambda ix, q: tune(ix, q, expansions=[]), "no expansions to sweep"),
    (lambda ix, q: ix.search(q, shortlist_size=5), "smaller than k"),
    (lambda ix, q: ix.search(q, funnel=[(32, 100), (64, 10)]), "shortlist dim 16"),
    (lambda ix, q: ix.search(q, funnel=[(16, 100), (8, 50), (64, 10)]), "must increase"),
    (lambda ix, q: ix.search(q, funnel=[(16, 100), (64, 5)]), "fewer than k"),
    (lambda ix, q: ix.search(q, shortlist_size=100, funnel="16:100,64:10"), "not both"),
    (lambda ix, q: ix.search(q, funnel="16-100"), "DIM:SIZE"),
])
def test_search_errors_are_one_line(data, index, call, message):
    with pytest.raises(InputError, match=message) as info:
        call(index, data["queries"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("vectors, options, message", [
    (np.full((10, 64), np.nan, dtype=np.float32), {}, "NaN"),
    (np.zeros((10, 64), dtype=np.float32), {}, "all zeros"),
    (np.ones((0, 64), dtype=np.float32), {}, "no vectors"),
    (np.ones((10, 64), dtype=np.float32), {"shortlist_dim": 128}, "shortlist dim 128"),
    (np.ones((10, 64), dtype=np.float32), {"shortlist_dim": 0}, "shortlist dim must be >= 1"),
    (np.ones((10, 64), dtype=np.float32), {"rerank_dim": 0}, "rerank dim must be >= 1"),
    (np.ones((10, 64), dtype=np.float32), {"connectivity": 1}, "connectivity must be >= 2"),
    (np.ones((10, 64), dtype=np.float32), {"expansion_search": 0}, "expansion_search must be >= 1"),
    (np.ones((10, 64), dtype=np.float32), {"dtype": "f8"}, "unknown shortlist dtype"),
    (np.ones((10, 64), dtype=np.float32), {"dtype": "b1", "shortlist_dim": 12}, "divisible by 8"),
    (np.array(["a", "b"]), {}, "real numbers"),
])
def test_build_errors(vectors, options, message):
    with pytest.raises(InputError, match=message):
        AdaptiveIndex.build(vectors, **options)


# --- concurrency ------------------------------------------------------------------------------------------

def test_concurrent_searches_equal_serial_ones(data, index):
    settings = [{"shortlist_size": 50}, {"shortlist_size": 200}, {"funnel": "16:300,32:50,64:10"},
                {"shortlist_size": 100, "expansion_search": 300}, {"exact": True}]
    serial = [index.search(data["queries"], k=K, **options) for options in settings]
    jobs = [i % len(settings) for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: index.search(data["queries"], k=K, **settings[i]), jobs))
    for i, (ids, scores) in zip(jobs, results):
        np.testing.assert_array_equal(ids, serial[i][0])
        np.testing.assert_array_equal(scores, serial[i][1])


def test_searches_while_vectors_are_added(data):
    """Threads searching while others add: no search fails, and every id returned is one the
    index holds (added before the search ended)."""
    import threading

    index = AdaptiveIndex.build(data["corpus"][:500], shortlist_dim=16, dtype="f32")
    extra = mrl_like(3000, stream=5)
    batches = np.array_split(extra, 30)
    errors, returned, done = [], [], threading.Event()

    def add(part):
        try:
            for batch in part:
                index.add(batch)
        except Exception as exc:  # noqa: BLE001 - any failure fails the test
            errors.append(exc)

    def search(seed):
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                queries = extra[rng.integers(0, len(extra), 16)]
                ids, scores = index.search(queries, k=5, shortlist_size=40)
                returned.append(ids)
                assert np.isfinite(scores[ids >= 0]).all()
                ids, _ = index.search(queries, k=5, exact=True)
                returned.append(ids)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    searchers = [threading.Thread(target=search, args=(i,)) for i in range(4)]
    adders = [threading.Thread(target=add, args=(batches[i::2],)) for i in range(2)]
    for thread in searchers + adders:
        thread.start()
    for thread in adders:
        thread.join()
    done.set()
    for thread in searchers:
        thread.join()
    assert not errors, errors[:3]
    assert len(index) == 3500 and len(np.unique(index.keys)) == 3500
    assert len(returned) > 10
    found = np.concatenate([ids.ravel() for ids in returned])
    assert np.isin(found[found >= 0], index.keys).all()
    # after the adds, every added vector is findable: the store, keys and graph agree
    ids, _ = index.search(extra[:50], k=1, shortlist_size=40)
    rows = np.searchsorted(index.keys, ids[:, 0])
    np.testing.assert_allclose(index._store[rows].astype(np.float32), prefix(extra[:50], 64), atol=2e-3)


# --- metrics ---------------------------------------------------------------------------------------------

def test_metrics_by_hand():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 9, 1, -1], [5, 6, 7, 8]])
    assert recall_at_k(found, truth) == pytest.approx((2 + 4) / 8)
    assert recall_at_k(found, truth, k=2) == pytest.approx((0 + 2) / 4)  # top 2 of each against top 2
    corpus_labels = np.array([0, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    ids = np.array([[1, 0, 2, 3], [2, 4, 1, 9]])
    query_labels = np.array([1, 1])
    # query 0: relevant at ranks 1 and 3: (1/1 + 2/3) / 4; query 1: ranks 1, 2, 3: (1 + 1 + 1) / 4
    np.testing.assert_allclose(average_precision_at_k(ids, corpus_labels, query_labels, k=4), [(1 + 2 / 3) / 4, 3 / 4])
    assert map_at_k(ids, corpus_labels, query_labels, k=4) == pytest.approx(((1 + 2 / 3) / 4 + 3 / 4) / 2)
    assert precision_at_k(ids, corpus_labels, query_labels, k=4) == pytest.approx((2 + 3) / 8)
    assert precision_at_k(np.array([[-1, 1]]), corpus_labels, np.array([0]), k=2) == 0  # -1 never relevant


def test_parse_funnel():
    assert parse_funnel("16:800, 64:200,768:10") == [(16, 800), (64, 200), (768, 10)]


# --- tune -----------------------------------------------------------------------------------------------------

def test_tune_recommends_and_saves(data, index, tmp_path):
    from mrl_deploy.retrieval import apply_recommendation, tune

    path = index.save(tmp_path / "index")
    loaded = AdaptiveIndex.load(path, view=False)
    tuned = tune(loaded, data["queries"], k=K, recall=0.97, dims=[8, 16], dtypes=["f16", "i8"],
                 shortlist_sizes=[20, 100, 400], expansions=[64], repeats=1)
    report = tuned["report"]
    assert len(report["points"]) == 2 * 2 * 3
    best = report["recommended"]
    assert best["recall"] >= 0.97
    assert all(p["qps"] <= best["qps"] for p in report["points"] if p["recall"] >= 0.97)
    assert best in report["pareto"]
    for p in report["pareto"]:  # nothing on the frontier is beaten on all three at once
        assert not any(o["recall"] >= p["recall"] and o["qps"] >= p["qps"] and o["bytes_per_vector"] <= p["bytes_per_vector"]
                       and o != p and (o["recall"], o["qps"], o["bytes_per_vector"]) != (p["recall"], p["qps"], p["bytes_per_vector"])
                       for o in report["points"])
    apply_recommendation(loaded, tuned, path)
    saved = AdaptiveIndex.load(path)
    assert (saved.shortlist_dim, saved.dtype) == (best["shortlist_dim"], best["dtype"])
    assert saved.defaults["shortlist_size"] == best["shortlist_size"]
    assert saved.settings["tuned"]["recommended"] == best
    ids, _ = saved.search(data["queries"], k=K)  # the saved default
    assert recall_at_k(ids, data["truth"]) >= 0.95
    short = tune(loaded, data["queries"], recall=1.0, dims=[8], shortlist_sizes=[10], expansions=[10], repeats=1)
    assert short["report"]["points"][0]["recall"] < 1.0   # a shortlist of k at 8 of 64 dims misses some
    with pytest.raises(InputError, match="no setting reached"):
        apply_recommendation(loaded, short, path)


# --- the command line ----------------------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=120)


def test_cli_index_search_tune(data, tmp_path):
    np.save(tmp_path / "corpus.npy", data["corpus"])
    np.save(tmp_path / "queries.npy", data["queries"])
    built = run_cli("index", "--vectors", tmp_path / "corpus.npy", "-o", tmp_path / "ix", "--shortlist-dim", 16,
                    "--dtype", "i8", "--json")
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    assert summary["count"] == 2000 and summary["dtype"] == "i8" and summary["shortlist_bytes"] > 0
    found = run_cli("search", tmp_path / "ix", "--queries", tmp_path / "queries.npy", "-k", K, "--funnel",
                    "16:300,32:60,64:10", "--json", "-o", tmp_path / "out.npz")
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    assert np.array(result["ids"]).shape == (100, K) and result["qps"] > 0
    assert recall_at_k(np.array(result["ids"]), data["truth"]) >= 0.95
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["ids"], result["ids"])
    table = run_cli("search", tmp_path / "ix", "--queries", tmp_path / "queries.npy", "--exact")
    assert table.returncode == 0 and "queries/s" in table.stderr
    tuned = run_cli("tune", tmp_path / "ix", "--queries", tmp_path / "queries.npy", "--recall", 0.95, "--dims", 16,
                    "--shortlists", "20,100", "--expansions", 64, "--repeats", 1, "--save", "--json")
    assert tuned.returncode == 0, tuned.stderr
    report = json.loads(tuned.stdout)
    assert report["recommended"]["shortlist_size"] == 100 and report["saved"]
    assert json.loads((tmp_path / "ix" / "index.json").read_text())["defaults"]["shortlist_size"] == 100
    appended = run_cli("index", "--vectors", tmp_path / "queries.npy", "-o", tmp_path / "ix", "--append", "--json")
    assert appended.returncode == 0 and json.loads(appended.stdout)["count"] == 2100


@pytest.mark.parametrize("args, message", [
    (["search", "{ix}", "--queries", "{short}"], "queries have 32 dims"),
    (["search", "{ix}", "--queries", "{q}", "-k", 5000], "larger than the corpus"),
    (["search", "{ix}"], "give --queries"),
    (["search", "{tmp}", "--queries", "{q}"], "not an mrl-deploy index"),
    (["index", "--vectors", "{nan}", "-o", "{tmp}/new"], "NaN"),
    (["index", "-o", "{tmp}/new"], "give --vectors"),
])
def test_cli_errors_are_one_line(data, tmp_path, args, message):
    q = data["queries"]
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "short.npy", q[:, :32])
    np.save(tmp_path / "nan.npy", np.where(np.arange(64) == 1, np.nan, q))
    AdaptiveIndex.build(data["corpus"], shortlist_dim=16).save(tmp_path / "ix")
    names = {"ix": tmp_path / "ix", "q": tmp_path / "q.npy", "short": tmp_path / "short.npy",
             "nan": tmp_path / "nan.npy", "tmp": tmp_path}
    result = run_cli(*[str(a).format(**names) for a in args])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()


@needs_torch
def test_cli_index_and_search_through_an_artifact(tmp_path):
    """index DIR INPUTS embeds with the artifact; search --inputs embeds the queries with the same one."""
    from mrl_deploy import export

    artifact = export("factories:tiny_embedder", dims=[8, 32], output=tmp_path / "tiny", input_shape="20",
                      nesting_dims=[4, 8, 16, 32])
    x = np.random.default_rng(0).standard_normal((1500, 20)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "q.npy", x[:20])
    built = run_cli("index", tmp_path / "tiny", tmp_path / "x.npy", "-o", tmp_path / "ix", "--shortlist-dim", 8, "--json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["full_dim"] == 32
    # --exact: the HNSW shortlist (8-d, built by several threads) misses a query's own row in ~5% of
    # builds of this tiny corpus; what is tested here is that the queries are embedded alike
    found = run_cli("search", tmp_path / "ix", "--inputs", tmp_path / "q.npy", "-k", 3, "--exact", "--json")
    assert found.returncode == 0, found.stderr
    assert [row[0] for row in json.loads(found.stdout)["ids"]] == list(range(20))  # each input finds itself
    vectors = artifact.encode(x[:20], dim=32)
    ids, _ = AdaptiveIndex.load(tmp_path / "ix").search(vectors, k=3, exact=True)
    np.testing.assert_array_equal(ids, json.loads(found.stdout)["ids"])


def test_retrieval_path_imports_no_torch():
    code = "import sys, mrl_deploy.retrieval, mrl_deploy.metrics; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_onnxruntime_imports_after_an_index_is_used():
    """onnxruntime crashes at import once usearch's extension is loaded; the retrieval module
    loads it first so that queries can be embedded after an index is opened."""
    pytest.importorskip("onnxruntime")
    code = ("import numpy as np; from mrl_deploy.retrieval import AdaptiveIndex; "
            "AdaptiveIndex.build(np.eye(16, dtype=np.float32) + 0.1, shortlist_dim=8); import onnxruntime; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --- documents: texts and metadata kept beside the vectors ------------------------------------------

def test_documents_stay_aligned_with_keys_through_save_load_add_and_tune(data, tmp_path):
    from mrl_deploy.retrieval import DOCUMENTS_FILE, apply_recommendation, tune

    corpus = data["corpus"][:300]
    keys = np.arange(300)[::-1] * 7 + 5              # not row numbers: lookups go through the keys
    texts = [f"text of row {i} \u00e9\u4e2d\n" for i in range(300)]
    meta = [{"row": i, "tags": ["a"] * (i % 3)} for i in range(300)]
    index = AdaptiveIndex.build(corpus, shortlist_dim=16, keys=keys, texts=texts, metadata=meta)

    def check(ix, rows):
        ids, _ = ix.search(corpus[rows], k=3)
        documents = ix.documents(ids)
        assert len(documents) == len(rows) and all(len(d) == 3 for d in documents)
        for id_row, doc_row in zip(ids, documents):
            for key, document in zip(id_row, doc_row):
                row = int(np.flatnonzero(ix.keys == key)[0])
                expected = {"text": texts[row], "metadata": meta[row]} if row < 300 else extra[row - 300]
                assert document == expected

    extra = [{"text": "added one", "metadata": {"new": 1}}, {"text": "added two", "metadata": {"new": 2}}]
    check(index, [0, 5, 299])
    assert index.documents([[-1, 123456]]) == [[None, None]]
    index.save(tmp_path / "ix")
    loaded = AdaptiveIndex.load(tmp_path / "ix", view=False)
    assert loaded.has_documents and (tmp_path / "ix" / DOCUMENTS_FILE).stat().st_size > 0
    check(loaded, [1, 150])
    loaded.add(corpus[:2] + 0.05, texts=["added one", "added two"], metadata=[{"new": 1}, {"new": 2}])
    assert loaded.documents([[int(loaded.keys[-1])]]) == [[extra[1]]]
    loaded.save(tmp_path / "ix")                       # over the directory its saved rows are read from
    again = AdaptiveIndex.load(tmp_path / "ix", view=True)
    assert len(again) == 302
    assert again.documents(again.keys[[0, 300, 301]][None]) == [[{"text": texts[0], "metadata": meta[0]}, *extra]]
    tuned = tune(again, data["queries"][:20], k=5, recall=0.5, dims=[8], shortlist_sizes=[50], expansions=[64],
                 repeats=1)
    apply_recommendation(again, tuned, tmp_path / "ix")   # another Ds: a new shortlist, the same documents
    assert AdaptiveIndex.load(tmp_path / "ix").documents(again.keys[[2, 301]][None]) == [
        [{"text": texts[2], "metadata": meta[2]}, extra[1]]]


def test_documents_errors(data, tmp_path):
    corpus = data["corpus"][:20]
    with pytest.raises(InputError, match="3 texts for 20 vectors"):
        AdaptiveIndex.build(corpus, shortlist_dim=16, texts=["a", "b", "c"])
    with pytest.raises(InputError, match="metadata 1 is list"):
        AdaptiveIndex.build(corpus, shortlist_dim=16, metadata=[{}, [1]] + [{}] * 18)
    with pytest.raises(InputError, match="cannot be stored as JSON"):
        AdaptiveIndex.build(corpus, shortlist_dim=16, metadata=[{"x": float("nan")}] * 20)
    with_texts = AdaptiveIndex.build(corpus, shortlist_dim=16, texts=[str(i) for i in range(20)])
    with pytest.raises(InputError, match="give them for the new vectors too"):
        with_texts.add(corpus[:1] + 0.1)
    plain = AdaptiveIndex.build(corpus, shortlist_dim=16)
    assert not plain.has_documents and plain.documents([[0, 1]]) == [[None, None]]
    with pytest.raises(InputError, match="no document store"):
        plain.add(corpus[:1] + 0.1, texts=["x"])
    with_texts.save(tmp_path / "ix")
    with open(tmp_path / "ix" / "documents.jsonl", "ab") as handle:   # a damaged store is refused on load
        handle.write(b"{}\n")
    with pytest.raises(ArtifactError):
        AdaptiveIndex.load(tmp_path / "ix")
    (tmp_path / "meta.jsonl").write_text('{"a": 1}\n[2]\n')
    from mrl_deploy.retrieval import read_metadata

    with pytest.raises(InputError, match="line 2 is not a JSON object"):
        read_metadata(tmp_path / "meta.jsonl")


# --- building from files in chunks: never the whole corpus or store in RAM ---------------------------

def test_build_streams_a_memory_mapped_corpus_into_the_output(data, tmp_path, monkeypatch):
    import mrl_deploy.retrieval.index as retrieval_index

    monkeypatch.setattr(retrieval_index, "CHUNK_ROWS", 300)      # several chunks, the last one short
    np.save(tmp_path / "corpus.npy", data["corpus"])
    mapped = np.load(tmp_path / "corpus.npy", mmap_mode="r")
    texts = [f"doc {i}" for i in range(len(mapped))]
    streamed = AdaptiveIndex.build(mapped, shortlist_dim=16, texts=texts, output=tmp_path / "ix")
    if Path("/proc/self/smaps").is_file():   # the pages read were dropped from this process
        assert mapped_kib(tmp_path / "corpus.npy") == 0
        assert np.asarray(mapped).sum() and mapped_kib(tmp_path / "corpus.npy") >= data["corpus"].nbytes // 1024 - 4
    assert isinstance(streamed._store, np.memmap) and Path(streamed._store.filename) == tmp_path / "ix" / "rerank.npy"
    # the store is the truncated, re-normalised f16 prefix of every row, in row order
    np.testing.assert_allclose(np.asarray(streamed._store, dtype=np.float32), prefix(data["corpus"], 64), atol=1e-3)
    exact, _ = streamed.search(data["queries"], k=K, exact=True)    # the f16 store's own ground truth
    np.testing.assert_array_equal(exact, exact_search(prefix(data["corpus"], 64).astype(np.float16), data["queries"], K)[0])
    ids, _ = streamed.search(data["queries"], k=K, shortlist_size=100)
    assert recall_at_k(ids, data["truth"]) >= 0.95
    loaded = AdaptiveIndex.load(tmp_path / "ix", verify=True)      # a complete index: hashes recorded
    assert len(loaded) == 2000 and loaded.documents([[5]]) == [[{"text": "doc 5"}]]
    streamed.save(tmp_path / "ix")       # over the directory it maps: the store is linked, not rewritten
    assert AdaptiveIndex.load(tmp_path / "ix", verify=True).documents([[7]]) == [[{"text": "doc 7"}]]


def mapped_kib(path):
    """Resident KiB of this process's mappings of `path` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and ":" not in line.split(" ", 1)[0]:
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_a_failed_streaming_build_leaves_nothing(data, tmp_path):
    corpus = data["corpus"].copy()
    corpus[1500] = np.nan
    with pytest.raises(InputError, match="vector row 1500 contains NaN"):
        AdaptiveIndex.build(corpus, shortlist_dim=16, output=tmp_path / "ix")
    assert list(tmp_path.iterdir()) == []


def test_build_from_an_embedded_corpus_directory(data, tmp_path):
    """An `embed --ray` directory read shard by shard (corpus_rows) gives the index of its vectors."""
    from mrl_deploy.corpus import FORMAT, MANIFEST_JSON, ROW_DTYPE, corpus_rows
    from mrl_deploy.manifest import write_json_atomic

    corpus, shards = data["corpus"], []
    for number, (start, stop) in enumerate([(0, 700), (700, 1400), (1400, 2000)]):
        rows = np.zeros(stop - start, dtype=ROW_DTYPE)
        rows["id"] = np.arange(start, stop) + 10_000
        name = f"part-{number:05d}"
        np.save(tmp_path / f"{name}.rows.npy", rows)
        np.save(tmp_path / f"{name}.npy", corpus[start:stop].astype(np.float16))
        shards.append({"name": name, "first_id": start, "count": stop - start, "vectors": f"{name}.npy",
                       "rows": f"{name}.rows.npy"})
    write_json_atomic(tmp_path / MANIFEST_JSON, {"format": FORMAT, "format_version": 1, "dim": 64, "dtype": "f16",
                                                 "count": 2000, "shards": shards[::-1]})  # any order: by id
    rows, ids = corpus_rows(tmp_path)
    assert rows.shape == (2000, 64) and len(rows) == 2000
    np.testing.assert_array_equal(rows[650:1450], corpus[650:1450].astype(np.float16))
    np.testing.assert_array_equal(ids, np.arange(2000) + 10_000)
    index = AdaptiveIndex.build(rows, keys=ids, shortlist_dim=16, output=tmp_path / "ix")
    exact, _ = index.search(data["queries"], k=K, exact=True)
    truth, _ = exact_search(prefix(corpus.astype(np.float16), 64).astype(np.float16), data["queries"], K)
    np.testing.assert_array_equal(exact, truth + 10_000)


def test_prefetch_reads_the_candidate_rows_and_changes_no_result(data, index, tmp_path):
    from mrl_deploy.retrieval.kernels import prefetch_rows

    index.save(tmp_path / "ix")
    loaded = AdaptiveIndex.load(tmp_path / "ix")
    store = loaded._store
    row_bytes, dim_bytes = 64 * 2, 32 * 2
    # runs 3-5 and 10 (and -1, no row): one read of 2 rows + a 32-d prefix, one of a 32-d prefix
    assert prefetch_rows(store, np.array([[5, 3, 4], [10, -1, 3]]), 32) == (2 * row_bytes + dim_bytes) + dim_bytes
    assert prefetch_rows(np.asarray(data["corpus"]), np.array([[1, 2]]), 32) == 0   # a store in RAM: nothing to read
    expected = loaded.search(data["queries"], k=K, funnel=[(16, 200), (32, 50), (64, K)])
    loaded.prefetch = True
    found = loaded.search(data["queries"], k=K, funnel=[(16, 200), (32, 50), (64, K)])
    np.testing.assert_array_equal(found[0], expected[0])
    np.testing.assert_array_equal(found[1], expected[1])


# --- the inverted-list shortlist (dtype "ivf") -----------------------------------------------------------

def test_ivf_shortlist_probing_every_list_is_exact_search_at_ds(data):
    index = AdaptiveIndex.build(data["corpus"], shortlist_dim=16, dtype="ivf", lists=16)
    assert index.settings["lists"] == 16 and index.settings["format_version"] == 2
    rows, scores, counts = index._shortlist_search(data["queries"], 50, 16)      # all 16 lists: brute force
    assert (counts == 50).all()
    # the lists hold int8 codes round(x * scale): brute force over the same codes, in integers
    scale = index._shortlist.scale
    corpus_codes = np.clip(np.round(prefix(data["corpus"], 16) * scale), -127, 127).astype(np.int64)
    query_codes = np.clip(np.round(prefix(data["queries"], 16) * scale), -127, 127).astype(np.int64)
    products = query_codes @ corpus_codes.T
    kth = -np.sort(-products, axis=1)[:, 49]
    np.testing.assert_allclose(scores, -np.sort(-products, axis=1)[:, :50] / scale ** 2, rtol=1e-6)
    assert all(set(r) <= set(np.flatnonzero(p >= t)) for r, p, t in zip(rows, products, kth))   # ties aside
    # and the codes rank close to the float prefixes
    expected, expected_scores = numpy_top_k(data["corpus"], data["queries"], 50, dim=16)
    np.testing.assert_allclose(scores, expected_scores, atol=16 / scale)
    assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(rows, expected)]) >= 47
    few, _, few_counts = index._shortlist_search(data["queries"], 50, 2)          # 2 of 16 lists: fewer found
    assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(few, expected)]) < 50


def test_ivf_funnel_recall_save_load_add(data, tmp_path):
    index = AdaptiveIndex.build(data["corpus"], shortlist_dim=16, dtype="ivf", lists=8)
    assert index.defaults["expansion_search"] == 8 and index.dtype == "ivf"    # IVF_PROBES lists by default
    ids, _ = index.search(data["queries"], k=K, shortlist_size=200, expansion_search=4)
    assert recall_at_k(ids, data["truth"]) >= 0.95
    path = index.save(tmp_path / "ix")
    assert "shortlist.ivf.npz" in {p.name for p in path.iterdir()} and not (path / "shortlist.usearch").exists()
    loaded = AdaptiveIndex.load(path, verify=True)
    np.testing.assert_array_equal(loaded.search(data["queries"], k=K, shortlist_size=200, expansion_search=4)[0], ids)
    extra = mrl_like(30, seed=5, stream=3)
    writable = AdaptiveIndex.load(path, view=False)
    keys = writable.add(extra)
    found, _ = writable.search(extra, k=1, shortlist_size=20, expansion_search=8)
    np.testing.assert_array_equal(found[:, 0], keys)      # each added vector finds itself


def test_ivf_reads_lists_saved_as_f32_vectors(data, tmp_path):
    """Indexes saved before the int8 codes hold the f32 prefixes (`vectors`): they load, encoded."""
    from mrl_deploy.manifest import sha256_file

    index = AdaptiveIndex.build(data["corpus"], shortlist_dim=16, dtype="ivf", lists=8)
    path = index.save(tmp_path / "ix")
    with np.load(path / "shortlist.ivf.npz") as saved:
        parts = {name: saved[name] for name in ("centroids", "offsets", "keys")}
    legacy = {**parts, "vectors": prefix(data["corpus"], 16)[parts["keys"].astype(np.int64)].astype(np.float32)}
    def write_shortlist(arrays):
        with open(path / "shortlist.ivf.npz", "wb") as handle:
            np.savez(handle, **arrays)
        description = json.loads((path / "index.json").read_text())
        description["files"]["shortlist.ivf.npz"] = {"bytes": (path / "shortlist.ivf.npz").stat().st_size,
                                                     "sha256": sha256_file(path / "shortlist.ivf.npz")}
        (path / "index.json").write_text(json.dumps(description))

    write_shortlist(legacy)
    loaded = AdaptiveIndex.load(path, verify=True)
    assert loaded._shortlist.codes.dtype == np.int8
    ids, _ = loaded.search(data["queries"], k=K, shortlist_size=200, expansion_search=8)
    assert recall_at_k(ids, data["truth"]) >= 0.95
    write_shortlist(parts)
    with pytest.raises(ArtifactError, match="neither codes nor vectors"):
        AdaptiveIndex.load(path)


def test_ivf_counts_pending_rows_and_searches_after_each_add(data):
    from mrl_deploy.retrieval.ivf import IVFShortlist

    shortlist = IVFShortlist(16, lists=8, expansion_search=8)       # all lists probed: brute force
    vectors = prefix(data["corpus"], 16)
    shortlist.train(vectors)
    shortlist.add(np.arange(100, dtype=np.uint64), vectors[:100])
    shortlist.add(np.arange(100, 300, dtype=np.uint64), vectors[100:300])
    assert len(shortlist) == 300                                     # pending rows count
    first = shortlist.search(vectors[:5], 1)
    np.testing.assert_array_equal(first.keys[:, 0], np.arange(5))   # each finds itself
    shortlist.add(np.arange(300, 400, dtype=np.uint64), vectors[300:400])   # after a search: repacked
    again = shortlist.search(vectors[300:305], 1)
    np.testing.assert_array_equal(again.keys[:, 0], np.arange(300, 305))
    assert len(shortlist) == 400


@pytest.mark.parametrize("probes", [1, 3, 16, 17, 40, 64, 80])
def test_ivf_nearest_lists_are_the_top_scores(probes):
    """The lists a query probes: the `probes` highest of its centroid scores (a full sort is the
    reference), by repeated argmax for a few probes and argpartition past 16."""
    from mrl_deploy.retrieval.ivf import nearest_lists

    scores = np.random.default_rng(probes).standard_normal((50, 64)).astype(np.float32)
    nearest = nearest_lists(scores, probes)
    expected = np.argsort(-scores, axis=1)[:, :min(probes, 64)]
    assert nearest.shape == expected.shape
    np.testing.assert_array_equal(np.sort(nearest, axis=1), np.sort(expected, axis=1))


def test_ivf_centroids_find_separated_clusters():
    from mrl_deploy.retrieval.ivf import train_centroids

    rng = np.random.default_rng(0)
    centres = prefix(rng.standard_normal((6, 16)), 16)
    sample = prefix(np.repeat(centres, 200, axis=0) + 0.02 * rng.standard_normal((1200, 16)), 16)
    found = train_centroids(sample, 6)
    assert (np.max(found @ centres.T, axis=0) > 0.99).all()     # every true centre has a centroid on it


def test_tune_sweeps_ivf_probes(data, index):
    from mrl_deploy.retrieval import tune

    tuned = tune(index, data["queries"][:40], k=K, dims=[16], dtypes=["f16", "ivf"], shortlist_sizes=[100],
                 expansions=[100], probes=[2, 8])
    ivf = [p for p in tuned["report"]["points"] if p["dtype"] == "ivf"]
    assert sorted(p["expansion_search"] for p in ivf) == [2, 8]
    assert ivf[1]["recall"] >= ivf[0]["recall"] - 0.02    # more lists probed: at least as good (noise aside)


def test_onnxruntime_after_usearch_is_a_clear_error_not_a_crash():
    """onnxruntime 1.32 segfaults at import once usearch's extension is loaded. A user's script
    that imports usearch first gets an error that says what to do; mrl_deploy's own retrieval
    imports onnxruntime first, so building an index then loading a runtime works."""
    user_first = "import usearch\nfrom mrl_deploy.errors import require\nrequire('onnxruntime', 'cpu')"
    crashed = subprocess.run([sys.executable, "-c", user_first], capture_output=True, text=True)
    assert crashed.returncode == 1, crashed      # a Python exception, not a signal
    assert "cannot be imported after usearch" in crashed.stderr.strip().splitlines()[-1]
    ours_first = ("import numpy as np\nfrom mrl_deploy.retrieval import AdaptiveIndex\n"
                  "AdaptiveIndex.build(np.random.default_rng(0).standard_normal((40, 16)), shortlist_dim=8)\n"
                  "from mrl_deploy.errors import require\nprint(require('onnxruntime', 'cpu').__name__)")
    fine = subprocess.run([sys.executable, "-c", ours_first], capture_output=True, text=True)
    assert fine.returncode == 0 and fine.stdout.strip() == "onnxruntime", fine


def test_cli_points_vectors_to_the_options_that_take_them(data, tmp_path):
    """A vectors file given where an artifact's inputs go: exit 2 and a line naming the option."""
    np.save(tmp_path / "corpus.npy", data["corpus"][:200])
    wrong = run_cli("index", tmp_path / "corpus.npy", "-o", tmp_path / "ix")
    assert wrong.returncode == 2 and f"--vectors {tmp_path / 'corpus.npy'}" in wrong.stderr
    assert not (tmp_path / "ix").exists()
    assert run_cli("index", "--vectors", tmp_path / "corpus.npy", "-o", tmp_path / "ix").returncode == 0
    searched = run_cli("search", tmp_path / "ix", "--inputs", tmp_path / "corpus.npy")
    assert searched.returncode == 2 and "query vectors with --queries" in searched.stderr
