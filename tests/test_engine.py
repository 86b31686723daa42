"""The engine on tiny SD / SDXL pipelines, loaded through Editor.from_pretrained(path).

Independent references: diffusers' own img2img pipeline, and a direct transcription of the
authors' loop written here against the raw UNet and scheduler.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from diffdiff import DiffDiffError, DiffDiffWarning, Editor
from diffdiff.testing import build_tiny_sd, make_scheduler

STEPS = 10


def _img2img(editor: Editor, image: Image.Image, strength: float, seed: int = 0, **kw) -> torch.Tensor:
    return editor.pipe(
        image=image, prompt="a cat", num_inference_steps=STEPS, strength=strength,
        generator=torch.Generator().manual_seed(seed), output_type="latent", **kw,
    ).images


def _edit_latents(editor: Editor, image, cmap, strength: float = 1.0, seed: int = 0, **kw) -> torch.Tensor:
    return editor.edit(image, cmap, "a cat", num_inference_steps=STEPS, strength=strength, seed=seed,
                       output_type="latent", **kw)


@pytest.fixture(scope="module", params=["euler", "ddim", "heun"])
def sched_editor(request, tiny_sd_path) -> Editor:
    ed = Editor.from_pretrained(tiny_sd_path, progress=False)
    ed.pipe.scheduler = make_scheduler(request.param)
    return ed


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_full_change_map_equals_img2img(sd_editor: Editor, image64, strength: float) -> None:
    ones = np.ones((64, 64), np.float32)
    ours = _edit_latents(sd_editor, image64, ones, strength)
    theirs = _img2img(sd_editor, image64, strength)
    assert torch.equal(ours, theirs)


def test_full_change_map_equals_img2img_sdxl(sdxl_editor: Editor, image64) -> None:
    ones = Image.new("L", (64, 64), 255)
    assert torch.equal(_edit_latents(sdxl_editor, image64, ones, 0.7), _img2img(sdxl_editor, image64, 0.7))


def test_uniform_map_is_img2img_at_product_strength(sched_editor: Editor, image64) -> None:
    """Effective strength = strength x map value, for first- and second-order schedulers.

    Before release a pixel is the original noised to the step with the run's noise: exactly where
    an img2img run at the lower strength starts. A Heun run that blended between its two half
    steps would break this equality.
    """
    for strength, value in [(1.0, 0.5), (0.8, 0.5), (1.0, 0.3)]:
        cmap = np.full((64, 64), value, np.float32)
        ours = _edit_latents(sched_editor, image64, cmap, strength)
        theirs = _img2img(sched_editor, image64, strength * value)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def _authors_loop(editor: Editor, image: Image.Image, keep: torch.Tensor, seed: int, guidance: float = 7.5) -> torch.Tensor:
    """The published SD2 loop (white = keep), transcribed directly on the pipeline's parts."""
    from diffusers.utils.torch_utils import randn_tensor

    pipe = editor.pipe
    generator = torch.Generator().manual_seed(seed)
    pipe.scheduler.set_timesteps(STEPS)
    timesteps = pipe.scheduler.timesteps  # strength 1: nothing truncated
    total = len(timesteps)
    x = pipe.image_processor.preprocess(image)
    x0 = pipe.vae.encode(x).latent_dist.sample(generator) * pipe.vae.config.scaling_factor
    eps = randn_tensor(x0.shape, generator=generator)
    noisy = [pipe.scheduler.add_noise(x0, eps, t.reshape(1)) for t in timesteps]
    thresholds = torch.arange(total, dtype=keep.dtype) / total
    masks = [(keep > thresholds[i]).to(x0.dtype) for i in range(total)]
    cond, uncond = pipe.encode_prompt("a cat", "cpu", 1, True, None)
    embeds = torch.cat([uncond, cond])
    z = None
    for i, t in enumerate(timesteps):
        z = noisy[0] if i == 0 else noisy[i] * masks[i] + z * (1 - masks[i])
        inp = pipe.scheduler.scale_model_input(torch.cat([z, z]), t)
        noise_pred = pipe.unet(inp, t, encoder_hidden_states=embeds).sample
        n_u, n_c = noise_pred.chunk(2)
        z = pipe.scheduler.step(n_u + guidance * (n_c - n_u), t, z).prev_sample
    return z


def test_reproduces_transcription_of_authors_loop(tiny_sd_path, image64) -> None:
    ed = Editor.from_pretrained(tiny_sd_path, progress=False)
    ed.pipe.scheduler = make_scheduler("ddim")
    # A random map on the latent grid, kept away from the k / N thresholds (float ties).
    gen = torch.Generator().manual_seed(5)
    change = (torch.randint(0, STEPS, (8, 8), generator=gen).float() + 0.5) / STEPS
    ours = ed.edit(image64, change.repeat_interleave(8, 0).repeat_interleave(8, 1).numpy(), "a cat",
                   num_inference_steps=STEPS, guidance_scale=7.5, seed=11, output_type="latent")
    with torch.inference_mode():
        theirs = _authors_loop(ed, image64, 1 - change, seed=11)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # and the map mattered: not plain img2img
    assert not torch.allclose(ours, _img2img(ed, image64, 1.0, seed=11, guidance_scale=7.5), atol=1e-3)


def test_gradient_map_change_grows_left_to_right(sd_editor: Editor, image64, ramp64) -> None:
    lat = _edit_latents(sd_editor, image64, ramp64)
    x0 = sd_editor.last_run.reference.clean
    per_column = (lat - x0).abs().mean(dim=(0, 1, 2))
    thirds = [per_column[:3].mean(), per_column[3:5].mean(), per_column[5:].mean()]
    assert thirds[0] < thirds[1] < thirds[2]
    assert per_column[-1] > 5 * per_column[0]


def test_keep_polarity_with_inverted_map_is_identical(sd_editor: Editor, image64, ramp64) -> None:
    change = _edit_latents(sd_editor, image64, ramp64, polarity="change")
    keep = _edit_latents(sd_editor, image64, ImageOps.invert(ramp64), polarity="keep")
    assert torch.equal(change, keep)
    # and polarity really flips the meaning
    flipped = _edit_latents(sd_editor, image64, ramp64, polarity="keep")
    assert not torch.equal(change, flipped)


def _half_map(width: int = 64, height: int = 64) -> Image.Image:
    arr = np.zeros((height, width), np.uint8)
    arr[:, width // 2:] = 255
    return Image.fromarray(arr, "L")


def test_keep_pixels_byte_identical(sd_editor: Editor, image64) -> None:
    out = sd_editor.edit(image64, _half_map(), "a cat", num_inference_steps=STEPS, seed=0)[0]
    src, res = np.asarray(image64), np.asarray(out)
    assert np.array_equal(res[:, :32], src[:, :32])
    assert np.abs(res[:, 32:].astype(int) - src[:, 32:]).mean() > 5
    # without paste-back the VAE round trip shifts the untouched half
    raw = sd_editor.edit(image64, _half_map(), "a cat", num_inference_steps=STEPS, seed=0, paste_back=False)[0]
    assert not np.array_equal(np.asarray(raw)[:, :32], src[:, :32])


def test_batch_of_images(sd_editor: Editor, image64, ramp64) -> None:
    imgs = sd_editor.edit(image64, _half_map(), "a cat", num_inference_steps=STEPS, seed=1, num_images=3)
    assert len(imgs) == 3
    arrs = [np.asarray(i) for i in imgs]
    for a in arrs:
        assert np.array_equal(a[:, :32], np.asarray(image64)[:, :32])
    assert not np.array_equal(arrs[0], arrs[1])  # different noise per image
    lat = _edit_latents(sd_editor, image64, ramp64, num_images=2)
    assert lat.shape == (2, 4, 8, 8)
    assert not torch.equal(lat[0], lat[1])
    assert [m["index"] for m in (i.info["diffdiff"] for i in imgs)] == [0, 1, 2]


def test_deterministic_for_a_seed(sd_editor: Editor, image64, ramp64) -> None:
    a = sd_editor.edit(image64, ramp64, "a cat", num_inference_steps=STEPS, seed=42)[0]
    b = sd_editor.edit(image64, ramp64, "a cat", num_inference_steps=STEPS, seed=42)[0]
    c = sd_editor.edit(image64, ramp64, "a cat", num_inference_steps=STEPS, seed=43)[0]
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_sdxl_refiner_split_uses_one_global_schedule(tiny_sdxl_path, tiny_refiner_path, image64, ramp64) -> None:
    ed = Editor.from_pretrained(tiny_sdxl_path, refiner=tiny_refiner_path, refiner_start=0.7, progress=False)
    lat = _edit_latents(ed, image64, ramp64, num_images=2)
    assert lat.shape == (2, 4, 8, 8)
    assert ed.last_run.pipeline_calls == 2
    steps = [r.global_step for r in ed.last_run.records]
    assert steps == list(range(1, STEPS))  # base then refiner, no gap, no repeat
    assert ed.last_run.total_steps == STEPS
    # full change == diffusers' own base(denoising_end) -> refiner(denoising_start) chain
    ones = np.ones((64, 64), np.float32)
    ours = _edit_latents(ed, image64, ones)
    gen = torch.Generator().manual_seed(0)
    base = ed.pipe(image=image64, prompt="a cat", num_inference_steps=STEPS, strength=1.0, denoising_end=0.7,
                   generator=gen, output_type="latent").images
    theirs = ed.refiner(image=base, prompt="a cat", num_inference_steps=STEPS, denoising_start=0.7,
                        generator=gen, output_type="latent").images
    assert torch.equal(ours, theirs)


def test_sdxl_strength_below_one_still_changes_white(sdxl_editor: Editor, image64) -> None:
    """The authors' SDXL code freezes pixels with map >= strength; ours scales by strength."""
    cmap = np.full((64, 64), 0.8, np.float32)
    ours = _edit_latents(sdxl_editor, image64, cmap, strength=0.5)
    x0 = sdxl_editor.last_run.reference.clean
    assert (ours - x0).abs().mean() > 0.05
    torch.testing.assert_close(ours, _img2img(sdxl_editor, image64, 0.4), rtol=1e-4, atol=1e-4)


def test_other_aspect_ratio_is_an_error_and_smaller_map_is_resized(sd_editor: Editor, image64) -> None:
    with pytest.raises(DiffDiffError, match="aspect"):
        sd_editor.edit(image64, Image.new("L", (64, 32), 255), "a cat", num_inference_steps=2)
    small = _half_map(16, 16)
    out = sd_editor.edit(image64, small, "a cat", num_inference_steps=STEPS, seed=0)[0]
    assert out.size == (64, 64)
    assert np.array_equal(np.asarray(out)[:, :28], np.asarray(image64)[:, :28])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "I;16", "P", "1", "LA"])
def test_any_map_mode_is_accepted(sd_editor: Editor, image64, mode: str) -> None:
    half = _half_map()
    if mode == "I;16":
        cmap = Image.fromarray((np.asarray(half).astype(np.uint16) * 257), "I;16")
    elif mode == "RGBA":
        cmap = half.convert("RGBA")
    else:
        cmap = half.convert(mode)
    lat = _edit_latents(sd_editor, image64, cmap)
    assert torch.equal(lat, _edit_latents(sd_editor, image64, half))


def test_odd_image_size_round_trips(sd_editor: Editor) -> None:
    from diffdiff.testing import sample_image

    img = sample_image(70, 45, seed=2)
    cmap = np.zeros((45, 70), np.float32)
    cmap[:, 40:] = 1.0
    out = sd_editor.edit(img, cmap, "a cat", num_inference_steps=4, seed=0)[0]
    assert out.size == (70, 45)
    assert np.array_equal(np.asarray(out)[:, :40], np.asarray(img)[:, :40])


def test_few_steps_warn_about_quantisation(sd_editor: Editor, image64, ramp64) -> None:
    with pytest.warns(DiffDiffWarning, match="quantised to 4 levels"):
        sd_editor.edit(image64, ramp64, "a cat", num_inference_steps=4, seed=0)


def test_zero_map_returns_input_without_running_the_model(sd_editor: Editor, image64) -> None:
    out = sd_editor.edit(image64, Image.new("L", (64, 64), 0), "a cat", num_inference_steps=4, seed=0)[0]
    assert out.tobytes() == image64.tobytes()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strength": 1.5}, "strength"),
        ({"strength": -0.1}, "strength"),
        ({"num_inference_steps": 0}, "steps"),
        ({"guidance_scale": -1.0}, "guidance"),
        ({"num_images": 0}, "num_images"),
        ({"polarity": "white"}, "polarity"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_parameters_are_clear_errors(sd_editor: Editor, image64, ramp64, kwargs, message) -> None:
    with pytest.raises(DiffDiffError, match=message):
        sd_editor.edit(image64, ramp64, "a cat", **kwargs)


def test_wraps_a_text_to_image_pipeline(tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    path = build_tiny_sd(tmp_path / "t2i")
    ed = Editor(StableDiffusionPipeline.from_pretrained(path), progress=False)
    assert ed.family == "sd"
    assert type(ed.pipe).__name__ == "StableDiffusionImg2ImgPipeline"


def test_metadata_records_every_parameter(sd_editor: Editor, image64, ramp64) -> None:
    out = sd_editor.edit(image64, ramp64, "a cat", negative_prompt="blurry", num_inference_steps=STEPS,
                         guidance_scale=6.0, strength=0.9, seed=7)[0]
    meta = out.info["diffdiff"]
    for key, value in {"prompt": "a cat", "negative_prompt": "blurry", "seed": 7, "steps": STEPS,
                       "guidance": 6.0, "strength": 0.9, "polarity": "change", "family": "sd"}.items():
        assert meta[key] == value
    assert len(meta["map_sha256"]) == 64 and meta["model"]
