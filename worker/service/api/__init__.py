"""The HTTP API of mjqueue (``mjq serve``): FastAPI on uvicorn, bearer keys, jobs, batches, metrics."""

from worker.service.api.app import create_app, serve

__all__ = ["create_app", "serve"]
