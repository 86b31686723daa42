"""The REST API of a server with add-ons loaded agrees with its own schema (schemathesis, in-process).

``tests/test_web_schema.py`` fuzzes a plain model's server (and one with LoRAs). A server with a
ControlNet, an IP-Adapter or a ControlNet Union loaded declares more on ``/api/edit`` and
``/api/fan`` (``control_image``, ``control_from``, ``controlnet_scale``, ``control_mode``,
``ip_adapter_image``, and the body's rule relating them) and runs on the pipeline the add-on
switched to; each of the three servers gets the same checks as the plain one, from the same hooks
(``tests/schemathesis_hooks.py``): no 5xx, declared status codes and bodies, schema-valid requests
accepted, invalid ones refused, undeclared methods 405. Below the fuzz, one focused test per bug it
found, with expected values checked independently (jsonschema on the published schema, image
hashes, the Python API's own result).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("cv2")  # control_from="canny"

from fastapi.testclient import TestClient  # noqa: E402

import schemathesis_hooks as hooks  # noqa: E402
from diffdiff import Editor  # noqa: E402
from diffdiff.addon_inputs import UNION_MODES  # noqa: E402
from diffdiff.errors import DiffDiffError, UnsupportedFeatureError  # noqa: E402
from diffdiff.io import image_sha256, read_metadata  # noqa: E402
from diffdiff.testing import sample_image  # noqa: E402
from diffdiff.web import create_app  # noqa: E402

SEED = 16
#: Examples per operation: the three fuzzes take about 20 s on two cores.
MAX_EXAMPLES = 25
UNION_EXAMPLES = 20  # the SDXL ControlNet Union server (an SDXL model: a little slower per edit)
MAX_STEPS = 4

pytestmark = pytest.mark.filterwarnings("ignore::diffdiff.errors.DiffDiffWarning")


def serve(editor: Editor) -> hooks.Recorder:
    side = hooks.MAX_SIDE
    return hooks.Recorder(create_app(editor, ui=False, max_pixels=side * side, queue_size=2, max_steps=MAX_STEPS))


def fuzz_schema(app: hooks.Recorder, examples: int = MAX_EXAMPLES) -> Any:
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "cache": {"enabled": False},
        "generation": {"max-examples": examples, "database": "none", "mode": "all"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
        "checks": {"enabled": True},
    })
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


@pytest.fixture(scope="module")
def controlnet_editor(tiny_sd_path: Path, controlnet_path: Path) -> Editor:
    return Editor.from_pretrained(tiny_sd_path, controlnet=controlnet_path, progress=False)


@pytest.fixture(scope="module")
def ip_editor(tiny_sd_path: Path, ip_weights: Path) -> Editor:
    return Editor.from_pretrained(tiny_sd_path, ip_adapter=ip_weights, progress=False)


@pytest.fixture(scope="module")
def union_editor(tiny_sdxl_path: Path, union_controlnet_path: Path) -> Editor:
    return Editor.from_pretrained(tiny_sdxl_path, controlnet=union_controlnet_path, progress=False)


@pytest.fixture(scope="module")
def controlnet_app(controlnet_editor: Editor) -> hooks.Recorder:
    return serve(controlnet_editor)


@pytest.fixture(scope="module")
def ip_app(ip_editor: Editor) -> hooks.Recorder:
    return serve(ip_editor)


@pytest.fixture(scope="module")
def union_app(union_editor: Editor) -> hooks.Recorder:
    return serve(union_editor)


@pytest.fixture(scope="module")
def union_schema(union_app: hooks.Recorder) -> Any:
    return fuzz_schema(union_app, UNION_EXAMPLES)


@pytest.fixture(scope="module")
def controlnet_schema(controlnet_app: hooks.Recorder) -> Any:
    return fuzz_schema(controlnet_app)


@pytest.fixture(scope="module")
def ip_schema(ip_app: hooks.Recorder) -> Any:
    return fuzz_schema(ip_app)


controlnet_fuzz = schemathesis.pytest.from_fixture("controlnet_schema")
ip_fuzz = schemathesis.pytest.from_fixture("ip_schema")
union_fuzz = schemathesis.pytest.from_fixture("union_schema")


@controlnet_fuzz.parametrize()
def test_a_controlnet_server_agrees_with_its_schema(case: Any) -> None:
    """/api/edit and /api/fan declare control_image, control_from and controlnet_scale (one of the first
    two, the body's rule); auto-map and DiffEdit, which the sd-controlnet family cannot run, are not published."""
    case.call_and_validate()


@ip_fuzz.parametrize()
def test_an_ip_adapter_server_agrees_with_its_schema(case: Any) -> None:
    """/api/edit and /api/fan require ip_adapter_image; auto-map and DiffEdit, which cannot take the image
    prompt, are not published."""
    case.call_and_validate()


@union_fuzz.parametrize()
def test_a_controlnet_union_server_agrees_with_its_schema(case: Any) -> None:
    """An SDXL ControlNet Union server: /api/edit and /api/fan declare control_mode too, required with a
    control image (the body's rule)."""
    case.call_and_validate()


def test_the_addon_fuzz_reached_the_model_and_the_refusals(controlnet_app: hooks.Recorder, ip_app: hooks.Recorder,
                                                            union_app: hooks.Recorder) -> None:
    """Runs after the fuzzes: /api/edit and /api/fan answered 200 (the model ran with its add-on) and 422 on
    every server, each add-on field was sent, no 5xx. (Which fields the accepted and the refused requests
    carried varies with the hypothesis version and its example database, so the per-field outcomes are
    asserted by the regression tests below, not here.)"""
    if not (controlnet_app.seen and ip_app.seen and union_app.seen):
        pytest.skip("the add-on fuzz did not run in this session (deselected)")
    for app, fields in ((controlnet_app, ("control_image", "control_from", "controlnet_scale")),
                        (ip_app, ("ip_adapter_image",)), (union_app, ("control_image", "control_mode"))):
        for path in ("/api/edit", "/api/fan"):
            statuses = {st for (m, p, st) in app.seen if (m, p) == ("POST", path)}
            assert {200, 422} <= statuses, (path, statuses)
        for name in fields:
            field = re.compile(rb'Content-Disposition: form-data; name="' + name.encode() + rb'"')
            assert app.sent(field), (name, app.seen)
        assert not any(st >= 500 for (_, _, st) in app.seen), app.seen


# ---------------------------------------------------------------- regression tests of what the fuzz found
def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


IMAGE, CONTROL, REFERENCE = sample_image(32, 32, seed=3), sample_image(32, 32, seed=7), sample_image(24, 24, seed=9)
MAP = Image.fromarray(np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1)), "L")


def body_schema(client: TestClient, path: str) -> dict[str, Any]:
    return hooks.form_schema(client.get("/openapi.json").json(), path)


def post(client: TestClient, path: str, data: dict[str, str], **images: Image.Image) -> Any:
    files = {name: (f"{name}.png", png(img), "image/png") for name, img in images.items()}
    return client.post(path, files=files, data=data)


EDIT = {"prompt": "a fox", "steps": "2", "seed": "5"}
FAN = {"prompt": "a fox", "steps": "2", "seed": "5", "columns": "2"}


def test_a_served_ip_adapter_makes_its_image_required(ip_editor: Editor) -> None:
    """Found by the fuzz: ``ip_adapter_image`` was optional in the schema, but every edit without it was 422."""
    with TestClient(create_app(ip_editor, ui=False)) as c:
        for path, data, images in (("/api/edit", EDIT, {"image": IMAGE, "map": MAP}), ("/api/fan", FAN, {"image": IMAGE})):
            assert "ip_adapter_image" in body_schema(c, path)["required"], path
            r = post(c, path, data, **images)
            assert r.status_code == 422 and "ip_adapter_image" in r.json()["error"], (path, r.text)
            ok = post(c, path, data, **images, ip_adapter_image=REFERENCE)
            assert ok.status_code == 200, (path, ok.text)
            meta = read_metadata(Image.open(io.BytesIO(ok.content)))
            assert meta["ip_adapter_image_sha256"] == image_sha256(REFERENCE), path


@pytest.mark.parametrize("path", ["/api/edit", "/api/fan"])
def test_a_served_controlnet_publishes_its_one_of_two_rule(controlnet_editor: Editor, path: str) -> None:
    """Found by the fuzz: control_image and control_from were both optional in the schema, but an edit needs
    exactly one of them. The body's schema now says so, and the server agrees with it case by case."""
    data, images = (EDIT, {"image": IMAGE, "map": MAP}) if path == "/api/edit" else (FAN, {"image": IMAGE})
    with TestClient(create_app(controlnet_editor, ui=False)) as c:
        validator = Draft202012Validator(body_schema(c, path))
        cases = {  # (form text, upload a control image?) -> valid
            "neither": ({}, False, False), "the image": ({}, True, True), "canny": ({"control_from": "canny"}, False, True),
            "both": ({"control_from": "canny"}, True, False), "empty control_from + image": ({"control_from": ""}, True, True),
        }
        for name, (extra, with_image, valid) in cases.items():
            instance = {"prompt": "a fox", **extra, **dict.fromkeys(images, "<file>")}  # as the schema reads the body
            if with_image:
                instance["control_image"] = "<file>"
            assert validator.is_valid(instance) is valid, name
            r = post(c, path, {**data, **extra}, **images, **({"control_image": CONTROL} if with_image else {}))
            assert r.status_code == (200 if valid else 422), (name, r.text)
            if valid:
                meta = read_metadata(Image.open(io.BytesIO(r.content)))
                assert meta["controlnet"] == ["controlnet"], name
                assert (meta.get("control_from"), meta.get("control_image_sha256")) == (
                    ("canny", None) if "control_from" in extra and extra["control_from"] else (None, [image_sha256(CONTROL)]))


def test_the_fan_takes_the_served_addons_as_the_python_api_does(controlnet_editor: Editor, ip_editor: Editor) -> None:
    """Found by the fuzz: /api/fan had no add-on fields, so on a ControlNet or IP-Adapter server every fan was
    refused. Its answer is now the Python API's fan with the same control / reference image."""
    kw = {"num_inference_steps": 2, "seed": 5, "columns": 2}
    for editor, data, addon in ((controlnet_editor, {"controlnet_scale": "0.5"}, {"control_image": CONTROL}),
                                (ip_editor, {}, {"ip_adapter_image": REFERENCE})):
        with TestClient(create_app(editor, ui=False)) as c:
            r = post(c, "/api/fan", {**FAN, **data}, image=IMAGE, **addon)
            assert r.status_code == 200, r.text
        extra = {"controlnet_conditioning_scale": 0.5} if data else {}
        want = editor.fan(IMAGE, "a fox", **kw, **addon, **extra)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")), np.asarray(want.convert("RGB")))
    with TestClient(create_app(controlnet_editor, ui=False)) as c:  # the fields exist only for what is loaded
        r = post(c, "/api/fan", FAN, image=IMAGE, ip_adapter_image=REFERENCE)
        assert r.status_code == 422 and "no IP-Adapter loaded" in r.json()["error"]


def test_auto_map_and_diffedit_with_an_ip_adapter_are_one_line_501(ip_editor: Editor, controlnet_editor: Editor) -> None:
    """Found by the fuzz: with an IP-Adapter loaded, /api/auto-map and /api/diffedit crashed inside the UNet
    (500, a TypeError: it wants an image prompt on every call). They are now refused as the model's lack
    (Python: UnsupportedFeatureError; REST: 501, false in features), and not published, like those of a
    ControlNet server (the sd-controlnet family has no direct denoiser)."""
    with pytest.raises(UnsupportedFeatureError, match="IP-Adapter"):
        ip_editor.auto_map(IMAGE, "a cat", "a dog", num_maps=1, seed=0)
    with pytest.raises(UnsupportedFeatureError, match="IP-Adapter"):
        ip_editor.diffedit(IMAGE, "a cat", "a dog", num_inference_steps=2, seed=0)
    prompts = {"source_prompt": "a cat", "target_prompt": "a dog", "seed": "0"}
    for editor, why in ((ip_editor, "IP-Adapter"), (controlnet_editor, "sd-controlnet")):
        with TestClient(create_app(editor, ui=False)) as c:
            assert c.get("/api/health").json()["features"] == {"edit": True, "fan": True, "auto_map": False, "diffedit": False}
            assert {"/api/edit", "/api/fan", "/api/health"} == set(c.get("/openapi.json").json()["paths"])
            for path, extra in (("/api/auto-map", {"num_maps": "1"}), ("/api/diffedit", {"steps": "2"})):
                r = post(c, path, {**prompts, **extra}, image=IMAGE)
                assert r.status_code == 501 and why in r.json()["error"], (path, r.text)


def test_an_integer_pipeline_argument_takes_a_whole_float(controlnet_editor: Editor, sd_editor: Editor) -> None:
    """Found by the fuzz (ControlNet server, ``pipeline_kwargs={"clip_skip": -2.0, ...}``): the schema says
    integer, which in JSON Schema includes -2.0, but the server's strict check refused it (422 on a valid
    request). A whole float is now taken as that integer; 1.5 and "1" are still refused."""
    with TestClient(create_app(sd_editor, ui=False)) as c:
        field = body_schema(c, "/api/edit")["properties"]["pipeline_kwargs"]  # the object, or empty for none
        (obj,) = [branch for branch in field["anyOf"] if branch.get("type") == "object"]
        clip_skip = obj["properties"]["clip_skip"]
        checks = Draft202012Validator(clip_skip)
        for value, valid in ((1.0, True), (1, True), (1.5, False), ("1", False)):
            assert checks.is_valid(value) is valid, value
            r = post(c, "/api/edit", {**EDIT, "pipeline_kwargs": json.dumps({"clip_skip": value})}, image=IMAGE, map=MAP)
            assert r.status_code == (200 if valid else 422), (value, r.text)
            if valid:
                assert read_metadata(Image.open(io.BytesIO(r.content)))["pipeline_kwargs"] == {"clip_skip": 1}
    with TestClient(create_app(controlnet_editor, ui=False)) as c:  # a float argument keeps its float
        r = post(c, "/api/edit", {**EDIT, "control_from": "canny", "pipeline_kwargs": '{"control_guidance_end": 1.0}'},
                 image=IMAGE, map=MAP)
        assert r.status_code == 200, r.text
        assert read_metadata(Image.open(io.BytesIO(r.content)))["pipeline_kwargs"] == {"control_guidance_end": 1.0}


def test_a_controlnet_union_server_takes_a_control_mode(union_editor: Editor, controlnet_editor: Editor) -> None:
    """Found by the fuzz of a ControlNet Union server: a control image needs a control type, which /api/edit
    had no field for, so every edit with a control image was 422. ``control_mode`` (a name) is now a field of
    such a server, required with control_image (the body's rule) and reaching the model: its number is in the
    metadata and another mode gives other pixels; a plain ControlNet server refuses it."""
    with TestClient(create_app(union_editor, ui=False)) as c:
        schema = body_schema(c, "/api/edit")
        validator = Draft202012Validator(schema)
        base = {"prompt": "a fox", "image": "<file>", "map": "<file>", "control_image": "<file>"}
        assert not validator.is_valid(base) and validator.is_valid({**base, "control_mode": "depth"})
        r = post(c, "/api/edit", EDIT, image=IMAGE, map=MAP, control_image=CONTROL)
        assert r.status_code == 422 and "control_mode" in r.json()["error"], r.text
        pixels = {}
        for mode, number in (("depth", 1), ("segment", 5)):
            r = post(c, "/api/edit", {**EDIT, "control_mode": mode}, image=IMAGE, map=MAP, control_image=CONTROL)
            assert r.status_code == 200, r.text
            out = Image.open(io.BytesIO(r.content))
            assert read_metadata(out)["control_mode"] == number
            pixels[mode] = np.asarray(out.convert("RGB"))
        assert not np.array_equal(pixels["depth"], pixels["segment"])
        assert "control_mode" in body_schema(c, "/api/fan")["properties"]
        # Found next: modes past the model's num_control_type (tile, repaint on a 6-type Union) were a 500
        # (diffusers' ValueError); the schema now lists the model's modes and the rest are one line.
        types = union_editor.pipe.controlnet.config.num_control_type
        modes = [name for name, number in UNION_MODES.items() if number < types]
        assert types < len(UNION_MODES) and validator.is_valid({**base, "control_mode": modes[-1]})
        too_far = next(name for name, number in UNION_MODES.items() if number == types)
        assert not validator.is_valid({**base, "control_mode": too_far})
        r = post(c, "/api/edit", {**EDIT, "control_mode": too_far}, image=IMAGE, map=MAP, control_image=CONTROL)
        assert r.status_code == 422, r.text
    with pytest.raises(DiffDiffError, match=f"control mode {types} is not one this ControlNet Union was trained with"):
        union_editor.edit(IMAGE, MAP, "a fox", num_inference_steps=2, control_image=CONTROL, control_mode=too_far)
    with TestClient(create_app(controlnet_editor, ui=False)) as c:
        assert "control_mode" not in body_schema(c, "/api/edit")["properties"]
        r = post(c, "/api/edit", {**EDIT, "control_mode": "depth"}, image=IMAGE, map=MAP, control_image=CONTROL)
        assert r.status_code == 422 and "no ControlNet Union loaded" in r.json()["error"], r.text
