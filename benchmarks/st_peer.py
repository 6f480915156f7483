"""The sentence-transformers peers of benchmarks/encoders.py, in a worker process of their own venv.

sentence-transformers' ONNX backend needs optimum-onnx, which pins transformers < 4.58, while the
project's venv has sentence-transformers 6 on transformers 5: encoders.py creates a venv for the
peers (benchmarks/.cache/st-peer-venv) and runs this file with its python. Not for direct use:

    st-peer-venv/bin/python benchmarks/st_peer.py --model DIR --threads 1     # JSON lines on stdin

Requests, one JSON object per line on stdin; one JSON reply per line on stdout:
  {"op": "prepare"}       export onnx/model.onnx, the O3-optimized and the dynamic int8 ONNX models
                          into DIR (a copy of the model: sentence-transformers writes into it)
                          where missing; reply: the runners and versions
  {"op": "tokens", "texts": [...]}                 token count of each text (this venv's tokenizer)
  {"op": "time", "runner": R, "texts": [...], "dim": 64 | null, "duration": s, "warmup": s}
                          encode(texts) timed with mrl_deploy.timing.time_calls, the same timer
                          encoders.py uses for its own runners; reply: {"samples": [seconds, ...]}
  {"op": "embed", "runner": R, "texts": [...], "dim": d, "out": PATH}   embeddings to PATH (.npy)
  {"op": "quit"}

Each runner is SentenceTransformer(DIR, device="cpu", backend=...) with torch.set_num_threads(T)
and ONNX Runtime sessions of intra_op_num_threads=T, inter_op_num_threads=1, as encoders.py pins
its own. encode(texts, batch_size=len(texts), truncate_dim=dim, normalize_embeddings=True):
truncate, then re-normalise, like an artifact's embedding_{dim}."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ONNX_DIR = "onnx"
O_LEVEL = "O3"   # the highest optimum level for CPUs (O4 is O3 + fp16, for GPUs)


def quantization_arch() -> str:
    """optimum's dynamic-quantization preset for this CPU: the best instruction set it has."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


class Peers:
    def __init__(self, model_dir: Path, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.model_dir = model_dir
        self.threads = threads
        self.models: dict = {}
        self.files: dict[str, str] = {}

    def _load(self, backend: str, file_name: str | None = None):
        import onnxruntime as ort
        from sentence_transformers import SentenceTransformer

        if backend == "torch":
            return SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        model_kwargs = {"provider": "CPUExecutionProvider", "session_options": options}
        if file_name is not None:  # None: export the model to ONNX
            model_kwargs["file_name"] = file_name
        return SentenceTransformer(str(self.model_dir), device="cpu", backend="onnx", local_files_only=True,
                                   model_kwargs=model_kwargs)

    def prepare(self) -> dict:
        """Export the ONNX models once (kept in the model directory), load every runner."""
        import sentence_transformers
        from sentence_transformers import backend as st_backend

        onnx_dir = self.model_dir / ONNX_DIR
        if not (onnx_dir / "model.onnx").is_file():
            exported = self._load("onnx", None)
            exported.save_pretrained(str(self.model_dir))
        self.files["st onnx"] = f"{ONNX_DIR}/model.onnx"
        skipped = {}
        base = None
        exports = [("st onnx O3", f"model_{O_LEVEL}.onnx", "export_optimized_onnx_model", O_LEVEL),
                   ("st onnx int8", f"model_qint8_{quantization_arch()}.onnx", "export_dynamic_quantized_onnx_model",
                    quantization_arch())]
        for label, file_name, function, config in exports:
            export = getattr(st_backend, function, None)
            if export is None:
                skipped[label] = f"sentence-transformers {sentence_transformers.__version__} has no {function}"
                continue
            if not (onnx_dir / file_name).is_file():
                base = base or self._load("onnx", f"{ONNX_DIR}/model.onnx")
                export(base, config, model_name_or_path=str(self.model_dir))
            self.files[label] = f"{ONNX_DIR}/{file_name}"
        self.models["st torch"] = self._load("torch")
        for label, file_name in self.files.items():
            self.models[label] = self._load("onnx", file_name)
        return {"runners": list(self.models), "files": self.files, "skipped": skipped, "versions": versions(),
                "quantization_arch": quantization_arch()}

    def encode(self, runner: str, texts: list[str], dim: int | None):
        return self.models[runner].encode(texts, batch_size=len(texts), truncate_dim=dim, normalize_embeddings=True,
                                          convert_to_numpy=True, show_progress_bar=False)

    def tokens(self, texts: list[str]) -> list[int]:
        model = self.models["st torch"]
        features = (getattr(model, "preprocess", None) or model.tokenize)(texts)  # tokenize before 5.x
        return [int(n) for n in features["attention_mask"].sum(1)]


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("sentence-transformers", "transformers", "optimum", "optimum-onnx", "onnxruntime", "torch", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a writable copy of the sentence-transformers model directory")
    parser.add_argument("--threads", type=int, required=True, help="torch and ONNX Runtime threads")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # Replies go to the original stdout; whatever the libraries print goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.path.insert(0, str(REPO))  # mrl_deploy.bench: the timer encoders.py uses (numpy only)
    import numpy as np

    from mrl_deploy.timing import time_calls

    peers = Peers(Path(args.model), args.threads)
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "quit":
                break
            if op == "prepare":
                reply = peers.prepare()
            elif op == "tokens":
                reply = {"tokens": peers.tokens(request["texts"])}
            elif op == "time":
                runner, texts, dim = request["runner"], request["texts"], request.get("dim")
                reply = {"samples": time_calls(lambda: peers.encode(runner, texts, dim), request["duration"],
                                               warmup=request["warmup"], warmup_runs=2, min_runs=3)}
            elif op == "embed":
                np.save(request["out"], peers.encode(request["runner"], request["texts"], request.get("dim")))
                reply = {"out": request["out"]}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # reported to encoders.py, which stops with the message
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
