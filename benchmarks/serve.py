"""Serving under load: `mrl-deploy serve` as a subprocess on loopback, driven by a bounded
closed-loop client, with dynamic batching on and off, beside in-process Artifact.encode.

    .venv/bin/python benchmarks/serve.py                  # demo + MiniLM, ~6 minutes on 2 cores
    .venv/bin/python benchmarks/serve.py --quick          # smoke test: demo, concurrency 1 and 8, 1 s each

For each model (the demo MRL model `mrl-deploy demo` trains, and all-MiniLM-L6-v2 with 16-token
queries) and each mode (batching on: --max-batch 64 --max-delay-ms 2; off: --max-batch 1) a
server process is started; at each concurrency C (1, 8, 32, 128) C clients each send one request
(one input) to /v1/embeddings, wait for the answer and send the next, for `--duration` seconds
after a warm-up (closed loop; no request is queued by the client). Reported per setting: latency
p50/p90/p99 (request written -> response read), requests/s, items/s, errors and the server's mean
batch size in that window (from /metrics). The client is a minimal HTTP/1.1 keep-alive client on
asyncio (one connection per client), so its own cost stays small; it still shares the machine's
cores with the server: say so next to the numbers.

Beside it, in the same run and with the same runtime and threads: in-process Artifact.encode of
the same inputs at batch 1, 8, 32 and 128 (tokenization included, as in the server), latency per
call and items/s. Targets (issue 13, MiniLM): with batching, items/s at concurrency 32 >= 0.8x
in-process at batch 32, and >= 3x batching off; p50 at concurrency 1 within 2 ms of in-process
batch 1.

Writes benchmarks/results/serve.json (every number and the machine); --quick writes to
benchmarks/.cache/serve_quick.json so it never overwrites committed results."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CACHE = ROOT / ".cache"
sys.path.insert(0, str(ROOT))          # encoders.py: the same cached demo and MiniLM artifacts

CONCURRENCY = (1, 8, 32, 128)
BATCHES = (1, 8, 32, 128)
MODES = {"batching": {"max_batch": 64, "max_delay_ms": 2.0}, "no batching": {"max_batch": 1, "max_delay_ms": 0.0}}
QUERY_TOKENS = 16


# --- inputs ------------------------------------------------------------------------------------

def demo_inputs(artifact, count=256):
    """Held-out digits, one image per request (the request carries it as nested numbers)."""
    from mrl_deploy.data import load_dataset

    x = np.asarray(load_dataset("digits", split="test").x[:count], dtype=np.float32)
    return [x[i] for i in range(len(x))]


def minilm_inputs(artifact, count=256):
    """Distinct BBC News snippets that tokenize to exactly QUERY_TOKENS tokens ([CLS] and [SEP]
    included): short queries, the typical embedding request."""
    from tokenizers import Tokenizer

    from encoders import bbc_texts

    tokenizer = Tokenizer.from_file(str(artifact.path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    queries = []
    for article in bbc_texts(count * 2):
        ids = tokenizer.encode(article).ids[1:QUERY_TOKENS - 1]
        text = tokenizer.decode(ids)
        if len(tokenizer.encode(text).ids) == QUERY_TOKENS and text not in queries:
            queries.append(text)
        if len(queries) == count:
            break
    if len(queries) < 16:
        raise SystemExit(f"only {len(queries)} queries of {QUERY_TOKENS} tokens found")
    return queries


def prepare(name, say):
    from encoders import prepare_demo, prepare_minilm

    artifact, _, _ = (prepare_demo if name == "demo" else prepare_minilm)(say)
    inputs = (demo_inputs if name == "demo" else minilm_inputs)(artifact)
    return artifact, inputs


def request_bodies(inputs):
    """One /v1/embeddings body per input, encoded once: the client sends bytes, nothing else."""
    bodies = []
    for item in inputs:
        value = item if isinstance(item, str) else np.asarray(item).tolist()
        bodies.append(json.dumps({"input": value if isinstance(item, str) else [value]}).encode())
    return bodies


# --- in process -----------------------------------------------------------------------------------

def in_process(artifact, inputs, runtime, threads, duration, say):
    """Artifact.encode at each batch size: per-call latency and items/s."""
    from mrl_deploy.timing import latency_stats, time_calls

    out = {}
    for batch in BATCHES:
        chunk = [inputs[i % len(inputs)] for i in range(batch)]
        data = chunk if isinstance(chunk[0], str) else np.stack(chunk)
        call = lambda: artifact.encode(data, batch_size=batch, runtime=runtime, threads=threads)  # noqa: E731
        seconds = time_calls(call, duration, warmup=min(1.0, duration / 4))
        stats = latency_stats(seconds)
        out[str(batch)] = {**stats, "items_per_second": batch / float(np.median(seconds))}
        say(f"  in-process batch {batch}: p50 {stats['p50_ms']:.2f} ms, "
            f"{out[str(batch)]['items_per_second']:,.0f} items/s")
    return out


# --- the server and the client -------------------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(artifact, port, runtime, threads, max_batch, max_delay_ms, log):
    command = [sys.executable, "-m", "mrl_deploy.cli", "serve", str(artifact.path), "--port", str(port),
               "--runtime", runtime, "--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms),
               "--max-queue", "4096"]
    if threads:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(command, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}); see {log.name}")
        try:
            if asyncio.run(_get(port, "/health"))[0] == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become healthy in 120 s")


def stop_server(process):
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


async def _get(port, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        return await _read_response(reader)
    finally:
        writer.close()


async def _read_response(reader):
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return status, await reader.readexactly(length)


async def closed_loop(port, bodies, concurrency, duration, warmup, max_requests):
    """`concurrency` clients, one keep-alive connection each, each sending its next request when
    the previous one is answered; latencies of the requests started after the warm-up and before
    the end. Bounded: stops after `duration` or `max_requests` requests per client."""
    started = time.perf_counter()
    begin, end = started + warmup, started + warmup + duration
    latencies, errors = [], [0]

    async def client(offset):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(max_requests):
                body = bodies[(offset + i * concurrency) % len(bodies)]
                head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode()
                sent = time.perf_counter()
                if sent >= end:
                    return
                writer.write(head + body)
                await writer.drain()
                status, _ = await _read_response(reader)
                if sent >= begin:
                    latencies.append(time.perf_counter() - sent)
                    if status != 200:
                        errors[0] += 1
        finally:
            writer.close()

    await asyncio.gather(*[client(i) for i in range(concurrency)])
    return latencies, errors[0], min(time.perf_counter(), end) - begin


def batch_counters(port):
    status, body = asyncio.run(_get(port, "/metrics"))
    text = body.decode()
    value = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # noqa: E731
    return value("mrl_batch_size_sum"), value("mrl_batch_size_count")


def serve_runs(artifact, inputs, runtime, threads, concurrencies, duration, say, log):
    from mrl_deploy.timing import latency_stats

    bodies = request_bodies(inputs)
    out = {}
    for mode, options in MODES.items():
        port = free_port()
        process = start_server(artifact, port, runtime, threads, options["max_batch"], options["max_delay_ms"], log)
        try:
            out[mode] = {}
            for concurrency in concurrencies:
                before = batch_counters(port)
                latencies, errors, seconds = asyncio.run(closed_loop(
                    port, bodies, concurrency, duration, warmup=min(1.0, duration / 4), max_requests=1_000_000))
                after = batch_counters(port)
                stats = latency_stats(latencies)
                row = {**stats, "requests": len(latencies), "errors": errors,
                       "requests_per_second": len(latencies) / seconds,
                       "items_per_second": len(latencies) / seconds,   # one input per request
                       "mean_batch": (after[0] - before[0]) / max(after[1] - before[1], 1)}
                out[mode][str(concurrency)] = row
                say(f"  {mode}, concurrency {concurrency}: p50 {stats['p50_ms']:.2f} ms, p99 {stats['p99_ms']:.2f} ms, "
                    f"{row['items_per_second']:,.0f} items/s, mean batch {row['mean_batch']:.1f}, errors {errors}")
        finally:
            stop_server(process)
    return out


def targets(model):
    """Issue 13's targets where the run has the settings they need."""
    server, local = model["server"], model["in_process"]
    on, off = server.get("batching", {}), server.get("no batching", {})
    out = {}
    if "32" in on and "32" in local:
        value = on["32"]["items_per_second"] / local["32"]["items_per_second"]
        out["batching c32 items/s vs in-process batch 32"] = {"value": value, "target": ">= 0.8", "met": value >= 0.8}
    if "32" in on and "32" in off:
        value = on["32"]["items_per_second"] / off["32"]["items_per_second"]
        out["batching vs no batching, c32 items/s"] = {"value": value, "target": ">= 3", "met": value >= 3}
    if "1" in on and "1" in local:
        value = on["1"]["p50_ms"] - local["1"]["p50_ms"]
        out["c1 p50 minus in-process batch 1 p50 (ms)"] = {"value": value, "target": "<= 2", "met": value <= 2}
    return out


def markdown(results):
    lines = ["| model | mode | concurrency | p50 ms | p90 ms | p99 ms | items/s | mean batch | in-process batch = C: p50 ms, items/s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, model in results["models"].items():
        for mode, rows in model["server"].items():
            for concurrency, row in rows.items():
                local = model["in_process"].get(concurrency)
                beside = f"{local['p50_ms']:.2f}, {local['items_per_second']:,.0f}" if local else "-"
                lines.append(f"| {name} | {mode} | {concurrency} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
                             f"{row['p99_ms']:.2f} | {row['items_per_second']:,.0f} | {row['mean_batch']:.1f} | {beside} |")
    for name, model in results["models"].items():
        for what, target in model["targets"].items():
            lines.append(f"\n{name}: {what}: {target['value']:.2f} (target {target['target']}: "
                         f"{'met' if target['met'] else 'missed'})")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,minilm", help="demo, minilm (comma-separated)")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="client counts")
    parser.add_argument("--duration", type=float, default=10.0, help="timed seconds per setting (after a warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads, server and in-process alike "
                                                                     "(default: its own choice)")
    parser.add_argument("--runtime", default="ort-cpu", help="the runtime, server and in-process alike")
    parser.add_argument("--quick", action="store_true", help="smoke test: demo, concurrency 1 and 8, 1 s each")
    parser.add_argument("--output", type=Path, default=None, help="results JSON (default results/serve.json; "
                                                                 "--quick: .cache/serve_quick.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.concurrency, args.duration = "demo", "1,8", 1.0
    output = args.output or (CACHE / "serve_quick.json" if args.quick else RESULTS / "serve.json")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    from mrl_deploy.machine import machine_info

    CACHE.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine_info(), "settings": {
        "duration_s": args.duration, "concurrency": concurrencies, "in_process_batches": list(BATCHES),
        "modes": MODES, "runtime": args.runtime, "threads": args.threads, "query_tokens": QUERY_TOKENS,
        "client": "asyncio HTTP/1.1 keep-alive, one connection per client, same machine as the server",
        "endpoint": "/v1/embeddings, one input per request"}, "models": {}}
    with open(CACHE / "serve_server.log", "w") as log:
        for name in args.models.split(","):
            say(f"{name}: preparing")
            artifact, inputs = prepare(name, say)
            say(f"{name}: in-process Artifact.encode ({args.runtime}, threads {args.threads or 'default'})")
            local = in_process(artifact, inputs, args.runtime, args.threads, args.duration, say)
            artifact.close()
            say(f"{name}: server on loopback")
            server = serve_runs(artifact, inputs, args.runtime, args.threads, concurrencies, args.duration, say, log)
            model = {"artifact": str(artifact.path), "exported_dims": artifact.exported_dims, "in_process": local,
                     "server": server}
            model["targets"] = targets(model)
            results["models"][name] = model
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    say(f"wrote {output}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
