"""The edit request: one validated object that every layer takes whole."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from diffdiff import DiffDiffError, Editor, EditRequest
from diffdiff.families.base import Job
from diffdiff.testing import sample_image

pytestmark = pytest.mark.filterwarnings("ignore::diffdiff.errors.DiffDiffWarning")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": 3}, "prompt must be a string"),
        ({"prompt": "x", "num_inference_steps": 0}, "steps must be a positive integer"),
        ({"prompt": "x", "strength": 1.5}, "strength must be between 0 and 1"),
        ({"prompt": "x", "polarity": "white"}, "polarity must be 'change' or 'keep'"),
        ({"prompt": "x", "seed": -1}, "seed must be a non-negative integer"),
        ({"prompt": "x", "crop_padding": -2}, "crop_padding must be an integer >= 0"),
        ({"prompt": "x", "crop": True, "output_type": "latent"}, "crop=True returns images"),
        ({"prompt": "x", "crop_resolution": "huge"}, "crop_resolution must be"),
        ({"prompt": "x", "pipeline_kwargs": {1: 2}}, "pipeline_kwargs must be a dict"),
    ],
)
def test_request_validates_itself_with_one_line(fields: dict, message: str) -> None:
    with pytest.raises(DiffDiffError, match=message) as exc:
        EditRequest(**fields)
    assert "\n" not in str(exc.value)


def test_request_metadata_and_seed() -> None:
    req = EditRequest("a fox", num_inference_steps=7, strength=0.5, metadata={"a": 1})
    assert req.seed is None and req.with_seed().seed is not None
    fields = req.replace(seed=4).metadata_fields(default_guidance=7.5)
    assert fields["steps"] == 7 and fields["strength"] == 0.5 and fields["guidance"] == 7.5 and fields["seed"] == 4
    assert req.with_metadata({"b": 2}).metadata == {"a": 1, "b": 2}


def test_edit_with_a_request_is_edit(sd_editor: Editor, image64, ramp64) -> None:
    """``edit(**fields)`` and ``edit_with(request)`` are the same edit, byte for byte."""
    a = sd_editor.edit(image64, ramp64, "a fox", num_inference_steps=4, seed=5)[0]
    b = sd_editor.edit_with(image64, ramp64, EditRequest("a fox", num_inference_steps=4, seed=5))[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.info["diffdiff"] == b.info["diffdiff"]


def test_pipeline_kwargs_reach_the_diffusers_call(sd_editor: Editor, image64, ramp64, monkeypatch) -> None:
    """``pipeline_kwargs`` go to the pipeline call as they are (here DDIM's ``eta``) and are recorded."""
    seen: list[dict] = []
    cls = type(sd_editor.pipe)
    original = cls.__call__

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy)
    img = sd_editor.edit(image64, ramp64, "a fox", num_inference_steps=4, seed=5, pipeline_kwargs={"eta": 0.25})[0]
    assert len(seen) == 1 and seen[0]["eta"] == 0.25
    assert img.info["diffdiff"]["pipeline_kwargs"] == {"eta": 0.25}
    sd_editor.edit(image64, ramp64, "a fox", num_inference_steps=4, seed=5)
    assert "eta" not in seen[1]


def test_family_runs_a_job(sd_editor: Editor, image64, ramp64) -> None:
    """The family takes the request whole: a Job run equals the editor's run."""
    change = np.asarray(ramp64, dtype=np.float32) / 255
    req = EditRequest("a fox", num_inference_steps=4, seed=5, output_type="latent")
    out, info = sd_editor.adapter.run(Job(image64.convert("RGB"), change, req))
    assert torch.equal(out, sd_editor.run(image64.convert("RGB"), change, req))
    assert info.total_steps == 4


def test_pipeline_loaded_from_a_path_object(tiny_sd_path: pathlib.Path) -> None:
    """``_name_or_path`` is a Path when diffusers loads from one: few-step detection must not call .lower() on it."""
    from diffusers import StableDiffusionPipeline

    ed = Editor(StableDiffusionPipeline.from_pretrained(pathlib.Path(tiny_sd_path)), progress=False)
    out = ed.edit(sample_image(64, 64), np.ones((64, 64), np.float32), "a fox", num_inference_steps=2, seed=1)
    assert out[0].size == (64, 64)
