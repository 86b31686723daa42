"""Schemathesis hooks for diffdiff's REST API: what a JSON schema cannot tell a request generator.

Used by ``tests/test_web_schema.py``, and by the schemathesis command line against a running
server::

    diffdiff serve --model ... --max-steps 4 --max-pixels 4096 &
    PYTHONPATH=tests SCHEMATHESIS_HOOKS=schemathesis_hooks st run http://127.0.0.1:7860/openapi.json --checks all

Importing this module registers, globally:

* image strategies for ``image/png``, ``image/jpeg`` and ``image/webp``: the file fields declare
  ``image/*`` and the server decodes them, so a generator must send real images. They are square
  (a map then has its image's aspect ratio), 16..64 px (at least a fan's ``columns`` wide; a
  server fuzzed with these needs ``--max-pixels`` of 4096 or more);
* ``filter_case``: positive cases for ``/api/fan`` keep ``min_strength <= max_strength``, the one
  cross-field rule JSON Schema cannot state (the field's description does), and positive cases
  meet their body's own top-level rule (:func:`meets_the_body_rule`);
* ``filter_failure``: drops an "accepted negative data" failure whose every mutation is a type
  change that multipart text undid, and a "rejected positive data" failure that is the pipeline
  refusing a ``pipeline_kwargs`` value of the right type when it runs (see :func:`filter_failure`).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import schemathesis
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from PIL import Image
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.core.transforms import to_wire_text
from schemathesis.openapi.checks import RejectedPositiveData

MAX_SIDE = 64
FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


def encode(side: int, mode: str, seed: int, fmt: str) -> bytes:
    """A ``side`` x ``side`` image of noise in ``mode`` ("L", "RGB", "RGBA"), encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (side, side, channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    if fmt == "JPEG" and mode == "RGBA":
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def image_bytes(fmt: str) -> st.SearchStrategy[bytes]:
    return st.builds(encode, st.integers(16, MAX_SIDE), st.sampled_from(["L", "RGB", "RGBA"]),
                     st.integers(0, 2**16), st.just(fmt))


for _media_type, _fmt in FORMATS.items():
    schemathesis.openapi.media_type(_media_type, image_bytes(_fmt))


def form_schema(raw: dict[str, Any], path: str) -> dict[str, Any]:
    """The multipart body schema of ``POST path`` in the OpenAPI document ``raw`` (empty if none)."""
    body = raw["paths"].get(path, {}).get("post", {}).get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if not body:
        return {}
    return dict(raw["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[-1]])


#: Boolean spellings a form part may use (the fields' descriptions: ``diffdiff.web.api.BOOL_TEXT``).
BOOL_SPELLINGS = {"true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n"}


def _allows_boolean(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "boolean" or any(b.get("type") == "boolean" for b in schema.get("anyOf", []))


def text_is_valid(text: str, schema: dict[str, Any]) -> bool:
    """Whether form text is a valid value of ``schema``, read as a string, a boolean spelling (where
    the field is a boolean) or a JSON literal."""
    validator = Draft202012Validator(schema)
    if validator.is_valid(text):
        return True
    if _allows_boolean(schema) and text.strip().lower() in BOOL_SPELLINGS:
        return True
    try:
        return bool(validator.is_valid(json.loads(text)))
    except ValueError:
        return False


def meets_the_body_rule(case: Any) -> bool:
    """Whether ``case``'s form meets its body's own rule (the top-level ``anyOf`` a served ControlNet
    adds: control_image or control_from, and a Union's control_mode), file parts read as present."""
    rule = form_schema(case.operation.schema.raw_schema, case.path).get("anyOf")
    if not rule or not isinstance(case.body, dict):
        return True
    form = {k: "<file>" if isinstance(v, (bytes, bytearray)) else v for k, v in case.body.items()}
    return bool(Draft202012Validator({"anyOf": rule}).is_valid(form))


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return True
    # Schemathesis 4.32's coverage phase builds a "multipart body with custom encoding" case from the
    # required and file fields alone, without the body's top-level anyOf, and calls it positive: a
    # case the schema itself rejects is not positive data (the server's 422 for it is right).
    if not meets_the_body_rule(case):
        return False
    if case.path != "/api/fan":
        return True
    body = case.body if isinstance(case.body, dict) else {}
    lo, hi = body.get("min_strength", 0.0), body.get("max_strength", 1.0)
    return not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi)


def refused_by_the_pipeline(response: Any) -> bool:
    """A 422 whose error is the pipeline refusing ``pipeline_kwargs`` when it ran."""
    if getattr(response, "status_code", None) != 422:
        return False
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, str) and error.startswith("pipeline_kwargs (") and "the pipeline refused them: " in error


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but a negative case that multipart text made valid again.

    A form part is text: a string field "mutated" to the integer 5 arrives as the text "5", a
    valid string; a number field sent the integer 3 arrives as "3", a valid number; a one-item
    array arrives as one part, the same bytes as its item, an empty one as no part at all; an object arrives as its
    JSON text, a valid string (hypothesis 6.170 sends such a negative_prompt); a string "too long" for the empty-means-
    default branch may spell a valid number. Schemathesis exempts such type changes for query and
    path parameters but not (4.32) for form bodies. A mutation is exempt here only when the text
    actually sent for every mutated field is itself the spelling of a schema-valid value of that
    field (what reaches the server is then a valid request).

    And a positive case the server answered 422 with the pipeline's own refusal of a
    ``pipeline_kwargs`` value (:class:`diffdiff.errors.PipelineArgumentError`): the schema gives
    each argument its annotated type, but only the pipeline knows its range (``clip_skip`` beyond
    the text encoder's layers), as the field's description says.
    """
    if isinstance(failure, RejectedPositiveData):
        return not refused_by_the_pipeline(response)
    if not isinstance(failure, AcceptedNegativeData) or not isinstance(case.body, dict) or case.meta is None:
        return True
    mutations = getattr(case.meta.phase.data, "mutations", None) or []
    schema = form_schema(case.operation.schema.raw_schema, case.path)
    props, required = schema.get("properties", {}), set(schema.get("required", []))
    for m in mutations:
        name = m.schema_pointer.removeprefix("/properties/").split("/", 1)[0]
        if name not in props or name not in case.body:
            return True
        value = case.body[name]
        if isinstance(value, list) and not value and name not in required:
            continue  # an empty array travels as no part at all: the optional field is left out
        if isinstance(value, list) and len(value) == 1:
            value = value[0]  # a one-item array travels as one form part: the same bytes as the item
        # An object travels as its JSON text (one part): a valid string where the field is one.
        if isinstance(value, list) or not text_is_valid(to_wire_text(value), props[name]):
            return True
    return not mutations


class Recorder:
    """ASGI wrapper keeping (method, path, status, request body) of every answer, so a fuzz test can
    show it was not vacuous (it reached the model, the refusals, the fields it must send)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.answers: list[tuple[str, str, int, bytes]] = []

    @property
    def seen(self) -> Counter[tuple[str, str, int]]:
        """(method, path, status) of every answer."""
        return Counter((m, p, st) for m, p, st, _ in self.answers)

    def sent(self, pattern: Any, path: str | None = None) -> Counter[tuple[str, int]]:
        """(path, status) of the requests (to ``path``, if given) whose body matches ``pattern``."""
        return Counter((p, st) for _, p, st, body in self.answers if (path is None or p == path) and pattern.search(body))

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = bytearray()

        async def read() -> Any:
            message = await receive()
            if message.get("type") == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.answers.append((scope["method"], scope["path"], message["status"], bytes(body)))
            await send(message)

        await self.app(scope, read, record)
