"""What people see while `mrl-deploy train` runs: a rich progress display fed by train()'s
progress events, and the accuracy table of the nesting dims against the baselines."""

from __future__ import annotations

from typing import Any


ACCURACY_COLUMNS = {
    "mrl": "MRL",
    "baseline_truncated": "full-dim only, truncated",
    "baseline_probe": "full-dim only + probe per dim",
    "encoder_probe": "plain encoder + probe per dim",
}


def accuracy_table(meta: dict[str, Any]):
    """A rich table: nesting dims vs validation accuracy of MRL and the baselines (the paper's layout)."""
    from rich.table import Table

    accuracy = meta["accuracy"]
    loss = "MRL-E" if meta.get("efficient") else "MRL"
    table = Table(title=f"{meta['data']['name']}: top-1 % on the {meta.get('accuracy_split', 'validation split')}")
    table.add_column("dim", justify="right")
    for key in accuracy:
        table.add_column(ACCURACY_COLUMNS.get(key, key).replace("MRL", loss, 1) if key == "mrl" else ACCURACY_COLUMNS.get(key, key),
                         justify="right")
    for m in meta["nesting_dims"]:
        table.add_row(str(m), *(f"{accuracy[key].get(str(m), float('nan')):.2f}" for key in accuracy))
    return table


class TrainingProgress:
    """A rich progress display fed by train()'s progress events: embedding, then one bar per model."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console)
        self.tasks: dict[str, Any] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        stage = event["stage"]
        if stage == "data":
            summary = event["summary"]
            self.console.print(
                f"{summary['name']}: {summary['samples']} samples, {summary['classes']} classes ({summary['kind']}); "
                f"stratified split: {event['train']} train / {event['validation']} validation", highlight=False)
        elif stage == "embed":
            self._update("embed", "embedding texts (cached)", event["done"], event["total"], "")
        elif stage in ("mrl", "baseline"):
            label = "MRL" if stage == "mrl" else "baseline (full dim only)"
            self._update(stage, f"training {label}", event["epoch"], event["epochs"], f"loss {event['loss']:.4f}")
        elif stage == "probes":
            self._update("probes", "baseline probes per dim", event["done"], event["total"], "")

    def _update(self, key: str, description: str, done: int, total: int, note: str) -> None:
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=total, note=note)
        self.progress.update(self.tasks[key], completed=done, total=total, note=note)
