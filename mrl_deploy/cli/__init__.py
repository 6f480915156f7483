"""The `mrl-deploy` command line: one function per command, each a thin call into the library.

    common.py    the Typer app, the consoles, --json output, option parsing
    render.py    the tables and summaries printed for people
    models.py    export, inspect, embed, compare, train, demo
    classify.py  calibrate, classify
    search.py    index, search, tune
    deploy.py    serve, bench, triton

Heavy modules (torch, onnx, onnxruntime, usearch) are imported inside the commands that need
them, so `mrl-deploy --help` starts fast and never imports torch."""

from __future__ import annotations

from ..errors import MRLDeployError
# importing the command modules registers their commands on `app`, in the order --help lists them
from . import models, classify, search, deploy  # noqa: F401
from .common import app, console

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    import warnings

    def _warn(message, category, filename, lineno, file=None, line=None):
        if category is UserWarning:
            console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
        elif not issubclass(category, (DeprecationWarning, FutureWarning)):
            console.print(f"[dim]warning: {category.__name__}: {message}[/dim]")

    warnings.showwarning = _warn
    try:
        # Standalone mode: typer shows its own usage errors (unknown command or option, missing
        # argument, no arguments: usage and exit 2) and help, whichever click it uses (typer 0.29
        # vendors its own as typer._click, whose exceptions are not the installed click's).
        # Everything else propagates out of it: our errors are caught here.
        app(standalone_mode=True)
    except MRLDeployError as exc:
        from rich.markup import escape

        # escaped: messages name extras such as [gpu], which rich would take for markup
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        raise SystemExit(130)
