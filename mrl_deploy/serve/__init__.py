"""`mrl-deploy serve`: an HTTP server for embeddings, cascades and adaptive search (FastAPI +
uvicorn, the `serve` extra). Nothing outside this package imports it.

    from mrl_deploy.serve import create_app, run_server
    app = create_app("artifacts/minilm", index=None, max_batch=64)
    run_server(app, "127.0.0.1", 8080)

app.py: create_app (the routes) and run_server; requests.py: request models and validation;
api_errors.py: the error mapping; gate.py: the middleware (API key, body limit, metrics); state.py:
ServerState; batcher.py: dynamic batching (Batcher, LocalBackend, run_batch: the backend seam);
metrics.py: Prometheus metrics.
"""

from .api_errors import ApiError
from .app import create_app, run_server
from .batcher import TOKENS, Backend, Batcher, LocalBackend, Overloaded, run_batch

__all__ = ["ApiError", "Backend", "Batcher", "LocalBackend", "Overloaded", "TOKENS", "create_app", "run_batch",
           "run_server"]
