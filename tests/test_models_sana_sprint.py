"""Sana Sprint (issue 18, items 4 and 6): a TrigFlow consistency model through the own-noise family.

Its ``SCMScheduler`` has neither ``add_noise`` nor ``scale_noise``; diffdiff noises with TrigFlow's
``cos(t) x0 + sin(t) z`` in ``sigma_data`` units (:mod:`diffdiff.ownnoise`). A tiny random
Sana Sprint (:func:`diffdiff.tiny_models.build_tiny_sana_sprint`, 64 px, a 2x2 latent grid of the
x32 DC-AE) is saved once and loaded back with ``Editor.from_pretrained``. Checked against
diffusers' own ``SanaSprintImg2ImgPipeline`` (same seed, bit for bit), and against latents
encoded here with the VAE directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffdiff import Editor, UnsupportedModelError, read_metadata
from diffdiff.cli import app
from diffdiff.ownnoise import loop_scale, noise_method, planned_steps, trigflow_noise
from diffdiff.testing import sample_image
from diffdiff.tiny_models import build_tiny_sana_sprint

PROMPT = "a red cat"
HALF = np.zeros((64, 64), np.float32)
HALF[:, 32:] = 1.0  # left half keep, right half change
ONE = np.ones((64, 64), np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sana_sprint(tmp_path_factory.mktemp("sprint") / "sana_sprint")


@pytest.fixture(scope="module")
def editor(built: Path) -> Editor:
    return Editor.from_pretrained(built, progress=False)


def _latents(ed: Editor, change: np.ndarray | float, strength: float = 1.0, steps: int = 2, num_images: int = 1,
             **kw: Any) -> torch.Tensor:
    if isinstance(change, float):
        change = np.full((64, 64), change, np.float32)
    return ed.edit(sample_image(64, 64, seed=3), change, PROMPT, num_inference_steps=steps, seed=11,
                   strength=strength, num_images=num_images, output_type="latent", **kw)


def _sibling(ed: Editor) -> Any:
    import diffusers

    pipe = diffusers.SanaSprintImg2ImgPipeline(**ed.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sibling_latents(ed: Editor, strength: float, steps: int, num_images: int = 1) -> torch.Tensor:
    """diffusers' own Sana Sprint img2img, same image, seed and size (no resolution binning)."""
    extra = {} if steps == 2 else {"intermediate_timesteps": None}  # SCM: an intermediate time only for 2 steps
    return _sibling(ed)(PROMPT, image=sample_image(64, 64, seed=3), strength=strength, num_inference_steps=steps,
                        num_images_per_prompt=num_images, generator=torch.Generator().manual_seed(11),
                        output_type="latent", height=64, width=64, use_resolution_binning=False, **extra).images


def _clean_latents(ed: Editor) -> torch.Tensor:
    """The image's normalised latents, encoded here with the VAE directly (DC-AE: no sampling)."""
    pipe = ed.pipe
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess(sample_image(64, 64, seed=3), height=64, width=64)
        return pipe.vae.encode(pixels).latent * pipe.vae.config.scaling_factor


# --- detection and the edit itself -------------------------------------------------------------------

def test_scm_scheduler_is_detected_as_trigflow_and_few_step(editor: Editor) -> None:
    scheduler = editor.pipe.scheduler
    assert (type(editor.pipe).__name__, editor.family, type(scheduler).__name__) == (
        "SanaSprintPipeline", "own-noise", "SCMScheduler")
    assert noise_method(scheduler) == "trigflow" and loop_scale(scheduler, "trigflow") == 0.5
    assert editor.adapter.is_few_step()  # a consistency model: the map is rounded to its few levels
    # SanaSprintImg2ImgPipeline's own truncation (a float product: 2 x 0.1 still runs 1 step)
    sibling = _sibling(editor)
    for n, strength in ((2, 1.0), (2, 0.5), (2, 0.1), (4, 0.6), (4, 0.2), (3, 0.7)):
        sibling.scheduler.set_timesteps(n, intermediate_timesteps=1.3 if n == 2 else None)
        _, theirs = sibling.get_timesteps(n, strength, "cpu")
        assert planned_steps("trigflow", n, strength) == editor.planned_steps(n, strength) == theirs, (n, strength)


def test_trigflow_formula_is_cos_sin() -> None:
    clean, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([1.5708, 0.0])
    out = trigflow_noise(clean, noise, t)
    np.testing.assert_allclose(out[0].numpy(), (np.cos(1.5708) * clean[0] + np.sin(1.5708) * noise[0]).numpy(),
                               atol=1e-6)
    assert torch.equal(out[1], clean[1])  # t = 0 is the clean sample itself


def test_halves_input_size_and_batch(editor: Editor) -> None:
    img = sample_image(72, 56, seed=3)  # off the x32 grid: comes back at the input size
    change = np.zeros((56, 72), np.float32)
    change[:, 36:] = 1.0
    with pytest.warns(UserWarning, match="only 2 denoising steps"):  # few steps are reported
        out = editor.edit(img, change, PROMPT, num_inference_steps=2, seed=7, num_images=2)
    src = np.asarray(img)
    for res in out:
        assert res.size == img.size
        arr = np.asarray(res)
        np.testing.assert_array_equal(arr[:, :36], src[:, :36])
        assert np.abs(arr[:, 36:].astype(int) - src[:, 36:]).mean() > 5
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))
    # two steps, and a blend after each: the schedule ends at t = 0, where kept pixels land on x0
    assert editor.last_run.total_steps == 2 and [r.global_step for r in editor.last_run.records] == [1, 2]


def test_black_half_ends_on_the_clean_latents(editor: Editor) -> None:
    clean = _clean_latents(editor)
    half = _latents(editor, HALF, num_images=2)
    w = half.shape[-1] // 2
    assert torch.equal(half[..., :w], clean.expand_as(half)[..., :w])  # exactly the image's latents
    assert float((half[..., w:] - clean[..., w:]).abs().mean()) > 0.1
    full = _latents(editor, ONE)
    assert float((full[..., :w] - clean[..., :w]).abs().mean()) > 0.1  # the model moves them when free
    ref = editor.last_run.reference
    assert ref is not None and torch.allclose(ref.clean[:1], clean * 0.5)  # the loop runs in sigma_data units


# --- exactness against diffusers' SanaSprintImg2ImgPipeline --------------------------------------------

@pytest.mark.parametrize("steps,strength", [(2, 1.0), (2, 0.5), (4, 0.6), (1, 1.0)])
def test_full_change_equals_sana_sprint_img2img(editor: Editor, steps: int, strength: float) -> None:
    ours = _latents(editor, ONE, strength=strength, steps=steps, num_images=2)
    assert editor.last_run.total_steps == planned_steps("trigflow", steps, strength)
    assert torch.equal(ours, _sibling_latents(editor, strength, steps, num_images=2))


def test_img2img_pipeline_given_is_driven_through_its_text_to_image_form(editor: Editor) -> None:
    ed = Editor(_sibling(editor), progress=False)  # the user hands us the img2img pipeline itself
    assert ed.family == "own-noise" and type(ed.pipe).__name__ == "SanaSprintPipeline"
    ours = _latents(ed, ONE, strength=0.5, steps=4, num_images=2)
    assert ed.last_run.total_steps == 2
    assert torch.equal(ours, _sibling_latents(editor, 0.5, 4, num_images=2))


def _first_denoiser_input(pipe: Any, run: Any) -> torch.Tensor:
    seen: list[torch.Tensor] = []

    def grab(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not seen:
            seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    handle = pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_own_noising_of_text_to_image_equals_the_img2img_start(editor: Editor) -> None:
    # What the transformer first sees: our noised start through the text-to-image pipeline, and
    # SanaSprintImg2ImgPipeline's own prepare_latents (strength 0.5 of 2 steps: t = 1.3).
    ours = _first_denoiser_input(editor.pipe, lambda: _latents(editor, HALF, strength=0.5, num_images=2))
    sibling = _sibling(editor)
    theirs = _first_denoiser_input(sibling, lambda: _sibling_latents(editor, 0.5, 2, num_images=2))
    assert ours.shape == (2, 4, 2, 2) and torch.equal(ours, theirs)


def test_grey_levels_at_two_steps_are_the_siblings_strengths(editor: Editor) -> None:
    # Two steps give three behaviours; a grey value is rounded to the nearest (few-step rule):
    # below 1/4 -> keep (the clean latents), 1/4 to 3/4 -> one step from t = 1.3 (img2img at
    # strength 0.5), above 3/4 -> both steps (img2img at strength 1).
    clean = _clean_latents(editor)
    one_step, both = _sibling_latents(editor, 0.5, 2), _sibling_latents(editor, 1.0, 2)
    assert not torch.equal(one_step, both)
    for value, expected in ((0.1, clean), (0.24, clean), (0.26, one_step), (0.5, one_step), (0.74, one_step),
                            (0.76, both), (1.0, both)):
        assert torch.equal(_latents(editor, value), expected), value


def test_skip_frozen_runs_in_full_for_trigflow(editor: Editor) -> None:
    # The frozen-pixel skip needs the denoiser's target; TrigFlow's is not one it knows: nothing skipped.
    plain = _latents(editor, HALF)
    skipping = _latents(editor, HALF, skip_frozen=True)
    assert torch.equal(plain, skipping) and set(editor.last_run.denoised_fractions) == {1.0}


# --- refusal, CLI -------------------------------------------------------------------------------------

def test_scheduler_without_a_known_noising_is_refused_in_one_line(editor: Editor) -> None:
    import diffusers

    class NoNoising(diffusers.SCMScheduler):  # no add_noise / scale_noise and not TrigFlow
        pass

    pipe = diffusers.SanaSprintPipeline(**{**editor.pipe.components,
                                           "scheduler": NoNoising(prediction_type="x0-pred")})
    with pytest.raises(UnsupportedModelError) as info:
        Editor(pipe, progress=False)
    message = str(info.value)
    assert "\n" not in message and "SanaSprintPipeline" in message
    assert "NoNoising has neither add_noise nor scale_noise nor a TrigFlow config" in message
    assert "add_noise/scale_noise/TrigFlow scheduler" in message  # what the own-noise family takes


def test_cli_edits_a_sana_sprint_folder(built: Path, tmp_path: Path) -> None:
    img, cmap, out = tmp_path / "in.png", tmp_path / "map.png", tmp_path / "out.png"
    sample_image(64, 64, seed=3).save(img)
    Image.fromarray((HALF * 255).astype(np.uint8), "L").save(cmap)
    res = CliRunner().invoke(app, ["edit", str(img), "--map", str(cmap), "-p", PROMPT, "-o", str(out),
                                   "--model", str(built), "--steps", "2", "--seed", "2"])
    assert res.exit_code == 0, res.output
    meta = read_metadata(out)
    assert (meta["family"], meta["scheduler"]) == ("own-noise", "SCMScheduler")
    np.testing.assert_array_equal(np.asarray(Image.open(out))[:, :32], np.asarray(Image.open(img))[:, :32])


def test_bfloat16_transformer_still_equals_the_img2img(built: Path) -> None:
    # The real checkpoints run the transformer in bfloat16; Sana Sprint's loop stays in float32, so
    # the start is drawn in float32 (in the transformer's dtype it would be other noise).
    import diffusers

    pipe = diffusers.SanaSprintPipeline.from_pretrained(built)
    pipe.transformer.to(torch.bfloat16)
    ed = Editor(pipe, progress=False)
    ours = _latents(ed, ONE, strength=1.0, steps=2, num_images=2)
    assert torch.equal(ours, _sibling_latents(ed, 1.0, 2, num_images=2))
