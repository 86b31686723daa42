"""The REST API: ``/api/health``, ``/api/edit``, ``/api/fan``, ``/api/auto-map``, ``/api/diffedit``.

Uploads are decoded in memory; filenames the client sends are ignored, so nothing it sends becomes
a path on the server. Every error is JSON ``{"error": "<one line>"}``: 413 for oversize input, 422
for bad fields or images, 501 for a feature this version lacks, 503 + ``Retry-After`` when the
queue is full. Model work runs in a worker thread, so the event loop keeps answering (health,
other clients' 503s) while a job runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Optional

import anyio
from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import DiffDiffError
from .service import EditService, FeatureMissing, QueueFull, TooLarge, png_bytes

PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "PNG with diffdiff's metadata text chunks"},
    413: {"description": "image above the pixel or upload limit"},
    422: {"description": "bad field, unreadable image or map of the wrong aspect ratio"},
    503: {"description": "queue full; see the Retry-After header"},
}

MAX_FAN_COLUMNS = 16
MAX_AUTO_MAPS = 64


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "form")]
        parts.append(f"{'.'.join(loc) or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QueueFull)
    async def _busy(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TooLarge)
    async def _large(request: Request, exc: TooLarge) -> JSONResponse:
        return _error(413, str(exc))

    @app.exception_handler(FeatureMissing)
    async def _missing(request: Request, exc: FeatureMissing) -> JSONResponse:
        return _error(501, str(exc))

    @app.exception_handler(DiffDiffError)
    async def _user(request: Request, exc: DiffDiffError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _fields(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(MemoryError)
    async def _oom(request: Request, exc: MemoryError) -> JSONResponse:
        return _error(507, "out of memory; try a smaller image")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # A model failure must not take the server down; say what broke in one line.
        first = (str(exc).strip().splitlines() or ["unexpected failure"])[0]
        return _error(500, f"{type(exc).__name__}: {first}")


def _limit_body_size(app: FastAPI, service: EditService) -> None:
    """Refuse bodies far above the upload limit from Content-Length, before parsing them."""
    # Two files plus form fields: allow both files at the limit and some slack.
    limit = 2 * service.max_upload_bytes + (1 << 20)

    @app.middleware("http")
    async def _cap(request: Request, call_next: Callable[[Request], Any]) -> Any:
        if request.url.path.startswith("/api/"):
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                return _error(413, f"request body is {length} bytes, above this server's limit of {limit}")
        return await call_next(request)


async def _read(upload: Optional[UploadFile], what: str, limit: int, required: bool = True) -> Optional[bytes]:
    if upload is None:
        if required:
            raise DiffDiffError(f"{what} is required (multipart file field)")
        return None
    # One byte past the limit is enough for decode() to report an oversize upload.
    return await upload.read(limit + 1)


async def _job(service: EditService, prepare: Callable[[], Any], work: Callable[[Any, Any], Any]) -> tuple[Any, list[str]]:
    """Admit (or 503), then in a worker thread: ``prepare()`` outside the lock, ``work`` inside it."""
    with service.ticket():

        def run() -> tuple[Any, list[str]]:
            prepared = prepare()

            def locked(editor: Any) -> tuple[Any, list[str]]:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        out = work(editor, prepared)
                    except ModuleNotFoundError as exc:
                        # Editor methods import their module lazily; one still being written is a 501.
                        if (exc.name or "").startswith("diffdiff"):
                            raise FeatureMissing(f"this diffdiff version lacks {exc.name}") from exc
                        raise
                from ..errors import DiffDiffWarning

                notes = [str(w.message) for w in caught if issubclass(w.category, DiffDiffWarning)]
                return out, notes

            return service.run_locked(locked)

        return await anyio.to_thread.run_sync(run)


def _png_response(img: Image.Image, notes: list[str], metadata: dict[str, Any] | None = None) -> Response:
    meta = metadata if metadata is not None else img.info.get("diffdiff")
    headers = {"Content-Disposition": 'inline; filename="diffdiff.png"'}
    if meta and "seed" in meta:
        headers["X-DiffDiff-Seed"] = str(meta["seed"])
    if notes:
        # Header values must be latin-1 and one line.
        headers["X-DiffDiff-Warning"] = " | ".join(notes).encode("latin-1", "replace").decode("latin-1")
    return Response(png_bytes(img, meta), media_type="image/png", headers=headers)


def _first_image(out: Any) -> Image.Image:
    if isinstance(out, Image.Image):
        return out
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], Image.Image):
        return out[0]
    raise DiffDiffError(f"the editor returned {type(out).__name__}, not an image")


def build_router(service: EditService) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["diffdiff"])

    @router.get("/health", summary="Liveness, model and queue state")
    async def health() -> dict[str, Any]:
        ed = service._editor
        return {
            "status": "ok",
            "version": __version__,
            "model": getattr(ed, "model_name", None),
            "family": getattr(ed, "family", None),
            "model_loaded": service.loaded,
            "queue": service.stats(),
            "max_pixels": service.max_pixels,
            "features": {m: service.has(m) for m in ("edit", "fan", "auto_map", "diffedit")},
        }

    @router.post("/edit", summary="Differential Diffusion edit", response_class=Response, responses=PNG_RESPONSE)
    async def edit(
        image: UploadFile = File(..., description="Image to edit (PNG, JPEG, WebP, ...)"),
        map: UploadFile = File(..., description="Change map: greyscale, white = change (see polarity)"),
        prompt: str = Form(..., description="What the edited image should show"),
        negative_prompt: Optional[str] = Form(None),
        steps: int = Form(30, ge=1, le=500, description="Inference steps"),
        guidance: Optional[float] = Form(None, description="Classifier-free guidance [default: the model's]"),
        strength: float = Form(1.0, description="Maximum strength, where the map is white (0..1)"),
        seed: Optional[int] = Form(None, description="Random seed (recorded in the PNG metadata)"),
        polarity: str = Form("change", description="'change': white = change; 'keep': white = keep"),
        paste_back: bool = Form(True, description="Copy map = 0 pixels back exactly"),
        skip_frozen: bool = Form(False, description="Run the model each step only where pixels are free (faster)"),
    ) -> Response:
        img_data = await _read(image, "image", service.max_upload_bytes)
        map_data = await _read(map, "map", service.max_upload_bytes)

        def prepare() -> tuple[Image.Image, Image.Image]:
            from ..changemap import prepare_change_map
            from ..request import validate_edit_params

            validate_edit_params(prompt, steps, guidance, strength, 1, polarity, seed)
            img = service.decode(img_data, "image")  # type: ignore[arg-type]
            cmap = service.decode(map_data, "map")  # type: ignore[arg-type]
            prepare_change_map(cmap, img.size, polarity)  # type: ignore[arg-type]  # aspect check before queueing on the model
            return img, cmap

        def work(ed: Any, p: tuple[Image.Image, Image.Image]) -> Any:
            return ed.edit(
                p[0], p[1], prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                guidance_scale=guidance, strength=strength, seed=seed, polarity=polarity, paste_back=paste_back,
                skip_frozen=skip_frozen, metadata={"served_by": "diffdiff serve"},
            )

        out, notes = await _job(service, prepare, work)
        return _png_response(_first_image(out), notes)

    @router.post("/fan", summary="Strength fan: one row of edits at increasing strength",
                 response_class=Response, responses=PNG_RESPONSE)
    async def fan(
        image: UploadFile = File(...),
        prompt: str = Form(...),
        map: Optional[UploadFile] = File(None, description="Optional change map (default: change everywhere)"),
        columns: int = Form(5, ge=1, le=MAX_FAN_COLUMNS),
        min_strength: float = Form(0.0, ge=0.0, le=1.0),
        max_strength: float = Form(1.0, ge=0.0, le=1.0),
        negative_prompt: Optional[str] = Form(None),
        steps: int = Form(30, ge=1, le=500),
        guidance: Optional[float] = Form(None),
        seed: Optional[int] = Form(None),
        polarity: str = Form("change"),
        skip_frozen: bool = Form(True, description="Model only on the columns free at each step (false: full frame)"),
    ) -> Response:
        service.require("fan")
        img_data = await _read(image, "image", service.max_upload_bytes)
        map_data = await _read(map, "map", service.max_upload_bytes, required=False)

        def prepare() -> tuple[Image.Image, Optional[Image.Image]]:
            from ..changemap import prepare_change_map
            from ..request import validate_edit_params

            validate_edit_params(prompt, steps, guidance, max_strength, 1, polarity, seed)
            if min_strength > max_strength:
                raise DiffDiffError(f"min_strength ({min_strength}) is above max_strength ({max_strength})")
            img = service.decode(img_data, "image")  # type: ignore[arg-type]
            cmap = service.decode(map_data, "map") if map_data is not None else None
            if cmap is not None:
                prepare_change_map(cmap, img.size, polarity)  # type: ignore[arg-type]
            return img, cmap

        def work(ed: Any, p: tuple[Image.Image, Optional[Image.Image]]) -> Any:
            kw: dict[str, Any] = {"negative_prompt": negative_prompt or None, "num_inference_steps": steps,
                                  "guidance_scale": guidance, "seed": seed, "polarity": polarity,
                                  "skip_frozen": skip_frozen}
            return ed.fan(p[0], prompt, columns=columns, min_strength=min_strength, max_strength=max_strength,
                          change_map=p[1], **kw)

        out, notes = await _job(service, prepare, work)
        img = _first_image(out)
        meta = img.info.get("diffdiff") or {
            "prompt": prompt, "negative_prompt": negative_prompt, "columns": columns, "min_strength": min_strength,
            "max_strength": max_strength, "steps": steps, "guidance": guidance, "seed": seed, "kind": "fan",
        }
        return _png_response(img, notes, meta)

    @router.post("/auto-map", summary="Change map from source/target prompts (DiffEdit-style)",
                 response_class=Response, responses=PNG_RESPONSE)
    async def auto_map(
        image: UploadFile = File(...),
        source_prompt: str = Form(..., description="What the image shows now"),
        target_prompt: str = Form(..., description="What it should show"),
        num_maps: int = Form(10, ge=1, le=MAX_AUTO_MAPS),
        encode_strength: float = Form(0.5, gt=0.0, le=1.0),
        seed: Optional[int] = Form(None),
    ) -> Response:
        service.require("auto_map")
        img_data = await _read(image, "image", service.max_upload_bytes)

        def prepare() -> Image.Image:
            if seed is not None and not 0 <= seed < 2**63:
                raise DiffDiffError(f"seed must be a non-negative integer, got {seed}")
            return service.decode(img_data, "image")  # type: ignore[arg-type]

        def work(ed: Any, img: Image.Image) -> Any:
            return ed.auto_map(img, source_prompt, target_prompt, num_maps=num_maps,
                               encode_strength=encode_strength, seed=seed)

        out, notes = await _job(service, prepare, work)
        img = _first_image(out)
        meta = img.info.get("diffdiff") or {
            "kind": "auto_map", "source_prompt": source_prompt, "target_prompt": target_prompt,
            "num_maps": num_maps, "encode_strength": encode_strength, "seed": seed,
        }
        return _png_response(img, notes, meta)

    @router.post("/diffedit", summary="DiffEdit: automatic mask from prompts, then a masked edit",
                 response_class=Response, responses=PNG_RESPONSE)
    async def diffedit(
        image: UploadFile = File(...),
        source_prompt: str = Form(...),
        target_prompt: str = Form(...),
        mask: Optional[UploadFile] = File(None, description="Optional mask (default: computed from the prompts)"),
        threshold: float = Form(0.5, ge=0.0, le=1.0),
        steps: int = Form(30, ge=1, le=500),
        seed: Optional[int] = Form(None),
    ) -> Response:
        service.require("diffedit")
        img_data = await _read(image, "image", service.max_upload_bytes)
        mask_data = await _read(mask, "mask", service.max_upload_bytes, required=False)

        def prepare() -> tuple[Image.Image, Optional[Image.Image]]:
            if seed is not None and not 0 <= seed < 2**63:
                raise DiffDiffError(f"seed must be a non-negative integer, got {seed}")
            img = service.decode(img_data, "image")  # type: ignore[arg-type]
            m = service.decode(mask_data, "mask") if mask_data is not None else None
            return img, m

        def work(ed: Any, p: tuple[Image.Image, Optional[Image.Image]]) -> Any:
            return ed.diffedit(p[0], source_prompt, target_prompt, mask=p[1], threshold=threshold,
                               num_inference_steps=steps, seed=seed)

        out, notes = await _job(service, prepare, work)
        return _png_response(_first_image(out), notes)

    return router
