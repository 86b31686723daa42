"""The REST API: ``/api/health``, ``/api/edit``, ``/api/fan``, ``/api/auto-map``, ``/api/diffedit``.

This module owns the API's contract: every field's type and range is declared once, on the
endpoint's parameters, and FastAPI both validates requests and writes the OpenAPI schema from
those declarations; :func:`install_openapi` then describes the form fields as they travel (text
parts: no ``null``, empty = the default). Error responses are declared too. ``tests/test_web_schema.py``
fuzzes the running app from its own schema (schemathesis) to keep schema and server in step: a
new field joins the fuzz by being declared here, a new file field with ``openapi_extra=_files(...)``.

Uploads are decoded in memory; filenames the client sends are ignored, so nothing it sends becomes
a path on the server. Every error is JSON ``{"error": "<one line>"}``: 400 for a malformed
multipart body, 404 for an unknown ``/api`` path, 405 + ``Allow`` for an undeclared method, 413
for oversize input, 422 for bad fields or images, 501 for an operation the loaded model's family
lacks, 503 + ``Retry-After`` when the queue is full. Add-on fields (ControlNet, IP-Adapter, per-request LoRA
scales, on ``/edit`` and ``/fan``) are declared only for what the served model has loaded
(``reference_images``, a repeated file field on ``/edit``, only for a model that takes them), a
served IP-Adapter's image as required and a ControlNet's "control_image or control_from" (and a
ControlNet Union's ``control_mode`` with a control image) as the body's rule; an operation the loaded model cannot run is not published (it answers 501); ``pipeline_kwargs`` (extra arguments for
the diffusers call, JSON text) is declared as the object it carries, from the served pipeline's signature
(:mod:`.pipeargs`). Model work runs in a worker thread, so the
event loop keeps answering (health, other clients' 503s) while a job runs.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional

import anyio
from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from PIL import Image
from pydantic import BaseModel, BeforeValidator, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import __version__
from ..addon_inputs import UNION_MODES
from ..changemap import prepare_change_map
from ..errors import DiffDiffError, DiffDiffWarning, UnsupportedFeatureError
from ..lora import MAX_CALL_SCALE, lora_names, parse_scale_overrides, scale_list_pattern, scaled_loras, with_scales
from ..mapsettings import MAP_ENCODE_STRENGTH, MAP_NUM_MAPS
from ..request import EditRequest, validate_edit_params
from .pipeargs import DESCRIPTION as PIPELINE_KWARGS_HELP
from .pipeargs import PipelineArguments
from .service import MAX_REFERENCE_IMAGES, EditService, QueueFull, TooLarge, png_bytes

MAX_FAN_COLUMNS = 16
MAX_AUTO_MAPS = 64
#: Longest prompt accepted, in characters (CLIP reads 77 tokens; the rest only lands in the metadata).
MAX_PROMPT_CHARS = 10_000
#: Guidance above this is refused: far past any useful value (7.5 is typical), it only saturates the image.
MAX_GUIDANCE = 100.0
#: 2**53 - 1: the largest integer every JSON client (JavaScript's numbers) holds exactly.
MAX_SEED = 2**53 - 1
#: What file fields may carry: any image format Pillow reads (PNG, JPEG, WebP, BMP, TIFF, ...).
IMAGE_MEDIA_TYPES = "image/*"


class ErrorBody(BaseModel):
    """Every error response's body."""

    error: str = Field(description="What was wrong, in one line")


class QueueState(BaseModel):
    running: int = Field(ge=0, le=1, description="Jobs on the model now (0 or 1)")
    waiting: int = Field(ge=0, description="Jobs admitted and waiting for the model")
    capacity: int = Field(ge=1, description="Running + waiting jobs admitted before 503")


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    model: Optional[str] = Field(description="The model's name, once loaded")
    family: Optional[str] = Field(description="Model family (sd, sdxl, sd3, flux, ...), once loaded")
    model_loaded: bool
    queue: QueueState
    max_pixels: int = Field(ge=1, description="Larger images get 413")
    max_upload_bytes: int = Field(ge=1, description="Larger uploads get 413")
    max_steps: int = Field(ge=2, description="The most inference steps one request may ask for")
    features: dict[str, bool] = Field(description="Operation name -> whether the loaded model can run it")


def _error_response(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error_response("malformed multipart body"),
    413: _error_response("image above the pixel limit, or upload above the byte limit"),
    422: _error_response("bad field, unreadable image, or map of another aspect ratio than the image"),
    500: _error_response("the model failed (the server keeps serving)"),
    501: _error_response("the loaded model's family cannot run this operation (see features in /api/health)"),
    503: {
        **_error_response("queue full: retry after the number of seconds in Retry-After"),
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying (an estimate)",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    },
    507: _error_response("out of memory: try a smaller image"),
}

PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "description": "PNG with diffdiff's metadata text chunks",
        "headers": {
            "X-DiffDiff-Seed": {"description": "The seed used (recorded in the PNG too)", "schema": {"type": "string"}},
            "X-DiffDiff-Warning": {"description": "Warnings about the run, ' | '-separated", "schema": {"type": "string"}},
        },
    },
    **ERROR_RESPONSES,
}

#: Text fields that must be present but may be empty (an empty prompt is an unconditional edit).
#: FastAPI reads an empty form value as a missing one, so they are declared with a "" default, the
#: handler checks their presence, and :func:`install_openapi` marks them required in the schema.
REQUIRED_TEXT: dict[str, tuple[str, ...]] = {
    "/api/edit": ("prompt",),
    "/api/fan": ("prompt",),
    "/api/auto-map": ("source_prompt", "target_prompt"),
    "/api/diffedit": ("source_prompt", "target_prompt"),
}


def _files(*names: str) -> dict[str, Any]:
    """``openapi_extra`` declaring which media types the file fields carry."""
    encoding = {n: {"contentType": IMAGE_MEDIA_TYPES} for n in names}
    return {"requestBody": {"content": {"multipart/form-data": {"encoding": encoding}}}}


def _text(description: str) -> Any:
    return Form("", description=description + " (may be empty)", max_length=MAX_PROMPT_CHARS)


def _seed() -> Any:
    return Form(None, ge=0, le=MAX_SEED, description="Random seed [default: random]; recorded in the PNG metadata")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "form")]
        parts.append(f"{'.'.join(loc) or 'request'}: {e.get('msg', 'invalid')}")
    return " ".join("; ".join(parts).split()) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QueueFull)
    async def _busy(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TooLarge)
    async def _large(request: Request, exc: TooLarge) -> JSONResponse:
        return _error(413, str(exc))

    @app.exception_handler(UnsupportedFeatureError)
    async def _unsupported(request: Request, exc: UnsupportedFeatureError) -> JSONResponse:
        return _error(501, str(exc))

    @app.exception_handler(DiffDiffError)
    async def _user(request: Request, exc: DiffDiffError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _fields(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, " ".join(str(exc.detail).split()), getattr(exc, "headers", None))

    @app.exception_handler(MemoryError)
    async def _oom(request: Request, exc: MemoryError) -> JSONResponse:
        return _error(507, "out of memory; try a smaller image")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # A model failure must not take the server down; say what broke in one line.
        first = (str(exc).strip().splitlines() or ["unexpected failure"])[0]
        return _error(500, f"{type(exc).__name__}: {first}")


def limit_body_size(app: FastAPI, service: EditService) -> None:
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


def guard_api_paths(app: FastAPI, router: APIRouter) -> None:
    """Under ``/api``: 405 + ``Allow`` for an undeclared method, JSON 404 for an unknown path.

    Starlette does this by itself, but the UI is mounted at ``/`` and a mount matches every path,
    so without this guard ``TRACE /api/edit`` would reach Gradio and answer its 404.
    """

    @app.middleware("http")
    async def _guard(request: Request, call_next: Callable[[Request], Any]) -> Any:
        if not request.url.path.startswith("/api/"):
            return await call_next(request)
        allowed: set[str] = set()
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            match, _ = route.matches(request.scope)
            if match is Match.FULL:
                return await call_next(request)
            if match is Match.PARTIAL:
                allowed |= route.methods
        if allowed:
            allow = ", ".join(sorted(allowed))
            return _error(405, f"{request.method} is not allowed on {request.url.path}; use {allow}", {"Allow": allow})
        return _error(404, f"no endpoint {request.url.path}; see /docs for the API")


#: How an empty form value reads: FastAPI takes it as "not sent", so the field gets its default.
EMPTY_MEANS_DEFAULT = {"type": "string", "maxLength": 0, "description": "empty: the default"}


#: How a boolean form part may be spelled (pydantic's reading of text as a boolean, case-insensitive).
BOOL_TEXT = "Form text: true / false (also 1 / 0, yes / no, on / off, t / f, y / n)."


def _form_property(prop: dict[str, Any], required: bool) -> dict[str, Any]:
    """A multipart field's schema as it travels on the wire.

    A form part is text and cannot carry JSON ``null``: an optional field is left out, or sent
    empty, for its default; the ``null`` branch goes and an optional non-text field (a number, a
    boolean, an enum) gains an empty-string branch. FastAPI writes every bound as a float (500.0):
    integers get them back as ints.
    """
    branches = prop.get("anyOf")
    if branches is not None:
        kept = [b for b in branches if b.get("type") != "null"]
        rest = {k: v for k, v in prop.items() if k != "anyOf"}
        prop = {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}
    if prop.get("type") == "integer":
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if isinstance(prop.get(key), float) and prop[key].is_integer():
                prop[key] = int(prop[key])
    if prop.get("type") == "boolean":
        prop["description"] = (prop.get("description", "") + " " + BOOL_TEXT).strip()
    is_text = prop.get("type") == "string" and "enum" not in prop and "const" not in prop  # a one-value Literal: const
    if not required and not is_text and "anyOf" not in prop:
        meta = {k: prop.pop(k) for k in ("title", "description", "default") if k in prop}
        prop = {"anyOf": [prop, EMPTY_MEANS_DEFAULT], **meta}
    return prop


#: ``json_schema_extra`` key of a text field that carries JSON: its value is the schema published for it.
JSON_TEXT = "x-diffdiff-json-text"


def _json_field(args: PipelineArguments) -> Any:
    """The ``pipeline_kwargs`` form field: JSON text, published as the object it spells (:mod:`.pipeargs`)."""
    return Form(None, description=PIPELINE_KWARGS_HELP, json_schema_extra={JSON_TEXT: args.schema()})


def install_openapi(app: FastAPI) -> None:
    """Finish the generated schema so it says what the server accepts on the wire.

    The may-be-empty text fields of :data:`REQUIRED_TEXT` are required; form fields are
    described as they travel, as text (:func:`_form_property`); a field carrying JSON text
    (``json_schema_extra={JSON_TEXT: schema}``) is published as the value it spells (a JSON
    object part, as OpenAPI sends an object property of a multipart body).
    """

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = FastAPI.openapi(app)
        if fresh:
            components = schema.get("components", {}).get("schemas", {})
            for path, item in schema["paths"].items():
                body = item.get("post", {}).get("requestBody", {}).get("content", {}).get("multipart/form-data")
                if not path.startswith("/api/") or body is None:
                    continue
                component = components[body["schema"]["$ref"].rsplit("/", 1)[-1]]
                component.update(item["post"].pop(FORM_RULE, {}))  # the fields' joint rule, on the body
                props = component["properties"]
                names = REQUIRED_TEXT.get(path, ())
                component["required"] = sorted(set(component.get("required", [])) | set(names))
                for name in props:
                    carried = props[name].pop(JSON_TEXT, None)
                    if carried is not None:  # JSON text on the wire: publish the value's own schema
                        meta = {k: props[name][k] for k in ("title", "description") if k in props[name]}
                        props[name] = {**carried, **meta}
                    props[name] = _form_property(props[name], name in component["required"])
                for name in names:
                    props[name].pop("default", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _present(request: Request, names: tuple[str, ...], repeatable: tuple[str, ...] = ()) -> None:
    """422 for a field sent more than once (but ``repeatable`` ones), or a required text field not sent at all (empty is fine)."""
    form = await request.form()  # already parsed by FastAPI: this returns the cached form
    route = request.scope["route"]
    declared = {field.alias for field in route.dependant.body_params}
    counts: dict[str, int] = {}
    for key, _ in form.multi_items():
        if key in declared:  # other fields are ignored (the schema allows them)
            counts[key] = counts.get(key, 0) + 1
    repeated = [f"{k}: sent {n} times, expected one value" for k, n in counts.items() if n > 1 and k not in repeatable]
    missing = [f"{n}: Field required" for n in names if n not in counts]
    if repeated or missing:
        raise DiffDiffError("; ".join(repeated + missing))


async def _read(upload: Optional[UploadFile], what: str, limit: int, required: bool = True) -> Optional[bytes]:
    if upload is None:
        if required:
            raise DiffDiffError(f"{what} is required (multipart file field)")
        return None
    # One byte past the limit is enough for decode() to report an oversize upload.
    return await upload.read(limit + 1)


def _method(editor: Any, name: str) -> Callable[..., Any]:
    fn = getattr(editor, name, None)
    if not callable(fn):
        raise UnsupportedFeatureError(f"the loaded editor has no Editor.{name}")
    return fn  # type: ignore[no-any-return]


async def _job(service: EditService, prepare: Callable[[], Any], work: Callable[[Any, Any], Any]) -> tuple[Any, list[str]]:
    """Admit (or 503), then in a worker thread: ``prepare()`` outside the lock, ``work`` inside it."""
    with service.ticket():

        def run() -> tuple[Any, list[str]]:
            prepared = prepare()

            def locked(editor: Any) -> tuple[Any, list[str]]:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    out = work(editor, prepared)
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
        text = " ".join(" | ".join(notes).split())
        headers["X-DiffDiff-Warning"] = text.encode("latin-1", "replace").decode("latin-1")
    return Response(png_bytes(img, meta), media_type="image/png", headers=headers)


def _first_image(out: Any) -> Image.Image:
    if isinstance(out, Image.Image):
        return out
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], Image.Image):
        return out[0]
    raise DiffDiffError(f"the editor returned {type(out).__name__}, not an image")


#: The add-on fields of /api/edit and /api/fan, by the add-on of the served model that takes them.
ADDON_FIELDS = {"control_image": "controlnets", "control_from": "controlnets", "controlnet_scale": "controlnets",
                "control_mode": "union", "ip_adapter_image": "ip_adapter", "lora": "loras"}
#: What each kind of add-on is called in messages.
ADDON_NAMES = {"controlnets": "ControlNet", "union": "ControlNet Union", "ip_adapter": "IP-Adapter", "loras": "LoRA"}

# The add-on fields /api/edit and /api/fan share (declared once; each operation keeps the served ones).
ControlImage = Annotated[Optional[UploadFile], File(description="ControlNet control image, the image's aspect ratio "
                                                                "(or control_from; one of the two)")]
ControlFrom = Annotated[Optional[Literal["canny"]], Form(description="Derive the control image from the input instead "
                                                                     "(or control_image; one of the two)")]
ControlScale = Annotated[Optional[float], Form(ge=0, le=10, allow_inf_nan=False,
                                               description="ControlNet conditioning scale [default: 1.0]")]
CONTROL_MODE_HELP = "ControlNet Union's control type (required with control_image; with control_from it defaults to that)"
ControlMode = Annotated[Optional[Literal[tuple(UNION_MODES)]], Form(description=CONTROL_MODE_HELP)]  # type: ignore[valid-type]
IP_ADAPTER_IMAGE_HELP = "IP-Adapter reference image (required: this server's model has an IP-Adapter loaded)"
IpAdapterImage = Annotated[Optional[UploadFile], File(description=IP_ADAPTER_IMAGE_HELP)]

#: ``openapi_extra`` key of the body-level rule of an operation's form (merged into its schema by
#: :func:`install_openapi`): what relates several fields, which no one field's schema can say.
FORM_RULE = "x-diffdiff-form-rule"


def _control_rule(union: Optional[list[str]]) -> dict[str, Any]:
    """With a ControlNet served: a control image, or control_from (non-empty), and not both; a ControlNet
    Union's control image also needs its control_mode, one of ``union`` (control_from names one itself)."""
    image: dict[str, Any] = {"required": ["control_image"], "properties": {"control_from": {"type": "string", "maxLength": 0}}}
    if union is not None:
        image = {"required": ["control_image", "control_mode"],
                 "properties": {**image["properties"], "control_mode": {"enum": union}}}
    derived = {"required": ["control_from"], "properties": {"control_from": {"enum": ["canny"]}, "control_image": False}}
    return {"anyOf": [image, derived]}


def _serve_addon_fields(endpoint: Callable[..., Any], served: set[str], files: list[str],
                        modes: Optional[list[str]] = None) -> dict[str, Any]:
    """Keep ``endpoint``'s add-on parameters for what the served model has loaded (the others leave its
    signature, so FastAPI neither reads nor documents them); a served IP-Adapter makes its image
    required, a served ControlNet Union's ``modes`` are control_mode's values. Returns the operation's
    ``openapi_extra``: ``files``' media types, and the ControlNet's one-of-two rule when one is served."""
    signature = inspect.signature(endpoint)
    params = []
    for p in signature.parameters.values():
        if p.name in ADDON_FIELDS and p.name not in served:
            continue
        if p.name == "ip_adapter_image":  # every edit on this model needs its reference image
            p = p.replace(annotation=UploadFile, default=File(..., description=IP_ADAPTER_IMAGE_HELP))
        if p.name == "control_mode" and modes is not None:  # the modes this Union was trained with
            p = p.replace(annotation=Annotated[Optional[Literal[tuple(modes)]], Form(description=CONTROL_MODE_HELP)])
        params.append(p)
    endpoint.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    extra = _files(*files, *sorted(f for f in served if f.endswith("_image") and f in signature.parameters))
    if "control_from" in served:
        extra[FORM_RULE] = _control_rule(modes if "control_mode" in served else None)
    return extra


async def _addon_uploads(request: Request, served: set[str], service: EditService,
                         control_image: Optional[UploadFile],
                         ip_adapter_image: Optional[UploadFile]) -> tuple[Optional[bytes], Optional[bytes]]:
    """422 for an add-on field (:data:`ADDON_FIELDS`) that the served model has not loaded; the control
    and IP-Adapter image bytes."""
    form = await request.form()
    unserved = sorted(set(ADDON_FIELDS) & set(form.keys()) - served)
    if unserved:  # the fields exist (and are documented) only for a served model with that add-on
        raise DiffDiffError(f"{', '.join(unserved)}: this server's model has no "
                            f"{ADDON_NAMES[ADDON_FIELDS[unserved[0]]]} loaded")
    control = await _read(control_image, "control image", service.max_upload_bytes, required=False)
    ip = await _read(ip_adapter_image, "IP-Adapter image", service.max_upload_bytes, required=False)
    return control, ip


def _decode_addon_images(service: EditService, control: Optional[bytes], ip: Optional[bytes]) -> dict[str, Any]:
    """The decoded add-on images of a request, as :class:`~diffdiff.request.EditRequest` fields."""
    images: dict[str, Any] = {}
    if control:
        images["control_image"] = service.decode(control, "control image")
    if ip:
        images["ip_adapter_image"] = service.decode(ip, "IP-Adapter image")
    return images


def _served_addon_fields(service: EditService) -> set[str]:
    """The add-on fields of the model this server was given (none for a lazily loaded one)."""
    addons = getattr(service._editor, "addons", None)
    return {name for name, kind in ADDON_FIELDS.items() if addons is not None and getattr(addons, kind)
            and (kind != "loras" or lora_names(addons.loras))}


def _lora_field(names: list[str]) -> Any:
    """The ``lora`` form field of /api/edit and /api/fan: per-request scales of the loaded LoRAs ``names``."""
    description = (f"Per-request LoRA scales: NAME:SCALE, comma-separated, and the field may be repeated; NAME is one "
                   f"of {', '.join(names) or 'none'}, SCALE a decimal number from -{MAX_CALL_SCALE:g} to "
                   f"{MAX_CALL_SCALE:g}; a LoRA named twice takes its last scale, one not named keeps its load-time scale")
    return Form(None, description=description, json_schema_extra={"pattern": scale_list_pattern(names)})


async def _lora_scales(request: Request, served: set[str], loras: list[dict[str, Any]]) -> dict[int, float]:
    """A request's LoRA scales, {LoRA index: scale}: every value of its repeatable ``lora`` field, checked
    (FastAPI keeps one of them); none where the served model has no LoRAs."""
    if "lora" not in served:
        return {}
    form = await request.form()
    return parse_scale_overrides([v for v in form.getlist("lora") if isinstance(v, str)], loras)


def _lora_metadata(loras: list[dict[str, Any]], scales: dict[int, float]) -> dict[str, Any]:
    """What the PNG metadata records of a request's LoRA scales (nothing when it sets none)."""
    return {"lora": with_scales(loras, scales)} if scales else {}


def _at_scales(editor: Any, loras: list[dict[str, Any]], scales: dict[int, float], run: Callable[[], Any]) -> Any:
    """``run()`` with the request's LoRA scales set (the caller holds the model), the load-time ones back after."""
    if not scales:
        return run()
    with scaled_loras(editor.pipe, loras, scales):
        return run()


def _served_loras(service: EditService) -> list[dict[str, Any]]:
    """The metadata records of the LoRAs the served model has loaded (load order)."""
    return list(getattr(getattr(service._editor, "addons", None), "loras", None) or [])


async def _read_references(form: Any, limit: int) -> list[bytes]:
    """Every ``reference_images`` part of the form, read like the other uploads (at most
    :data:`MAX_REFERENCE_IMAGES`, each a file part; an empty part is none, as for every optional field)."""
    parts = _no_empty_parts(form.getlist("reference_images")) or []
    if any(isinstance(v, str) for v in parts):
        raise DiffDiffError("reference_images: expected image files (multipart file parts), got text")
    if len(parts) > MAX_REFERENCE_IMAGES:
        raise DiffDiffError(f"reference_images: {len(parts)} files sent, at most {MAX_REFERENCE_IMAGES} on this server")
    return [data for v in parts if (data := await _read(v, "reference image", limit)) is not None]


def _no_empty_parts(parts: Any) -> Any:
    """A repeated form field's parts without the empty ones (an empty part takes the default, none)."""
    if not isinstance(parts, list):
        return parts
    return [p for p in parts if not (isinstance(p, str) and p == "")] or None


def build_router(service: EditService) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["diffdiff"])
    max_steps = service.max_steps
    steps_help = f"Inference steps (at most {max_steps} on this server)"

    @router.get("/health", summary="Liveness, model and queue state", response_model=Health,
                responses={500: ERROR_RESPONSES[500]})
    async def health() -> Health:
        ed = service._editor
        return Health(
            status="ok", version=__version__, model=getattr(ed, "model_name", None),
            family=getattr(ed, "family", None), model_loaded=service.loaded, queue=QueueState(**service.stats()),
            max_pixels=service.max_pixels, max_upload_bytes=service.max_upload_bytes, max_steps=max_steps,
            features=service.features(),
        )

    served = _served_addon_fields(service)
    modes = service.union_modes() if "control_mode" in served else None
    extra_args = PipelineArguments(getattr(service._editor, "pipe", None))
    loras = _served_loras(service)
    names = sorted(lora_names(loras))

    async def edit(
        request: Request,
        image: UploadFile = File(..., description="Image to edit (any format Pillow reads)"),
        map: UploadFile = File(..., description="Change map, the image's aspect ratio: greyscale, white = change (see polarity)"),
        prompt: str = _text("What the edited image should show"),
        negative_prompt: Optional[str] = Form(None, max_length=MAX_PROMPT_CHARS),
        steps: int = Form(30, ge=1, le=max_steps, description=steps_help),
        guidance: Optional[float] = Form(None, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False,
                                         description="Classifier-free guidance [default: the model's]"),
        strength: float = Form(1.0, ge=0, le=1, allow_inf_nan=False, description="Maximum strength, where the map is white"),
        seed: Optional[int] = _seed(),
        polarity: Literal["change", "keep"] = Form("change", description="'change': white = change; 'keep': white = keep"),
        paste_back: bool = Form(True, description="Copy map = 0 pixels back exactly"),
        skip_frozen: bool = Form(False, description="Run the model each step only where pixels are free (faster)"),
        control_image: ControlImage = None,
        control_from: ControlFrom = None,
        controlnet_scale: ControlScale = None,
        control_mode: ControlMode = None,
        ip_adapter_image: IpAdapterImage = None,
        reference_images: Annotated[Optional[list[UploadFile]], BeforeValidator(_no_empty_parts), File(
            description="Extra reference images after the input, for instruction-edit models that take several "
            "(Qwen-Image-Edit-Plus); repeat the file field for each",
            json_schema_extra={"maxItems": MAX_REFERENCE_IMAGES})] = None,  # counted in _read_references
        lora: Optional[str] = _lora_field(names),
        pipeline_kwargs: Optional[str] = _json_field(extra_args),
    ) -> Response:
        await _present(request, REQUIRED_TEXT["/api/edit"], repeatable=("lora", "reference_images"))
        control_data, ip_data = await _addon_uploads(request, served, service, control_image,
                                                     ip_adapter_image)
        form = await request.form()
        lora_scales = await _lora_scales(request, served, loras)
        img_data = await _read(image, "image", service.max_upload_bytes)
        map_data = await _read(map, "map", service.max_upload_bytes)
        # Read from the form whether or not the field is declared: a model that takes none refuses them itself.
        ref_data = await _read_references(form, service.max_upload_bytes)

        def prepare() -> tuple[Image.Image, Image.Image, EditRequest]:
            edit_request = EditRequest(
                prompt=prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                guidance_scale=guidance, strength=strength, seed=seed, polarity=polarity, paste_back=paste_back,
                skip_frozen=skip_frozen, metadata={"served_by": "diffdiff serve"},
                control_from=control_from or None, controlnet_conditioning_scale=controlnet_scale,
                control_mode=control_mode or None,
                pipeline_kwargs=extra_args.parse(pipeline_kwargs),
            )
            img = service.decode(img_data, "image")  # type: ignore[arg-type]
            cmap = service.decode(map_data, "map")  # type: ignore[arg-type]
            prepare_change_map(cmap, img.size, polarity)  # aspect check before queueing on the model
            # Add-on and reference images (checked against the served model in the edit).
            addon_images = _decode_addon_images(service, control_data, ip_data)
            if ref_data:  # the library checks the model takes them and records them in the metadata
                # Plain images, as the CLI's open_image gives: recorded alike, "<Image (w, h)>".
                addon_images["reference_images"] = [service.decode(d, f"reference image {i}").copy()
                                                    for i, d in enumerate(ref_data, 1)]
            if lora_scales:  # the metadata records the scales this request ran with
                edit_request = edit_request.with_metadata(_lora_metadata(loras, lora_scales))
            return img, cmap, edit_request.replace(**addon_images) if addon_images else edit_request

        def work(ed: Any, p: tuple[Image.Image, Image.Image, EditRequest]) -> Any:
            # Per-request LoRA scales: set for this edit only (we hold the model), restored after it.
            return _at_scales(ed, loras, lora_scales, lambda: _method(ed, "edit_with")(p[0], p[1], p[2]))

        out, notes = await _job(service, prepare, work)
        return _png_response(_first_image(out), notes)

    # The add-on fields are part of the operation (and its schema) only for what the served model has
    # loaded, reference_images only for a model that takes them.
    references = ["reference_images"] if service.takes_references() else []
    if not references:
        signature = inspect.signature(edit)
        edit.__signature__ = signature.replace(parameters=[  # type: ignore[attr-defined]
            p for p in signature.parameters.values() if p.name != "reference_images"])
    router.post("/edit", summary="Differential Diffusion edit", response_class=Response, responses=PNG_RESPONSE,
                openapi_extra=_serve_addon_fields(edit, served, ["image", "map", *references], modes))(edit)

    async def fan(
        request: Request,
        image: UploadFile = File(..., description="Image (at least `columns` pixels wide)"),
        prompt: str = _text("What the edited image should show"),
        map: Optional[UploadFile] = File(None, description="Optional change map, the image's aspect ratio (default: change everywhere)"),
        columns: int = Form(5, ge=1, le=MAX_FAN_COLUMNS),
        min_strength: float = Form(0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="Leftmost column's strength (<= max_strength)"),
        max_strength: float = Form(1.0, ge=0.0, le=1.0, allow_inf_nan=False, description="Rightmost column's strength"),
        negative_prompt: Optional[str] = Form(None, max_length=MAX_PROMPT_CHARS),
        steps: int = Form(30, ge=1, le=max_steps, description=steps_help),
        guidance: Optional[float] = Form(None, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False),
        seed: Optional[int] = _seed(),
        polarity: Literal["change", "keep"] = Form("change"),
        skip_frozen: bool = Form(True, description="Model only on the columns free at each step (false: full frame)"),
        control_image: ControlImage = None,
        control_from: ControlFrom = None,
        controlnet_scale: ControlScale = None,
        control_mode: ControlMode = None,
        ip_adapter_image: IpAdapterImage = None,
        lora: Optional[str] = _lora_field(names),
        pipeline_kwargs: Optional[str] = _json_field(extra_args),
    ) -> Response:
        await _present(request, REQUIRED_TEXT["/api/fan"], repeatable=("lora",))
        control_data, ip_data = await _addon_uploads(request, served, service, control_image,
                                                     ip_adapter_image)
        lora_scales = await _lora_scales(request, served, loras)
        img_data = await _read(image, "image", service.max_upload_bytes)
        map_data = await _read(map, "map", service.max_upload_bytes, required=False)

        def prepare() -> tuple[Image.Image, Optional[Image.Image], dict[str, Any], dict[str, Any]]:
            validate_edit_params(prompt, steps, guidance, max_strength, 1, polarity, seed)
            extra = extra_args.parse(pipeline_kwargs)
            if min_strength > max_strength:
                raise DiffDiffError(f"min_strength ({min_strength}) is above max_strength ({max_strength})")
            img = service.decode(img_data, "image")  # type: ignore[arg-type]
            if img.size[0] < columns:
                raise DiffDiffError(f"the image is {img.size[0]} px wide: too narrow for {columns} columns")
            cmap = service.decode(map_data, "map") if map_data is not None else None
            if cmap is not None:
                prepare_change_map(cmap, img.size, polarity)
            addons = _decode_addon_images(service, control_data, ip_data)  # what the served add-ons take
            addons.update(control_from=control_from or None, controlnet_conditioning_scale=controlnet_scale,
                          control_mode=control_mode or None)
            return img, cmap, extra, {k: v for k, v in addons.items() if v is not None}

        def work(ed: Any, p: tuple[Image.Image, Optional[Image.Image], dict[str, Any], dict[str, Any]]) -> Any:
            kw: dict[str, Any] = {"negative_prompt": negative_prompt or None, "num_inference_steps": steps,
                                  "guidance_scale": guidance, "seed": seed, "polarity": polarity,
                                  "skip_frozen": skip_frozen, **p[3]}
            if p[2]:
                kw["pipeline_kwargs"] = p[2]
            if lora_scales:  # the metadata records the scales this request ran with
                kw["metadata"] = _lora_metadata(loras, lora_scales)
            return _at_scales(ed, loras, lora_scales, lambda: _method(ed, "fan")(
                p[0], prompt, columns=columns, min_strength=min_strength, max_strength=max_strength,
                change_map=p[1], **kw))

        out, notes = await _job(service, prepare, work)
        img = _first_image(out)
        meta = img.info.get("diffdiff") or {
            "prompt": prompt, "negative_prompt": negative_prompt, "columns": columns, "min_strength": min_strength,
            "max_strength": max_strength, "steps": steps, "guidance": guidance, "seed": seed, "kind": "fan",
        }
        return _png_response(img, notes, meta)

    router.post("/fan", summary="Strength fan: one row of edits at increasing strength", response_class=Response,
                responses=PNG_RESPONSE, openapi_extra=_serve_addon_fields(fan, served, ["image", "map"], modes))(fan)
    # An operation the loaded model cannot run answers 501 (features in /api/health say so) but is not
    # published: every schema-valid request would fail.
    features = service.features()

    @router.post("/auto-map", summary="Change map from source/target prompts (DiffEdit-style)",
                 response_class=Response, responses=PNG_RESPONSE, openapi_extra=_files("image"),
                 include_in_schema=features["auto_map"])
    async def auto_map(
        request: Request,
        image: UploadFile = File(..., description="Image (any format Pillow reads)"),
        source_prompt: str = _text("What the image shows now"),
        target_prompt: str = _text("What it should show"),
        num_maps: int = Form(MAP_NUM_MAPS, ge=1, le=MAX_AUTO_MAPS, description="Noise draws averaged"),
        encode_strength: float = Form(MAP_ENCODE_STRENGTH, gt=0.0, le=1.0, allow_inf_nan=False),
        seed: Optional[int] = _seed(),
    ) -> Response:
        await _present(request, REQUIRED_TEXT["/api/auto-map"])
        img_data = await _read(image, "image", service.max_upload_bytes)

        def prepare() -> Image.Image:
            return service.decode(img_data, "image")  # type: ignore[arg-type]

        def work(ed: Any, img: Image.Image) -> Any:
            return _method(ed, "auto_map")(img, source_prompt, target_prompt, num_maps=num_maps,
                                           encode_strength=encode_strength, seed=seed)

        out, notes = await _job(service, prepare, work)
        img = _first_image(out)
        meta = img.info.get("diffdiff") or {
            "kind": "auto_map", "source_prompt": source_prompt, "target_prompt": target_prompt,
            "num_maps": num_maps, "encode_strength": encode_strength, "seed": seed,
        }
        return _png_response(img, notes, meta)

    @router.post("/diffedit", summary="DiffEdit: automatic mask from prompts, then a masked edit",
                 response_class=Response, responses=PNG_RESPONSE, openapi_extra=_files("image", "mask"),
                 include_in_schema=features["diffedit"])
    async def diffedit(
        request: Request,
        image: UploadFile = File(..., description="Image (any format Pillow reads)"),
        source_prompt: str = _text("What the image shows now"),
        target_prompt: str = _text("What it should show"),
        mask: Optional[UploadFile] = File(None, description="Optional mask, the image's aspect ratio (default: computed from the prompts)"),
        threshold: float = Form(0.5, ge=0.0, lt=1.0, allow_inf_nan=False, description="Auto mask: where the map is above this"),
        steps: int = Form(30, ge=2, le=max_steps, description=steps_help + "; half of them are inverted, so at least 2"),
        seed: Optional[int] = _seed(),
    ) -> Response:
        await _present(request, REQUIRED_TEXT["/api/diffedit"])
        img_data = await _read(image, "image", service.max_upload_bytes)
        mask_data = await _read(mask, "mask", service.max_upload_bytes, required=False)

        def prepare() -> tuple[Image.Image, Optional[Image.Image]]:
            img = service.decode(img_data, "image")  # type: ignore[arg-type]
            m = service.decode(mask_data, "mask") if mask_data is not None else None
            return img, m

        def work(ed: Any, p: tuple[Image.Image, Optional[Image.Image]]) -> Any:
            return _method(ed, "diffedit")(p[0], source_prompt, target_prompt, mask=p[1], threshold=threshold,
                                           num_inference_steps=steps, seed=seed)

        out, notes = await _job(service, prepare, work)
        return _png_response(_first_image(out), notes)

    return router
