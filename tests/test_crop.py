"""Region crop (diffdiff.crop): box geometry, exact outside pixels, equivalence with a direct edit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from diffdiff import Editor
from diffdiff.crop import crop_box, native_resolution, upscaled_size
from diffdiff.errors import DiffDiffError
from diffdiff.testing import sample_image

pytestmark = pytest.mark.filterwarnings("ignore::diffdiff.editor.DiffDiffWarning")  # 4-step runs warn by design
KW = dict(prompt="a red apple", num_inference_steps=4, seed=7)


def _spot(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A change map that is 1 inside ``box`` (left, top, right, bottom) and 0 elsewhere."""
    m = np.zeros((h, w), np.float32)
    left, top, right, bottom = box
    m[top:bottom, left:right] = 1.0
    return m


# geometry ------------------------------------------------------------------------------------------
def test_crop_box_pads_snaps_and_clamps() -> None:
    m = _spot(200, 136, (150, 40, 190, 60))
    # cols 150..189 padded by 8 -> 142..198, snapped out to 136, 64 wide -> 136..200 (image edge)
    assert crop_box(m, padding=8, multiple=8) == (136, 32, 200, 72)
    # Padding past the corner is clamped to the image.
    assert crop_box(_spot(64, 64, (0, 0, 4, 4)), padding=32, multiple=8) == (0, 0, 40, 40)
    # A box wider than the image is the whole side.
    assert crop_box(_spot(100, 60, (10, 10, 90, 50)), padding=32, multiple=8) == (0, 0, 100, 60)
    assert crop_box(np.zeros((16, 16), np.float32)) is None
    with pytest.raises(DiffDiffError):
        crop_box(m, padding=-1)


@settings(max_examples=200, deadline=None)
@given(
    w=st.integers(1, 300), h=st.integers(1, 300), pad=st.integers(0, 64), mult=st.sampled_from([1, 8, 16]),
    data=st.data(),
)
def test_crop_box_properties(w: int, h: int, pad: int, mult: int, data: st.DataObject) -> None:
    x0 = data.draw(st.integers(0, w - 1))
    y0 = data.draw(st.integers(0, h - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    y1 = data.draw(st.integers(y0 + 1, h))
    box = crop_box(_spot(w, h, (x0, y0, x1, y1)), padding=pad, multiple=mult)
    assert box is not None
    left, top, right, bottom = box
    assert 0 <= left < right <= w and 0 <= top < bottom <= h  # inside the image
    assert left <= x0 and top <= y0 and right >= x1 and bottom >= y1  # holds every changed pixel
    # padding kept wherever the image has room for it
    assert left <= max(0, x0 - pad) and right >= min(w, x1 + pad)
    assert top <= max(0, y0 - pad) and bottom >= min(h, y1 + pad)
    # whole latent cells, unless the box spans the whole side
    assert (right - left) % mult == 0 or (left, right) == (0, w)
    assert (bottom - top) % mult == 0 or (top, bottom) == (0, h)


def test_native_resolution_and_upscale(sd_editor: Editor) -> None:
    # tiny SD: UNet sample_size 8 x VAE scale 8
    assert native_resolution(sd_editor) == 64
    assert upscaled_size(sd_editor, 16, 16, "native") == (64, 64)
    assert upscaled_size(sd_editor, 16, 32, 128) == (88, 184)  # area-matched, rounded to multiples of 8
    assert upscaled_size(sd_editor, 96, 96, "native") == (96, 96)  # never downscaled
    with pytest.raises(DiffDiffError):
        upscaled_size(sd_editor, 16, 16, "huge")


# edits ---------------------------------------------------------------------------------------------
def test_crop_outside_byte_identical_inside_changed(sd_editor: Editor) -> None:
    img = sample_image(160, 96, seed=2)
    m = _spot(160, 96, (100, 30, 130, 50))
    out = sd_editor.edit(img, m, crop=True, crop_padding=8, **KW)[0]
    assert out.size == img.size
    meta = out.info["diffdiff"]
    left, top, right, bottom = meta["crop"]["box"]
    assert (left, top, right, bottom) == (88, 16, 144, 64)
    src, res = np.asarray(img), np.asarray(out)
    outside = np.ones(src.shape[:2], bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(res[outside], src[outside])
    assert np.abs(res[m > 0].astype(int) - src[m > 0]).mean() > 5  # the spot was really edited
    # inside the box but outside the map: paste-back keeps those exact too
    assert np.array_equal(res[(m == 0) & ~outside], src[(m == 0) & ~outside])
    # metadata describes the user's inputs, not the crop
    full = sd_editor.edit(img, m, **KW)[0].info["diffdiff"]
    assert meta["image_sha256"] == full["image_sha256"] and meta["map_sha256"] == full["map_sha256"]


def test_crop_equals_direct_edit_of_the_crop(sd_editor: Editor) -> None:
    img = sample_image(128, 128, seed=5)
    m = np.zeros((128, 128), np.float32)
    m[60:80, 20:44] = np.linspace(0.2, 1.0, 24, dtype=np.float32)  # a graded spot
    out = sd_editor.edit(img, m, crop=True, crop_padding=16, num_images=2, **KW)
    left, top, right, bottom = out[0].info["diffdiff"]["crop"]["box"]
    direct = sd_editor.edit(img.crop((left, top, right, bottom)), m[top:bottom, left:right], num_images=2, **KW)
    for a, b in zip(out, direct):
        assert np.array_equal(np.asarray(a)[top:bottom, left:right], np.asarray(b))


def test_crop_native_resolution_returns_original_size(sd_editor: Editor) -> None:
    img = sample_image(128, 128, seed=1)
    m = _spot(128, 128, (60, 60, 68, 68))
    out = sd_editor.edit(img, m, crop=True, crop_padding=4, crop_resolution="native", **KW)[0]
    assert out.size == (128, 128)
    crop = out.info["diffdiff"]["crop"]
    assert crop["box"] == [56, 56, 72, 72] and crop["run_size"] == [64, 64]  # 16 px upscaled to 64
    assert sd_editor.last_run.work_size == (64, 64)
    src, res = np.asarray(img), np.asarray(out)
    outside = np.ones((128, 128), bool)
    outside[56:72, 56:72] = False
    assert np.array_equal(res[outside], src[outside])
    assert not np.array_equal(res[m > 0], src[m > 0])


def test_crop_noop_and_errors(sd_editor: Editor) -> None:
    img = sample_image(64, 64)
    same = sd_editor.edit(img, np.zeros((64, 64), np.float32), crop=True, **KW)[0]
    assert np.array_equal(np.asarray(same), np.asarray(img))
    with pytest.raises(DiffDiffError, match="output_type"):
        sd_editor.edit(img, _spot(64, 64, (8, 8, 16, 16)), crop=True, output_type="latent", **KW)
    with pytest.raises(DiffDiffError, match="crop_padding"):
        sd_editor.edit(img, _spot(64, 64, (8, 8, 16, 16)), crop=True, crop_padding=-4, **KW)


def test_cli_crop(tiny_sd_path: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from diffdiff.cli import app

    img = sample_image(128, 96, seed=4)
    img.save(tmp_path / "in.png")
    Image.fromarray((_spot(128, 96, (80, 8, 100, 24)) * 255).astype(np.uint8), "L").save(tmp_path / "map.png")
    res = CliRunner().invoke(app, [
        "edit", str(tmp_path / "in.png"), "--map", str(tmp_path / "map.png"), "-p", "a cat", "-o",
        str(tmp_path / "out.png"), "--model", str(tiny_sd_path), "--steps", "4", "--seed", "1",
        "--crop", "--crop-padding", "8", "--crop-resolution", "native",
    ])
    assert res.exit_code == 0, res.output
    out = Image.open(tmp_path / "out.png")
    assert out.size == (128, 96)
    src, got = np.asarray(img), np.asarray(out.convert("RGB"))
    assert np.array_equal(got[40:], src[40:]) and np.array_equal(got[:, :72], src[:, :72])
    assert not np.array_equal(got[8:24, 80:100], src[8:24, 80:100])
