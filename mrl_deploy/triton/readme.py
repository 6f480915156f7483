"""The README.md of a Triton repository: how to start Triton on it and query it."""

from __future__ import annotations

from typing import Any

from .interface import TEXT_INPUT, TRITON_TYPES

def readme(artifact, name: str, models: dict[str, dict[str, Any]], settings: dict[str, Any], io) -> str:
    manifest = artifact.manifest
    embedding_dims = sorted(o["dim"] for o in manifest["outputs"] if o["kind"] == "embedding")
    dim = 64 if 64 in embedding_dims else embedding_dims[0]
    logit_dims = artifact.logit_dims
    text = artifact.is_text
    target = f"{name}_text" if text else name
    lines = [
        f"# Triton model repository for `{name}`",
        "",
        f"Written by `mrl-deploy triton` from the artifact `{artifact.path.resolve()}` "
        f"({manifest['source']['kind']}, dims {', '.join(map(str, manifest['exported_dims']))}).",
        "Nothing here has been run on a Triton server by mrl-deploy: `mrl-deploy triton --check` parses every",
        "config.pbtxt with Triton's own schema, compares it with the ONNX graphs and runs each ONNX model",
        "on ONNX Runtime CPU. The smoke test at the end is how to try it on a machine with Docker (and a GPU).",
        "",
        "| model | platform | what |",
        "| --- | --- | --- |",
    ]
    for model, info in models.items():
        if info["platform"] == "python":
            what = "texts -> token ids (tokenization.py: the same code as the artifact's)"
        elif info["platform"] == "ensemble":
            what = f"texts -> every output ({' -> '.join(info['steps'])})"
        elif info["platform"] == "tensorrt_plan":
            what = (f"{info['variant']} engine: compute capability {info['compute_capability']}, TensorRT "
                    f"{info.get('tensorrt_version')} only (the container's TensorRT must be that version)")
        else:
            what = f"{info['variant']} ONNX graph, {info['kind'].upper()} instances" + (
                ", ONNX Runtime TensorRT accelerator" if info.get("accelerator") else "")
        lines.append(f"| `{model}` | {info['platform']} | {what} |")
    outputs = ", ".join(f"`{o['name']}`" for o in manifest["outputs"])
    lines += [
        "",
        f"Outputs are named per dim ({outputs}): a client asks for the granularity it needs and only",
        "that comes back. Each `embedding_{m}` is the first m dims, re-normalised (z[:m] / ||z[:m]||).",
        "Triton's ONNX Runtime backend computes every output its config.pbtxt lists for each batch (the",
        "slices and heads are cheap next to the encoder): export with fewer `--dims` to compute fewer.",
        "",
        "## Start Triton",
        "",
        "Pick a Triton release (`<yy.mm>`) whose ONNX Runtime reads this graph's opset "
        f"({manifest.get('opset')}).",
        "",
        "```bash",
    ]
    serve = "tritonserver --model-repository=/models"
    if text:  # the stock image has no `tokenizers`; a derived image saves the install per start
        gpu_command = f'bash -c "pip install tokenizers && {serve}"'
        cpu_command = f'bash -c "pip install tokenizers && {serve} --model-config-name=cpu"'
    else:
        gpu_command, cpu_command = serve, f"{serve} --model-config-name=cpu"
    if text:
        lines.append("# the tokenizer model needs the `tokenizers` package in the Python backend's environment")
    lines += [
        "# GPU machine",
        'docker run --rm --gpus=all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD":/models \\',
        f"  nvcr.io/nvidia/tritonserver:<yy.mm>-py3 {gpu_command}",
        "# CPU-only machine: every ONNX model on CPU instances (configs/cpu.pbtxt)",
        'docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD":/models \\',
        f"  nvcr.io/nvidia/tritonserver:<yy.mm>-py3 {cpu_command}",
        "```",
        "",
        "Run it from this directory (it is mounted at /models).",
    ]
    engines = [m for m, info in models.items() if info["platform"] == "tensorrt_plan"]
    if engines:
        keep = " ".join(f"--load-model={m}" for m in models if m not in engines)
        lines += [f"TensorRT engines ({', '.join(engines)}) load only on a GPU of their compute capability with "
                  "their TensorRT version; elsewhere start Triton with `--model-control-mode=explicit "
                  f"{keep}`."]
    lines += [
        "",
        "## Query it (tritonclient)",
        "",
        "```python",
        "import numpy as np",
        "import tritonclient.grpc as grpcclient",
        "",
        'client = grpcclient.InferenceServerClient("localhost:8001")',
    ]
    if text:
        lines += [
            'texts = ["Matryoshka embeddings nest coarse to fine.", "another text"]',
            "batch = np.array([[t.encode()] for t in texts], dtype=object)   # one text per row",
            f'inputs = [grpcclient.InferInput("{TEXT_INPUT}", list(batch.shape), "BYTES")]',
            "inputs[0].set_data_from_numpy(batch)",
        ]
    else:
        spec = manifest["inputs"][0]
        shape = ", ".join(str(a) for a in [2] + [a for a in spec["shape"][1:]]) + ("," if len(spec["shape"]) == 1 else "")
        triton_type = TRITON_TYPES.get(spec["dtype"], "TYPE_FP32")[len("TYPE_"):]
        lines += [
            f"batch = np.random.default_rng(0).standard_normal(({shape})).astype(np.{spec['dtype']})"
            "   # your inputs, as mrl.json's preprocessing says",
            f'inputs = [grpcclient.InferInput("{spec["name"]}", list(batch.shape), "{triton_type}")]',
            "inputs[0].set_data_from_numpy(batch)",
        ]
    lines += [
        "",
        f"# only the {dim}-d embedding comes back",
        f'result = client.infer("{target}", inputs, outputs=[grpcclient.InferRequestedOutput("embedding_{dim}")])',
        f'vectors = result.as_numpy("embedding_{dim}")   # float32, one unit-norm row per input',
    ]
    if logit_dims:
        cascade = manifest.get("cascade")
        if cascade:
            make = (f"cascade = Cascade({cascade['dims']}, {cascade['thresholds']}, "
                    f"confidence={cascade.get('confidence', 'softmax')!r})   # the artifact's calibrated cascade")
        else:
            make = (f'cascade = Cascade.from_manifest(json.load(open("{artifact.path.resolve() / "mrl.json"}")))'
                    f"   # after `mrl-deploy calibrate` (heads at {', '.join(map(str, logit_dims))})")
        lines += [
            "",
            "# cascaded classification: the logits of the cascade's heads (tiny next to the encoder),",
            "# then each sample stops at the first head confident enough",
            "import json",
            "from mrl_deploy.cascade import Cascade",
            make,
            "wanted = [grpcclient.InferRequestedOutput(f\"logits_{m}\") for m in cascade.dims]",
            f'result = client.infer("{target}", inputs, outputs=wanted)',
            'decided = cascade.run({m: result.as_numpy(f"logits_{m}") for m in cascade.dims})',
            "decided.predictions, decided.stop_dims",
        ]
    lines += [
        "```",
        "",
        "## Settings",
        "",
        f"max_batch_size {settings['max_batch']}, dynamic batching (preferred sizes "
        f"{settings['preferred_batch'] or 'none'}, queue delay {settings['max_queue_delay_us']} us), "
        f"{settings['instances']} instance(s) per model. Regenerate with other `mrl-deploy triton` options "
        "rather than editing the configs, and check with `mrl-deploy triton --check REPO`.",
    ]
    lines += [
        "",
        "## Smoke test (a machine with Docker; a GPU for the GPU configs)",
        "",
        "1. Start Triton as above and wait for `curl -sf localhost:8000/v2/health/ready` to succeed; the log",
        "   lists every model READY (a model that fails to load is named there with the reason).",
        f"2. `curl -s localhost:8000/v2/models/{target}/config` shows the config Triton loaded.",
        "3. Run the client above, and compare with the artifact on the same inputs:",
        f"   `Artifact.load(ARTIFACT).encode(inputs, dim={dim})` (mrl_deploy) should agree to a cosine",
        "   above 0.9999 per row for fp32 (fp16 / int8 variants: 0.999 / 0.99).",
    ]
    if text:
        lines += [
            "",
            "The tokenizer pads every execute() batch to its longest text (as the artifact does), so the",
            "encoder batches requests that arrive together; texts are truncated to "
            f"{manifest['preprocessing'].get('max_seq_length')} tokens.",
        ]
    return "\n".join(lines) + "\n"
