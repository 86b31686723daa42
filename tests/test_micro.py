"""The packaged micro model: the floors of issue 14 on a fixed handful of held-out seeds.

The shapes-world generator (grammar, determinism, masks) and the model itself, loaded by name
(``Editor.from_pretrained("micro")``) and with diffusers' own ``from_pretrained``. The tiny
random-weight models stay for exactness tests elsewhere; these are the checks only a trained
model can pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from diffdiff import Editor
from diffdiff.micro import model_path, quality, shapes
from diffdiff.micro.quality import FLOORS, heldout

SEEDS = [heldout(i) for i in range(4)]
STEPS = 12


@pytest.fixture(scope="module")
def micro() -> Editor:
    torch.set_num_threads(2)
    return Editor.from_pretrained("micro", progress=False, device="cpu")


# --- the generator ---------------------------------------------------------------------------------

def test_captions_follow_the_grammar_exactly() -> None:
    seen_styles, seen = set(), set()
    for s in range(300):
        scene = shapes.random_scene(s)
        parts = shapes.parse_caption(scene.caption)
        assert parts is not None, scene.caption
        assert parts["colour"] != parts["background"]
        assert scene.caption == f"a {scene.colour} {scene.shape} on a " + (
            f"{scene.background}" if scene.style == "plain" else f"{scene.style} {scene.background}") + " background"
        assert shapes.MIN_SIZE <= scene.size <= shapes.MAX_SIZE
        seen_styles.add(scene.style)
        seen.update([scene.colour, scene.background, scene.shape])
    assert seen_styles == {"plain", "gradient", "striped"}
    assert seen == set(shapes.COLOURS) | set(shapes.SHAPES)


@pytest.mark.parametrize("text", ["a red red circle on a blue background", "a red circle on a red background",
                                  "a pink circle on a blue background", "a red circle on blue background", "",
                                  "a red circle on a dotted blue background"])
def test_parse_caption_rejects_text_outside_the_grammar(text: str) -> None:
    assert shapes.parse_caption(text) is None


def test_generator_is_deterministic_and_seeds_differ() -> None:
    a, ma, ca = shapes.sample(123)
    b, mb, cb = shapes.sample(123)
    c, _, _ = shapes.sample(124)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(ma, mb) and ca == cb
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_mask_is_the_shape_fully_inside_the_frame() -> None:
    for s in range(50):
        scene = shapes.random_scene(s)
        image, mask = shapes.render(scene)
        arr = np.asarray(image)
        ys, xs = np.nonzero(mask)
        assert ys.min() > 0 and xs.min() > 0 and ys.max() < 63 and xs.max() < 63
        across = xs.max() - xs.min() + 1
        assert abs(across - scene.size) <= 2
        # inside the mask (less its antialiased rim) the nearest palette colour is the caption's
        # shape colour: the shading is mild
        inside = shapes.nearest_palette(arr[ndimage.binary_erosion(mask)])
        assert (inside == shapes.COLOURS.index(scene.colour)).mean() > 0.95
        assert shapes.dominant_colours(image) == (scene.colour, scene.background)


def test_pinned_fields_keep_the_grammar() -> None:
    scene = shapes.random_scene(7, colour="red", shape="circle", background="red")
    assert scene.colour != scene.background and scene.shape == "circle"
    assert shapes.parse_caption(scene.caption) is not None


# --- the packaged model ----------------------------------------------------------------------------

def test_model_folder_is_complete_and_small() -> None:
    root = model_path()
    assert (root / "model_index.json").is_file()
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (root / sub).is_dir(), sub
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size <= 25 * 2**20
    prov = json.loads((root / "provenance.json").read_text())
    for key in ("generator_version", "seed", "vae_steps", "unet_steps", "vae_final_loss", "unet_final_loss",
                "wall_time_s"):
        assert prov[key] is not None, key
    assert prov["generator_version"] == shapes.GENERATOR_VERSION
    assert prov["heldout_seeds_start"] == shapes.HELDOUT_START


def test_loads_with_diffusers_alone() -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model_path())
    pipe.set_progress_bar_config(disable=True)
    assert 3.2e6 < sum(p.numel() for p in pipe.unet.parameters()) < 3.4e6  # README: 3.3 M parameters
    assert pipe.vae.config.latent_channels == 4 and pipe.unet.config.sample_size == 16
    image, _, text = shapes.sample(heldout(0))
    out = pipe(text, image=image, strength=0.5, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (64, 64)


def test_grammar_words_are_single_tokens(micro: Editor) -> None:
    tok = micro.pipe.tokenizer
    for word in shapes.vocabulary():
        assert len(tok.tokenize(word)) == 1, word
    assert tok.tokenize("fox") == ["f", "o", "x</w>"]  # README: unknown words are split into characters


def test_local_folder_named_micro_wins(tmp_path: Path, tiny_sd_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.copytree(tiny_sd_path, tmp_path / "micro")
    monkeypatch.chdir(tmp_path)
    ed = Editor.from_pretrained("micro", progress=False, device="cpu")
    assert ed.pipe.unet.config.block_out_channels == list(
        json.loads((tiny_sd_path / "unet" / "config.json").read_text())["block_out_channels"])
    packaged = json.loads((model_path() / "unet" / "config.json").read_text())["block_out_channels"]
    assert list(ed.pipe.unet.config.block_out_channels) != list(packaged)


def test_vae_round_trip_psnr(micro: Editor) -> None:
    psnr = quality.vae_psnr(micro.pipe, [heldout(i) for i in range(32)])
    assert np.mean(psnr) >= FLOORS["vae_psnr_db"]


def test_prompt_adherence_at_full_change(micro: Editor) -> None:
    res = quality.prompt_adherence(micro, SEEDS + [heldout(i) for i in range(4, 10)], STEPS)
    assert np.mean([r.ok for r in res]) >= FLOORS["prompt_adherence"], [(r.prompt, r.got) for r in res]


BAND_SEEDS = [heldout(i) for i in range(8)]


def test_band_adherence_rises_with_the_map(micro: Editor) -> None:
    """The floor on the means over seeds (benchmarks/QUALITY.md: how the floor is read, and the per-image view)."""
    rows = quality.band_adherence(micro, BAND_SEEDS, STEPS)
    summary = quality.summarise_bands(rows, quality.BANDS)
    assert summary.band0_identical
    assert summary.spearman_of_means >= FLOORS["band_spearman"], summary.means
    assert summary.means[1] > summary.means[0] == 0.0


def test_fan_change_rises_with_strength(micro: Editor) -> None:
    rows = quality.fan_monotonic(micro, BAND_SEEDS, STEPS)
    summary = quality.summarise_bands(rows, np.linspace(0, 1, 5))
    assert summary.band0_identical
    assert summary.spearman_of_means >= FLOORS["fan_spearman"], summary.means


def test_position_balanced_bands_cover_each_level(micro: Editor) -> None:
    row = quality.band_adherence_balanced(micro, [heldout(0)], STEPS)[0]
    assert len(row.changes) == len(quality.BANDS)
    assert row.changes[0] == 0.0 and min(row.changes[1:]) > 0  # level 0 is kept at every position


def test_band_summary_reads_the_floor_on_the_means() -> None:
    """Per-image orders may cross while the means rise; a flat band fails the floor and its rise bound."""
    rising = [quality.Bands([0, 10, 30, 20, 40], 0.9), quality.Bands([0, 20, 10, 40, 50], 0.9)]
    s = quality.summarise_bands(rising, quality.BANDS, boot=200)
    assert s.spearman_of_means == 1.0 and s.per_image_perfect == 0.0
    assert s.means == [0.0, 15.0, 20.0, 30.0, 45.0]
    flat = [quality.Bands([0, 10, 10, 10, 10], 0.7)] * 3
    f = quality.summarise_bands(flat, quality.BANDS, boot=200)
    assert f.spearman_of_means < 1.0 and f.rise_low[1:] == [0.0, 0.0, 0.0]


def test_soft_inpainting_blends_the_border(micro: Editor) -> None:
    """The pooled floor at the table's softness (6 px); per hole the table's median stays above it (QUALITY.md)."""
    res = quality.soft_inpaint_border(micro, SEEDS, softness=6.0, steps=STEPS)
    pooled = np.mean([r.soft for r in res]) / np.mean([r.hard for r in res])
    assert pooled <= FLOORS["soft_border_ratio"], [(r.soft, r.hard) for r in res]


@pytest.fixture(scope="module")
def diffedits(micro: Editor) -> list[quality.Edit]:
    return quality.diffedit_quality(micro, SEEDS, STEPS)


def test_diffedit_mask_finds_the_object(diffedits: list[quality.Edit]) -> None:
    assert np.mean([r.iou for r in diffedits]) >= FLOORS["diffedit_iou"], [r.iou for r in diffedits]


def test_diffedit_leaves_the_rest_unchanged(diffedits: list[quality.Edit]) -> None:
    assert np.mean([r.outside_change for r in diffedits]) <= FLOORS["diffedit_outside_change"]


def test_diffedit_turns_the_object_blue(diffedits: list[quality.Edit]) -> None:
    """The object's colour (most frequent nearest-palette colour of its pixels) is the target's."""
    assert np.mean([r.colour == "blue" for r in diffedits]) >= FLOORS["diffedit_colour"], [r.colour for r in diffedits]
    assert all(r.colour_fraction > 0.5 for r in diffedits), [r.colour_fraction for r in diffedits]


@pytest.mark.xfail(strict=True, reason="the stricter per-pixel reading is not met by the shipped micro model "
                   "(benchmarks/QUALITY.md): the rim and a regenerated circle a pixel off the old one")
def test_diffedit_turns_90_percent_of_object_pixels_blue(diffedits: list[quality.Edit]) -> None:
    assert np.mean([r.colour_fraction for r in diffedits]) >= FLOORS["diffedit_colour_pixels"]


def test_auto_map_threshold_half_is_the_mask(micro: Editor) -> None:
    """README: `map > 0.5` is DiffEdit's automatic mask, and on the micro model it is not empty."""
    image, mask, src, tgt = quality.diffedit_case(heldout(0))
    amap = np.asarray(micro.auto_map(image, src, tgt, seed=5), np.float32) / 255
    micro.diffedit(image, src, tgt, num_inference_steps=4, seed=5)
    auto = micro.last_diffedit.mask > 0.5
    assert auto.any()
    assert np.array_equal(auto, amap > 0.5 + 0.5 / 255) or (np.mean(auto != (amap > 0.5)) < 0.01)


def test_out_of_grammar_prompt_still_runs(micro: Editor) -> None:
    image, _, _ = shapes.sample(heldout(1))
    cmap = np.zeros((64, 64), np.float32)
    cmap[:, 32:] = 1
    out = micro.edit(image, cmap, "a watercolour fox in the snow, highly detailed!", num_inference_steps=6, seed=0)[0]
    arr, src = np.asarray(out), np.asarray(image)
    assert np.array_equal(arr[:, :28], src[:, :28])
    assert np.abs(arr[:, 40:].astype(int) - src[:, 40:]).mean() > 1


def test_cli_model_micro(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from diffdiff.cli import app

    image, _, _ = shapes.sample(heldout(2))
    image.save(tmp_path / "in.png")
    Image.fromarray(np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1)), "L").save(tmp_path / "map.png")
    res = CliRunner().invoke(app, ["edit", str(tmp_path / "in.png"), "--map", str(tmp_path / "map.png"), "--prompt",
                                   "a blue square on a white background", "--model", "micro", "--steps", "6",
                                   "--seed", "1", "-o", str(tmp_path / "out.png")])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "out.png").size == (64, 64)


def test_serve_micro_is_an_offline_demo(micro: Editor) -> None:
    """`diffdiff serve --model micro`: the API edits a shapes picture towards a caption."""
    import io

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from diffdiff.web import create_app

    image, _, _ = shapes.sample(heldout(3), colour="yellow", background="blue", style="plain")
    half = np.zeros((64, 64), np.uint8)
    half[:, 32:] = 255
    files = {}
    for name, img in (("image", image), ("map", Image.fromarray(half, "L"))):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        files[name] = (f"{name}.png", buf.getvalue(), "image/png")
    with TestClient(create_app(micro, ui=False)) as client:
        r = client.post("/api/edit", files=files, data={"prompt": "a white circle on a red background",
                                                        "steps": "12", "seed": "3"})
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    assert np.array_equal(out[:, :28], np.asarray(image)[:, :28])
    assert np.abs(out[:, 40:].astype(int) - np.asarray(image)[:, 40:]).mean() > 5  # regenerated where allowed


def test_shapes_command_writes_picture_and_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diffdiff.io import read_metadata

    assert shapes.main(["--seed", "5", "-o", str(tmp_path / "p.png"), "--mask", str(tmp_path / "m.png")]) == 0
    image, mask, text = shapes.sample(5)
    assert capsys.readouterr().out.strip() == text
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p.png")), np.asarray(image))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m.png")) > 127, mask)
    assert read_metadata(Image.open(tmp_path / "p.png"))["caption"] == text
    assert shapes.main(["-o", str(tmp_path / "missing" / "p.png")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_every_model_file_ships_as_package_data() -> None:
    """pyproject's package-data globs cover every file of the packaged model (wheels carry it)."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    cfg = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["diffdiff.micro"]
    root = model_path().parent
    files = [f.relative_to(root).as_posix() for f in model_path().rglob("*") if f.is_file()]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not missing, missing


def _train(out: Path, *extra: str) -> int:
    from diffdiff.micro import train

    return train.main(["--out", str(out), "--n-train", "24", "--vae-images", "24", "--vae-steps", "2",
                       "--vae-decay-steps", "1", "--vae-batch", "2", "--unet-batch", "2", "--save-every", "0",
                       "--threads", "1", "--psnr-images", "4", *extra])


def test_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """A stopped run continues from its checkpoint; each step's draws depend on (seed, step) only."""
    from diffdiff.micro import train

    assert _train(tmp_path / "b", "--unet-steps", "2") == 0
    first = torch.load(tmp_path / "b" / "unet.pt", weights_only=False)
    assert _train(tmp_path / "b", "--unet-steps", "3") == 2  # checkpoints there: --resume is required
    assert _train(tmp_path / "b", "--unet-steps", "3", "--resume") == 0
    b = torch.load(tmp_path / "b" / "unet.pt", weights_only=False)
    assert (first["step"], b["step"]) == (2, 3)
    assert any(not torch.equal(v, b["unet"][k]) for k, v in first["unet"].items())  # one more step was taken
    i1, d1, g1 = train.unet_draw(0, 2, 24, 4)
    i2, d2, g2 = train.unet_draw(0, 2, 24, 4)
    assert np.array_equal(i1, i2) and np.array_equal(d1, d2) and torch.equal(torch.randn(3, generator=g1),
                                                                            torch.randn(3, generator=g2))
    assert not np.array_equal(i1, train.unet_draw(0, 3, 24, 4)[0])
    prov = json.loads((tmp_path / "b" / "model" / "provenance.json").read_text())
    assert prov["unet_steps"] == 3 and prov["vae_steps"] == 2 and prov["generator_version"] == shapes.GENERATOR_VERSION
    assert "--unet-steps 3" in prov["command"] and "--resume" not in prov["command"]
    from diffusers import StableDiffusionImg2ImgPipeline

    assert StableDiffusionImg2ImgPipeline.from_pretrained(tmp_path / "b" / "model").vae.config.scaling_factor == \
        pytest.approx(prov["latent_scale"])


def test_auto_map_defaults_localise_better_than_the_previous_ones(micro: Editor) -> None:
    """The defaults (peak rule, noise level 0.3, no smoothing) beat the previous ones (mean rule at
    3.5x, noise level 0.5, smoothing 0.5) and the first ones (1.5x, smoothing 1) at 0.5; the largest
    object is where the mean rule loses most (the object raises the mean it is measured against)."""
    settings = {"now": {}, "previous": {"encode_strength": 0.5, "smooth": 0.5, "clamp_ratio": 7.0, "peak_ratio": 0.0},
                "first": {"encode_strength": 0.5, "smooth": 1.0, "clamp_ratio": 3.0, "peak_ratio": 0.0}}
    ious: dict[str, list[float]] = {k: [] for k in settings}
    cases = [quality.diffedit_case(heldout(i)) for i in range(8)]
    for s, (image, mask, src, tgt) in zip(range(8), cases):
        for name, kw in settings.items():
            m = np.asarray(micro.auto_map(image, src, tgt, seed=s, **kw), np.float32) / 255
            ious[name].append(quality.iou(m > 0.5, mask))
    assert np.mean(ious["now"]) > np.mean(ious["previous"]) > np.mean(ious["first"]), ious
    largest = int(np.argmax([c[1].sum() for c in cases]))
    assert ious["now"][largest] > ious["previous"][largest] + 0.1, ious


def test_quickstart_shows_a_graded_edit(tmp_path: Path) -> None:
    """README's first command: examples/quickstart.py exits 0 only if the left third (map 0) is
    byte-identical and the grey-to-white thirds changed."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    proc = subprocess.run([sys.executable, str(root / "examples" / "quickstart.py"), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "left third byte-identical: True" in proc.stdout
    assert (tmp_path / "compare.png").is_file()
