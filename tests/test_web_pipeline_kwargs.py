"""The REST API's ``pipeline_kwargs`` field (``/api/edit``, ``/api/fan``) against the tiny SD model.

The field reaches the diffusers call (a spy on the pipeline class's ``__call__``) and the PNG
metadata; bad JSON, a non-object, a name diffdiff sets itself, a name the pipeline lacks, a value
of the wrong type and a value the pipeline refuses at run time are each one 422 line; the schema
publishes the names and value types the server checks.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from diffdiff import Editor, read_metadata  # noqa: E402
from diffdiff.errors import DiffDiffError  # noqa: E402
from diffdiff.request import OWNED_PIPELINE_ARGUMENTS, EditRequest, pipeline_kwargs_from_json  # noqa: E402
from diffdiff.testing import sample_image  # noqa: E402
from diffdiff.web import create_app  # noqa: E402

STEPS = "4"


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files() -> dict[str, Any]:
    img = sample_image(64, 64, seed=5)
    arr = np.zeros((64, 64), np.uint8)
    arr[:, 32:] = 255
    return {"image": ("i.png", png(img), "image/png"), "map": ("m.png", png(Image.fromarray(arr, "L")), "image/png")}


@pytest.fixture(scope="module")
def client(sd_editor: Editor) -> Iterator[TestClient]:
    with TestClient(create_app(sd_editor, max_pixels=128 * 128, queue_size=2, ui=False)) as c:
        yield c


@pytest.fixture()
def calls(sd_editor: Editor, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every call of the tiny SD pipeline's class while the test runs."""
    seen: list[dict[str, Any]] = []
    cls = type(sd_editor.pipe)
    original = cls.__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy)
    return seen


def error_line(r: Any, status: int = 422) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    msg = r.json()["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg
    return msg


def test_edit_pipeline_kwargs_reach_the_call_and_the_metadata(client: TestClient, files: dict[str, Any],
                                                              calls: list[dict[str, Any]]) -> None:
    sent = {"cross_attention_kwargs": {"scale": 0.5, "note": [1, "two"]}, "eta": 0.25}
    r = client.post("/api/edit", files=files, data={"prompt": "a fox", "steps": STEPS, "seed": "3",
                                                    "pipeline_kwargs": json.dumps(sent)})
    assert r.status_code == 200, r.text
    assert len(calls) == 1 and all(calls[0][k] == v for k, v in sent.items()), calls
    assert read_metadata(Image.open(io.BytesIO(r.content)))["pipeline_kwargs"] == sent
    plain = client.post("/api/edit", files=files, data={"prompt": "a fox", "steps": STEPS, "seed": "3"})
    assert plain.status_code == 200 and not {"eta", "cross_attention_kwargs"} & set(calls[1])
    assert "pipeline_kwargs" not in read_metadata(Image.open(io.BytesIO(plain.content)))
    # Empty is the default (no arguments), as for every optional form field.
    empty = client.post("/api/edit", files=files, data={"prompt": "a fox", "steps": STEPS, "seed": "3", "pipeline_kwargs": ""})
    assert empty.status_code == 200 and empty.content == plain.content


def test_fan_pipeline_kwargs_reach_the_call_and_the_metadata(client: TestClient, files: dict[str, Any],
                                                             calls: list[dict[str, Any]]) -> None:
    r = client.post("/api/fan", files={"image": files["image"]},
                    data={"prompt": "a fox", "steps": STEPS, "columns": "3", "seed": "1",
                          "pipeline_kwargs": '{"eta": 0.5}'})
    assert r.status_code == 200, r.text
    assert len(calls) == 1 and calls[0]["eta"] == 0.5
    assert read_metadata(Image.open(io.BytesIO(r.content)))["pipeline_kwargs"] == {"eta": 0.5}


@pytest.mark.parametrize("text, needle", [
    ("{oops", "pipeline_kwargs is not valid JSON"),
    ('{"eta": NaN}', "pipeline_kwargs is not valid JSON (NaN is not JSON)"),
    ("[1, 2]", "pipeline_kwargs must be a JSON object of argument names to values, got an array"),
    ('"eta"', "got a string"),
    ('{"num_inference_steps": 2}', "'num_inference_steps' is set by diffdiff itself"),
    ('{"generator": 1, "latents": 2}', "'generator', 'latents' are set by diffdiff itself"),
    ('{"not_an_argument": 1}', "'not_an_argument' is not an argument of StableDiffusionImg2ImgPipeline"),
    ('{"prompt_embeds": [[0.5]]}', "'prompt_embeds' takes a value JSON cannot carry"),
    ('{"clip_skip": "two"}', "pipeline_kwargs.clip_skip: Input should be a valid integer"),
    ('{"clip_skip": 1.5}', "pipeline_kwargs.clip_skip: Input should be a valid integer"),
    ('{"cross_attention_kwargs": [1]}', "pipeline_kwargs.cross_attention_kwargs"),
])
@pytest.mark.parametrize("path", ["/api/edit", "/api/fan"])
def test_bad_pipeline_kwargs_are_one_422_line_before_the_model(client: TestClient, files: dict[str, Any],
                                                               calls: list[dict[str, Any]], path: str,
                                                               text: str, needle: str) -> None:
    sent = files if path == "/api/edit" else {"image": files["image"]}
    r = client.post(path, files=sent, data={"prompt": "a fox", "steps": STEPS, "pipeline_kwargs": text})
    msg = error_line(r)
    assert needle in msg, msg
    assert not calls  # refused before the model ran
    assert client.get("/api/health").json()["queue"]["running"] == 0


def test_a_value_the_pipeline_refuses_at_run_time_is_422_and_the_server_keeps_serving(
        client: TestClient, files: dict[str, Any], sd_editor: Editor) -> None:
    """``clip_skip`` is an integer by type, but not one beyond the text encoder's layers: the pipeline
    fails inside its call, and that is the caller's input (422, one line), not a server error."""
    layers = sd_editor.pipe.text_encoder.config.num_hidden_layers
    r = client.post("/api/edit", files=files, data={"prompt": "a fox", "steps": STEPS,
                                                    "pipeline_kwargs": json.dumps({"clip_skip": layers + 5})})
    msg = error_line(r)
    assert msg.startswith("pipeline_kwargs (clip_skip): the pipeline refused them: "), msg
    ok = client.post("/api/edit", files=files, data={"prompt": "a fox", "steps": STEPS})
    assert ok.status_code == 200


def test_the_schema_publishes_what_the_server_checks(client: TestClient, sd_editor: Editor) -> None:
    """Both operations declare the field as a JSON object of the served pipeline's JSON-typed arguments
    (diffdiff's own arguments and tensor-valued ones left out), each with its annotation's type."""
    schema = client.get("/openapi.json").json()
    for body in ("Body_edit_api_edit_post", "Body_fan_api_fan_post"):
        prop = schema["components"]["schemas"][body]["properties"]["pipeline_kwargs"]
        obj = next(b for b in prop["anyOf"] if b.get("type") == "object")
        assert obj["additionalProperties"] is False
        assert set(obj["properties"]) == {"eta", "clip_skip", "cross_attention_kwargs"}
        assert obj["properties"]["clip_skip"] == {"type": "integer"}
        assert not set(obj["properties"]) & OWNED_PIPELINE_ARGUMENTS
        assert {"type": "string", "maxLength": 0, "description": "empty: the default"} in prop["anyOf"]


def test_a_lazily_loaded_model_checks_names_against_its_pipeline(sd_editor: Editor, files: dict[str, Any]) -> None:
    """Before the model is loaded the schema knows only the JSON-object rule; the names are then
    checked against the pipeline when the job runs, with the same one line."""
    app = create_app(lambda: sd_editor, max_pixels=128 * 128, ui=False)
    with TestClient(app) as c:
        prop = c.get("/openapi.json").json()["components"]["schemas"]["Body_edit_api_edit_post"]["properties"]
        obj = next(b for b in prop["pipeline_kwargs"]["anyOf"] if b.get("type") == "object")
        assert set(obj["propertyNames"]["not"]["enum"]) == OWNED_PIPELINE_ARGUMENTS
        r = c.post("/api/edit", files=files, data={"prompt": "a fox", "steps": STEPS, "pipeline_kwargs": '{"nope": 1}'})
        assert "pipeline_kwargs: StableDiffusionImg2ImgPipeline takes no argument 'nope'" in error_line(r)
        r = c.post("/api/edit", files=files, data={"prompt": "a fox", "steps": STEPS, "pipeline_kwargs": '{"strength": 1}'})
        assert "'strength' is set by diffdiff itself" in error_line(r)


def test_one_rule_for_the_cli_the_api_and_the_request() -> None:
    """The JSON rule and the names diffdiff owns are checked by the request itself too."""
    assert pipeline_kwargs_from_json(None) == {} and pipeline_kwargs_from_json("  ") == {}
    assert pipeline_kwargs_from_json('{"max_sequence_length": 8}') == {"max_sequence_length": 8}
    with pytest.raises(DiffDiffError, match="--pipeline-kwargs must be a JSON object"):
        pipeline_kwargs_from_json("[]", "--pipeline-kwargs")
    with pytest.raises(DiffDiffError, match="'guidance_scale' is set by diffdiff itself"):
        EditRequest("x", pipeline_kwargs={"guidance_scale": 3.0})


def test_the_editor_refuses_a_name_the_pipeline_does_not_take(sd_editor: Editor) -> None:
    """Through the library too (the CLI's path): the check is on the pipeline's named arguments, not
    its ``**kwargs`` catch-all, which would drop the name without a word."""
    img = sample_image(64, 64, seed=1)
    with pytest.raises(DiffDiffError, match="StableDiffusionImg2ImgPipeline takes no argument 'nope'"):
        sd_editor.edit(img, Image.new("L", (64, 64), 255), "a fox", num_inference_steps=2, pipeline_kwargs={"nope": 1})
