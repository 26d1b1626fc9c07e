"""An OpenAI-compatible HTTP server for any agentspark Backend (``agentspark serve``)."""

from .app import create_app
from .background import serve_in_thread

__all__ = ["create_app", "serve_in_thread"]
