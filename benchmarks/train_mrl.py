"""MRL vs the baselines per dim, on digits (small CNN) and bbc-news (adapter on frozen all-MiniLM-L6-v2).

    .venv/bin/python benchmarks/train_mrl.py                   # both data sets, seeds 0, 1, 2
    .venv/bin/python benchmarks/train_mrl.py --datasets digits --seeds 0

Per data set and seed, top-1 % on the validation split (30% of every class, never trained on),
for every nesting dim m:
  mrl                 `mrl_deploy.train.train` (what `mrl-deploy train` runs): one head per m
  mrl_e               the same with --efficient (one shared head sliced to m columns)
  baseline_truncated  the same network trained with the loss at the full dim only, evaluated by
                      truncation (its own head's first m columns on z[:m])
  baseline_probe      that baseline's frozen z[:m], re-normalised, with a linear probe per m
  fixed_feature       the paper's FF: an independent model trained at each m (embedding dim = m)
  encoder_probe       (text) the plain frozen MiniLM embedding truncated to m, re-normalised,
                      with a linear probe per m: what the MRL adapter has to beat
Writes benchmarks/results/train_mrl.json and train_mrl.png, with the machine named. Text
embeddings come from the on-disk cache (~/.cache/mrl-deploy) after the first run (~2-5 min).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT.parent))

# Kusupati et al. 2022, ResNet-50 on ImageNet-1K, top-1 by dim (../shared/ANCHORS.md)
PAPER = {"dims": [8, 16, 32, 64, 128, 256, 512, 1024, 2048],
         "mrl_top1": [66.6, 73.5, 75.0, 75.8, 76.3, 76.5, 76.6, 76.8, 76.8]}
METHODS = ("mrl", "mrl_e", "fixed_feature", "baseline_truncated", "baseline_probe", "encoder_probe")


def run_dataset(name: str, seeds: list[int], workdir: Path, log) -> dict:
    from mrl_deploy.data import load_dataset, split_dataset
    from mrl_deploy.encoder_cache import encode_texts
    from mrl_deploy.train import accuracy_per_dim, train, _train_one

    data = load_dataset(name)
    per_seed = []
    for seed in seeds:
        started = time.perf_counter()
        main = train(data, workdir / f"{name}-mrl-{seed}", seed=seed)
        efficient = train(data, workdir / f"{name}-mrle-{seed}", seed=seed, efficient=True, baseline=False)
        row = {key: table for key, table in main["accuracy_by_dim"].items()}
        row["mrl_e"] = efficient["accuracy_by_dim"]["mrl"]
        # FF: one model per dim, the same architecture and settings with the embedding dim = m
        train_set, val_set = split_dataset(data, seed=seed)
        if data.kind == "text":
            x_train = encode_texts(train_set.x, max_seq_length=main["encoder"]["max_seq_length"])
            x_val = encode_texts(val_set.x, max_seq_length=main["encoder"]["max_seq_length"])
            shape = [x_train.shape[1]]
        else:
            x_train, x_val, shape = train_set.x, val_set.x, train_set.sample_shape
        settings = {k: main["training"][k] for k in ("epochs", "batch_size", "lr", "weight_decay", "seed", "threads")}
        row["fixed_feature"] = {}
        for m in main["nesting_dims"]:
            net, _ = _train_one(main["architecture"], shape, m, [m], data.num_classes, False, x_train, train_set.y,
                                settings, [1.0], lambda event: None, "ff")
            row["fixed_feature"][m] = accuracy_per_dim(net, x_val, val_set.y)[m]
        per_seed.append({"seed": seed, "accuracy": row, "seconds": round(time.perf_counter() - started, 1)})
        log(f"{name} seed {seed}: " + ", ".join(f"{k} {row[k][8]:.1f}@8" for k in row) +
            f" ({per_seed[-1]['seconds']} s)")
    dims = main["nesting_dims"]
    methods = [m for m in METHODS if m in per_seed[0]["accuracy"]]
    summary = {method: {str(d): {"mean": float(np.mean([s["accuracy"][method][d] for s in per_seed])),
                                 "std": float(np.std([s["accuracy"][method][d] for s in per_seed]))}
                        for d in dims} for method in methods}
    return {
        "data": name, "kind": data.kind, "samples": len(data), "classes": data.num_classes,
        "split": {"train": main["data"]["train"], "validation": main["data"]["validation"]},
        "architecture": main["architecture"]["name"], "full_dim": main["full_dim"], "nesting_dims": dims,
        "encoder": main.get("encoder"), "training": {k: main["training"][k] for k in ("epochs", "batch_size", "lr", "optimizer")},
        "seeds": seeds, "per_seed": [{**s, "accuracy": {k: {str(d): v for d, v in t.items()} for k, t in s["accuracy"].items()}}
                                     for s in per_seed],
        "summary": summary,
    }


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['data']}: validation top-1 %, mean ± std over seeds {result['seeds']}")
    table.add_column("dim", justify="right")
    for method in result["summary"]:
        table.add_column(method, justify="right")
    for d in result["nesting_dims"]:
        table.add_row(str(d), *(f"{result['summary'][m][str(d)]['mean']:.2f} ± {result['summary'][m][str(d)]['std']:.2f}"
                                for m in result["summary"]))
    Console(width=160).print(table)


def plot(results: list[dict], machine: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"mrl": ("MRL", "C0", "o-"), "mrl_e": ("MRL-E", "C1", "s-"), "fixed_feature": ("FF (model per dim)", "C2", "^--"),
              "baseline_truncated": ("full-dim model, truncated", "C3", "x:"),
              "baseline_probe": ("full-dim model + probe per dim", "C4", "d--"),
              "encoder_probe": ("plain MiniLM truncated + probe", "C5", "v:")}
    fig, axes = plt.subplots(1, len(results), figsize=(6.2 * len(results), 4.4), squeeze=False)
    for ax, result in zip(axes[0], results):
        dims = result["nesting_dims"]
        for method, table in result["summary"].items():
            label, color, style = styles[method]
            means = [table[str(d)]["mean"] for d in dims]
            stds = [table[str(d)]["std"] for d in dims]
            ax.errorbar(dims, means, yerr=stds, fmt=style, color=color, label=label, capsize=2, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims)
        ax.set_xticklabels([str(d) for d in dims])
        lowest = min(v["mean"] - v["std"] for t in result["summary"].values() for v in t.values())
        ax.set_ylim(max(0, lowest - 2), 100.5)
        ax.set_xlabel("embedding dim m (prefix z[:m])")
        ax.set_ylabel("validation top-1 %")
        ax.set_title(f"{result['data']} ({result['architecture']}, {len(result['seeds'])} seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"MRL vs baselines per dim - {machine}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,bbc-news", help="comma-separated: digits, bbc-news, FILE.npz")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_mrl.json", help="JSON results file (PNG beside it)")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG (and tables) from the JSON")
    args = parser.parse_args()
    if args.replot:
        report = json.loads(args.out.read_text())
        from mrl_deploy.machine import machine_name

        for result in report["results"]:
            print_table(result)
        print(f"wrote {plot(report['results'], machine_name(report['machine']), args.out.with_suffix('.png'))}")
        return

    from mrl_deploy.machine import machine_info, machine_name

    machine = machine_info()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="mrl-bench-") as workdir:
        for name in args.datasets.split(","):
            result = run_dataset(name.strip(), seeds, Path(workdir), lambda message: print(message, flush=True))
            print_table(result)
            results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "train_mrl", "machine": machine, "results": results,
              "paper_resnet50_imagenet": PAPER,
              "command": "python benchmarks/train_mrl.py --datasets " + args.datasets + " --seeds " + args.seeds}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    png = plot(results, machine_name(machine), args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
