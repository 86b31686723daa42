"""DiffEdit and automatic change maps (issue #5): maps, inversion, masked decoding, CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffdiff import DiffDiffError, Editor, read_metadata
from diffdiff.automap import normalise_map
from diffdiff.cli import app
from diffdiff.denoise import NoisePredictor, encode_image
from diffdiff.diffedit import decode, decoding_timesteps, invert
from diffdiff.mapsettings import MAP_ENCODE_STRENGTH, MAP_PEAK_RATIO
from diffdiff.testing import sample_image

# Latent cells (rows, cols) where the stand-in denoiser listens to the prompt; x8 in pixels.
REGION = (slice(2, 5), slice(4, 7))


class PromptInRegionUNet(torch.nn.Module):
    """A stand-in UNet: prompt-independent output, plus a prompt-dependent term ONLY in ``REGION``.

    Same call signature as diffusers' UNet2DConditionModel (SDXL's ``added_cond_kwargs`` accepted).
    """

    def __init__(self, real: Any, latent_hw: tuple[int, int] = (8, 8)) -> None:
        super().__init__()
        self.config = real.config
        g = torch.Generator().manual_seed(0)
        dim = real.config.cross_attention_dim
        self.register_buffer("proj", torch.randn(dim, 4, generator=g))
        region = torch.zeros(1, 1, *latent_hw)
        region[(0, 0, *REGION)] = 1.0
        self.register_buffer("region", region)

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                added_cond_kwargs: Any = None, return_dict: bool = True, **kw: Any) -> tuple[torch.Tensor]:
        prompt = encoder_hidden_states.mean(1) @ self.proj  # (B, 4): one number per channel and prompt
        out = torch.tanh(sample) + self.region * prompt[:, :, None, None]
        return (out,)


def _fake_unet(editor: Editor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(editor.pipe, "unet", PromptInRegionUNet(editor.pipe.unet))


def _unit_latents(seed: int = 0) -> torch.Tensor:
    """Smooth latents with unit spread, like a real VAE's scaled latents (the tiny VAE's are ~0.05)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.randn(1, 4, 4, 4, generator=g), size=(8, 8), mode="bilinear")
    return x / x.std()


def _rect_mask(w: int = 64, h: int = 64) -> Image.Image:
    arr = np.zeros((h, w), np.uint8)
    arr[8:40, 24:56] = 255
    return Image.fromarray(arr, "L")


# ---------------------------------------------------------------------------------------------- maps
def test_auto_map_continuous_image_size_and_deterministic(sd_editor: Editor) -> None:
    img = sample_image(70, 50, seed=1)  # not a multiple of 8: the map still has the image's size
    a = sd_editor.auto_map(img, "a cat", "a dog", num_maps=3, seed=7)
    b = sd_editor.auto_map(img, "a cat", "a dog", num_maps=3, seed=7)
    c = sd_editor.auto_map(img, "a cat", "a dog", num_maps=3, seed=8)
    assert a.mode == "L" and a.size == img.size
    assert len(np.unique(np.asarray(a))) > 2
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    assert a.info["diffdiff"]["seed"] == 7 and a.info["diffdiff"]["target_prompt"] == "a dog"


def test_auto_map_same_prompts_is_empty(sd_editor: Editor, image64: Image.Image) -> None:
    m = sd_editor.auto_map(image64, "a cat", "a cat", num_maps=2, seed=0)
    assert np.asarray(m).max() == 0


def _around(margin: int, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Pixels of ``REGION`` grown by ``margin`` pixels."""
    out = np.zeros(shape, bool)
    r, c = REGION
    out[max(0, r.start * 8 - margin):r.stop * 8 + margin, max(0, c.start * 8 - margin):c.stop * 8 + margin] = True
    return out


@pytest.mark.parametrize("editor_name", ["sd_editor", "sdxl_editor"])
def test_auto_map_lights_up_where_the_prompt_matters(
    editor_name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, image64: Image.Image
) -> None:
    editor: Editor = request.getfixturevalue(editor_name)
    _fake_unet(editor, monkeypatch)
    inside = _around(0)

    # Unsmoothed: the region, exactly (bilinear upsampling softens a half cell = 4 px at the edge).
    sharp = np.asarray(editor.auto_map(image64, "a red apple", "a green pear", num_maps=4, seed=0, smooth=0),
                       np.float64) / 255
    assert sharp[_around(-4)].min() == 1.0
    assert sharp[~_around(4)].max() == 0.0
    found = sharp > 0.5
    assert (found & inside).sum() / (found | inside).sum() > 0.9

    # Smoothing sigma = 1 latent cell (the former default): the peak stays there, the spill fades within 3 cells.
    m = np.asarray(editor.auto_map(image64, "a red apple", "a green pear", num_maps=4, seed=0, smooth=1.0,
                                   clamp_ratio=3.0), np.float64) / 255
    assert inside[np.unravel_index(np.argmax(m), m.shape)]
    assert m[inside].mean() > 0.8
    assert m[inside].mean() > 4 * m[~inside].mean()
    assert m[~_around(24)].max() < 0.05
    found = m > 0.5
    assert (found & inside).sum() / (found | inside).sum() > 0.5


def test_normalise_map_is_robust_to_outliers() -> None:
    raw = torch.ones(1, 1, 8, 8)
    raw[0, 0, 0, 0] = 1000.0  # one hot pixel must not squash the rest to black
    out = normalise_map(raw, clamp_ratio=3.0)
    assert float(out.max()) == 1.0
    assert abs(float(out[0, 0, 4, 4]) - 1 / 3) < 1e-6  # the background keeps DiffEdit's level 1/ratio
    assert float(normalise_map(torch.zeros(1, 1, 4, 4)).max()) == 0.0
    two = torch.ones(1, 1, 8, 8)
    two[0, 0, 0, :2] = 1000.0  # nor can two: the peak is the third-largest cell
    assert abs(float(normalise_map(two, clamp_ratio=3.0)[0, 0, 4, 4]) - 1 / 3) < 1e-6


def test_normalise_map_without_peak_is_diffusers_cut() -> None:
    """README: peak_ratio=0, clamp_ratio=3 is diffusers' generate_mask cut (its code, on a mean that
    ignores the top 1 % of cells)."""
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(1, 1, 32, 32, generator=g) ** 3
    flat = raw.flatten().double()
    mean = flat.clamp(max=float(torch.quantile(flat, 0.99, interpolation="lower"))).mean()
    # diffusers.StableDiffusionDiffEditPipeline.generate_mask, mask_thresholding_ratio=3.0:
    clamp_magnitude = mean * 3.0
    semantic = raw.double().clamp(0, clamp_magnitude) / clamp_magnitude
    theirs = torch.where(semantic <= 0.5, 0, 1).bool()
    ours = normalise_map(raw, clamp_ratio=3.0, peak_ratio=0.0) > 0.5
    assert torch.equal(ours, theirs) and 0 < int(ours.sum()) < raw.numel()


def test_normalise_map_marks_a_large_object_the_mean_rule_misses() -> None:
    """``map > 0.5`` is the cells above peak_ratio/2 of the peak and above clamp_ratio/2 of the mean."""
    raw = torch.ones(1, 1, 16, 16)
    raw[0, 0, :8, :8] = 5.0  # a quarter of the map, 5x the rest: the mean is 2
    obj = torch.zeros(16, 16, dtype=torch.bool)
    obj[:8, :8] = True
    assert not (normalise_map(raw, clamp_ratio=7.0, peak_ratio=0.0)[0, 0] > 0.5).any()  # the mean rule at 3.5x: 7 > 5
    assert torch.equal(normalise_map(raw, clamp_ratio=3.0, peak_ratio=0.8)[0, 0] > 0.5, obj)  # > 2 and > 3
    assert torch.equal(normalise_map(raw, clamp_ratio=3.0, peak_ratio=0.0)[0, 0] > 0.5, obj)  # diffusers: > 3
    # the peak term removes what diffusers' rule keeps: a faint halo at 3.5 (above 1.5x the mean, below 40 % of 9)
    raw[0, 0, 0, 0] = raw[0, 0, 0, 1] = raw[0, 0, 1, 0] = 9.0
    raw[0, 0, 12:, 12:] = 3.5
    halo = normalise_map(raw, clamp_ratio=3.0, peak_ratio=0.0)[0, 0] > 0.5
    peak = normalise_map(raw, clamp_ratio=3.0, peak_ratio=0.8)[0, 0] > 0.5
    assert halo[12:, 12:].all() and not peak[12:, 12:].any() and peak[:8, :8].all()


# --------------------------------------------------------------------------------------- inversion
@pytest.mark.parametrize("editor_name", ["sd_editor", "sdxl_editor"])
def test_inversion_then_decoding_round_trips(editor_name: str, request: pytest.FixtureRequest) -> None:
    editor: Editor = request.getfixturevalue(editor_name)
    pred = NoisePredictor(editor.pipe, editor.adapter.name, 64, 64)
    cond, uncond = pred.encode("a photo of a cat")
    x0 = _unit_latents()
    ts = decoding_timesteps(pred, 30, 0.5)
    inverted = invert(pred, x0, ts, cond, uncond, guidance=1.0)
    out, _ = decode(pred, inverted, x0, ts, torch.ones(1, 1, 8, 8), cond, uncond, guidance=1.0)
    travelled = float((inverted[0] - x0).norm() / x0.norm())
    error = float((out - x0).norm() / x0.norm())
    assert travelled > 0.3  # the start really was noisy ...
    assert error < 0.05, error  # ... and decoding under the same prompt comes back
    # A different prompt for decoding does not come back as closely: the test can fail.
    other, other_u = pred.encode("zzz qqq")
    out2, _ = decode(pred, inverted, x0, ts, torch.ones(1, 1, 8, 8), other, other_u, guidance=1.0)
    assert float((out2 - x0).norm() / x0.norm()) > 2 * error


def test_decoding_keeps_the_inverted_trajectory_outside_the_mask(sd_editor: Editor) -> None:
    pred = NoisePredictor(sd_editor.pipe, "sd", 64, 64)
    cond, uncond = pred.encode("a cat")
    tgt, tgt_u = pred.encode("a dog")
    x0 = _unit_latents(1)
    ts = decoding_timesteps(pred, 10, 0.6)
    inverted = invert(pred, x0, ts, cond, uncond)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    out, hook = decode(pred, inverted, x0, ts, mask, tgt, tgt_u, guidance=3.0)
    outside = mask.expand_as(out) == 0
    assert torch.equal(out[outside], x0.expand_as(out)[outside])
    assert not torch.allclose(out[~outside], x0.expand_as(out)[~outside], atol=1e-3)
    # The replacement ran through Differential Diffusion's hook after every step but the last.
    assert len(hook.records) == len(ts) - 1
    assert all(abs(r.free_fraction - float(mask.mean())) < 1e-6 for r in hook.records)


# ---------------------------------------------------------------------------------------- diffedit
def test_diffedit_pixels_outside_mask_identical(sd_editor: Editor, image64: Image.Image) -> None:
    mask = _rect_mask()
    out = sd_editor.diffedit(image64, "a cat", "a dog", mask=mask, num_inference_steps=8, seed=3)
    assert len(out) == 1 and out[0].size == image64.size
    res, src = np.asarray(out[0]), np.asarray(image64.convert("RGB"))
    outside = np.asarray(mask) == 0
    assert np.array_equal(res[outside], src[outside])
    assert np.abs(res[~outside].astype(int) - src[~outside]).mean() > 1  # the inside was regenerated
    meta = out[0].info["diffdiff"]
    assert meta["source_prompt"] == "a cat" and meta["prompt"] == "a dog" and meta["mask"] == "given"
    assert meta["auto_map"] is None


def test_diffedit_deterministic_for_a_seed(sd_editor: Editor, image64: Image.Image,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_unet(sd_editor, monkeypatch)  # a denoiser whose automatic mask is not empty
    kw: dict[str, Any] = dict(num_inference_steps=6, num_maps=2, eta=0.5)
    a = sd_editor.diffedit(image64, "a red apple", "a green pear", seed=11, **kw)[0]
    mask = sd_editor.last_diffedit.mask
    b = sd_editor.diffedit(image64, "a red apple", "a green pear", seed=11, **kw)[0]
    assert 0 < mask.mean() < 1
    assert a.tobytes() == b.tobytes()
    # The metadata records how the automatic mask was made: those settings give the same mask again.
    rec = a.info["diffdiff"]["auto_map"]
    assert rec["num_maps"] == 2 and rec["encode_strength"] == MAP_ENCODE_STRENGTH and "timestep" in rec
    settings = {k: v for k, v in rec.items() if k != "timestep"}
    again = np.asarray(sd_editor.auto_map(image64, "a red apple", "a green pear", seed=11, **settings), np.float32) / 255
    assert np.mean((again > a.info["diffdiff"]["threshold"]) != (mask > 0.5)) < 0.01  # 8-bit rounding at the edge


def test_diffedit_latent_output_and_round_trip_through_editor(sdxl_editor: Editor, image64: Image.Image) -> None:
    lat = sdxl_editor.diffedit(image64, "a cat", "a cat", mask=np.ones((64, 64)), guidance_scale=1.0,
                               num_inference_steps=10, output_type="latent", seed=0)
    x0 = encode_image(sdxl_editor, image64)
    assert lat.shape == x0.shape
    run = sdxl_editor.last_diffedit
    assert len(run.inverted) == 5 and run.timesteps == sorted(run.timesteps, reverse=True)


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 1.5}, "threshold"),
    ({"encode_ratio": 0}, "encode ratio"),
    ({"num_inference_steps": 1, "encode_ratio": 0.5}, "no step"),
    ({"guidance_scale": -1.0}, "guidance"),
    ({"seed": -3}, "seed"),
    ({"mask": np.ones((10, 80))}, "aspect"),
])
def test_diffedit_rejects_bad_input(sd_editor: Editor, image64: Image.Image, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DiffDiffError, match=message):
        sd_editor.diffedit(image64, "a cat", "a dog", **kwargs)


def test_auto_map_rejects_bad_input(sd_editor: Editor, image64: Image.Image) -> None:
    with pytest.raises(DiffDiffError, match="num_maps"):
        sd_editor.auto_map(image64, "a", "b", num_maps=0)
    with pytest.raises(DiffDiffError, match="encode strength"):
        sd_editor.auto_map(image64, "a", "b", encode_strength=1.5)


# --------------------------------------------------------------------------------------------- CLI
runner = CliRunner()


@pytest.fixture
def files(tmp_path: Path, image64: Image.Image) -> Path:
    image64.save(tmp_path / "in.png")
    _rect_mask().save(tmp_path / "mask.png")
    return tmp_path


@pytest.mark.parametrize("model", ["tiny_sd_path", "tiny_sdxl_path"])
def test_cli_diffedit_map_auto_and_edit_auto_map(model: str, request: pytest.FixtureRequest, files: Path) -> None:
    path = str(request.getfixturevalue(model))
    common = ["--model", path, "--seed", "1"]
    r = runner.invoke(app, ["diffedit", str(files / "in.png"), "--source", "a cat", "--target", "a dog",
                            "--mask", str(files / "mask.png"), "--steps", "6", "--save-map", str(files / "used.png"),
                            "-o", str(files / "de.png"), *common])
    assert r.exit_code == 0, r.output
    src, out = np.asarray(Image.open(files / "in.png")), np.asarray(Image.open(files / "de.png"))
    outside = np.asarray(Image.open(files / "mask.png")) == 0
    assert np.array_equal(out[outside], src[outside])
    assert read_metadata(files / "de.png")["source_prompt"] == "a cat"
    assert np.array_equal(np.asarray(Image.open(files / "used.png")) > 0, ~outside)

    r = runner.invoke(app, ["map", "auto", str(files / "in.png"), "--source", "a cat", "--target", "a dog",
                            "--num-maps", "2", "-o", str(files / "auto.png"), *common])
    assert r.exit_code == 0, r.output
    m = Image.open(files / "auto.png")
    assert m.mode == "L" and m.size == (64, 64) and len(np.unique(np.asarray(m))) > 2
    assert read_metadata(files / "auto.png")["target_prompt"] == "a dog"

    r = runner.invoke(app, ["edit", str(files / "in.png"), "--prompt", "a dog", "--auto-map", "a cat",
                            "--steps", "4", "-o", str(files / "ed.png"), *common])
    assert r.exit_code == 0, r.output
    assert read_metadata(files / "ed.png")["auto_map_source"] == "a cat"
    made = read_metadata(files / "ed.png")["auto_map"]  # how the map was made, as the map itself records it
    assert made["encode_strength"] == MAP_ENCODE_STRENGTH and made["peak_ratio"] == MAP_PEAK_RATIO and "timestep" in made


@pytest.mark.parametrize("args, message", [
    (["--mask", "missing.png"], "mask file"),
    (["--threshold", "2"], "threshold"),
    (["--save-map", "nodir/x.png"], "does not exist"),
])
def test_cli_diffedit_errors_are_one_line(args: list[str], message: str, files: Path, tiny_sd_path: Path) -> None:
    r = runner.invoke(app, ["diffedit", str(files / "in.png"), "--source", "a", "--target", "b", "--model",
                            str(tiny_sd_path), "-o", str(files / "out.png"),
                            *[a if not a.endswith(".png") else str(files / a) for a in args]])
    assert r.exit_code == 1
    assert r.output.strip().startswith("error:") and message in r.output and "Traceback" not in r.output
    assert not (files / "out.png").exists()


def test_cli_edit_needs_exactly_one_map_source(files: Path, tiny_sd_path: Path) -> None:
    r = runner.invoke(app, ["edit", str(files / "in.png"), "--prompt", "x", "--map", str(files / "mask.png"),
                            "--auto-map", "y", "--model", str(tiny_sd_path), "-o", str(files / "out.png")])
    assert r.exit_code == 1 and "--auto-map" in r.output
    assert not (files / "out.png").exists()


def test_readme_states_the_automatic_map_defaults() -> None:
    """README ("Edit from text"): 10 draws at noise level 0.3, unsmoothed, white at 0.8x the peak and
    never below 3x the mean; the CLI shows the same defaults."""
    from diffdiff import mapsettings as ms

    assert (ms.MAP_NUM_MAPS, ms.MAP_ENCODE_STRENGTH, ms.MAP_SMOOTH, ms.MAP_PEAK_RATIO, ms.MAP_CLAMP_RATIO) == \
        (10, 0.3, 0.0, 0.8, 3.0)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for text in ("`encode_strength` (default 0.3", "`peak_ratio=0.8`", "`clamp_ratio=3`", "`num_maps` noise draws (default 10)"):
        assert text in " ".join(readme.split()), text
    r = CliRunner().invoke(app, ["map", "auto", "--help"], env={"COLUMNS": "300"})
    assert "[default: 0.3]" in r.output and "[default: 10]" in r.output
