"""The state of one server app: what create_app builds and the routes, the gate and run_server
read (the artifact, the index, the backend, the limits, readiness)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..artifact import Artifact
from .metrics import Metrics


@dataclass
class ServerState:
    artifact: Artifact
    index: Any
    backend: Any
    metrics: Metrics
    model_name: str
    max_request_items: int
    max_body_bytes: int
    api_key: bytes | None
    verify: bool                       # check the artifact's checksums while loading
    settings: dict[str, Any]
    ready: bool = False
    draining: bool = False
    error: str | None = None
    runtime_info: dict[str, Any] = field(default_factory=dict)
    arriving: int = 0                  # requests in a model route that have not reached the backend yet
    on_fatal: Callable[[BaseException], None] | None = None

    def load(self) -> dict[str, Any]:
        if self.verify:
            from ..manifest import verify_files

            verify_files(self.artifact.path, self.artifact.manifest)
        return self.backend.load()
