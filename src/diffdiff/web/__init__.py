"""``diffdiff serve``: a web UI (Gradio) and a REST API (FastAPI) on one model.

Needs the ``web`` extra: ``pip install 'diffdiff[web]'``.
"""

from __future__ import annotations

from .app import create_app
from .service import DEFAULT_MAX_PIXELS, DEFAULT_QUEUE_SIZE, EditService

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_QUEUE_SIZE", "EditService", "create_app"]
