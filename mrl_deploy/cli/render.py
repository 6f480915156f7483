"""Rendering for people: the rich tables and summaries the commands print (stderr). The commands
compute; this module only shows."""

from __future__ import annotations

import json

from .common import console


def manifest_tables(manifest: dict) -> list:
    """rich tables for `inspect`: the artifact at a glance, its outputs, variants and files."""
    from rich.markup import escape
    from rich.table import Table

    from ..dims import format_nesting_dims

    source = manifest["source"]
    overview = Table(title="artifact", show_header=False)
    flops = manifest.get("flops") or {}
    rows = [
        ("source", f"{source['kind']}: " + (f"{source['repo_id']}@{source['revision']} ({source['path']})"
                                            if source.get("repo_id") else source["path"])),
        ("full dim", str(manifest["full_dim"])),
        ("nesting dims", format_nesting_dims(manifest.get("nesting_dims"))),
        ("exported dims", ", ".join(map(str, manifest["exported_dims"]))),
        ("normalization", f"{manifest['normalization']} (pre-truncation: {manifest.get('pre_truncation') or 'none'})"),
        ("heads", manifest.get("head") or "none"),
        ("inputs", "; ".join(f"{i['name']} {i['dtype']}[{', '.join(map(str, i['shape']))}]" for i in manifest["inputs"])),
        ("encoder FLOPs", f"{flops.get('encoder', 0):,} ({flops.get('unit', '')})"),
        ("opset", str(manifest.get("opset"))),
        ("graph optimization", "; ".join(
            f"{variant}: " + (", ".join(f"{op} x{n}" for op, n in info["optimization"]["fused_operators"].items())
                              if info["optimization"].get("applied") else "none")
            for variant, info in manifest.get("models", {}).items() if "optimization" in info) or "none"),
        ("cascade", "calibrated" if manifest.get("cascade") else "not calibrated"),
    ]
    for key, value in rows:
        overview.add_row(key, escape(value))
    outputs = Table(title="outputs, verified against PyTorch")
    outputs.add_column("output", no_wrap=True)
    for column in ("variant", "min cosine", "max abs diff", "head FLOPs"):
        outputs.add_column(column, justify="right")
    for output in manifest["outputs"]:
        for variant, info in manifest.get("models", {}).items():
            stats = info.get("verification", {}).get(output["name"])
            if stats is None:
                continue
            head = flops.get("heads", {}).get(str(output["dim"]), "") if output["kind"] == "logits" else ""
            outputs.add_row(output["name"], variant,
                            f"{stats['min_cosine']:.6f}", f"{stats['max_abs_diff']:.2e}", f"{head:,}" if head else "")
    files = Table(title="files")
    files.add_column("file")
    files.add_column("sha256")
    for name, digest in manifest.get("files", {}).items():
        files.add_row(name, digest[:16] + "...")
    return [overview, outputs, files]


def cascade_table(title: str, rows: list, columns: list) -> object:
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    return table


def print_classify_report(report: dict) -> None:
    mode = "cascade " + " -> ".join(map(str, report["dims"])) if report["mode"] == "cascade" else f"head at dim {report['dims'][0]}"
    rows = [["samples", report["samples"]]]
    if "accuracy" in report:
        rows.append(["accuracy %", f"{report['accuracy']:.2f}"])
    rows += [
        ["expected dims (paper: final head)", f"{report['expected_dims']:.2f}"],
        ["expected dims (honest: every head passed)", f"{report['expected_honest_dims']:.2f}"],
        ["head FLOPs per sample", f"{report['head_flops_per_sample']:,.0f}"],
        ["encoder FLOPs per sample", f"{report['encoder_flops_per_sample']:,}" if report.get("encoder_flops_per_sample") else "unknown"],
        ["latency ms per sample (encoder + heads + cascade)", f"{report['ms_per_sample']:.3f}"],
        ["stop histogram", ", ".join(f"{d}: {100 * f:.1f}%" for d, f in report["stop_histogram"].items())],
        ["runtime", report["runtime"]],
    ]
    console.print(cascade_table(f"classify {report['data']['description']} with the {mode}", rows, ["", "value"]))
    if report.get("predictions_file"):
        console.print(f"[green]wrote[/green] {report['predictions_file']}", highlight=False)


def _document_text(document, width: int = 80) -> str:
    """': text' (shortened, escaped for rich) of a stored document, or its metadata."""
    from rich.markup import escape

    if not document:
        return ""
    text = document.get("text")
    text = " ".join(text.split()) if text is not None else json.dumps(document.get("metadata"), ensure_ascii=False)
    return ": " + escape(text if len(text) <= width else text[:width - 3] + "...")


def print_search(result: dict, show: int) -> None:
    from rich.table import Table

    table = Table(title=f"{result['queries']} queries, top {result['k']} ({result['mode']}): "
                        f"{result['seconds'] * 1000:.1f} ms, {result['qps']:,.0f} queries/s")
    table.add_column("query", justify="right")
    table.add_column("ids (score)")
    documents = result.get("documents")
    for i in range(min(show, result["queries"])):
        cells = [f"{int(d)} ({s:.3f})" + _document_text(documents[i][j] if documents else None)
                 for j, (d, s) in enumerate(zip(result["ids"][i], result["scores"][i])) if d >= 0]
        table.add_row(str(i), ("\n" if documents else ", ").join(cells))
    console.print(table)


def print_tune(report: dict, saved_to) -> None:
    from rich.table import Table

    best = report["recommended"]
    table = Table(title=f"Pareto frontier: recall@{report['k']} vs QPS vs bytes ({report['queries']} queries, "
                        f"{report['corpus']:,} vectors; exact search: {report['exact_qps']:,.0f} QPS)")
    for column in ("Ds", "dtype", "shortlist", "HNSW width", f"recall@{report['k']}", "QPS", "x exact", "bytes/vector", ""):
        table.add_column(column, justify="right")
    for p in report["pareto"]:
        mark = "[green]recommended[/green]" if p is best or p == best else ""
        table.add_row(str(p["shortlist_dim"]), p["dtype"], str(p["shortlist_size"]), str(p["expansion_search"]),
                      f"{p['recall']:.4f}", f"{p['qps']:,.0f}", f"{p['qps'] / report['exact_qps']:.1f}",
                      f"{p['bytes_per_vector']:.0f}", mark)
    console.print(table)
    console.print(f"rerank store: {report['rerank_bytes_per_vector']:.0f} bytes/vector at {report['rerank_dim']} dims "
                  "(memory-mapped)", highlight=False)
    if best is None:
        console.print(f"[yellow]no setting reached recall@{report['k']} >= {report['target_recall']}[/yellow]: "
                      "sweep larger --shortlists or --dims")
    else:
        console.print(f"recommended: Ds={best['shortlist_dim']} {best['dtype']}, shortlist {best['shortlist_size']}, "
                      f"HNSW width {best['expansion_search']}: recall@{report['k']} {best['recall']:.4f} at "
                      f"{best['qps']:,.0f} QPS" + (f"; [green]saved[/green] as the default of {saved_to}" if saved_to else
                                                 " (--save makes it the index default)"), highlight=False)


def print_compare(report: dict, has_logits: bool) -> None:
    """`compare`: each run's outputs against the reference run, where each ran, what was skipped,
    what failed."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    ref = report["reference"]
    table = Table(title=f"{report['inputs']['samples']} {report['inputs']['source']} samples, against "
                        f"{ref['runtime']}:{ref['variant']}", box=box.SIMPLE_HEAD)
    columns = ["runtime", "output", "max |d|", "mean |d|", "min cosine"] + (["top-1"] if has_logits else []) + ["ok"]
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < 2 else "right", no_wrap=True, min_width=3)
    for run in report["runs"][1:]:
        for name, stats in run["outputs"].items():
            top1 = stats.get("top1_agreement")
            cells = [f"{run['runtime']}:{run['variant']}", name, f"{stats['max_abs_diff']:.2e}",
                     f"{stats['mean_abs_diff']:.2e}", f"{stats['min_cosine']:.8f}"]
            cells += (["" if top1 is None else f"{top1:.3f}"] if has_logits else [])
            table.add_row(*cells, "[green]yes[/green]" if stats["passed"] else "[red]NO[/red]")
    console.print(table)
    for run in report["runs"]:
        console.print(f"  {run['runtime']}:{run['variant']} ran on {run['device']}", highlight=False)
    for skip in report["skipped"]:
        console.print(f"  [yellow]skipped[/yellow] {skip['runtime']}:{skip['variant']}: {escape(skip['reason'])}", highlight=False)
    for run in report["runs"][1:]:
        for failure in run["failures"]:
            console.print(f"[red]past tolerance:[/red] {run['runtime']}:{run['variant']}: {failure}", highlight=False)
