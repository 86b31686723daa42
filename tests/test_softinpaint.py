"""Soft-inpainting: far pixels byte-exact, the hole regenerated, the ring in between."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffdiff.changemap import to_latent_map
from diffdiff.cli import app
from diffdiff.errors import DiffDiffError
from diffdiff.io import read_metadata
from diffdiff.softinpaint import soft_inpaint_map
from diffdiff.testing import sample_image

STEPS = 6
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # "only N steps" is expected at few steps


def square_mask(size: int, lo: int, hi: int) -> Image.Image:
    m = Image.new("L", (size, size), 0)
    m.paste(255, (lo, lo, hi, hi))
    return m


def test_soft_inpaint_far_pixels_exact_hole_changed(sd_editor, image64):
    mask = square_mask(64, 24, 40)
    out = sd_editor.soft_inpaint(image64, mask, 3.0, "a yellow flower", num_inference_steps=STEPS, seed=4)
    assert len(out) == 1 and out[0].size == image64.size
    soft = soft_inpaint_map(mask, 3.0, image64.size)
    res = np.asarray(out[0]).astype(int)
    src = np.asarray(image64.convert("RGB")).astype(int)
    far = soft == 0
    assert far.sum() > 0.5 * far.size
    assert np.array_equal(res[far], src[far])  # outside 3 sigma: byte-identical
    hole = np.asarray(mask) == 255
    assert np.abs(res[hole] - src[hole]).mean() > 5  # regenerated
    meta = out[0].info["diffdiff"]
    assert meta["tool"] == "soft-inpaint" and meta["softness"] == 3.0


def test_soft_inpaint_ring_changes_less_than_the_hole_in_latent_space(sd_editor):
    # 96 px -> a 12 x 12 latent grid: room for a hole, a ring and untouched cells.
    image = sample_image(96, 96, seed=7)
    mask = square_mask(96, 40, 56)
    lat = sd_editor.soft_inpaint(image, mask, 5.0, "a yellow flower", num_inference_steps=STEPS, seed=4,
                                 output_type="latent")
    clean = sd_editor.last_run.reference.clean
    dev = (lat - clean).abs().mean(1)[0]  # (h, w) deviation from the original latents
    cell = to_latent_map(soft_inpaint_map(mask, 5.0, (96, 96)), 12, 12)[0, 0]
    hole, ring, far = cell >= 0.99, (cell > 0.05) & (cell < 0.6), cell == 0
    assert hole.any() and ring.any() and far.any()
    assert dev[hole].mean() > dev[ring].mean() > dev[far].mean()


def test_soft_inpaint_map_errors():
    with pytest.raises(DiffDiffError, match="no hole"):
        soft_inpaint_map(Image.new("L", (32, 32), 0), 2.0, (32, 32))
    with pytest.raises(DiffDiffError):
        soft_inpaint_map(square_mask(32, 8, 16), -1.0, (32, 32))
    with pytest.raises(DiffDiffError):
        soft_inpaint_map(square_mask(32, 8, 16), 2.0, (64, 32))  # aspect mismatch


def test_soft_inpaint_mask_resized_to_image_and_softness_in_image_pixels():
    soft = soft_inpaint_map(square_mask(32, 8, 16), 2.0, (64, 64))
    assert soft.shape == (64, 64)
    assert np.all(soft[16:32, 16:32] == 1.0)
    assert soft[24, 31 + 6] == 0.0 and soft[24, 31 + 5] > 0  # zero from 3 * 2 image pixels out (hole ends at 31)


def test_soft_inpaint_rejects_polarity(sd_editor, image64):
    with pytest.raises(DiffDiffError):
        sd_editor.soft_inpaint(image64, square_mask(64, 8, 16), 2.0, "x", polarity="keep")


def test_cli_soft_inpaint(tmp_path: Path, tiny_sd_path, image64):
    image64.save(tmp_path / "img.png")
    square_mask(64, 24, 40).save(tmp_path / "mask.png")
    out, smap = tmp_path / "out.png", tmp_path / "soft.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(app, ["soft-inpaint", str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"),
                                       "--softness", "2", "--prompt", "a flower", "--model", str(tiny_sd_path),
                                       "--steps", "4", "--seed", "1", "-o", str(out), "--save-map", str(smap)])
    assert res.exit_code == 0, res.output
    with Image.open(out) as img:
        res_px = np.asarray(img.convert("RGB"))
    with Image.open(smap) as m:
        far = np.asarray(m) == 0
    assert np.array_equal(res_px[far], np.asarray(image64.convert("RGB"))[far])
    assert read_metadata(out)["mask_file"] == "mask.png"


@pytest.mark.parametrize(
    "extra",
    [
        ["--mask", "{missing}", "--softness", "2"],
        ["--mask", "{empty}", "--softness", "2"],
        ["--mask", "{mask}", "--softness", "-2"],
        ["--mask", "{mask}", "--softness", "2", "--strength", "3"],
    ],
)
def test_cli_soft_inpaint_rejects_bad_input(tmp_path: Path, image64, extra):
    image64.save(tmp_path / "img.png")
    square_mask(64, 24, 40).save(tmp_path / "mask.png")
    Image.new("L", (64, 64), 0).save(tmp_path / "empty.png")
    out = tmp_path / "out.png"
    fill = {"missing": str(tmp_path / "nope.png"), "empty": str(tmp_path / "empty.png"), "mask": str(tmp_path / "mask.png")}
    res = CliRunner().invoke(app, ["soft-inpaint", str(tmp_path / "img.png"), "--prompt", "x", "--model",
                                   str(tmp_path / "no-model"), "-o", str(out), *[a.format(**fill) for a in extra]])
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines()[-1].startswith("error: ")
    assert "loading" not in res.output and "Traceback" not in res.output
    assert not out.exists()

