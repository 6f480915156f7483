"""Bench reports for people and machines: rich tables, JSON (with its schema), PNG plots.

    print_report(report, console); write_report_json(report, "bench.json"); plot_report(report, "bench.png")

The plots use matplotlib's Agg backend (no display needed) and are imported only when asked for."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import InputError, require

# --- JSON schema -----------------------------------------------------------------------------

_NUM = ["number"]
_OPT_NUM = ["number", "null"]
_OPT_INT = ["integer", "null"]
_LATENCY = {
    "type": "object",
    "required": ["runs", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "std_ms"],
    "properties": {"runs": {"type": "integer", "minimum": 1},
                   **{k: {"type": _NUM, "minimum": 0} for k in
                      ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "std_ms")}},
}
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema", "artifact", "machine", "settings", "runtimes", "skipped", "flops_unit", "dims",
                 "quality", "ratios"],
    "properties": {
        "schema": {"type": "string", "enum": ["mrl-deploy-bench/1"]},
        "artifact": {"type": "object", "required": ["path", "full_dim", "exported_dims", "variants"]},
        "machine": {
            "type": "object",
            "required": ["cpu", "cores_logical", "cores_available", "gpus", "packages", "python"],
            "properties": {"cpu": {"type": "string"}, "gpus": {"type": "array"}, "packages": {"type": "object"}},
        },
        "settings": {"type": "object", "required": ["runtimes", "batches", "dims", "duration_s", "corpus_size",
                                                    "shortlist_size", "input_shapes"]},
        "runtimes": {"type": "array", "items": {
            "type": "object",
            "required": ["runtime", "variant", "device", "threads", "load_s", "memory_kind", "batches"],
            "properties": {
                "load_s": {"type": _NUM, "minimum": 0},
                "threads": {"type": _OPT_INT},
                "batches": {"type": "array", "items": {
                    "type": "object",
                    "required": ["batch", "latency", "throughput_items_s", "peak_memory_bytes"],
                    "properties": {"batch": {"type": "integer", "minimum": 1}, "latency": _LATENCY,
                                   "throughput_items_s": {"type": _NUM, "minimum": 0},
                                   "peak_memory_bytes": {"type": _OPT_INT}},
                }},
            },
        }},
        "skipped": {"type": "array", "items": {"type": "object", "required": ["runtime", "variant", "reason"]}},
        "flops_unit": {"type": "string"},
        "dims": {"type": "array", "items": {
            "type": "object",
            "required": ["dim", "bytes_per_vector", "encoder_flops", "head_flops", "retrieval_flops"],
            "properties": {
                "dim": {"type": "integer", "minimum": 1},
                "bytes_per_vector": {"type": "object", "required": ["f32", "f16", "i8", "binary"]},
                "encoder_flops": {"type": _OPT_INT},
                "head_flops": {"type": _OPT_INT},
                "retrieval_flops": {"type": "object", "required": ["exact", "exact_full", "adaptive", "shortlist_dim",
                                                                   "rerank_dim", "shortlist_size"]},
            },
        }},
        "quality": {"type": ["object", "null"], "properties": {
            "accuracy": {"type": "object"},
            "retrieval": {"type": ["object", "null"], "properties": {
                "per_dim": {"type": "array", "items": {"type": "object", "required": ["dim", "truncated", "adaptive"]}},
            }},
        }},
        "ratios": {"type": "array", "items": {"type": "object", "required": ["runtime", "variant", "batch"]}},
    },
}

_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "number": (int, float), "integer": int,
}


def validate(value: Any, schema: dict[str, Any] = REPORT_SCHEMA, where: str = "$") -> list[str]:
    """Check `value` against the subset of JSON Schema used here (type, required, properties,
    items, enum, minimum); returns the problems, empty when valid. jsonschema is not a dependency."""
    problems: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        ok = any(isinstance(value, _TYPES[n]) and not (n in ("number", "integer") and isinstance(value, bool))
                 for n in names)
        if not ok:
            return [f"{where}: expected {' or '.join(names)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and not isinstance(value, bool) and value < schema["minimum"]:
        problems.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{where}: missing {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems.extend(validate(value[key], sub, f"{where}.{key}"))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems.extend(validate(item, schema["items"], f"{where}[{i}]"))
    return problems


def write_report_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report atomically (a reader never sees half a file)."""
    from .manifest import write_json_atomic

    path = Path(path)
    if path.parent and not path.parent.exists():
        raise InputError(f"cannot write {path}: the folder {path.parent} does not exist")
    write_json_atomic(path, report)
    return path


# --- numbers for people ----------------------------------------------------------------------

def human_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def human_count(value: float | None) -> str:
    """1.2 G, 340 M, 5.1 k: FLOPs at a glance."""
    if value is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.3g}"


def print_report(report: dict[str, Any], console: Any) -> None:
    """Rich tables: latency per runtime and batch, then cost and quality per dim."""
    from rich.table import Table

    machine = report["machine"]
    from .machine import machine_name

    settings = report["settings"]
    console.print(f"[bold]{report['artifact']['path']}[/bold] on {machine_name(machine)}"
                  f" | threads {settings.get('threads') or 'default'} | inputs {settings['input_shapes']}")
    latency = Table(title="Latency per runtime and batch (ms)", title_justify="left")
    for column in ("runtime", "batch", "min", "p50", "p90", "p99", "mean ± std", "items/s",
                   "peak mem", "load s", "vs ORT fp32", "vs torch"):
        latency.add_column(column, justify="left" if column == "runtime" else "right", no_wrap=True)
    ratios = {(r["runtime"], r["variant"], r["batch"]): r for r in report.get("ratios", [])}
    for run in report["runtimes"]:
        for row in run["batches"]:
            lat = row["latency"]
            ratio = ratios.get((run["runtime"], run["variant"], row["batch"]), {})
            latency.add_row(
                f"{run['runtime']} {run['variant']}", str(row["batch"]), f"{lat['min_ms']:.3f}", f"{lat['p50_ms']:.3f}",
                f"{lat['p90_ms']:.3f}", f"{lat['p99_ms']:.3f}", f"{lat['mean_ms']:.3f} ± {lat['std_ms']:.3f}",
                f"{row['throughput_items_s']:,.0f}", human_bytes(row["peak_memory_bytes"]), f"{run['load_s']:.2f}",
                _ratio(ratio.get("vs_ort_fp32")), _ratio(ratio.get("vs_torch_eager")),
            )
    if not console.is_terminal:  # files and pipes get 80 columns by default: too few for these tables
        from rich.console import Console

        console = Console(file=console.file, width=max(console.width, 170), no_color=True)
    console.print(latency)
    for skipped in report.get("skipped", []):
        console.print(f"[yellow]skipped[/yellow] {skipped['runtime']} ({skipped['variant']}): {skipped['reason']}")
    for table in dims_tables(report):
        console.print(table)
    unit = report.get("flops_unit", "")
    encoder = next((d["encoder_flops"] for d in report["dims"] if d["encoder_flops"] is not None), None)
    console.print(f"[dim]Encoder FLOPs: {human_count(encoder)} per sample at every dim (the encoder runs in full "
                  f"whatever prefix is kept). FLOPs: {unit}. Retrieval FLOPs per query over "
                  f"{report['settings']['corpus_size']:,} vectors: exact N·d, adaptive N·Ds + k·Dr with "
                  f"k={report['settings']['shortlist_size']}."
                  + (f" Text encoder FLOPs counted at {settings['flops_sequence_length']} tokens; timed at "
                     f"{settings.get('sequence_length')} tokens." if settings.get("flops_sequence_length") else "")
                  + "[/dim]")
    quality = report.get("quality")
    if quality:
        console.print(f"[dim]Quality on {quality['data']} ({quality['split']}, {quality['samples']} samples, "
                      f"{quality['runtime']} {quality['variant']}).[/dim]")
        for variant, info in (quality.get("variants") or {}).items():
            console.print(f"[dim]{variant} embeddings vs {quality['variant']}: min cosine {info['min_cosine']:.5f}, "
                          f"mean {info['mean_cosine']:.5f}.[/dim]")
        if quality.get("retrieval_skipped"):
            console.print(f"[yellow]recall not measured:[/yellow] {quality['retrieval_skipped']}")


def dims_tables(report: dict[str, Any]) -> list:
    """What each dim costs, and (with --data) what it buys: two tables, so each fits a terminal."""
    from rich.table import Table

    cost = Table(title="Cost per dim", title_justify="left")
    for column in ("dim", "f32 B", "f16 B", "i8 B", "bin B", "head FLOPs", "exact search", "adaptive search",
                   "saving"):
        cost.add_column(column, justify="right", no_wrap=True)
    for row in report["dims"]:
        flops = row["retrieval_flops"]
        cost.add_row(str(row["dim"]), *(f"{row['bytes_per_vector'][key]:,}" for key in ("f32", "f16", "i8", "binary")),
                     human_count(row["head_flops"]), human_count(flops["exact"]), human_count(flops["adaptive"]),
                     f"{flops['exact_full'] / flops['adaptive']:.1f}x")
    quality = report.get("quality") or {}
    accuracy = quality.get("accuracy") or {}
    retrieval = {row["dim"]: row for row in ((quality.get("retrieval") or {}).get("per_dim") or [])}
    if not accuracy and not retrieval:
        return [cost]
    k = (quality.get("retrieval") or {}).get("k", 10)
    table = Table(title="Quality per dim", title_justify="left")
    columns = ["dim"]
    variants = {v: info["accuracy"] for v, info in (quality.get("variants") or {}).items() if info.get("accuracy")}
    if accuracy:
        columns.append(f"accuracy {quality.get('variant', '')}".strip())
        columns += [f"accuracy {v}" for v in variants]
    if retrieval:
        columns += [f"recall@{k} trunc", f"recall@{k} adaptive"]
        if any("adaptive_hnsw" in r for r in retrieval.values()):
            columns.append(f"recall@{k} HNSW")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in report["dims"]:
        cells = [str(row["dim"])]
        if accuracy:
            for values in (accuracy, *variants.values()):
                value = values.get(str(row["dim"]))
                cells.append(f"{100 * value:.2f}%" if value is not None else "-")
        if retrieval:
            r = retrieval.get(row["dim"], {})
            cells += [_pct(r.get("truncated")), _pct(r.get("adaptive"))]
            if f"recall@{k} HNSW" in columns:
                cells.append(_pct(r.get("adaptive_hnsw")))
        table.add_row(*cells)
    return [cost, table]


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _pct(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "-"


# --- plots -----------------------------------------------------------------------------------

def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """One PNG, three panels: latency vs batch per runtime; quality vs dims; quality vs cost
    (cost relative to the full dim: head FLOPs for accuracy, retrieval FLOPs for recall). Without
    --data the quality panels show the cost per dim instead, and say so."""
    require("matplotlib", "plot", "--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"--plot writes a PNG: give a file name ending in .png, got {path}")
    if not path.parent.exists():
        raise InputError(f"cannot write {path}: the folder {path.parent} does not exist")
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    _plot_latency(axes[0], report)
    quality = report.get("quality") or {}
    if quality.get("accuracy") or (quality.get("retrieval") or {}).get("per_dim"):
        _plot_quality_dims(axes[1], report)
        _plot_quality_cost(axes[2], report)
    else:
        _plot_cost_dims(axes[1], report)
        _plot_retrieval_cost(axes[2], report)
    from .machine import machine_name

    fig.suptitle(f"{Path(report['artifact']['path']).name}: {machine_name(report['machine'])}, "
                 f"threads {report['settings'].get('threads') or 'default'}", fontsize=11)
    fig.tight_layout()
    from .manifest import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _plot_latency(ax, report):
    for run in report["runtimes"]:
        rows = sorted(run["batches"], key=lambda r: r["batch"])
        batches = [r["batch"] for r in rows]
        p50 = [r["latency"]["p50_ms"] for r in rows]
        low = [r["latency"]["p50_ms"] - r["latency"]["min_ms"] for r in rows]
        high = [r["latency"]["p99_ms"] - r["latency"]["p50_ms"] for r in rows]
        ax.errorbar(batches, p50, yerr=[low, high], marker="o", capsize=3, label=f"{run['runtime']} {run['variant']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_ticks(ax, sorted({r["batch"] for run in report["runtimes"] for r in run["batches"]}))
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency per batch, ms (p50; bars: min..p99)")
    ax.set_title("Latency vs batch")
    ax.grid(True, which="both", alpha=0.3)
    if report["runtimes"]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no runtime ran", ha="center", transform=ax.transAxes)


def _quality_series(report):
    quality = report.get("quality") or {}
    series = []
    accuracy = quality.get("accuracy") or {}
    if accuracy:
        dims = sorted(int(d) for d in accuracy)
        series.append(("accuracy (head at dim)", dims, [accuracy[str(d)] for d in dims], "head"))
    retrieval = quality.get("retrieval") or {}
    rows = retrieval.get("per_dim") or []
    if rows:
        k = retrieval.get("k", 10)
        dims = [r["dim"] for r in rows]
        series.append((f"recall@{k} truncated (exact at d)", dims, [r["truncated"] for r in rows], "exact"))
        series.append((f"recall@{k} adaptive (Ds=d, k={retrieval['shortlist_size']}, Dr={retrieval['rerank_dim']})",
                       dims, [r["adaptive"] for r in rows], "adaptive"))
        if all(r.get("adaptive_hnsw") is not None for r in rows):
            series.append((f"recall@{k} adaptive, HNSW shortlist", dims, [r["adaptive_hnsw"] for r in rows], "adaptive"))
    return series


def _quality_limits(report):
    """Zoom on the measured range (quality near 1 would be a flat line from 0), never past [0, 1]."""
    values = [v for _, _, series, _ in _quality_series(report) for v in series if v is not None]
    low = min(values) if values else 0.0
    return max(0.0, low - 0.1 * max(1.0 - low, 0.05)) if low > 0.5 else 0.0, 1.005


def _plot_quality_dims(ax, report):
    for label, dims, values, _ in _quality_series(report):
        ax.plot(dims, values, marker="o", label=label)
    ax.set_xscale("log", base=2)
    _plain_ticks(ax, [row["dim"] for row in report["dims"]], y=False)
    ax.set_xlabel("dim")
    ax.set_ylabel("quality")
    ax.set_ylim(*_quality_limits(report))
    ax.set_title(f"Quality vs dims ({(report.get('quality') or {}).get('data', '')})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def _plot_quality_cost(ax, report):
    """x: the cost of answering at dim d relative to the full-dim answer (1.0)."""
    costs = {row["dim"]: row for row in report["dims"]}
    top = max(costs)
    for label, dims, values, kind in _quality_series(report):
        xs, ys, names = [], [], []
        for dim, value in zip(dims, values):
            row = costs.get(dim)
            if row is None:
                continue
            if kind == "head":
                full = costs[top]["head_flops"]
                if not row["head_flops"] or not full:
                    continue
                xs.append(row["head_flops"] / full)
            elif kind == "exact":
                xs.append(row["retrieval_flops"]["exact"] / row["retrieval_flops"]["exact_full"])
            else:
                xs.append(row["retrieval_flops"]["adaptive"] / row["retrieval_flops"]["exact_full"])
            ys.append(value)
            names.append(dim)
        if xs:
            ax.plot(xs, ys, marker="o", label=label)
            for x, y, dim in zip(xs, ys, names):
                ax.annotate(str(dim), (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("cost / full-dim cost (head FLOPs; search FLOPs vs exact full-dim)")
    ax.set_ylabel("quality")
    ax.set_ylim(*_quality_limits(report))
    ax.set_title(f"Quality vs cost (corpus {report['settings']['corpus_size']:,})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def _plot_cost_dims(ax, report):
    dims = [row["dim"] for row in report["dims"]]
    for key in ("f32", "f16", "i8", "binary"):
        ax.plot(dims, [row["bytes_per_vector"][key] for row in report["dims"]], marker="o", label=f"{key} bytes/vector")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    _plain_ticks(ax, dims)
    ax.set_xlabel("dim")
    ax.set_ylabel("bytes per vector")
    ax.set_title("Storage vs dims (no --data: quality not measured)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _plot_retrieval_cost(ax, report):
    dims = [row["dim"] for row in report["dims"]]
    exact = [row["retrieval_flops"]["exact"] for row in report["dims"]]
    adaptive = [row["retrieval_flops"]["adaptive"] for row in report["dims"]]
    full = report["dims"][-1]["retrieval_flops"]["exact_full"] if report["dims"] else math.nan
    ax.plot(dims, exact, marker="o", label="exact search at d")
    ax.plot(dims, adaptive, marker="o", label="adaptive: shortlist at Ds=d, rerank at Dr")
    ax.axhline(full, color="grey", linestyle="--", label="exact search at full dim")
    heads = [(row["dim"], row["head_flops"]) for row in report["dims"] if row["head_flops"]]
    if heads:
        ax.plot([d for d, _ in heads], [f for _, f in heads], marker="s", label="classifier head")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_ticks(ax, dims, y=False)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: human_count(value)))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("dim")
    ax.set_ylabel("FLOPs per query / sample")
    ax.set_title(f"Compute vs dims (corpus {report['settings']['corpus_size']:,}; no --data)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _plain_ticks(ax, xs, y=True):
    """Log axes with the actual batch sizes / dims as tick labels, not 2^k or 10^k."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if xs:
        ax.set_xticks(list(xs))
        ax.set_xticklabels([str(x) for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
    if y:  # 1-2-5 steps so a range inside one decade still gets labels
        if ax.get_yscale() == "log" and ax.yaxis.get_transform().base == 10:
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
