"""The REST API of a server with add-ons loaded agrees with its own schema (schemathesis, in-process).

``tests/test_web_schema.py`` fuzzes a plain model's server. A server with a ControlNet and an
IP-Adapter loaded declares more on ``/api/edit`` (``control_image``, ``control_from``,
``controlnet_scale``, ``ip_adapter_image``) and runs its other operations on a pipeline that has the
add-ons attached; both get the same checks here, from the same hooks (``tests/schemathesis_hooks.py``):
no 5xx, declared status codes and bodies, schema-valid requests accepted, invalid ones refused.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("cv2")  # control_from="canny"

import schemathesis_hooks as hooks  # noqa: E402
from diffdiff import Editor  # noqa: E402
from diffdiff.testing_addons import build_tiny_controlnet, build_tiny_ip_adapter  # noqa: E402
from diffdiff.web import create_app  # noqa: E402

SEED = 16
MAX_EXAMPLES = 12
MAX_STEPS = 4
#: The add-on fields of /api/edit on this server.
ADDON_FIELDS = ("control_image", "control_from", "controlnet_scale", "ip_adapter_image")
PART_NAME = re.compile(rb'Content-Disposition: form-data; name="([^"]+)"')

pytestmark = pytest.mark.filterwarnings("ignore::diffdiff.errors.DiffDiffWarning")


class FieldRecorder:
    """ASGI wrapper counting (method, path, status) of every answer, and (field, status) of the
    multipart fields each ``/api/edit`` request sent: the fuzz must reach the add-on fields."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: Counter[tuple[str, str, int]] = Counter()
        self.edit_fields: Counter[tuple[str, int]] = Counter()

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
                status = message["status"]
                self.seen[(scope["method"], scope["path"], status)] += 1
                if scope["path"] == "/api/edit":
                    for name in {m.decode() for m in PART_NAME.findall(bytes(body))}:
                        self.edit_fields[(name, status)] += 1
            await send(message)

        await self.app(scope, read, record)


@pytest.fixture(scope="module")
def addon_app(tiny_sd_path: Path, tmp_path_factory: pytest.TempPathFactory) -> FieldRecorder:
    folder = tmp_path_factory.mktemp("fuzz-addons")
    net = build_tiny_controlnet(folder / "controlnet", tiny_sd_path)
    ip = build_tiny_ip_adapter(folder / "ip", tiny_sd_path)
    editor = Editor.from_pretrained(tiny_sd_path, controlnet=net, ip_adapter=ip, progress=False)
    side = hooks.MAX_SIDE
    return FieldRecorder(create_app(editor, ui=False, max_pixels=side * side, queue_size=2, max_steps=MAX_STEPS))


@pytest.fixture(scope="module")
def addon_schema(addon_app: FieldRecorder) -> Any:
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "cache": {"enabled": False},
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none", "mode": "all"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
        "checks": {"enabled": True},
    })
    return schemathesis.openapi.from_asgi("/openapi.json", addon_app, config=config)


addon_fuzz = schemathesis.pytest.from_fixture("addon_schema")


@addon_fuzz.parametrize()
def test_every_operation_with_addons_agrees_with_the_schema(case: Any) -> None:
    case.call_and_validate()


def test_debug(addon_app: FieldRecorder) -> None:
    print(sorted(addon_app.seen.items()))
    print(sorted(addon_app.edit_fields.items()))
