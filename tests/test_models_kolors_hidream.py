"""Kolors and HiDream (issue 18): tiny offline pipelines through the real ``from_pretrained`` path.

Kolors (:func:`diffdiff.tiny_models.build_tiny_kolors`: ChatGLM3 with a sentencepiece tokenizer
trained here, SDXL-style UNet) is saved as the text-to-image ``KolorsPipeline``; the loader takes
its img2img sibling and the generic family drives diffusers' own noising unchanged, so an all-white
map equals ``KolorsImg2ImgPipeline``'s own call bit for bit. HiDream
(:func:`diffdiff.tiny_models.build_tiny_hidream`) has no img2img sibling: the own-noise family
drives it, and since HiDream generates at one fixed area whatever height/width it is given, the
family runs it at the size it names (:class:`diffdiff.ownnoise.ChosenSize`) and the editor
resizes back. Its start latents are checked against the scheduler's own noising of the encoded
image, computed here from diffusers' parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffdiff import DiffDiffError, Editor, read_metadata
from diffdiff.cli import app
from diffdiff.testing import sample_image
from diffdiff.tiny_models import build_tiny_hidream, build_tiny_kolors

STEPS = 4
HALF = np.zeros((64, 64), np.float32)
HALF[:, 32:] = 1.0  # left half keep, right half change
ONE = np.ones((64, 64), np.float32)
HIDREAM_SIZE = (128, 128)  # (128 * vae_scale_factor)^2 pixels, the tiny VAE being x1

BUILDERS = {  # name: (builder, the pipeline the editor drives, the family detected)
    "kolors": (build_tiny_kolors, "KolorsImg2ImgPipeline", "generic"),
    "hidream": (build_tiny_hidream, "HiDreamImagePipeline", "own-noise"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models18b")
    return {name: spec[0](root / name) for name, spec in BUILDERS.items()}


@pytest.fixture(scope="module")
def editors(built: dict[str, Path]) -> dict[str, Editor]:
    return {name: Editor.from_pretrained(path, progress=False) for name, path in built.items()}


def _latents(ed: Editor, change: np.ndarray, strength: float = 1.0, num_images: int = 1, steps: int = STEPS,
             prompt: str = "a red cat", **kw: Any) -> torch.Tensor:
    return ed.edit(sample_image(64, 64, seed=3), change, prompt, num_inference_steps=steps, seed=11,
                   strength=strength, num_images=num_images, output_type="latent", **kw)


# --- both families -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(BUILDERS))
def test_family_detected_halves_and_batch(name: str, built: dict[str, Path], editors: dict[str, Editor]) -> None:
    import json

    ed = editors[name]
    assert (type(ed.pipe).__name__, ed.family) == BUILDERS[name][1:]
    saved = json.loads((built[name] / "model_index.json").read_text())["_class_name"]
    assert saved == ("KolorsPipeline" if name == "kolors" else "HiDreamImagePipeline")
    img = sample_image(64, 64, seed=3)
    out = ed.edit(img, HALF, "a red cat", num_inference_steps=STEPS, seed=7, num_images=2)
    src = np.asarray(img)
    for res in out:
        assert res.size == img.size
        arr = np.asarray(res)
        np.testing.assert_array_equal(arr[:, :32], src[:, :32])
        assert np.abs(arr[:, 32:].astype(int) - src[:, 32:]).mean() > 5
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))
    assert ed.last_run.total_steps == STEPS and len(ed.last_run.records) == STEPS - 1
    assert ed.last_run.work_size == ((64, 64) if name == "kolors" else HIDREAM_SIZE)
    if name == "hidream":  # its one area: (default_sample_size * vae_scale_factor)^2, 1024^2 with a x8 VAE
        assert HIDREAM_SIZE == (ed.pipe.default_sample_size * ed.pipe.vae_scale_factor,) * 2


@pytest.mark.parametrize("name", list(BUILDERS))
def test_black_half_ends_nearer_the_clean_latents(name: str, editors: dict[str, Editor]) -> None:
    ed = editors[name]
    half = _latents(ed, HALF, steps=6)
    clean = ed.last_run.reference.clean  # type: ignore[union-attr]
    full = _latents(ed, ONE, steps=6)
    w = half.shape[-1] // 2
    d_half = (half[..., :w] - clean[..., :w]).abs().mean()
    d_full = (full[..., :w] - clean[..., :w]).abs().mean()
    assert d_half < 0.6 * d_full, (float(d_half), float(d_full))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_the_prompt_reaches_the_model_and_stays_finite(name: str, editors: dict[str, Editor]) -> None:
    # A random ChatGLM as diffusers builds it (skip_init, RMSNorm weights from torch.empty) gives NaN.
    red, blue = (_latents(editors[name], HALF, prompt=p) for p in ("a red cat", "a blue dog"))
    assert torch.isfinite(red).all() and torch.isfinite(blue).all()
    assert not torch.equal(red, blue)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_cli_model_folder(name: str, built: dict[str, Path], tmp_path: Path) -> None:
    img, cmap, out = tmp_path / "in.png", tmp_path / "map.png", tmp_path / "out.png"
    sample_image(64, 64, seed=3).save(img)
    Image.fromarray((HALF * 255).astype(np.uint8), "L").save(cmap)
    res = CliRunner().invoke(app, ["edit", str(img), "--map", str(cmap), "-p", "a red cat", "-o", str(out),
                                   "--model", str(built[name]), "--steps", "3", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert read_metadata(out)["family"] == BUILDERS[name][2]
    result = np.asarray(Image.open(out))
    assert result.shape == (64, 64, 3)
    np.testing.assert_array_equal(result[:, :32], np.asarray(Image.open(img))[:, :32])


# --- Kolors: diffusers' own img2img, unchanged --------------------------------------------------------

@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_kolors_full_change_equals_its_img2img(strength: float, editors: dict[str, Editor]) -> None:
    import diffusers

    ed = editors["kolors"]
    ours = _latents(ed, ONE, strength=strength, num_images=2)
    sibling = diffusers.KolorsImg2ImgPipeline(**ed.pipe.components)
    sibling.set_progress_bar_config(disable=True)
    ref = sibling("a red cat", image=sample_image(64, 64, seed=3), strength=strength, num_inference_steps=STEPS,
                  num_images_per_prompt=2, generator=torch.Generator().manual_seed(11), height=64, width=64,
                  output_type="latent").images
    assert ours.shape == ref.shape == (2, 4, 8, 8)
    assert torch.equal(ours, ref)


def test_kolors_text_to_image_pipeline_given_switches_to_img2img(editors: dict[str, Editor]) -> None:
    import diffusers

    t2i = diffusers.KolorsPipeline(**editors["kolors"].pipe.components)
    ed = Editor(t2i, progress=False)
    assert (type(ed.pipe).__name__, ed.family) == ("KolorsImg2ImgPipeline", "generic")
    assert ed.pipe.unet is t2i.unet  # the same weights, no copy


# --- HiDream: our own noising, at the size it generates at --------------------------------------------

def _first_denoiser_input(ed: Editor, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(our latents as the output, the hidden_states of the transformer's first call)."""
    seen: list[torch.Tensor] = []
    handle = ed.pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].clone()) if not seen else None,
        with_kwargs=True)
    try:
        out = _latents(ed, ONE, strength=strength, num_images=2)
    finally:
        handle.remove()
    return out, seen[0]


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_hidream_starts_from_the_schedulers_noising_of_the_image(strength: float, editors: dict[str, Editor]) -> None:
    import diffusers
    from diffusers.pipelines.hidream_image.pipeline_hidream_image import calculate_shift
    from diffusers.utils.torch_utils import randn_tensor

    ed = editors["hidream"]
    _, first = _first_denoiser_input(ed, strength)
    pipe = ed.pipe
    # Independently: the input at the size HiDream generates at, encoded by its VAE with the seed's
    # generator, normalised as its decode inverts it, noised by a fresh copy of its scheduler to the
    # first step diffusers' img2img rule keeps for this strength.
    generator = torch.Generator().manual_seed(11)
    image = sample_image(64, 64, seed=3).resize(HIDREAM_SIZE, Image.Resampling.LANCZOS)
    pixels = pipe.image_processor.preprocess(image, height=HIDREAM_SIZE[1], width=HIDREAM_SIZE[0])
    with torch.inference_mode():
        z = pipe.vae.encode(pixels).latent_dist.sample(generator)
        clean = ((z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor).repeat(2, 1, 1, 1)
        noise = randn_tensor(tuple(clean.shape), generator=generator, dtype=clean.dtype)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(STEPS, mu=calculate_shift(pipe.transformer.max_seq))
        t_start = int(max(STEPS - min(STEPS * strength, STEPS), 0))
        start = scheduler.scale_noise(clean, scheduler.timesteps[t_start:t_start + 1].repeat(2), noise)
    assert first.shape == (4, 4, 128, 128)  # classifier-free guidance: [latents] * 2
    assert torch.equal(first[:2], start) and torch.equal(first[2:], start)
    assert ed.last_run.total_steps == STEPS - t_start


def test_hidream_size_it_chooses_is_learned_and_the_result_comes_back_at_the_input_size(
        editors: dict[str, Editor]) -> None:
    ed = editors["hidream"]
    img = sample_image(96, 64, seed=4)  # 3:2, HiDream scales it to its area: 156 x 104
    change = np.zeros((64, 96), np.float32)
    change[:, 48:] = 1.0
    out = ed.edit(img, change, "a red cat", num_inference_steps=3, seed=2)[0]
    assert out.size == (96, 64)
    assert ed.last_run.work_size == (156, 104) == ed.work_size(96, 64)
    assert ed.last_run.pipeline_calls == 1  # the call that ran; the one refused before it is not counted
    np.testing.assert_array_equal(np.asarray(out)[:, :48], np.asarray(img)[:, :48])
    assert np.abs(np.asarray(out)[:, 48:].astype(int) - np.asarray(img)[:, 48:]).mean() > 5


def test_hidream_whose_size_never_settles_is_refused_in_one_line(editors: dict[str, Editor]) -> None:
    import diffusers

    class Drifting(diffusers.HiDreamImagePipeline):  # a third-party pipeline whose size moves every call
        def check_inputs(self, *args: Any, **kwargs: Any) -> None:
            self.default_sample_size += 8
            super().check_inputs(*args, **kwargs)

    ed = Editor(Drifting(**editors["hidream"].pipe.components), progress=False)
    assert ed.family == "own-noise"
    with pytest.raises(DiffDiffError) as info:
        ed.edit(sample_image(64, 64, seed=3), HALF, "a red cat", num_inference_steps=2, seed=1)
    message = str(info.value)
    assert "\n" not in message and "Drifting generates at a size of its own choosing" in message
    assert "64x64, 128x128, 136x136, 144x144" in message
    assert ed.adapter.chosen_sizes == {}  # type: ignore[attr-defined]  # nothing wrong is remembered


def test_hidream_folder_without_its_llama_takes_the_one_passed_in(editors: dict[str, Editor], tmp_path: Path) -> None:
    import diffusers

    # As HiDream is distributed: the Llama 3.1 text encoder is loaded separately and handed to from_pretrained.
    pipe = editors["hidream"].pipe
    diffusers.HiDreamImagePipeline(**{**pipe.components, "text_encoder_4": None, "tokenizer_4": None}).save_pretrained(
        tmp_path / "hidream-no-llama")
    ed = Editor.from_pretrained(tmp_path / "hidream-no-llama", progress=False, tokenizer_4=pipe.tokenizer_4,
                                text_encoder_4=pipe.text_encoder_4)
    assert (type(ed.pipe).__name__, ed.family) == ("HiDreamImagePipeline", "own-noise")
    assert ed.pipe.text_encoder_4 is pipe.text_encoder_4 and ed.pipe.tokenizer_4 is pipe.tokenizer_4
