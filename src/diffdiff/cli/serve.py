"""``diffdiff serve``: the web UI and the REST API in one process."""

from __future__ import annotations

from typing import Optional

import typer

from .common import info, load_editor, run_command
from .edit import addon_load_kw

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        model: Optional[str] = typer.Option(None, "--model", help="Model: hub id, local diffusers folder or single file [default: SDXL base 1.0]."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. The default accepts local connections only."),
        port: int = typer.Option(7860, "--port", help="TCP port."),
        max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Refuse larger images with 413 [default: 2048x2048]."),
        queue_size: Optional[int] = typer.Option(None, "--queue-size", help="Requests that may wait while one runs; more get 503 [default: 4]."),
        no_ui: bool = typer.Option(False, "--no-ui", help="Serve the REST API only."),
        device: Optional[str] = typer.Option(None, "--device", help="cuda, mps or cpu [default: best available]."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32."),
        controlnet: Optional[list[str]] = typer.Option(None, "--controlnet", help="Serve with this ControlNet (requests then send control_image). Repeat for several."),
        lora: Optional[list[str]] = typer.Option(None, "--lora", help="Serve with these LoRA weights PATH_OR_ID[:SCALE]. Repeatable."),
        ip_adapter: Optional[str] = typer.Option(None, "--ip-adapter", help="Serve with this IP-Adapter (requests then send ip_adapter_image)."),
        ip_adapter_scale: float = typer.Option(1.0, "--ip-adapter-scale", help="IP-Adapter strength."),
    ) -> None:
        """Start the web UI at / and the REST API at /api (OpenAPI docs at /docs)."""

        def body() -> None:
            from ..errors import DiffDiffError
            from ..web.service import DEFAULT_MAX_PIXELS, DEFAULT_QUEUE_SIZE

            if not 0 < port < 65536:
                raise DiffDiffError(f"--port must be between 1 and 65535, got {port}")
            pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
            waiting = DEFAULT_QUEUE_SIZE if queue_size is None else queue_size
            if pixels < 1:
                raise DiffDiffError(f"--max-pixels must be positive, got {pixels}")
            if waiting < 0:
                raise DiffDiffError(f"--queue-size must be >= 0, got {waiting}")
            try:
                import uvicorn

                from ..web import create_app
            except ImportError as exc:
                raise DiffDiffError(f"the web server needs the 'web' extra: pip install 'diffdiff[web]' ({exc})") from exc
            # Load before binding: a bad --model fails here with one line, not on the first request.
            editor = load_editor(model, device=device, dtype=dtype,
                                 **addon_load_kw(controlnet, lora, ip_adapter, ip_adapter_scale))
            editor.set_progress_bar(False)
            app = create_app(editor, max_pixels=pixels, queue_size=waiting, ui=not no_ui)
            if host not in LOCAL_HOSTS:
                info(f"warning: binding {host}: anyone who can reach this address can use the model")
            info(f"diffdiff serving {editor.model_name} on http://{host}:{port}/ (API docs: /docs); Ctrl-C stops")
            uvicorn.run(app, host=host, port=port, log_level="warning")

        run_command(body)
