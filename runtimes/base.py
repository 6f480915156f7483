"""The Runtime lifecycle, after Polygraphy's runners: construct (cheap), activate (sessions,
buffers, engines), infer (dict of numpy in, dict of numpy out), deactivate (release)."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from ..errors import check_number


class Runtime(abc.ABC):
    """Runs one model variant of an artifact.

    `artifact` is a `mrl_deploy.artifact.Artifact`; `variant` names an entry of
    manifest["models"] ("fp32", "fp16", "int8", "tensorrt"). After activate(), `device` says what
    the runtime really runs on (e.g. the ONNX Runtime providers it got), never what was asked.
    """

    name: str = "runtime"

    def __init__(self, artifact: Any, *, variant: str = "fp32", threads: int | None = None):
        self.artifact = artifact
        self.variant = variant
        self.threads = check_number(threads, "threads", 1, integer=True, optional=True)
        self.is_active = False

    # --- lifecycle -------------------------------------------------------------------------
    def activate(self) -> "Runtime":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, feed: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run one batch. `outputs` limits what is returned (default: every output)."""
        if not self.is_active:
            self.activate()
        return self._infer(feed, outputs)

    def __enter__(self) -> "Runtime":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # --- for implementations ---------------------------------------------------------------
    @property
    def device(self) -> str:
        """What this runtime really runs on, e.g. 'CPUExecutionProvider' or 'cuda:0 (H100)'."""
        return "unknown"

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]: ...

    def _deactivate(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(variant={self.variant!r}, active={self.is_active})"
