"""The `mrl-deploy` command line: one function per command, each a thin call into the library.

Heavy modules (torch, onnx, onnxruntime, usearch) are imported inside the commands that need
them, so `mrl-deploy --help` starts fast and never imports torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .errors import MRLDeployError

app = typer.Typer(
    name="mrl-deploy",
    help="Deploy Matryoshka (MRL) models: export chosen granularities, run them anywhere, "
    "classify with cascades, search with adaptive retrieval, and measure every dim.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)   # progress and tables for people
stdout = Console()               # --json and machine-readable output only


def emit_json(data: object, path: Optional[Path] = None) -> None:
    """--json: print to stdout (or write to a file)."""
    from .manifest import _json_default

    text = json.dumps(data, indent=2, default=_json_default)
    if path is not None:
        path.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


def parse_csv(value: Optional[str]) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


# --- export, inspect, embed, demo -----------------------------------------------------------
# (export commands)

# --- runtimes: compare ----------------------------------------------------------------------
# (runtime commands)

# --- training -------------------------------------------------------------------------------
# (train commands)

# --- cascaded classification: calibrate, classify -------------------------------------------
# (cascade commands)

# --- adaptive retrieval: index, search, tune ------------------------------------------------
# (retrieval commands)

# --- benchmarks: bench ----------------------------------------------------------------------
# (bench commands)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    import warnings

    def _warn(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and "mrl_deploy" in str(filename):
            console.print(f"[yellow]warning:[/yellow] {message}")
        elif not issubclass(category, (DeprecationWarning, FutureWarning)):
            console.print(f"[dim]warning: {category.__name__}: {message}[/dim]")

    warnings.showwarning = _warn
    try:
        app(standalone_mode=False)
    except MRLDeployError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        raise SystemExit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.exceptions.Abort):
            raise SystemExit(130)
        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
