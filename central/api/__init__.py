"""Central's HTTP API (FastAPI), one module per feature; ``create_app`` assembles it."""

from central.api.app import create_app

__all__ = ["create_app"]
