import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: as `mrl-deploy train` does (train.py)
sys.path.insert(0, str(Path(__file__).parent))  # `factories:NAME` sources

try:
    import torch  # noqa: F401

    HAS_TORCH = True
except ImportError:  # the edge install
    HAS_TORCH = False

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs the export extra (torch)")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every Ray test of the session (2 CPUs, a small object store, no
    dashboard); Ray Serve is shut down with it."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'mrl-deploy[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 2**20, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()
