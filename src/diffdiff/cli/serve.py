"""``diffdiff serve``: the web UI and the REST API in one process.

The server needs the optional ``web`` extra (FastAPI, uvicorn, python-multipart and, for the UI,
Gradio). This module is imported by every ``diffdiff`` command, so it loads that extra only when
``serve`` runs (:func:`load_web`), and a missing piece is one line saying how to install it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

import typer

from ..errors import DiffDiffError
from .addon_options import addon_load_kw
from .common import info, load_editor, run_command

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
INSTALL_HINT = 'pip install "diffdiff[web]"'
#: Modules the API needs (python-multipart parses the form uploads); Gradio only for the UI.
API_MODULES = ("fastapi", "uvicorn", "python_multipart")
UI_MODULES = ("gradio",)


def load_web(ui: bool) -> tuple[ModuleType, ModuleType]:
    """``(diffdiff.web, uvicorn)``, or :class:`DiffDiffError` naming the missing module and the fix."""
    for name in API_MODULES + (UI_MODULES if ui else ()):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing = exc.name or name
            extra = " (or serve the API alone with --no-ui)" if name in UI_MODULES else ""
            raise DiffDiffError(f"diffdiff serve needs the web extra, {missing} is missing: {INSTALL_HINT}{extra}") from None
    # Our own package, imported by name because its dependencies are optional (checked just above).
    return importlib.import_module("diffdiff.web"), importlib.import_module("uvicorn")


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        model: Optional[str] = typer.Option(None, "--model", help="Model: hub id, local diffusers folder or single file (default: SDXL base 1.0)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. The default accepts local connections only."),
        port: int = typer.Option(7860, "--port", help="TCP port."),
        max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Refuse larger images with 413 (default: 2048x2048)."),
        queue_size: Optional[int] = typer.Option(None, "--queue-size", help="Requests that may wait while one runs; more get 503 (default: 4)."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Most inference steps one request may ask for; more get 422 (default: 500)."),
        no_ui: bool = typer.Option(False, "--no-ui", help="Serve the REST API only (no Gradio needed)."),
        device: Optional[str] = typer.Option(None, "--device", help="cuda, mps or cpu (default: best available)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32."),
        controlnet: Optional[list[str]] = typer.Option(None, "--controlnet", help="Serve with this ControlNet (requests then send control_image). Repeat for several."),
        lora: Optional[list[str]] = typer.Option(None, "--lora", help="Serve with these LoRA weights PATH_OR_ID[:SCALE]. Repeatable."),
        ip_adapter: Optional[str] = typer.Option(None, "--ip-adapter", help="Serve with this IP-Adapter (requests then send ip_adapter_image)."),
        ip_adapter_scale: float = typer.Option(1.0, "--ip-adapter-scale", help="IP-Adapter strength."),
    ) -> None:
        """Start the web UI at / and the REST API at /api (OpenAPI docs at /docs). Needs diffdiff[web]."""

        def body() -> None:
            if not 0 < port < 65536:
                raise DiffDiffError(f"--port must be between 1 and 65535, got {port}")
            # Checked before loading anything; options left out keep the server's defaults.
            if max_pixels is not None and max_pixels < 1:
                raise DiffDiffError(f"--max-pixels must be positive, got {max_pixels}")
            if queue_size is not None and queue_size < 0:
                raise DiffDiffError(f"--queue-size must be >= 0, got {queue_size}")
            if max_steps is not None and max_steps < 2:
                raise DiffDiffError(f"--max-steps must be at least 2 (DiffEdit inverts half of them), got {max_steps}")
            limits = {k: v for k, v in (("max_pixels", max_pixels), ("queue_size", queue_size),
                                        ("max_steps", max_steps)) if v is not None}
            web, uvicorn = load_web(ui=not no_ui)
            # Load before binding: a bad --model fails here with one line, not on the first request.
            editor = load_editor(model, device=device, dtype=dtype,
                                 **addon_load_kw(controlnet, lora, ip_adapter, ip_adapter_scale))
            editor.set_progress_bar(False)
            app = web.create_app(editor, ui=not no_ui, **limits)
            if host not in LOCAL_HOSTS:
                info(f"warning: binding {host}: anyone who can reach this address can use the model")
            info(f"diffdiff serving {editor.model_name} on http://{host}:{port}/ (API docs: /docs); Ctrl-C stops")
            uvicorn.run(app, host=host, port=port, log_level="warning")

        run_command(body)
