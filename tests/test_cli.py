"""The command line as a user meets it: usage errors through the installed entry point (typer's
usage message, exit 2)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
