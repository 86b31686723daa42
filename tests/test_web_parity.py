"""Web parity: the UI's inputs for a ControlNet Union's control type and for extra reference images,
and per-request LoRA scales on ``POST /api/fan``.

The UI's functions are driven as Gradio calls them (the Blocks' events, as in tests/test_addons.py);
the REST API in-process with FastAPI's TestClient. Every model is tiny and random, saved and loaded
back by path. The expected images are the library's own calls with the same inputs (``Editor.edit``,
``Editor.fan``, an editor loaded at the per-request LoRA scales), never the web code's output; the
expected control types come from the ControlNet's config.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402
from gradio.components.gallery import GalleryData  # noqa: E402

from diffdiff import Editor  # noqa: E402
from diffdiff.addon_inputs import UNION_MODES  # noqa: E402
from diffdiff.errors import DiffDiffError  # noqa: E402
from diffdiff.io import image_sha256, read_metadata  # noqa: E402
from diffdiff.testing import sample_image  # noqa: E402
from diffdiff.testing_addons import build_tiny_controlnet, save_random_lora  # noqa: E402
from diffdiff.tiny_models import build_tiny_qwen_image_edit_plus  # noqa: E402
from diffdiff.web import create_app  # noqa: E402
from diffdiff.web.service import MAX_REFERENCE_IMAGES, EditService  # noqa: E402
from diffdiff.web.ui import addon_kwargs, build_ui, reference_list  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::diffdiff.errors.DiffDiffWarning")  # few-step runs, on purpose
STEPS = 4
NO_PROGRESS = {"progress": lambda *a, **k: None}


def half_map(size: int = 64) -> Image.Image:
    arr = np.zeros((size, size), np.uint8)
    arr[:, size // 2:] = 255  # left half keep, right half change
    return Image.fromarray(arr, "L")


def rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def ui_of(editor: Editor, **limits: Any) -> tuple[Any, dict[str, Any]]:
    """The Gradio Blocks for ``editor`` and its components by elem_id."""
    demo = build_ui(EditService(editor, **limits))
    return demo, {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}


def event_of(demo: Any, name: str) -> Any:
    """The Blocks' event whose function is ``name`` (its ``.fn`` and ``.inputs``)."""
    (event,) = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name]
    return event


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(getattr(exc.value, "message", exc.value))  # gr.Error's str() is its message's repr
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


IMAGE = sample_image(64, 64, seed=3)
CANVAS = {"background": IMAGE, "layers": [], "composite": IMAGE}


# ------------------------------------------------------------------------ ControlNet Union: control type
@pytest.fixture(scope="module")
def union_editor(tiny_sdxl_path: Path, union_controlnet_path: Path) -> Editor:
    return Editor.from_pretrained(tiny_sdxl_path, controlnet=union_controlnet_path, progress=False)


def test_ui_union_control_type_goes_to_the_edit_and_the_fan(union_editor: Editor, tiny_sd_path: Path,
                                                            tmp_path: Path) -> None:
    """A ControlNet Union server's Edit tab has a control-type dropdown of the modes the model was trained
    with; the edit and the fan (the same input) equal ``Editor.edit`` / ``Editor.fan`` with that
    ``control_mode``; an uploaded control image without a type, or a type past the model's, is one line;
    derived edges default to canny. A plain ControlNet's tab has no dropdown."""
    demo, comps = ui_of(union_editor)
    types = union_editor.pipe.controlnet.config.num_control_type
    trained = [name for name, number in UNION_MODES.items() if number < types]
    assert types < len(UNION_MODES)  # so one mode is past this model's (checked below)
    dropdown = comps["dd-control-mode"]
    assert [value for _, value in dropdown.choices] == trained and dropdown.value is None
    edit, fan = event_of(demo, "run_edit"), event_of(demo, "run_fan")
    assert dropdown in edit.inputs and dropdown in fan.inputs  # one input, read by both
    control = sample_image(64, 64, seed=8)

    def ui_edit(source: str, control_image: Any, mode: Any) -> tuple[np.ndarray, dict[str, Any]]:
        history, meta, _ = edit.fn(CANVAS, half_map(), "a fox", "", STEPS, 5.0, 1.0, 4, "change", [], source,
                                   control_image, 0.6, None, mode, None, **NO_PROGRESS)
        return rgb(Image.open(history[0])), meta

    got, meta = ui_edit("upload", control, "depth")
    want = union_editor.edit(IMAGE, half_map(), "a fox", num_inference_steps=STEPS, guidance_scale=5.0, seed=4,
                             control_image=control, controlnet_conditioning_scale=0.6, control_mode="depth")[0]
    assert np.array_equal(got, rgb(want))
    assert meta["control_mode"] == UNION_MODES["depth"] and meta["control_image_sha256"] == [image_sha256(control)]
    np.testing.assert_array_equal(got[:, :32], rgb(IMAGE)[:, :32])  # black keeps, byte for byte

    path = fan.fn(CANVAS, None, "a fox", "", STEPS, 5.0, 4, "change", 4, 0.0, 1.0, False, "upload", control, 0.6,
                  None, "segment", **NO_PROGRESS)
    fanned = Image.open(path)
    want_fan = union_editor.fan(IMAGE, "a fox", columns=4, num_inference_steps=STEPS, guidance_scale=5.0, seed=4,
                                control_image=control, controlnet_conditioning_scale=0.6, control_mode="segment")
    assert np.array_equal(rgb(fanned), rgb(want_fan))
    assert read_metadata(fanned)["control_mode"] == UNION_MODES["segment"]

    if importlib.util.find_spec("cv2") is not None:  # derived edges need no type: canny's (as in the library)
        _, canny_meta = ui_edit("canny", None, None)
        assert canny_meta["control_from"] == "canny" and canny_meta["control_mode"] == UNION_MODES["canny"]

    too_far = next(name for name, number in UNION_MODES.items() if number == types)
    for run in (lambda m: ui_edit("upload", control, m),
                lambda m: fan.fn(CANVAS, None, "a fox", "", STEPS, 5.0, 4, "change", 4, 0.0, 1.0, False, "upload",
                                 control, 0.6, None, m, **NO_PROGRESS)):
        with pytest.raises(gr.Error) as missing:
            run(None)
        assert one_line(missing).startswith("A ControlNet Union is loaded: choose the uploaded control image's type")
        with pytest.raises(gr.Error) as past:
            run(too_far)
        assert f"{too_far!r} is not one this ControlNet Union was trained with" in one_line(past)

    plain = Editor.from_pretrained(tiny_sd_path, controlnet=build_tiny_controlnet(tmp_path / "cn", tiny_sd_path),
                                   progress=False)
    _, plain_comps = ui_of(plain)
    assert "dd-control-source" in plain_comps and "dd-control-mode" not in plain_comps


def test_addon_kwargs_control_type_rules() -> None:
    """The pure rule the UI applies: a type is passed as given, needed with an uploaded control image,
    refused past the served modes or without a Union."""
    control = sample_image(64, 64, seed=8)
    modes = ["openpose", "depth"]
    kw = addon_kwargs(True, False, "upload", control, 1.0, None, modes, "depth")
    assert kw == {"control_image": control, "controlnet_conditioning_scale": 1.0, "control_mode": "depth"}
    assert addon_kwargs(True, False, "canny", None, None, None, modes, None) == {"control_from": "canny"}
    for args, needle in (((modes, None), "choose the uploaded control image's type (openpose, depth)"),
                         ((modes, "tile"), "'tile' is not one this ControlNet Union was trained with: choose one of "
                                           "openpose, depth"),
                         (((), "depth"), "only for a ControlNet Union, and none is loaded")):
        with pytest.raises(DiffDiffError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            addon_kwargs(True, False, "upload", control, 1.0, None, *args)


# --------------------------------------------------------------------- Qwen-Image-Edit-Plus: references
@pytest.fixture(scope="module")
def plus_editor(tmp_path_factory: pytest.TempPathFactory) -> Editor:
    path = build_tiny_qwen_image_edit_plus(Path(tmp_path_factory.mktemp("qwen_plus_ui")) / "plus")
    return Editor.from_pretrained(path, progress=False)


def test_ui_reference_images_go_to_the_edit(plus_editor: Editor, sd_editor: Editor, tmp_path: Path) -> None:
    """A model that takes extra reference images gets a multi-image input on the Edit tab (read by the edit,
    not the fan); the UI's edit with it equals ``Editor.edit(reference_images=[...])``; too many, too large
    or unreadable references are one line before the model runs. Another family shows no such input."""
    demo, comps = ui_of(plus_editor, max_pixels=128 * 128)
    gallery = comps["dd-references"]
    assert isinstance(gallery, gr.Gallery) and gallery.interactive and gallery.type == "pil"
    edit = event_of(demo, "run_edit")
    assert edit.inputs[-1] is gallery
    if "dd-fan-run" in comps:
        assert gallery not in event_of(demo, "run_fan").inputs
    ref = sample_image(48, 80, seed=9)

    def ui_edit(references: Any) -> tuple[np.ndarray, dict[str, Any]]:
        history, meta, _ = edit.fn(CANVAS, half_map(), "make it red", "", 2, None, 1.0, 5, "change", [], None, None,
                                   None, None, None, references, **NO_PROGRESS)
        return rgb(Image.open(history[0])), meta

    ref.save(tmp_path / "ref.png")
    # What Gradio's gallery hands the function for an upload: its own preprocessing of the upload payload.
    value = gallery.preprocess(GalleryData.model_validate([{"image": {"path": str(tmp_path / "ref.png")}}]))
    got, meta = ui_edit(value)
    want = plus_editor.edit(IMAGE, half_map(), "make it red", num_inference_steps=2, seed=5,
                            reference_images=[Image.open(tmp_path / "ref.png")])[0]
    assert np.array_equal(got, rgb(want))
    assert meta["reference_images"] == ["<Image (48, 80)>"]  # recorded as the library records them
    np.testing.assert_array_equal(got[:, :32], rgb(IMAGE)[:, :32])

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    for value, needle in (([(ref, None)] * (MAX_REFERENCE_IMAGES + 1),
                           f"{MAX_REFERENCE_IMAGES + 1} reference images given; at most {MAX_REFERENCE_IMAGES}"),
                          ([(ref, None), (sample_image(256, 256, seed=1), None)],
                           "reference image 2 is 256x256 = 65536 pixels, above this server's limit of 16384"),
                          ([(str(broken), None)], "reference image 1 is not a readable image")):
        with pytest.raises(gr.Error) as bad:
            ui_edit(value)
        assert one_line(bad).startswith(needle)

    _, plain = ui_of(sd_editor)
    assert "dd-references" not in plain and "dd-run" in plain


def test_reference_list_reads_the_gallery_in_order(tmp_path: Path) -> None:
    """The gallery's value, in order, as plain images (a file-backed one read into memory, as REST passes them)."""
    a, b = sample_image(40, 40, seed=1), sample_image(24, 48, seed=2)
    b.save(tmp_path / "b.png")
    out = reference_list([(a, "first"), (str(tmp_path / "b.png"), None), np.asarray(a)])
    assert out[0] is a and [im.size for im in out] == [(40, 40), (24, 48), (40, 40)]
    assert np.array_equal(np.asarray(out[1]), np.asarray(b)) and np.array_equal(np.asarray(out[2]), np.asarray(a))
    assert reference_list(None) == [] and reference_list([]) == []
    (from_file,) = reference_list([(Image.open(tmp_path / "b.png"), None)])  # as Gradio's upload hands it over
    assert type(from_file) is Image.Image and np.array_equal(np.asarray(from_file), np.asarray(b))
    with pytest.raises(DiffDiffError, match="reference image 1 is not an image"):
        reference_list([(3, None)])


# ---------------------------------------------------------------------------- /api/fan: LoRA scales
def test_rest_fan_lora_field_scales_one_request(tiny_sd_path: Path, sd_editor: Editor, tmp_path: Path) -> None:
    """``lora=NAME:SCALE`` on /api/fan, the same field as /api/edit's: the fan runs at those scales (equal to
    ``Editor.fan`` of a model loaded at them), the metadata records them, the next request and the Python
    API are back at the load-time scales; a bad name is a one-line 422; a server without LoRAs neither
    documents nor takes the field."""
    pytest.importorskip("peft")
    style, ink = tmp_path / "style.safetensors", tmp_path / "ink.safetensors"
    style.write_bytes(save_random_lora(tiny_sd_path, tmp_path / "a", seed=0).read_bytes())
    ink.write_bytes(save_random_lora(tiny_sd_path, tmp_path / "b", seed=1).read_bytes())
    buf = io.BytesIO()
    IMAGE.save(buf, format="PNG")
    upload = {"image": ("in.png", buf.getvalue(), "image/png")}
    fan_kw: dict[str, Any] = {"columns": 4, "num_inference_steps": STEPS, "guidance_scale": 7.5, "seed": 2}

    def post(client: TestClient, lora: object = None) -> Any:
        data: dict[str, object] = {"prompt": "a fox", "steps": STEPS, "seed": 2, "guidance": 7.5, "columns": 4}
        if lora is not None:
            data["lora"] = lora
        return client.post("/api/fan", files=upload, data=data)

    def pixels(response: Any) -> np.ndarray:
        assert response.status_code == 200, response.text
        return rgb(Image.open(io.BytesIO(response.content)))

    def body(client: TestClient, path: str) -> dict[str, Any]:
        schema = client.get("/openapi.json").json()
        ref = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]

    ed = Editor.from_pretrained(tiny_sd_path, lora=[f"{style}:0.8", f"{ink}:0.3"], progress=False)
    with TestClient(create_app(ed, ui=False)) as client:
        assert body(client, "/api/fan")["lora"] == body(client, "/api/edit")["lora"]  # one field, declared once
        first, half, both_off, again = post(client), post(client, "style:0.5"), post(client, ["style:0", "ink:0"]), \
            post(client)
        at_half = Editor.from_pretrained(tiny_sd_path, lora=[f"{style}:0.5", f"{ink}:0.3"], progress=False)
        assert np.array_equal(pixels(half), rgb(at_half.fan(IMAGE, "a fox", **fan_kw)))
        assert np.array_equal(pixels(both_off), rgb(sd_editor.fan(IMAGE, "a fox", **fan_kw)))  # 0 everywhere: base
        assert not np.array_equal(pixels(half), pixels(first))
        # The request's scales were for that request only: the next one and the Python API run at 0.8 / 0.3.
        assert np.array_equal(pixels(again), pixels(first))
        assert np.array_equal(pixels(first), rgb(ed.fan(IMAGE, "a fox", **fan_kw)))
        scales = [[r["scale"] for r in read_metadata(Image.open(io.BytesIO(r.content)))["lora"]]
                  for r in (first, half, both_off)]
        assert scales == [[0.8, 0.3], [0.5, 0.3], [0.0, 0.0]]
        assert read_metadata(Image.open(io.BytesIO(half.content)))["tool"] == "fan"
        r = post(client, "nope:1")
        assert r.status_code == 422 and "no LoRA named 'nope'" in r.json()["error"] and "\n" not in r.json()["error"]
    with TestClient(create_app(sd_editor, ui=False)) as client:
        assert "lora" not in body(client, "/api/fan")
        r = post(client, "style:0.5")
        assert r.status_code == 422 and r.json()["error"] == "lora: this server's model has no LoRA loaded"
