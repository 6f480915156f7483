"""mrl-deploy: take Matryoshka (MRL) models to production.

    import mrl_deploy
    artifact = mrl_deploy.export("model_dir", dims=[64, 256], output="artifacts/m")
    artifact = mrl_deploy.Artifact.load("artifacts/m")
    vectors = artifact.encode(inputs, dim=64)

Heavy modules (torch, onnx) are imported only by the functions that need them.
"""

from __future__ import annotations

from .errors import MRLDeployError
from .version import __version__

__all__ = ["Artifact", "AdaptiveIndex", "Cascade", "MRLDeployError", "export", "__version__"]


def __getattr__(name: str):
    if name == "Artifact":
        from .artifact import Artifact

        return Artifact
    if name == "export":
        from .exporters.onnx import export

        return export
    if name == "AdaptiveIndex":
        from .retrieval import AdaptiveIndex

        return AdaptiveIndex
    if name == "Cascade":
        from .cascade import Cascade

        return Cascade
    raise AttributeError(f"module 'mrl_deploy' has no attribute {name!r}")
