"""REST API of ``diffdiff serve`` against a tiny offline SD model.

Most tests use FastAPI's TestClient; the queue test runs a real uvicorn server on 127.0.0.1 so
that requests really overlap and a full queue is seen on the wire as 503 + Retry-After.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from diffdiff import Editor, read_metadata  # noqa: E402
from diffdiff.testing import sample_image  # noqa: E402
from diffdiff.web import create_app  # noqa: E402

STEPS = "4"  # few steps keep each edit well under a second on two CPU cores


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def half_map(width: int, height: int) -> Image.Image:
    """Left half black (keep), right half white (change)."""
    arr = np.zeros((height, width), np.uint8)
    arr[:, width // 2:] = 255
    return Image.fromarray(arr, "L")


def edit_files(img: Image.Image, cmap: Image.Image) -> dict[str, Any]:
    # A hostile file name: it must never be used as a path on the server.
    return {"image": ("../../../etc/passwd", png(img), "image/png"), "map": ("map.png", png(cmap), "image/png")}


def assert_json_error(r: httpx.Response, status: int, needle: str = "") -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg
    assert needle.lower() in msg.lower(), msg
    return msg


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return sample_image(96, 64, seed=5)  # not square: the output must keep the input's size


@pytest.fixture(scope="module")
def client(sd_editor: Editor) -> Iterator[TestClient]:
    app = create_app(sd_editor, max_pixels=128 * 128, queue_size=2, ui=False)
    with TestClient(app) as c:
        yield c


# edit -----------------------------------------------------------------------------------------------
def test_health(client: TestClient) -> None:
    r = client.get("/api/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["family"] == "sd" and body["model_loaded"] is True
    assert body["queue"] == {"running": 0, "waiting": 0, "capacity": 3}
    assert body["max_pixels"] == 128 * 128


def test_edit_returns_png_with_metadata_and_respects_map(client: TestClient, image: Image.Image) -> None:
    data = {"prompt": "a red house", "negative_prompt": "blurry", "steps": STEPS, "guidance": "5",
            "strength": "0.9", "seed": "11", "polarity": "change"}
    r = client.post("/api/edit", files=edit_files(image, half_map(96, 64)), data=data)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-diffdiff-seed"] == "11"
    assert "only 3 denoising steps" in r.headers["x-diffdiff-warning"]  # int(4 x 0.9): the warning travels too
    out = Image.open(io.BytesIO(r.content))
    assert out.format == "PNG" and out.size == (96, 64)
    meta = read_metadata(out)
    assert meta["prompt"] == "a red house" and meta["negative_prompt"] == "blurry"
    assert (meta["seed"], meta["steps"], meta["guidance"], meta["strength"]) == (11, 4, 5.0, 0.9)
    assert meta["served_by"] == "diffdiff serve"
    assert "a red house" in out.info["parameters"]  # the A1111-style text chunk
    # Map = 0 on the left: those pixels come back exactly; the right half was regenerated.
    got, src = np.asarray(out.convert("RGB")), np.asarray(image.convert("RGB"))
    assert np.array_equal(got[:, :40], src[:, :40])
    assert np.abs(got[:, 56:].astype(int) - src[:, 56:]).mean() > 5

    # Same seed, same request: the same bytes (determinism through the API).
    again = client.post("/api/edit", files=edit_files(image, half_map(96, 64)), data=data)
    assert again.content == r.content


def test_edit_keep_polarity_and_defaults(client: TestClient, image: Image.Image) -> None:
    """polarity=keep reads white as keep: the white right half comes back exactly."""
    r = client.post("/api/edit", files=edit_files(image, half_map(96, 64)),
                    data={"prompt": "x", "steps": STEPS, "seed": "1", "polarity": "keep", "guidance": ""})
    assert r.status_code == 200, r.text
    got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    assert np.array_equal(got[:, 56:], np.asarray(image.convert("RGB"))[:, 56:])
    assert read_metadata(Image.open(io.BytesIO(r.content)))["polarity"] == "keep"


def test_edit_and_fan_skip_frozen_fields(client: TestClient, image: Image.Image) -> None:
    r = client.post("/api/edit", files=edit_files(image, half_map(96, 64)),
                    data={"prompt": "x", "steps": STEPS, "seed": "2", "skip_frozen": "true"})
    assert r.status_code == 200, r.text
    assert read_metadata(Image.open(io.BytesIO(r.content)))["skip_frozen"] is True
    r = client.post("/api/fan", files={"image": ("a.png", png(image), "image/png")},
                    data={"prompt": "x", "columns": "3", "steps": STEPS, "seed": "3"})
    assert r.status_code == 200, r.text
    assert read_metadata(Image.open(io.BytesIO(r.content)))["skip_frozen"] is True  # the fan's default
    r = client.post("/api/fan", files={"image": ("a.png", png(image), "image/png")},
                    data={"prompt": "x", "columns": "3", "steps": STEPS, "seed": "3", "skip_frozen": "false"})
    assert read_metadata(Image.open(io.BytesIO(r.content)))["skip_frozen"] is False


@pytest.mark.parametrize(("text", "value"), [("1", True), ("Yes", True), ("on", True), ("0", False), ("off", False),
                                            ("F", False)])
def test_boolean_fields_take_the_spellings_the_schema_names(client: TestClient, image: Image.Image, text: str,
                                                            value: bool) -> None:
    """Each boolean field's description lists its form spellings (``BOOL_TEXT``); the server reads them so."""
    from diffdiff.web.api import BOOL_TEXT

    schema = client.get("/openapi.json").json()
    props = next(c["properties"] for c in schema["components"]["schemas"].values() if "skip_frozen" in c.get("properties", {}))
    assert BOOL_TEXT in props["skip_frozen"]["description"]
    r = client.post("/api/edit", files=edit_files(image, half_map(96, 64)),
                    data={"prompt": "x", "steps": STEPS, "seed": "2", "skip_frozen": text})
    assert r.status_code == 200, r.text
    assert read_metadata(Image.open(io.BytesIO(r.content)))["skip_frozen"] is value


# bad requests -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"steps": "abc"}, "steps"),
        ({"steps": "0"}, "steps"),
        ({"strength": "1.5"}, "strength"),
        ({"guidance": "-2"}, "guidance"),
        ({"seed": "-1"}, "seed"),
        ({"polarity": "sideways"}, "polarity"),
        ({"prompt": None}, "prompt"),
    ],
)
def test_bad_fields_are_422(client: TestClient, image: Image.Image, fields: dict[str, Any], needle: str) -> None:
    data = {"prompt": "x", "steps": STEPS}
    data.update(fields)
    data = {k: v for k, v in data.items() if v is not None}
    assert_json_error(client.post("/api/edit", files=edit_files(image, half_map(96, 64)), data=data), 422, needle)


def test_bad_uploads_are_422_and_server_keeps_serving(client: TestClient, image: Image.Image) -> None:
    good_map = png(half_map(96, 64))
    cases = [
        ({"image": ("a.png", b"definitely not an image", "image/png"), "map": ("m.png", good_map)}, "not a readable image"),
        ({"image": ("a.png", png(image)[:200], "image/png"), "map": ("m.png", good_map)}, "image"),  # truncated
        ({"image": ("a.png", b"", "image/png"), "map": ("m.png", good_map)}, "empty"),
        ({"image": ("a.png", png(image))}, "map"),  # missing map
        ({"image": ("a.png", png(image)), "map": ("m.png", png(half_map(64, 64)))}, "aspect"),
    ]
    for files, needle in cases:
        assert_json_error(client.post("/api/edit", files=files, data={"prompt": "x", "steps": STEPS}), 422, needle)
    assert client.get("/api/health").json()["queue"]["running"] == 0
    r = client.post("/api/edit", files=edit_files(image, half_map(96, 64)), data={"prompt": "x", "steps": STEPS})
    assert r.status_code == 200


def test_oversize_is_413_before_decoding(client: TestClient) -> None:
    big = Image.new("RGB", (129, 128))  # one column above the 128x128 limit
    r = client.post("/api/edit", files=edit_files(big, Image.new("L", (129, 128))), data={"prompt": "x"})
    assert_json_error(r, 413, "limit")
    # A 4000x4000 PNG compresses to a few KB: refused from its header, in well under a second.
    bomb = Image.new("L", (4000, 4000))
    t = time.perf_counter()
    r = client.post("/api/edit", files=edit_files(Image.new("RGB", (64, 64)), bomb), data={"prompt": "x"})
    assert_json_error(r, 413, "map is 4000x4000")
    assert time.perf_counter() - t < 2.0
    assert client.get("/api/health").status_code == 200


def test_request_body_limit_is_413(sd_editor: Editor, image: Image.Image) -> None:
    app = create_app(sd_editor, ui=False, max_upload_bytes=10_000)
    with TestClient(app) as c:
        noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
        r = c.post("/api/edit", files=edit_files(noise, Image.new("L", (200, 200))), data={"prompt": "x"})
        assert_json_error(r, 413)


def test_model_failure_is_500_json_and_server_survives(sd_editor: Editor, image: Image.Image) -> None:
    class Broken:
        model_name, family = "broken", "sd"

        def edit(self, *a: Any, **k: Any) -> Any:
            raise RuntimeError("CUDA error: device-side assert\nsecond line")

        edit_with = edit  # the REST API builds one EditRequest and calls edit_with

    with TestClient(create_app(Broken(), ui=False), raise_server_exceptions=False) as c:
        msg = assert_json_error(c.post("/api/edit", files=edit_files(image, half_map(96, 64)), data={"prompt": "x"}),
                                500, "RuntimeError")
        assert "second line" not in msg
        assert c.get("/api/health").json()["queue"] == {"running": 0, "waiting": 0, "capacity": 5}
        assert_json_error(c.post("/api/fan", files={"image": ("a.png", png(image))}, data={"prompt": "x"}),
                          501, "Editor.fan")


def test_lazy_loader(sd_editor: Editor, image: Image.Image) -> None:
    calls: list[int] = []

    def loader() -> Editor:
        calls.append(1)
        return sd_editor

    with TestClient(create_app(loader, ui=False)) as c:
        assert c.get("/api/health").json()["model_loaded"] is False
        for _ in range(2):
            r = c.post("/api/edit", files=edit_files(image, half_map(96, 64)), data={"prompt": "x", "steps": STEPS})
            assert r.status_code == 200
        assert calls == [1] and c.get("/api/health").json()["model_loaded"] is True


# fan and auto map -------------------------------------------------------------------------------------
def test_fan(client: TestClient, image: Image.Image) -> None:
    if not callable(getattr(Editor, "fan", None)):
        pytest.skip("Editor.fan is not in this diffdiff yet (issue #4)")
    r = client.post("/api/fan", files={"image": ("a.png", png(image), "image/png")},
                    data={"prompt": "a red house", "columns": "3", "min_strength": "0", "max_strength": "1",
                          "steps": STEPS, "seed": "3"})
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(r.content))
    assert out.format == "PNG" and out.size == (96, 64)
    assert read_metadata(out)  # parameters recorded
    # The first band runs at strength 0: byte-exact input there.
    got, src = np.asarray(out.convert("RGB")), np.asarray(image.convert("RGB"))
    assert np.array_equal(got[:, :30], src[:, :30])
    assert_json_error(client.post("/api/fan", files={"image": ("a.png", png(image))},
                                  data={"prompt": "x", "columns": "99"}), 422, "columns")
    assert_json_error(client.post("/api/fan", files={"image": ("a.png", png(image))},
                                  data={"prompt": "x", "min_strength": "0.8", "max_strength": "0.2"}), 422, "min_strength")


def test_auto_map(client: TestClient, image: Image.Image) -> None:
    if not callable(getattr(Editor, "auto_map", None)):
        pytest.skip("Editor.auto_map is not in this diffdiff yet (issue #5)")
    r = client.post("/api/auto-map", files={"image": ("a.png", png(image), "image/png")},
                    data={"source_prompt": "a bowl of apples", "target_prompt": "a bowl of pears", "num_maps": "2",
                          "seed": "0"})
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(r.content))
    assert out.format == "PNG" and out.size == (96, 64) and out.mode == "L"
    assert_json_error(client.post("/api/auto-map", files={"image": ("a.png", png(image))},
                                  data={"source_prompt": "a", "target_prompt": "b", "num_maps": "0"}), 422, "num_maps")


def test_auto_map_defaults_are_the_librarys(client: TestClient, image: Image.Image) -> None:
    """/api/auto-map's defaults (schema and run) are diffdiff.mapsettings', as the CLI's and the editor's are."""
    from diffdiff.mapsettings import MAP_ENCODE_STRENGTH, MAP_NUM_MAPS

    body = client.get("/openapi.json").json()["paths"]["/api/auto-map"]["post"]["requestBody"]
    ref = body["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    props = client.get("/openapi.json").json()["components"]["schemas"][ref]["properties"]
    assert props["encode_strength"]["default"] == MAP_ENCODE_STRENGTH and props["num_maps"]["default"] == MAP_NUM_MAPS
    r = client.post("/api/auto-map", files={"image": ("a.png", png(image), "image/png")},
                    data={"source_prompt": "a bowl of apples", "target_prompt": "a bowl of pears", "seed": "0"})
    assert r.status_code == 200, r.text
    meta = read_metadata(Image.open(io.BytesIO(r.content)))
    assert meta["encode_strength"] == MAP_ENCODE_STRENGTH and meta["num_maps"] == MAP_NUM_MAPS


def test_diffedit(client: TestClient, image: Image.Image) -> None:
    if not callable(getattr(Editor, "diffedit", None)):
        pytest.skip("Editor.diffedit is not in this diffdiff yet (issue #5)")
    mask = png(half_map(96, 64))  # given mask: white (right half) = edit
    r = client.post("/api/diffedit", files={"image": ("a.png", png(image), "image/png"), "mask": ("m.png", mask)},
                    data={"source_prompt": "a bowl of apples", "target_prompt": "a bowl of pears", "steps": STEPS,
                          "seed": "0"})
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(r.content))
    assert out.format == "PNG" and out.size == (96, 64)
    # Outside the mask the input comes back exactly.
    assert np.array_equal(np.asarray(out.convert("RGB"))[:, :40], np.asarray(image.convert("RGB"))[:, :40])


def test_openapi_schema_documents_the_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/api/health", "/api/edit", "/api/fan", "/api/auto-map"):
        assert path in schema["paths"], path
    edit = schema["paths"]["/api/edit"]["post"]
    assert "image/png" in edit["responses"]["200"]["content"]
    body_ref = edit["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    fields = schema["components"]["schemas"][body_ref]["properties"]
    assert {"image", "map", "prompt", "negative_prompt", "steps", "guidance", "strength", "seed", "polarity"} <= set(fields)
    assert client.get("/docs").status_code == 200


def test_ui_is_mounted_at_root(sd_editor: Editor) -> None:
    pytest.importorskip("gradio")
    with TestClient(create_app(sd_editor, ui=True)) as c:
        r = c.get("/")
        assert r.status_code == 200 and "<html" in r.text.lower()
        config = c.get("/config").json()
        ids = {comp.get("props", {}).get("elem_id") for comp in config["components"]}
        assert {"dd-canvas", "dd-gradient", "dd-run", "dd-gallery", "dd-preview"} <= ids
        assert c.get("/api/health").status_code == 200  # the API still answers beside the UI


# the queue --------------------------------------------------------------------------------------------
class GatedEditor:
    """The tiny editor, but each edit waits for ``gate``: lets a test hold the worker busy."""

    def __init__(self, inner: Editor) -> None:
        self.inner = inner
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def edit(self, *a: Any, **k: Any) -> Any:
        assert self.gate.wait(30), "test never opened the gate"
        return self.inner.edit(*a, **k)

    def edit_with(self, *a: Any, **k: Any) -> Any:  # what the REST API calls (one EditRequest)
        assert self.gate.wait(30), "test never opened the gate"
        return self.inner.edit_with(*a, **k)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def live_gated(sd_editor: Editor) -> Iterator[tuple[str, GatedEditor, Any]]:
    gated = GatedEditor(sd_editor)
    app = create_app(gated, queue_size=1, ui=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", gated, app.state.service
    finally:
        gated.gate.set()
        server.should_exit = True
        thread.join(10)


def wait_for(cond: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_full_queue_gives_503_retry_after_then_recovers(live_gated: tuple[str, GatedEditor, Any], image: Image.Image) -> None:
    base, gated, service = live_gated
    data = {"prompt": "x", "steps": STEPS, "seed": "2"}
    results: dict[str, httpx.Response] = {}

    def post(name: str) -> None:
        results[name] = httpx.post(f"{base}/api/edit", files=edit_files(image, half_map(96, 64)), data=data, timeout=60)

    running = threading.Thread(target=post, args=("running",))
    running.start()
    wait_for(lambda: service.stats()["running"] == 1, "the first job to hold the worker")
    waiting = threading.Thread(target=post, args=("waiting",))
    waiting.start()
    wait_for(lambda: service.stats()["waiting"] == 1, "the second job to queue")

    # Queue (1 running + 1 waiting) is full: refused at once, with a hint, on an intact connection.
    t = time.perf_counter()
    r = httpx.post(f"{base}/api/edit", files=edit_files(image, half_map(96, 64)), data=data, timeout=10)
    assert time.perf_counter() - t < 5
    assert_json_error(r, 503, "busy")
    assert int(r.headers["retry-after"]) >= 1
    # The event loop is not blocked by the model: health answers while the worker is busy.
    h = httpx.get(f"{base}/api/health", timeout=5).json()
    assert h["queue"] == {"running": 1, "waiting": 1, "capacity": 2}

    gated.gate.set()
    running.join(60)
    waiting.join(60)
    assert results["running"].status_code == 200 and results["waiting"].status_code == 200
    # Requests were processed in turn: identical inputs and seed, identical outputs.
    assert results["running"].content == results["waiting"].content
    assert json.loads(Image.open(io.BytesIO(results["waiting"].content)).info["diffdiff"])["seed"] == 2

    wait_for(lambda: service.stats() == {"running": 0, "waiting": 0, "capacity": 2}, "the queue to drain")
    again = httpx.post(f"{base}/api/edit", files=edit_files(image, half_map(96, 64)), data=data, timeout=60)
    assert again.status_code == 200


# the command ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--port", "0"], "--port"), (["--queue-size", "-1"], "--queue-size"), (["--max-pixels", "0"], "--max-pixels"),
     (["--max-steps", "1"], "--max-steps")],
)
def test_serve_rejects_bad_options_before_loading(args: list[str], needle: str) -> None:
    from typer.testing import CliRunner

    from diffdiff.cli import app

    # A model path that does not exist: the option error must come first, as one line.
    result = CliRunner().invoke(app, ["serve", "--model", "/nonexistent/model", *args])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and needle in lines[-1], result.output


def test_serve_help_documents_defaults() -> None:
    from typer.testing import CliRunner

    from diffdiff.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--model", "--host", "--port", "--max-pixels", "--queue-size", "--max-steps", "--no-ui"):
        assert option in result.output
    assert "127.0.0.1" in result.output


# the contract: what the schema says is what the server does (issue 16) -----------------------------
def test_empty_prompt_is_an_unconditional_edit_but_a_missing_one_is_422(client: TestClient, image: Image.Image) -> None:
    r = client.post("/api/edit", files=edit_files(image, half_map(96, 64)), data={"prompt": "", "steps": STEPS, "seed": "4"})
    assert r.status_code == 200, r.text
    assert read_metadata(Image.open(io.BytesIO(r.content)))["prompt"] == ""
    r = client.post("/api/auto-map", files={"image": ("a.png", png(image))},
                    data={"source_prompt": "", "target_prompt": "", "num_maps": "1", "seed": "0"})
    assert r.status_code == 200, r.text
    assert_json_error(client.post("/api/auto-map", files={"image": ("a.png", png(image))},
                                  data={"source_prompt": ""}), 422, "target_prompt: Field required")
    schema = client.get("/openapi.json").json()
    for path, names in (("/api/edit", {"prompt"}), ("/api/diffedit", {"source_prompt", "target_prompt"})):
        ref = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        body = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        assert names <= set(body["required"])
        assert all(body["properties"][n]["type"] == "string" and "minLength" not in body["properties"][n] for n in names)


def test_a_field_sent_twice_is_422(client: TestClient, image: Image.Image) -> None:
    files = [("image", ("a.png", png(image))), ("map", ("m.png", png(half_map(96, 64)))),
             ("prompt", (None, "a")), ("prompt", (None, "b"))]
    assert_json_error(client.post("/api/edit", files=files, data={"steps": STEPS}), 422, "prompt: sent 2 times")


def test_schema_declares_ranges_enums_and_errors(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    comps = schema["components"]["schemas"]

    def body(path: str) -> dict[str, Any]:
        ref = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        return comps[ref.rsplit("/", 1)[-1]]["properties"]

    def core(prop: dict[str, Any]) -> dict[str, Any]:  # the non-empty branch of an optional field
        return prop["anyOf"][0] if "anyOf" in prop else prop

    edit = body("/api/edit")
    assert (core(edit["steps"])["minimum"], core(edit["steps"])["maximum"]) == (1, 500)
    assert (core(edit["strength"])["minimum"], core(edit["strength"])["maximum"]) == (0, 1)
    assert core(edit["polarity"])["enum"] == ["change", "keep"]
    assert core(edit["seed"])["minimum"] == 0 and isinstance(core(edit["seed"])["maximum"], int)
    assert edit["image"]["type"] == "string" and "contentMediaType" in edit["image"]
    # No field may be null on the wire (multipart cannot carry it); an empty value means the default.
    # (pipeline_kwargs is JSON text: a null inside its object is a JSON value, not a form field's.)
    assert "null" not in json.dumps({k: v for k, v in edit.items() if k != "pipeline_kwargs"})
    assert core(body("/api/diffedit")["steps"])["minimum"] == 2
    assert core(body("/api/diffedit")["threshold"])["exclusiveMaximum"] == 1
    for path in ("/api/edit", "/api/fan", "/api/auto-map", "/api/diffedit"):
        op = schema["paths"][path]["post"]
        assert {"200", "413", "422", "501", "503"} <= set(op["responses"]), path
        for code in ("413", "422", "501", "503"):
            assert op["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
        assert op["responses"]["503"]["headers"]["Retry-After"]["required"] is True
        assert op["requestBody"]["content"]["multipart/form-data"]["encoding"]["image"]["contentType"] == "image/*"


def test_max_steps_is_the_schema_maximum_and_enforced(sd_editor: Editor, image: Image.Image) -> None:
    with TestClient(create_app(sd_editor, ui=False, max_steps=6)) as c:
        schema = c.get("/openapi.json").json()
        ref = schema["paths"]["/api/edit"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        assert schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]["steps"]["anyOf"][0]["maximum"] == 6
        assert c.get("/api/health").json()["max_steps"] == 6
        assert_json_error(c.post("/api/edit", files=edit_files(image, half_map(96, 64)), data={"prompt": "x", "steps": "7"}),
                          422, "steps")
        assert c.post("/api/edit", files=edit_files(image, half_map(96, 64)), data={"prompt": "x", "steps": "6"}).status_code == 200


@pytest.mark.parametrize("ui", [False, True])
def test_undeclared_method_is_405_with_allow_and_unknown_path_404(sd_editor: Editor, ui: bool) -> None:
    if ui:
        pytest.importorskip("gradio")
    with TestClient(create_app(sd_editor, ui=ui)) as c:
        for method, path, allow in (("TRACE", "/api/edit", "POST"), ("GET", "/api/fan", "POST"),
                                    ("DELETE", "/api/health", "GET"), ("PUT", "/api/diffedit", "POST")):
            r = c.request(method, path)
            assert_json_error(r, 405, method)
            assert r.headers["allow"] == allow
        assert_json_error(c.get("/api/nothing-here"), 404, "/api/nothing-here")
        assert c.get("/api/health").status_code == 200


@pytest.fixture(scope="module")
def sd3_editor(tmp_path_factory: pytest.TempPathFactory) -> Editor:
    from diffdiff.testing import build_tiny_sd3

    return Editor.from_pretrained(build_tiny_sd3(tmp_path_factory.mktemp("sd3") / "tiny-sd3"), progress=False)


def test_operation_the_family_lacks_is_501(sd3_editor: Editor, image: Image.Image) -> None:
    """DiffEdit and auto maps need an SD/SDXL denoiser: on SD3 they are 501, and health says so."""
    with TestClient(create_app(sd3_editor, ui=False)) as c:
        assert c.get("/api/health").json()["features"] == {"edit": True, "fan": True, "auto_map": False, "diffedit": False}
        files = {"image": ("a.png", png(image))}
        prompts = {"source_prompt": "a", "target_prompt": "b", "seed": "0"}
        assert_json_error(c.post("/api/auto-map", files=files, data={**prompts, "num_maps": "1"}), 501, "sd3")
        assert_json_error(c.post("/api/diffedit", files=files, data={**prompts, "steps": "2"}), 501, "sd3")
        r = c.post("/api/edit", files=edit_files(image, half_map(96, 64)), data={"prompt": "x", "steps": "2", "seed": "1"})
        assert r.status_code == 200, r.text


# the command without the web extra --------------------------------------------------------------
#: Run in ONE fresh interpreter (importing the CLI costs seconds): per case, a sys.meta_path finder
#: makes the listed modules unimportable (and drops them from sys.modules), then `diffdiff serve` runs.
WITHOUT_EXTRA = """
import contextlib, io, json, sys
from importlib.abc import MetaPathFinder

blocked = set()

class Blocker(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
from diffdiff.cli import app

results = []
for names, args in CASES:
    blocked.clear()
    blocked.update(names)
    for loaded in [m for m in sys.modules if m.split(".")[0] in blocked]:
        del sys.modules[loaded]  # imported by an earlier case (or by fastapi itself): gone now
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            # Without standalone mode click returns the exit code of typer.Exit instead of exiting.
            code = app(["serve", "--model", "/nonexistent/model", *args], standalone_mode=False) or 0
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:
            code = repr(exc)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""

EXTRA_CASES: list[tuple[list[str], list[str], str]] = [
    (["fastapi"], [], "fastapi is missing"),
    (["uvicorn"], ["--no-ui"], "uvicorn is missing"),
    (["python_multipart", "multipart"], [], "python_multipart is missing"),
    (["gradio"], [], "or serve the API alone with --no-ui"),
    (["gradio"], ["--no-ui"], ""),  # the API alone needs no Gradio: gets as far as the model path
]


@pytest.fixture(scope="module")
def without_extra() -> list[tuple[Any, str]]:
    import subprocess
    import sys

    cases = [[names, args] for names, args, _ in EXTRA_CASES]
    code = f"CASES = {cases!r}\n" + WITHOUT_EXTRA
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


@pytest.mark.parametrize("index", range(len(EXTRA_CASES) - 1))
def test_serve_without_the_web_extra_says_how_to_install_it(without_extra: list[tuple[Any, str]], index: int) -> None:
    code, stderr = without_extra[index]
    needle = EXTRA_CASES[index][2]
    assert code == 1, (code, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr  # one line, no traceback, before any model loading
    assert lines[0].startswith("error: ") and 'pip install "diffdiff[web]"' in lines[0] and needle in lines[0], lines


def test_serve_api_only_needs_no_gradio(without_extra: list[tuple[Any, str]]) -> None:
    code, stderr = without_extra[-1]
    assert code == 1, (code, stderr)
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "/nonexistent/model" in last and "diffdiff[web]" not in last, stderr


def test_broken_multipart_is_400_and_seed_range_is_the_schemas(client: TestClient, image: Image.Image) -> None:
    r = client.post("/api/edit", content=b"--xyz\r\nContent-Disposition: form-da",
                    headers={"content-type": "multipart/form-data"})  # no boundary: unparsable
    assert_json_error(r, 400, "boundary")
    r = client.post("/api/edit", content=b"--xyz\r\nContent-Disposition: form-da",
                    headers={"content-type": "multipart/form-data; boundary=xyz"})  # cut short: no fields
    assert_json_error(r, 422, "image: Field required")
    # Seeds go up to 2**53 - 1, the largest integer every JSON client holds exactly; the schema says so.
    top = 2**53 - 1
    ok = client.post("/api/edit", files=edit_files(image, half_map(96, 64)), data={"prompt": "x", "steps": STEPS, "seed": str(top)})
    assert ok.status_code == 200 and ok.headers["x-diffdiff-seed"] == str(top)
    assert_json_error(client.post("/api/edit", files=edit_files(image, half_map(96, 64)),
                                  data={"prompt": "x", "steps": STEPS, "seed": str(top + 1)}), 422, "seed")
    schema = client.get("/openapi.json").json()
    ref = schema["paths"]["/api/edit"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    assert schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]["seed"]["anyOf"][0]["maximum"] == top


def test_readme_limits_are_the_schemas_and_the_servers(client: TestClient, image: Image.Image) -> None:
    """The limits the README states: schema bounds, and the server refusing just past them."""
    schema = client.get("/openapi.json").json()

    def props(path: str) -> dict[str, Any]:
        ref = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]

    edit, fan = props("/api/edit"), props("/api/fan")
    assert (edit["guidance"]["anyOf"][0]["minimum"], edit["guidance"]["anyOf"][0]["maximum"]) == (0, 100)
    assert edit["prompt"]["maxLength"] == 10_000 and props("/api/diffedit")["source_prompt"]["maxLength"] == 10_000
    for name in ("min_strength", "max_strength"):
        assert (fan[name]["anyOf"][0]["minimum"], fan[name]["anyOf"][0]["maximum"]) == (0, 1)
    files = edit_files(image, half_map(96, 64))
    assert_json_error(client.post("/api/edit", files=files, data={"prompt": "x" * 10_001}), 422, "prompt")
    assert_json_error(client.post("/api/edit", files=files, data={"prompt": "x", "guidance": "100.5"}), 422, "guidance")
    # An optional field sent empty takes its default.
    r = client.post("/api/edit", files=files, data={"prompt": "x", "steps": STEPS, "polarity": "", "strength": "", "seed": "3"})
    assert r.status_code == 200, r.text
    meta = read_metadata(Image.open(io.BytesIO(r.content)))
    assert (meta["polarity"], meta["strength"]) == ("change", 1.0)
    # A fan needs an image at least `columns` pixels wide.
    narrow = png(sample_image(8, 64, seed=1))
    assert_json_error(client.post("/api/fan", files={"image": ("a.png", narrow)}, data={"prompt": "x", "columns": "9"}),
                      422, "too narrow")
    assert client.post("/api/fan", files={"image": ("a.png", narrow)},
                       data={"prompt": "x", "columns": "8", "steps": STEPS}).status_code == 200


@pytest.mark.parametrize("size", [(1, 1), (16, 1), (1, 16)])
def test_fan_of_a_one_pixel_row_or_column(client: TestClient, size: tuple[int, int]) -> None:
    """Schema-valid, so it must work: the fan's band map of a 1-pixel-tall image stays 2-D."""
    r = client.post("/api/fan", files={"image": ("a.png", png(sample_image(*size, seed=1)))},
                    data={"prompt": "x", "columns": "1", "steps": STEPS, "seed": "1"})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == size
