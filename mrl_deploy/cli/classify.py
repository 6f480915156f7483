"""Cascaded classification: calibrate, classify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import MRLDeployError
from .common import app, console, emit_json, number
from .render import cascade_table, print_classify_report


@app.command()
def calibrate(
    artifact_dir: Path = typer.Argument(..., help="An artifact exported with classifier heads (logits outputs)."),
    data: str = typer.Argument(..., help="Labelled data: digits, bbc-news, or a .npz with x and y. The model's own training data (recorded at train, checked by fingerprint) gives its calibration split, split as training did (the test split never is used); any other labelled data is used whole."),
    max_drop: float = number(0.5, "--max-drop", low=0, high=100, help="Accuracy the cascade may lose against the full-dim head, in points."),
    confidence: str = typer.Option("softmax", "--confidence", help="softmax (max softmax probability, the paper's) or margin (top-1 minus top-2 probability)."),
    method: str = typer.Option("search", "--method", help="search (whole-vector search minimising the honest cost; default) or greedy (the paper's per-step grid search). Both are reported; this one is saved."),
    safety: float = number(2.0, "--safety", low=0, high=10, help="Margin on the accuracy constraint in standard deviations of the accuracy difference (0: just meet the target on the calibration data; more: hold it on new data at a higher cost)."),
    count_gains: bool = typer.Option(False, "--count-gains", help="Let samples the cascade gets right and the full-dim head gets wrong offset its losses (default: only losses count, which holds better on new data)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="torch, ort-cpu, ort-cuda, ort-trt or tensorrt (default: the best available)."),
    batch_size: int = number(256, "--batch-size", low=1, help="Inputs per inference call."),
    json_out: bool = typer.Option(False, "--json", help="Print the saved cascade (thresholds and calibration summary) as JSON."),
) -> None:
    """Fit the cascade's confidence thresholds on calibration data and save them in the artifact.

    Accuracy must stay >= the full-dim head's minus --max-drop points while the expected honest cost (the dims of every head a sample passes through) is as small as possible.

    Example: mrl-deploy calibrate artifacts/digits digits --max-drop 0.5
    """
    from ..artifact import Artifact
    from ..cascade import artifact_logit_dims, calibrate_artifact, load_classification_data
    from ..runtimes import resolve_runtime

    artifact = Artifact.load(artifact_dir)
    artifact_logit_dims(artifact)  # no heads: fail before loading data
    dataset = load_classification_data(data, artifact, default_split="calibration")
    if dataset["y"] is None:
        raise MRLDeployError(f"{data} has no labels: calibration needs labelled data (digits, bbc-news, a .npz with x and y)")
    runtime = resolve_runtime(runtime, artifact)
    console.print(f"runtime: {runtime}; data: {dataset['description']}", highlight=False)
    with console.status(f"running every head on {dataset['description']} and fitting thresholds..."):
        saved = calibrate_artifact(artifact.path, dataset["x"], dataset["y"], max_drop=max_drop, confidence=confidence,
                                   method=method, safety=safety, count_gains=count_gains, runtime=runtime, batch_size=batch_size,
                                   data={k: dataset[k] for k in ("name", "split", "samples", "seed", "fingerprint",
                                                                 "description") if k in dataset})
    if json_out:
        emit_json(saved)
        return
    rows = []
    for name, fit in saved["methods"].items():
        rows.append([name + (" (saved)" if name == saved["method"] else ""), " -> ".join(map(str, fit["dims"])),
                     ", ".join("skip" if t is None else f"{t:.4f}" for t in fit["thresholds"]) or "-",
                     f"{fit['accuracy']:.2f}", f"{fit['expected_dims']:.1f}", f"{fit['expected_honest_dims']:.1f}",
                     f"{fit['head_flops_per_sample']:,.0f}", "yes" if fit["feasible"] else "NO"])
    cal = saved["calibration"]
    console.print(cascade_table(
        f"cascade calibration on {saved['data']['description']}: full-dim head ({cal['full_dim']}) "
        f"{cal['full_accuracy']:.2f}%, target >= {cal['target_accuracy']:.2f}%",
        rows, ["method", "dims", "thresholds", "accuracy %", "expected dims (paper)", "honest dims", "head FLOPs", "meets target"]))
    if not saved["feasible"]:
        console.print("[yellow]warning:[/yellow] the saved cascade does not meet the accuracy target on the calibration data")
    console.print(f"[green]saved[/green] thresholds in {artifact.path / 'mrl.json'}", highlight=False)


@app.command()
def classify(
    artifact_dir: Path = typer.Argument(..., help="An artifact exported with classifier heads (logits outputs)."),
    data: str = typer.Argument(..., help="digits, bbc-news or a .npz with x and y (labelled: accuracy is reported), or inputs for the artifact (.npy, .npz without y, .txt)."),
    cascade: bool = typer.Option(False, "--cascade", help="Classify with the calibrated cascade (run `mrl-deploy calibrate` first)."),
    dim: Optional[int] = number(None, "--dim", low=1, help="Classify with the head at this dim only (default: the largest head)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of the model's own training data (recorded at train, checked by fingerprint; split as training did): test (default: held out from training and calibration), calibration, or all. Other data is used whole; --split on it is an error."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write one JSON line per sample (prediction, label, stop dim, confidence) to this .jsonl file."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="torch, ort-cpu, ort-cuda, ort-trt or tensorrt (default: the best available)."),
    batch_size: int = number(256, "--batch-size", low=1, help="Inputs per inference call."),
    json_out: bool = typer.Option(False, "--json", help="Print the report (accuracy, stop histogram, expected dims, FLOPs, latency) as JSON."),
) -> None:
    """Classify DATA with one head (--dim) or the calibrated cascade (--cascade), reporting per sample the dim at which it stopped and its confidence.

    Example: mrl-deploy classify artifacts/digits digits --cascade
    """
    from ..artifact import Artifact
    from ..cascade import Cascade, artifact_logit_dims, classify_artifact, load_classification_data
    from ..runtimes import resolve_runtime

    if cascade and dim is not None:
        raise MRLDeployError("give --cascade or --dim, not both")
    artifact = Artifact.load(artifact_dir)
    artifact_logit_dims(artifact)
    chosen = Cascade.from_manifest(artifact.manifest, str(artifact.path)) if cascade else None
    dataset = load_classification_data(data, artifact, split=split)
    runtime = resolve_runtime(runtime, artifact)
    with console.status("classifying..."):
        out = classify_artifact(artifact, dataset["x"], dataset["y"], dim=dim, cascade=chosen, runtime=runtime,
                                batch_size=batch_size)
    report, result = out["report"], out["result"]
    report.update({"data": {k: dataset[k] for k in ("name", "split", "samples", "seed", "fingerprint", "description")
                            if k in dataset},
                   "split": dataset["split"], "runtime": runtime})
    if output is not None:
        _write_predictions(output, result, dataset["y"], artifact.labels)
        report["predictions_file"] = str(output)
    if json_out:
        emit_json(report)
        return
    print_classify_report(report)


def _write_predictions(path: Path, result, labels, names) -> None:
    """One JSON object per line, written atomically (no half-written file)."""
    from ..manifest import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        for i in range(len(result.predictions)):
            record = {"index": i, "prediction": int(result.predictions[i])}
            if names:
                record["class"] = names[int(result.predictions[i])]
            if labels is not None:
                record["label"] = int(labels[i])
            record.update(stop_dim=int(result.stop_dims[i]), honest_dims=int(result.honest_dims[i]),
                          confidence=round(float(result.confidences[i]), 6))
            handle.write(json.dumps(record) + "\n")
