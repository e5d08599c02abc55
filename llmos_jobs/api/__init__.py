"""The HTTP API: FastAPI over LlmosClient and the CRUD functions, with API keys and an
audit log. ``create_app(settings)`` builds it; nothing is created at import."""

from llmos_jobs.api.app import create_app

__all__ = ["create_app"]
