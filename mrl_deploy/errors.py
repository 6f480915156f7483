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

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingExtraError(module, extra, what) from None
