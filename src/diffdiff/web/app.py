"""The application factory: one FastAPI app with the REST API under ``/api`` and the UI at ``/``.

Gradio is imported only when the UI is mounted (``ui=True``), so the API alone needs FastAPI,
uvicorn and python-multipart but not Gradio.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from .. import __version__
from .api import build_router, guard_api_paths, install_error_handlers, install_openapi, limit_body_size
from .service import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_STEPS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_QUEUE_SIZE,
    EditorSource,
    EditService,
)
from .ui import UI_CSS, build_ui

API_DESCRIPTION = """Graded image editing with Differential Diffusion.

Every image endpoint takes `multipart/form-data` and returns `image/png` carrying the run's
parameters as PNG text chunks (`diffdiff` JSON and an A1111-style `parameters` line).
Errors are JSON `{"error": "..."}`: 400 malformed multipart body, 404 unknown path,
405 undeclared method (with `Allow`), 413 oversize, 422 bad input, 501 an operation the loaded
model's family lacks, 503 queue full (with `Retry-After`). Text fields may be empty (an empty
prompt is an unconditional edit); a map or mask must have the image's aspect ratio.
"""


def create_app(
    editor_or_loader: EditorSource,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    ui: bool = True,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> FastAPI:
    """Build the server for an :class:`~diffdiff.Editor` (or a function that loads one on first use).

    ``max_pixels``: larger images get 413. ``queue_size``: jobs that may wait while one runs; more
    get 503. ``max_upload_bytes``: larger uploads get 413. ``max_steps``: the most inference steps a
    request may ask for (the schema says so; more get 422). ``ui=False`` serves the API only (no
    Gradio import).
    """
    service = EditService(editor_or_loader, max_pixels=max_pixels, queue_size=queue_size,
                          max_upload_bytes=max_upload_bytes, max_steps=max_steps)
    app = FastAPI(title="diffdiff", version=__version__, description=API_DESCRIPTION)
    app.state.service = service
    install_error_handlers(app)
    limit_body_size(app, service)
    router = build_router(service)
    guard_api_paths(app, router)
    app.include_router(router)
    install_openapi(app)
    if ui:
        app = _mount_ui(app, service)
    return app


def _mount_ui(app: FastAPI, service: EditService) -> Any:
    import gradio as gr  # the optional UI dependency: only imported when the UI is mounted

    blocks = build_ui(service)
    # Gradio's own queue also runs one event at a time; ours (shared with the API) bounds waiting.
    blocks.queue(default_concurrency_limit=1, max_size=max(1, service.queue_size + 1))
    return gr.mount_gradio_app(app, blocks, path="/", footer_links=["api"], css=UI_CSS, ssr_mode=False,
                               max_file_size=service.max_upload_bytes, show_error=True)
