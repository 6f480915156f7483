"""The command line as a user meets it: usage errors through the installed entry point (typer's
usage message, exit 2), and every command given bad numbers, missing files, wrong file types and
wrong shapes: exit 2, one line `error: ...`, no traceback, nothing written."""

import hashlib
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch

TESTS = Path(__file__).resolve().parent


def entry_point() -> str:
    """The installed console script `mrl-deploy` of this interpreter's environment."""
    path = Path(sys.executable).parent / "mrl-deploy"
    found = str(path) if path.is_file() else shutil.which("mrl-deploy")
    assert found, "the mrl-deploy entry point is not installed (pip install -e .)"
    return found


def run_entry(*args, cwd=None):
    return subprocess.run([entry_point(), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


# --- usage errors: typer's message and exit 2, whichever click typer uses ----------------------

@pytest.mark.parametrize("args, says", [
    (["expor"], "No such command 'expor'"),
    (["export", "--bogus"], "No such option: --bogus"),
    (["search"], "Missing argument"),
    (["train", "digits", "-o", "x", "--batch-size", "many"], "Invalid value for '--batch-size'"),
])
def test_usage_errors_print_typers_usage_and_exit_2(args, says):
    result = run_entry(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("Usage: mrl-deploy") and says in result.stderr, result.stderr


def test_no_arguments_shows_the_help_and_exits_2_like_click_groups():
    """A group with no_args_is_help: click and typer print the help and exit 2 (a usage error)."""
    result = run_entry()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    shown = result.stdout + result.stderr
    assert "Usage: mrl-deploy" in shown and "export" in shown and "search" in shown


def test_help_exits_0():
    result = run_entry("--help")
    assert result.returncode == 0 and "Usage: mrl-deploy" in result.stdout


# --- every command, every kind of bad input --------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny artifact with heads (factories:tiny_mrl: 20 inputs, 32 dims, 5 classes, heads at 4..32),
    an index, and good and bad input files for it."""
    pytest.importorskip("torch")
    from mrl_deploy import export
    from mrl_deploy.retrieval import AdaptiveIndex

    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    artifact = export("factories:tiny_mrl", [8, 16, 32], root / "artifact", input_shape="20",
                      nesting_dims="4,8,16,32")
    x = rng.standard_normal((60, 20)).astype(np.float32)
    np.save(root / "x.npy", x)
    np.savez(root / "labelled.npz", x=x, y=np.arange(60) % 5)
    np.savez(root / "wrong_labelled.npz", x=rng.standard_normal((60, 7)).astype(np.float32), y=np.arange(60) % 5)
    np.savez(root / "ragged.npz", x=x, y=np.arange(59) % 5)          # one label short
    np.save(root / "wrong.npy", rng.standard_normal((6, 7)).astype(np.float32))
    vectors = artifact.encode(x)
    np.save(root / "vectors.npy", vectors)
    np.save(root / "queries.npy", vectors[:5])
    np.save(root / "cube.npy", vectors[:4].reshape(4, 4, 8))           # 3-D: not rows of vectors
    AdaptiveIndex.build(vectors, shortlist_dim=8, dtype="f32").save(root / "index")
    (root / "notes.txt").write_text("not a model, not an array\n")
    (root / "garbage.npy").write_bytes(b"definitely not numpy")
    (root / "plain").mkdir()
    return root


def digest(directory: Path) -> dict:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


EXPORT = ["export", "factories:tiny_mrl", "--input-shape", "20", "--nesting-dims", "4,8,16,32", "--dims", "8"]
INDEX = ["index", "--vectors", "{vectors.npy}"]

# (id, args, what the error says): {name} is a file of the `files` fixture, OUT an output path
# that must not appear
CASES = [
    # export
    ("export-opset-low", EXPORT + ["-o", "OUT", "--opset", "17"], "--opset must be >= 18"),
    ("export-opset-high", EXPORT + ["-o", "OUT", "--opset", "99"], "opset must be between 18 and"),
    ("export-max-batch-0", EXPORT + ["-o", "OUT", "--max-batch", "0"], "--max-batch must be >= 1"),
    ("export-dims-0", EXPORT + ["-o", "OUT", "--dims", "0"], "dims must be >= 1"),
    ("export-dims-above-full", EXPORT + ["-o", "OUT", "--dims", "33"], "exceed the model's full dim 32"),
    ("export-max-seq-length-0", EXPORT + ["-o", "OUT", "--max-seq-length", "0"], "--max-seq-length must be >= 1"),
    ("export-missing", ["export", "{plain}/missing.pt", "--dims", "8", "-o", "OUT"], "source not found"),
    ("export-text-file", ["export", "{notes.txt}", "--dims", "8", "-o", "OUT"], "unsupported source file"),
    ("export-plain-dir", ["export", "{plain}", "--dims", "8", "-o", "OUT"], "holds no mrl_model.json"),
    ("export-sample-shape", EXPORT + ["-o", "OUT", "--sample", "{wrong.npy}"], "--sample x has shape (6, 7)"),
    ("export-sample-missing", EXPORT + ["-o", "OUT", "--sample", "{plain}/missing.npy"], "inputs file not found"),
    # inspect
    ("inspect-missing", ["inspect", "{plain}/missing"], "artifact directory not found"),
    ("inspect-plain-dir", ["inspect", "{plain}"], "not an mrl-deploy artifact"),
    ("inspect-file", ["inspect", "{notes.txt}"], "artifact directory not found"),
    # embed
    ("embed-dim-0", ["embed", "{artifact}", "{x.npy}", "--dim", "0", "-o", "OUT.npy"], "--dim must be >= 1"),
    ("embed-dim-above", ["embed", "{artifact}", "{x.npy}", "--dim", "33", "-o", "OUT.npy"], "above the largest exported dim 32"),
    ("embed-batch-size-0", ["embed", "{artifact}", "{x.npy}", "--batch-size", "0", "-o", "OUT.npy"], "--batch-size must be >= 1"),
    ("embed-threads-0", ["embed", "{artifact}", "{x.npy}", "--threads", "0", "-o", "OUT.npy"], "--threads must be >= 1"),
    ("embed-missing", ["embed", "{artifact}", "{plain}/missing.npy", "-o", "OUT.npy"], "inputs file not found"),
    ("embed-text-for-tensors", ["embed", "{artifact}", "{notes.txt}", "-o", "OUT.npy"], "takes tensors"),
    ("embed-garbage", ["embed", "{artifact}", "{garbage.npy}", "-o", "OUT.npy"], "not a numeric numpy file"),
    ("embed-shape", ["embed", "{artifact}", "{wrong.npy}", "-o", "OUT.npy"], "has shape (6, 7)"),
    ("embed-output-type", ["embed", "{artifact}", "{x.npy}", "-o", "OUT.csv"], "--output must be a .npy file"),
    ("embed-no-artifact", ["embed", "{plain}", "{x.npy}", "-o", "OUT.npy"], "not an mrl-deploy artifact"),
    # compare
    ("compare-batch-0", ["compare", "{artifact}", "--runtimes", "torch,ort-cpu", "--batch", "0"], "--batch must be >= 1"),
    ("compare-limit-0", ["compare", "{artifact}", "--runtimes", "torch,ort-cpu", "--inputs", "{x.npy}", "--limit", "0"], "--limit must be >= 1"),
    ("compare-seed-negative", ["compare", "{artifact}", "--runtimes", "torch,ort-cpu", "--seed", "-1"], "--seed must be >= 0"),
    ("compare-min-cosine-2", ["compare", "{artifact}", "--runtimes", "torch,ort-cpu", "--min-cosine", "2"], "--min-cosine must be between -1 and 1"),
    ("compare-atol-negative", ["compare", "{artifact}", "--runtimes", "torch,ort-cpu", "--atol", "-1"], "--atol must be >= 0"),
    ("compare-threads-0", ["compare", "{artifact}", "--runtimes", "torch,ort-cpu", "--threads", "0"], "--threads must be >= 1"),
    ("compare-one-run", ["compare", "{artifact}", "--runtimes", "ort-cpu"], "nothing to compare"),
    ("compare-missing", ["compare", "{artifact}", "--runtimes", "torch,ort-cpu", "--inputs", "{plain}/missing.npy"], "inputs file not found"),
    ("compare-text", ["compare", "{artifact}", "--runtimes", "torch,ort-cpu", "--inputs", "{notes.txt}"], "takes tensors"),
    ("compare-shape", ["compare", "{artifact}", "--runtimes", "torch,ort-cpu", "--inputs", "{wrong.npy}"], "has shape (6, 7)"),
    # train
    ("train-batch-size-0", ["train", "{labelled.npz}", "-o", "OUT", "--batch-size", "0"], "--batch-size must be >= 1"),
    ("train-batch-size-negative", ["train", "{labelled.npz}", "-o", "OUT", "--batch-size", "-1"], "--batch-size must be >= 1"),
    ("train-epochs-0", ["train", "{labelled.npz}", "-o", "OUT", "--epochs", "0"], "--epochs must be >= 1"),
    ("train-epochs-negative", ["train", "{labelled.npz}", "-o", "OUT", "--epochs", "-3"], "--epochs must be >= 1"),
    ("train-lr-0", ["train", "{labelled.npz}", "-o", "OUT", "--lr", "0"], "--lr must be > 0"),
    ("train-lr-negative", ["train", "{labelled.npz}", "-o", "OUT", "--lr", "-0.1"], "--lr must be > 0"),
    ("train-val-fraction-1", ["train", "{labelled.npz}", "-o", "OUT", "--val-fraction", "1"], "--val-fraction must be in (0, 1)"),
    ("train-full-dim-0", ["train", "{labelled.npz}", "-o", "OUT", "--full-dim", "0"], "--full-dim must be >= 1"),
    ("train-seed-negative", ["train", "{labelled.npz}", "-o", "OUT", "--seed", "-1"], "--seed must be >= 0"),
    ("train-threads-0", ["train", "{labelled.npz}", "-o", "OUT", "--threads", "0"], "--threads must be >= 1"),
    ("train-threads-deterministic", ["train", "{labelled.npz}", "-o", "OUT", "--threads", "2", "--deterministic"], "--deterministic"),
    ("train-max-seq-length-0", ["train", "{labelled.npz}", "-o", "OUT", "--max-seq-length", "0"], "--max-seq-length must be >= 1"),
    ("train-nesting-above-full", ["train", "{labelled.npz}", "-o", "OUT", "--full-dim", "16", "--nesting-dims", "8,32"], "exceed the embedding dim 16"),
    ("train-missing", ["train", "{plain}/missing.npz", "-o", "OUT"], "data file not found"),
    ("train-text-file", ["train", "{notes.txt}", "-o", "OUT"], "unsupported data file"),
    ("train-ragged", ["train", "{ragged.npz}", "-o", "OUT"], "x has 60 samples but y has 59 labels"),
    # calibrate (writes into the artifact: it must stay as it was)
    ("calibrate-max-drop-negative", ["calibrate", "{artifact}", "{labelled.npz}", "--max-drop", "-1"], "--max-drop must be between 0 and 100"),
    ("calibrate-safety-negative", ["calibrate", "{artifact}", "{labelled.npz}", "--safety", "-1"], "--safety must be between 0 and 10"),
    ("calibrate-batch-size-0", ["calibrate", "{artifact}", "{labelled.npz}", "--batch-size", "0"], "--batch-size must be >= 1"),
    ("calibrate-missing", ["calibrate", "{artifact}", "{plain}/missing.npz"], "data file not found"),
    ("calibrate-text-file", ["calibrate", "{artifact}", "{notes.txt}"], "has no labels"),
    ("calibrate-shape", ["calibrate", "{artifact}", "{wrong_labelled.npz}"], "has shape ("),
    ("calibrate-unlabelled", ["calibrate", "{artifact}", "{x.npy}"], "has no labels"),
    # classify
    ("classify-dim-0", ["classify", "{artifact}", "{labelled.npz}", "--dim", "0", "-o", "OUT.jsonl"], "--dim must be >= 1"),
    ("classify-dim-no-head", ["classify", "{artifact}", "{labelled.npz}", "--dim", "12", "-o", "OUT.jsonl"], "no head at dim 12"),
    ("classify-batch-size-0", ["classify", "{artifact}", "{labelled.npz}", "--batch-size", "0", "-o", "OUT.jsonl"], "--batch-size must be >= 1"),
    ("classify-missing", ["classify", "{artifact}", "{plain}/missing.npz", "-o", "OUT.jsonl"], "data file not found"),
    ("classify-text-file", ["classify", "{artifact}", "{notes.txt}", "-o", "OUT.jsonl"], "takes tensors"),
    ("classify-shape", ["classify", "{artifact}", "{wrong.npy}", "-o", "OUT.jsonl"], "has shape (6, 7)"),
    ("classify-uncalibrated-cascade", ["classify", "{artifact}", "{labelled.npz}", "--cascade", "-o", "OUT.jsonl"], "no calibrated cascade"),
    # index
    ("index-shortlist-dim-0", INDEX + ["-o", "OUT", "--shortlist-dim", "0"], "--shortlist-dim must be >= 1"),
    ("index-shortlist-above-rerank", INDEX + ["-o", "OUT", "--shortlist-dim", "16", "--rerank-dim", "8"], "shortlist dim 16 must be between 1 and the rerank dim 8"),
    ("index-rerank-dim-0", INDEX + ["-o", "OUT", "--rerank-dim", "0"], "--rerank-dim must be >= 1"),
    ("index-rerank-dim-above", INDEX + ["-o", "OUT", "--rerank-dim", "64"], "rerank dim 64 must be between 1 and the vectors' dim 32"),
    ("index-connectivity-0", INDEX + ["-o", "OUT", "--connectivity", "0"], "--connectivity must be >= 2"),
    ("index-expansion-add-0", INDEX + ["-o", "OUT", "--expansion-add", "0"], "--expansion-add must be >= 1"),
    ("index-expansion-search-0", INDEX + ["-o", "OUT", "--expansion-search", "0"], "--expansion-search must be >= 1"),
    ("index-shortlist-size-0", INDEX + ["-o", "OUT", "--shortlist-size", "0"], "--shortlist-size must be >= 1"),
    ("index-batch-size-0", ["index", "{artifact}", "{x.npy}", "-o", "OUT", "--batch-size", "0"], "--batch-size must be >= 1"),
    ("index-missing", ["index", "--vectors", "{plain}/missing.npy", "-o", "OUT"], "--vectors must be an existing .npy file"),
    ("index-text-file", ["index", "--vectors", "{notes.txt}", "-o", "OUT"], "--vectors must be an existing .npy file"),
    ("index-garbage", ["index", "--vectors", "{garbage.npy}", "-o", "OUT"], "not a numeric numpy file"),
    ("index-cube", ["index", "--vectors", "{cube.npy}", "-o", "OUT"], "must be a 2-D array"),
    ("index-keys-shape", INDEX + ["-o", "OUT", "--keys", "{queries.npy}"], "keys must be one id per vector (60)"),
    ("index-inputs-shape", ["index", "{artifact}", "{wrong.npy}", "-o", "OUT"], "has shape (6, 7)"),
    # search
    ("search-k-0", ["search", "{index}", "--queries", "{queries.npy}", "-k", "0", "-o", "OUT.npz"], "--k must be >= 1"),
    ("search-k-above-corpus", ["search", "{index}", "--queries", "{queries.npy}", "-k", "61", "-o", "OUT.npz"], "larger than the corpus (60 vectors)"),
    ("search-shortlist-0", ["search", "{index}", "--queries", "{queries.npy}", "--shortlist", "0", "-o", "OUT.npz"], "--shortlist must be >= 1"),
    ("search-shortlist-below-k", ["search", "{index}", "--queries", "{queries.npy}", "--shortlist", "5", "-o", "OUT.npz"], "shortlist size 5 is smaller than k=10"),
    ("search-expansion-negative", ["search", "{index}", "--queries", "{queries.npy}", "--expansion-search", "-1",
                                   "-o", "OUT.npz"], "--expansion-search must be >= 1"),
    ("search-show-negative", ["search", "{index}", "--queries", "{queries.npy}", "--show", "-1"], "--show must be >= 0"),
    ("search-funnel", ["search", "{index}", "--queries", "{queries.npy}", "--funnel", "8:0,32:10", "-o", "OUT.npz"], "funnel sizes must be positive"),
    ("search-missing-index", ["search", "{plain}/missing", "--queries", "{queries.npy}", "-o", "OUT.npz"], "index directory not found"),
    ("search-index-is-file", ["search", "{notes.txt}", "--queries", "{queries.npy}", "-o", "OUT.npz"], "index directory not found"),
    ("search-queries-text", ["search", "{index}", "--queries", "{notes.txt}", "-o", "OUT.npz"], "--queries must be an existing .npy file"),
    ("search-queries-shape", ["search", "{index}", "--queries", "{wrong.npy}", "-o", "OUT.npz"], "queries have 7 dims; this index takes 32"),
    ("search-texts-no-artifact", ["search", "{index}", "--texts", "{notes.txt}", "-o", "OUT.npz"], "give --artifact DIR"),
    # tune
    ("tune-recall-0", ["tune", "{index}", "--queries", "{queries.npy}", "--recall", "0"], "--recall must be in (0, 1]"),
    ("tune-recall-above-1", ["tune", "{index}", "--queries", "{queries.npy}", "--recall", "1.5"], "--recall must be in (0, 1]"),
    ("tune-repeats-0", ["tune", "{index}", "--queries", "{queries.npy}", "--repeats", "0"], "--repeats must be >= 1"),
    ("tune-k-0", ["tune", "{index}", "--queries", "{queries.npy}", "-k", "0"], "--k must be >= 1"),
    ("tune-shortlists-below-k", ["tune", "{index}", "--queries", "{queries.npy}", "--shortlists", "5"], "shortlist size must be >= 10"),
    ("tune-dims-above-rerank", ["tune", "{index}", "--queries", "{queries.npy}", "--dims", "64"], "shortlist dim must be between 1 and 32"),
    ("tune-expansions-0", ["tune", "{index}", "--queries", "{queries.npy}", "--expansions", "0"], "--expansions must be >= 1"),
    ("tune-queries-missing", ["tune", "{index}", "--queries", "{plain}/missing.npy"], "--queries must be an existing .npy file"),
    ("tune-queries-shape", ["tune", "{index}", "--queries", "{wrong.npy}"], "queries have 7 dims"),
    # bench
    ("bench-duration-0", ["bench", "{artifact}", "--duration", "0", "--json", "OUT.json"], "--duration must be > 0"),
    ("bench-threads-0", ["bench", "{artifact}", "--threads", "0", "--json", "OUT.json"], "--threads must be >= 1"),
    ("bench-corpus-size-0", ["bench", "{artifact}", "--corpus-size", "0", "--json", "OUT.json"], "--corpus-size must be >= 1"),
    ("bench-shortlist-size-0", ["bench", "{artifact}", "--shortlist-size", "0", "--json", "OUT.json"], "--shortlist-size must be >= 1"),
    ("bench-seq-len-0", ["bench", "{artifact}", "--seq-len", "0", "--json", "OUT.json"], "--seq-len must be >= 2"),
    ("bench-limit-0", ["bench", "{artifact}", "--limit", "0", "--json", "OUT.json"], "--limit must be >= 1"),
    ("bench-batch-0", ["bench", "{artifact}", "--batch", "0", "--json", "OUT.json"], "batch sizes must be >= 1"),
    ("bench-missing", ["bench", "{plain}/missing", "--json", "OUT.json"], "artifact directory not found"),
    ("bench-inputs-shape", ["bench", "{artifact}", "--inputs", "{wrong.npy}", "--json", "OUT.json"], "has shape (6, 7)"),
    ("bench-data-text", ["bench", "{artifact}", "--data", "{notes.txt}", "--duration", "0.01", "--json", "OUT.json"], "takes tensors"),
    ("bench-data-shape", ["bench", "{artifact}", "--data", "{wrong_labelled.npz}", "--duration", "0.01",
                          "--json", "OUT.json"], "has shape (60, 7)"),
    # serve (every case fails before a server starts)
    ("serve-port-0", ["serve", "{artifact}", "--port", "0"], "--port must be between 1 and 65535"),
    ("serve-port-above", ["serve", "{artifact}", "--port", "70000"], "--port must be between 1 and 65535"),
    ("serve-max-batch-0", ["serve", "{artifact}", "--max-batch", "0"], "--max-batch must be >= 1"),
    ("serve-max-delay-negative", ["serve", "{artifact}", "--max-delay-ms", "-1"], "--max-delay-ms must be between 0"),
    ("serve-max-queue-0", ["serve", "{artifact}", "--max-queue", "0"], "--max-queue must be >= 1"),
    ("serve-max-request-items-0", ["serve", "{artifact}", "--max-request-items", "0"], "--max-request-items must be >= 1"),
    ("serve-max-body-0", ["serve", "{artifact}", "--max-body-mb", "0"], "--max-body-mb must be in (0, 4096]"),
    ("serve-threads-0", ["serve", "{artifact}", "--threads", "0"], "--threads must be >= 1"),
    ("serve-replicas-0", ["serve", "{artifact}", "--ray", "--replicas", "0"], "--replicas must be >= 1"),
    ("serve-num-cpus-negative", ["serve", "{artifact}", "--ray", "--num-cpus", "-1"], "--num-cpus must be >= 0"),
    ("serve-ray-option-without-ray", ["serve", "{artifact}", "--replicas", "2"], "only with --ray"),
    ("serve-missing", ["serve", "{plain}/missing"], "artifact directory not found"),
    ("serve-index-missing", ["serve", "{artifact}", "--index", "{plain}/missing"], "index directory not found"),
    ("serve-index-is-file", ["serve", "{artifact}", "--index", "{notes.txt}"], "index directory not found"),
    # triton
    ("triton-max-batch-0", ["triton", "{artifact}", "-o", "OUT", "--max-batch", "0"], "--max-batch must be >= 1"),
    ("triton-instances-0", ["triton", "{artifact}", "-o", "OUT", "--instances", "0"], "--instances must be >= 1"),
    ("triton-queue-delay-negative", ["triton", "{artifact}", "-o", "OUT", "--max-queue-delay-us", "-1"],
     "--max-queue-delay-us must be >= 0"),
    ("triton-missing", ["triton", "{plain}/missing", "-o", "OUT"], "artifact directory not found"),
    ("triton-plain-dir", ["triton", "{plain}", "-o", "OUT"], "not an mrl-deploy artifact"),
    ("triton-file", ["triton", "{notes.txt}", "-o", "OUT"], "artifact directory not found"),
    ("triton-no-output", ["triton", "{artifact}"], "give --output"),
    # embed --ray and index --shards: refused before any Ray work
    ("embed-ray-concurrency-0", ["embed", "{artifact}", "{x.npy}", "--ray", "--concurrency", "0", "-o", "OUT"],
     "--concurrency must be >= 1"),
    ("embed-ray-shard-rows-0", ["embed", "{artifact}", "{x.npy}", "--ray", "--shard-rows", "0", "-o", "OUT"],
     "--shard-rows must be >= 1"),
    ("embed-ray-num-gpus-negative", ["embed", "{artifact}", "{x.npy}", "--ray", "--num-gpus", "-1", "-o", "OUT"],
     "--num-gpus must be >= 0"),
    ("index-shards-0", INDEX + ["-o", "OUT", "--shards", "0"], "--shards must be >= 1"),
    # demo
    ("demo-seed-negative", ["demo", "--workdir", "OUT", "--seed", "-1"], "--seed must be >= 0"),
    ("demo-workdir-is-file", ["demo", "--workdir", "{notes.txt}"], "is a file, not a directory"),
]


def run_main(args, monkeypatch, capsys):
    """`mrl-deploy ARGS` in this process (cheap: torch is imported once): (exit code, stdout, stderr)."""
    from mrl_deploy import cli

    monkeypatch.setattr(sys, "argv", ["mrl-deploy", *args])
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)   # main() installs its own
    with pytest.raises(SystemExit) as exited:
        cli.main()
    out, err = capsys.readouterr()
    return exited.value.code, out, err


@needs_torch
@pytest.mark.parametrize("case, args, says", CASES, ids=[case for case, _, _ in CASES])
def test_every_command_refuses_bad_input_with_one_line_and_writes_nothing(case, args, says, files, tmp_path,
                                                                         monkeypatch, capsys):
    out = tmp_path / "out"
    names = {p.name: str(p) for p in files.iterdir()}
    argv = [re.sub(r"\{([^}]+)\}", lambda m: names[m.group(1)], a.replace("OUT", str(out))) for a in args]
    before = digest(files)
    code, stdout, stderr = run_main(argv, monkeypatch, capsys)
    assert code == 2, (stdout, stderr)
    assert "Traceback" not in stderr + stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert says in errors[0], stderr
    assert not list(tmp_path.iterdir()), f"{case} wrote {list(tmp_path.iterdir())}"
    assert digest(files) == before, f"{case} changed its inputs"
