"""``reference_images`` on ``POST /api/edit``: extra reference images for instruction-edit models that
take several (Qwen-Image-Edit-Plus), over REST.

A tiny random Qwen-Image-Edit-Plus (:mod:`diffdiff.tiny_models`, saved and loaded back) is served
in-process with FastAPI's TestClient. Each of its edits encodes every reference at ~1 MP, so only
two model runs are made (the REST edit and the library's own call it must equal); every refusal
below happens before the model runs. A tiny SD model (conftest's ``sd_editor``) is the family that
takes none.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from diffdiff import DiffDiffError, Editor, read_metadata  # noqa: E402
from diffdiff.testing import sample_image  # noqa: E402
from diffdiff.tiny_models import build_tiny_qwen_image_edit_plus  # noqa: E402
from diffdiff.web import create_app  # noqa: E402
from diffdiff.web.api import EMPTY_MEANS_DEFAULT, MAX_REFERENCE_IMAGES  # noqa: E402

PROMPT = "make it red"
MAX_UPLOAD = 100_000  # bytes: the served app's upload limit (the test images are a few KB)
SIDE = 128  # the served app's pixel limit is SIDE x SIDE
TOO_MANY = f"reference_images: {MAX_REFERENCE_IMAGES + 1} files sent, at most {MAX_REFERENCE_IMAGES} on this server"


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def half_map(width: int, height: int) -> Image.Image:
    arr = np.zeros((height, width), np.uint8)
    arr[:, width // 2:] = 255  # left half keep, right half change
    return Image.fromarray(arr, "L")


def base_files(image: bytes | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    img = image if image is not None else encoded(sample_image(64, 64, seed=3))
    return [("image", ("in.png", img, "image/png")), ("map", ("map.png", encoded(half_map(64, 64)), "image/png"))]


def refs(*payloads: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("reference_images", (f"ref{i}.png", p, "image/png")) for i, p in enumerate(payloads)]


def error_of(r: Any, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg
    return msg


def edit_schema(client: TestClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """/api/edit's multipart body schema and its encoding, from the served /openapi.json."""
    raw = client.get("/openapi.json").json()
    body = raw["paths"]["/api/edit"]["post"]["requestBody"]["content"]["multipart/form-data"]
    return raw["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[-1]], body.get("encoding", {})


@pytest.fixture(scope="module")
def plus_editor(tmp_path_factory: pytest.TempPathFactory) -> Editor:
    path = build_tiny_qwen_image_edit_plus(Path(tmp_path_factory.mktemp("qwen_plus")) / "plus")
    return Editor.from_pretrained(path, progress=False)


@pytest.fixture(scope="module")
def plus(plus_editor: Editor) -> Iterator[TestClient]:
    app = create_app(plus_editor, ui=False, max_pixels=SIDE * SIDE, max_upload_bytes=MAX_UPLOAD, queue_size=1)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def sd(sd_editor: Editor) -> Iterator[TestClient]:
    with TestClient(create_app(sd_editor, ui=False, max_pixels=SIDE * SIDE)) as c:
        yield c


def test_two_references_over_rest_equal_the_library_call(plus: TestClient, plus_editor: Editor) -> None:
    # Two references of other sizes than the input, one of them a JPEG: the pipeline sizes each itself.
    first = encoded(sample_image(48, 80, seed=9))
    second = encoded(sample_image(64, 32, seed=1).convert("RGB"), "JPEG")
    r = plus.post("/api/edit", files=base_files() + refs(first, second),
                  data={"prompt": PROMPT, "steps": "2", "seed": "5"})
    assert r.status_code == 200, r.text
    served = Image.open(io.BytesIO(r.content))
    # The library's own call, on the same decoded inputs, references and seed.
    mine = plus_editor.edit(Image.open(io.BytesIO(encoded(sample_image(64, 64, seed=3)))), half_map(64, 64), PROMPT,
                            num_inference_steps=2, seed=5,
                            reference_images=[Image.open(io.BytesIO(first)), Image.open(io.BytesIO(second))])[0]
    assert served.size == mine.size == (64, 64)
    assert np.asarray(served.convert("RGB")).tobytes() == np.asarray(mine).tobytes()
    # Not an equality the references leave untouched: without them the changed half differs (a little,
    # on this tiny random model), the kept half not at all.
    alone = np.asarray(plus_editor.edit(sample_image(64, 64, seed=3), half_map(64, 64), PROMPT,
                                        num_inference_steps=2, seed=5)[0])
    assert not np.array_equal(alone[:, 32:], np.asarray(mine)[:, 32:])
    np.testing.assert_array_equal(alone[:, :32], np.asarray(mine)[:, :32])
    # Recorded as the library records them (the CLI's format): each reference by its size, in order.
    meta = read_metadata(served)
    assert meta["reference_images"] == ["<Image (48, 80)>", "<Image (64, 32)>"]
    assert meta["served_by"] == "diffdiff serve" and meta["seed"] == 5


def test_a_model_that_takes_none_refuses_them_with_the_librarys_line(sd: TestClient, sd_editor: Editor) -> None:
    ref = encoded(sample_image(64, 64, seed=9))
    with pytest.raises(DiffDiffError) as refusal:  # the library's own refusal (raised before the model runs)
        sd_editor.edit(sample_image(64, 64, seed=3), half_map(64, 64), PROMPT, num_inference_steps=2,
                       reference_images=[Image.open(io.BytesIO(ref))])
    r = sd.post("/api/edit", files=base_files() + refs(ref), data={"prompt": PROMPT, "steps": "2"})
    assert error_of(r, 422) == str(refusal.value)
    assert "StableDiffusionImg2ImgPipeline takes none" in str(refusal.value)
    # Its schema does not offer the field (as add-on fields are offered only for what is served) ...
    props = edit_schema(sd)[0]["properties"]
    assert "reference_images" not in props and "image" in props
    # ... and too many are counted the same way there as on a model that takes them.
    many = sd.post("/api/edit", files=base_files() + refs(*[ref] * (MAX_REFERENCE_IMAGES + 1)), data={"prompt": "x"})
    assert error_of(many, 422) == TOO_MANY


def noise_png(side: int) -> bytes:
    return encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)))


#: Bad uploads: (case, payload). Each must get the error the same bytes get as the ``image`` upload.
BAD_UPLOADS = {
    "undecodable": b"definitely not an image",
    "truncated": encoded(sample_image(64, 64, seed=2))[:200],
    "empty": b"",
    "above the pixel limit": encoded(Image.new("RGB", (SIDE + 1, SIDE))),
    "above the byte limit": b"\x89PNG" + b"x" * MAX_UPLOAD,
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_reference_gets_the_error_a_bad_image_gets(plus: TestClient, case: str) -> None:
    payload = BAD_UPLOADS[case]
    as_image = plus.post("/api/edit", files=base_files(payload), data={"prompt": "x", "steps": "2"})
    as_reference = plus.post("/api/edit", files=base_files() + refs(encoded(sample_image(40, 40)), payload),
                             data={"prompt": "x", "steps": "2"})
    status = as_image.status_code
    assert status in (413, 422), as_image.text
    image_msg = error_of(as_image, status)
    assert image_msg.startswith("image ")
    # Same status, same message, naming the reference (the second one) instead of the image.
    assert error_of(as_reference, status) == "reference image 2" + image_msg.removeprefix("image")


def test_too_many_references_or_text_instead_of_files_are_422(plus: TestClient) -> None:
    ref = encoded(sample_image(40, 40))
    r = plus.post("/api/edit", files=base_files() + refs(*[ref] * (MAX_REFERENCE_IMAGES + 1)), data={"prompt": "x"})
    assert error_of(r, 422) == TOO_MANY
    text = plus.post("/api/edit", files=base_files(), data={"prompt": "x", "reference_images": "ref.png"})
    assert "reference_images" in error_of(text, 422)
    # An empty part beside the most files allowed is not one of them: the request gets on to the image check.
    r = plus.post("/api/edit", files=base_files(b"not an image") + refs(*[ref] * MAX_REFERENCE_IMAGES),
                  data={"prompt": "x", "reference_images": ""})
    assert error_of(r, 422) == "image is not a readable image (unknown or corrupt format)"


def test_schema_declares_an_array_of_image_files(plus: TestClient, plus_editor: Editor) -> None:
    body, encoding = edit_schema(plus)
    props = body["properties"]
    field = props["reference_images"]
    files = [b for b in field["anyOf"] if b.get("type") == "array"]
    assert len(files) == 1 and files[0]["maxItems"] == MAX_REFERENCE_IMAGES
    assert "reference_images" not in body["required"]  # optional: no part, no references
    # Each item is a binary string, as the schema spells the other file fields (OpenAPI 3.1).
    image = {k: v for k, v in props["image"].items() if k not in ("title", "description")}
    assert files[0]["items"] == image == {"type": "string", "contentMediaType": "application/octet-stream"}
    assert encoding["reference_images"] == encoding["image"] == {"contentType": "image/*"}
    # The other branch, an empty part for the default (none), as every optional field's: true on the
    # wire, the request gets past the fields to the image check.
    assert [b for b in field["anyOf"] if b not in files] == [EMPTY_MEANS_DEFAULT]
    empty = plus.post("/api/edit", files=base_files(b"not an image"), data={"prompt": "x", "reference_images": ""})
    assert error_of(empty, 422) == "image is not a readable image (unknown or corrupt format)"
    # A lazily loaded model's family is unknown until it loads: the field is offered.
    with TestClient(create_app(lambda: plus_editor, ui=False)) as lazy:
        assert "reference_images" in edit_schema(lazy)[0]["properties"]
