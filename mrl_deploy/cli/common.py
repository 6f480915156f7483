"""The pieces every command shares: the Typer app, the consoles (stderr for people, stdout for
--json), JSON output and the parsing of options (numbers checked where they are parsed, lists)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console

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


def emit_json(data: object) -> None:
    """--json: print to stdout."""
    from ..manifest import json_default

    sys.stdout.write(json.dumps(data, indent=2, default=json_default) + "\n")


def number(default, *names: str, low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
           high_open: bool = False, help: str) -> object:
    """A numeric option checked where it is parsed, by the check the library uses (errors.check_number:
    one line, exit 2), with its range in the help. A 0 is never a silent "use the default"."""
    from ..errors import check_number, describe_range

    def callback(param: typer.CallbackParam, value):
        name = max(param.opts, key=len)
        return check_number(value, name, low, high, low_open=low_open, high_open=high_open, optional=True)

    words = describe_range(low, high, low_open=low_open, high_open=high_open)
    return typer.Option(default, *names, help=f"{help.rstrip('.')}; {words}.", callback=callback)


def parse_csv(value: Optional[str]) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def parse_counts(value: Optional[str], option: str) -> Optional[list[int]]:
    """'50,100,200' -> [50, 100, 200] (None for no value): integers >= 1, else one line naming the option."""
    from ..errors import parse_integers

    return parse_integers(value or "", option) or None
