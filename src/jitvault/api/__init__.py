"""The HTTP API (FastAPI)."""

from jitvault.api.app import create_app

__all__ = ["create_app"]
