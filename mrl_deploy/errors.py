"""Errors a user can cause. The CLI prints their message on one line and exits 2."""


class MRLDeployError(Exception):
    """Base class: a clear, one-line message about something the user can fix."""

    exit_code = 2


class DimsError(MRLDeployError, ValueError):
    """Bad --dims / nesting dims (not integers, below 1, above the full dim)."""


class SourceError(MRLDeployError):
    """A model source that is missing, unreadable or of an unsupported architecture."""


class ArtifactError(MRLDeployError):
    """A missing, incomplete, corrupt or tampered artifact directory."""


class InputError(MRLDeployError, ValueError):
    """Inputs of the wrong shape, dtype or kind for the artifact or command."""


class VerificationError(MRLDeployError):
    """An exported graph that does not match PyTorch within tolerance."""


class RuntimeUnavailableError(MRLDeployError):
    """A runtime or device that was asked for but is not there (no silent fallback)."""


class MissingExtraError(MRLDeployError):
    """A feature whose optional dependency is not installed."""

    def __init__(self, module: str, extra: str, what: str = ""):
        purpose = f" for {what}" if what else ""
        super().__init__(
            f"'{module}' is needed{purpose} but is not installed: pip install 'mrl-deploy[{extra}]'"
        )


class DataError(MRLDeployError, ValueError):
    """Training / evaluation data that is missing or malformed."""


class RepositoryError(MRLDeployError):
    """A Triton model repository that Triton would refuse or run wrongly (`mrl-deploy triton --check`)."""


def require(module: str, extra: str, what: str = ""):
    """Import an optional heavy module, or raise a MissingExtraError that names the extra."""
    import importlib
    import sys

    if module.split(".")[0] == "onnxruntime" and "onnxruntime" not in sys.modules and "usearch.compiled" in sys.modules:
        # onnxruntime 1.32 segfaults at import (libstdc++'s codecvt) once usearch's extension is
        # loaded: a clear error instead of a crash that loses the process
        raise RuntimeUnavailableError(
            "onnxruntime cannot be imported after usearch (it crashes at import): import onnxruntime "
            "or mrl_deploy's Artifact before usearch, or run the retrieval through mrl_deploy.retrieval")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingExtraError(module, extra, what) from None


def describe_range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                   high_open: bool = False) -> str:
    """'>= 1', '> 0', 'between 0 and 100', 'in (0, 1]': the range check_number enforces, in words."""
    if low is not None and high is not None:
        if not (low_open or high_open):
            return f"between {low} and {high}"
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return "a number"


def check_number(value, name: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False, integer: bool = False, optional: bool = False):
    """The one check of a numeric setting (CLI options and library arguments alike): a number of
    the right kind within [low, high] (open ends with low_open / high_open), else an InputError
    naming it. None passes only when `optional`. Returns the value, so `x = check_number(x, ...)`."""
    import math
    import numbers

    if value is None and optional:
        return None
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and (value <= low if low_open else value < low)) or (
            high is not None and (value >= high if high_open else value > high)):
        raise InputError(f"{name} must be {describe_range(low, high, low_open=low_open, high_open=high_open)}, "
                         f"got {value!r}")
    return value


def parse_integers(value, name: str, low: float | None = 1) -> list[int]:
    """'8,16,32' (or a list) -> [8, 16, 32]: each an integer checked by check_number (>= `low`),
    else an InputError naming `name`; empty parts are skipped, so '' gives []."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    numbers = []
    for part in parts:
        text = str(part).strip()
        if not text:
            continue
        try:
            number = int(text, 10) if isinstance(part, str) else part
        except ValueError:
            raise InputError(f"{name} takes integers like 8,16,32, got {text!r}") from None
        numbers.append(check_number(number, name, low, integer=True))
    return numbers
