"""Library version skew (diffdiff.compat): clip_skip on SD 1.x/2.x with transformers' flattened CLIPTextModel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from diffdiff import Editor
from diffdiff.compat import mend_pipeline
from diffdiff.testing import sample_image


def _first_unet_context(ed: Editor, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    forward = ed.pipe.unet.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["encoder_hidden_states"].detach().clone())
        return forward(*args, **kwargs)

    monkeypatch.setattr(ed.pipe.unet, "forward", spy)
    ed.edit(sample_image(64, 64, seed=1), np.ones((64, 64), np.float32), "a red cat", num_inference_steps=2, seed=0,
            **kw)
    monkeypatch.undo()
    return seen[0]


def test_clip_skip_uses_the_penultimate_layer(tiny_sd_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ed = Editor.from_pretrained(tiny_sd_path, progress=False)
    te, tok = ed.pipe.text_encoder, ed.pipe.tokenizer
    ctx = _first_unet_context(ed, monkeypatch, pipeline_kwargs={"clip_skip": 1})
    plain = _first_unet_context(ed, monkeypatch)
    # Independently: the CLIP hidden state one layer before the last, through the final layer norm.
    ids = tok("a red cat", padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = te(ids, output_hidden_states=True).hidden_states[-2]
        want = te.final_layer_norm(hidden)
    assert torch.allclose(ctx[-1], want[0], atol=1e-6)  # the conditional half of the guided batch
    assert not torch.allclose(ctx, plain)


def test_mend_leaves_weights_and_modules_alone(tiny_sd_path: Path) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd_path)
    keys = list(pipe.text_encoder.state_dict())
    n_modules = len(list(pipe.text_encoder.modules()))
    mend_pipeline(pipe)
    mend_pipeline(pipe)  # idempotent
    te = pipe.text_encoder
    assert te.text_model is te
    assert list(te.state_dict()) == keys and len(list(te.modules())) == n_modules
    pipe.to(torch.float64)
    assert te.final_layer_norm.weight.dtype == torch.float64
