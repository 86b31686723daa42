"""Strength fan: band map arithmetic, one-edit fans on the tiny SD model, labels, grids, CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffdiff.cli import app
from diffdiff.core import quantised_levels
from diffdiff.errors import DiffDiffError
from diffdiff.fan import band_edges, column_strengths, fan_grid, fan_map
from diffdiff.io import read_metadata

STEPS = 6
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # "only N steps" is expected at few steps


def img2img_steps(n: int, s: float) -> int:
    """diffusers' img2img rule, written out independently: steps executed at strength s."""
    return min(int(n * s), n)


# pure arithmetic ------------------------------------------------------------------------------------
def test_column_strengths_even_with_exact_ends():
    s = column_strengths(5, 0.1, 0.9)
    assert s[0] == 0.1 and s[-1] == 0.9
    assert np.allclose(np.diff(s), 0.2)
    assert column_strengths(1, 0.0, 0.6) == [0.6]
    for bad in ((0, 0, 1), (5, 0.8, 0.2), (5, -0.1, 1), (5, 0, 1.5), (65, 0, 1)):
        with pytest.raises(DiffDiffError):
            column_strengths(*bad)


def test_band_edges_cover_width_in_equal_bands():
    e = band_edges(64, 5)
    assert e[0] == 0 and e[-1] == 64
    widths = np.diff(e)
    assert widths.max() - widths.min() <= 1
    with pytest.raises(DiffDiffError):
        band_edges(3, 5)


@pytest.mark.parametrize("steps, lo, hi", [(10, 0.0, 1.0), (20, 0.1, 0.8), (7, 0.0, 0.6), (50, 0.05, 0.95)])
def test_band_map_gives_each_column_its_img2img_step_count(steps, lo, hi):
    strengths = column_strengths(5, lo, hi)
    m = fan_map((50, 4), strengths, steps, hi)
    total = img2img_steps(steps, hi)
    levels = quantised_levels(torch.from_numpy(m), total).numpy()
    edges = band_edges(50, 5)
    for i, s in enumerate(strengths):
        band = levels[:, edges[i] : edges[i + 1]]
        assert np.all(band == img2img_steps(steps, s)), (i, s)
    if lo == 0:
        assert np.all(m[:, : edges[1]] == 0.0)  # strength 0: exactly keep


def test_band_map_times_change_map():
    cm = np.zeros((4, 20), np.float32)
    cm[2:] = 1.0
    m = fan_map((20, 4), column_strengths(4), 10, 1.0, change_map=cm)
    assert np.all(m[:2] == 0) and np.all(m[2:, -1] == 1.0)


# on the tiny model ----------------------------------------------------------------------------------
def test_fan_one_edit_zero_column_exact_labels_taller(sd_editor, image64, monkeypatch):
    calls = []
    cls = type(sd_editor.pipe)
    original = cls.__call__

    def counting(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(cls, "__call__", counting)
    out = sd_editor.fan(image64, "a red boat", columns=4, num_inference_steps=STEPS, seed=3, labels=True)
    assert len(calls) == 1 and sd_editor.last_run.pipeline_calls == 1
    # The input's width; the caption band under it makes it taller.
    assert isinstance(out, Image.Image) and out.width == 64 and out.height > 64
    px, src = np.asarray(out.convert("RGB")), np.asarray(image64.convert("RGB"))
    assert np.array_equal(px[:64, :16], src[:, :16])  # the strength-0 column is the input, byte-exact
    assert not np.array_equal(px[:64, 48:], src[:, 48:])
    assert (px[64:] < 128).any()  # dark caption text on the white band
    meta = out.info["diffdiff"]
    assert meta["tool"] == "fan" and meta["strength"] == 1.0
    assert meta["column_steps"] == [img2img_steps(STEPS, s) for s in column_strengths(4)]


def test_fan_strength_increases_left_to_right_in_latent_space(sd_editor, image64):
    # 4 columns on a 64 px image: each band is exactly 2 latent columns wide.
    lat = sd_editor.fan(image64, "a red boat", columns=4, num_inference_steps=STEPS, seed=3, output_type="latent")
    clean = sd_editor.last_run.reference.clean
    assert lat.shape == clean.shape
    dev = [float((lat - clean)[..., 2 * i : 2 * i + 2].abs().mean()) for i in range(4)]
    assert all(a < b for a, b in zip(dev, dev[1:])), dev
    # The thresholds released the bands one after another: more free pixels at every later step.
    fractions = [r.free_fraction for r in sd_editor.last_run.records]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]


def test_fan_with_change_map_keeps_masked_out_rows(sd_editor, image64):
    cm = np.zeros((64, 64), np.float32)
    cm[32:] = 1.0
    out = sd_editor.fan(image64, "a red boat", columns=4, num_inference_steps=STEPS, seed=3, change_map=cm)
    px, src = np.asarray(out), np.asarray(image64.convert("RGB"))
    assert np.array_equal(px[:32], src[:32])
    assert not np.array_equal(px[32:, 48:], src[32:, 48:])


def test_fan_grid_rows_are_separate_edits(sd_editor, image64):
    grid = fan_grid(sd_editor, image64, "a red boat", "seed", [1, 2], columns=4, num_inference_steps=4)
    assert grid.width > 64 and grid.height > 2 * 64  # label margin on the left, caption underneath
    meta = grid.info["diffdiff"]
    assert meta["grid_rows"] == "seed" and meta["grid_seeds"] == [1, 2]
    assert sd_editor.last_run.pipeline_calls == 1  # the last row was its own single edit
    with pytest.raises(DiffDiffError):
        fan_grid(sd_editor, image64, "x", "guidance", [1.0], guidance_scale=3.0)
    with pytest.raises(DiffDiffError):
        fan_grid(sd_editor, image64, "x", "seed", [1.5])
    with pytest.raises(DiffDiffError):
        fan_grid(sd_editor, image64, "x", "steps", [1])


def test_fan_rejects_conflicting_arguments(sd_editor, image64):
    with pytest.raises(DiffDiffError):
        sd_editor.fan(image64, "x", strength=0.5)
    with pytest.raises(DiffDiffError):
        sd_editor.fan(image64, "x", num_images=2)
    with pytest.raises(DiffDiffError):
        sd_editor.fan(image64, "x", columns=0)


# CLI ------------------------------------------------------------------------------------------------
def test_cli_fan_writes_labelled_png(tmp_path: Path, tiny_sd_path, image64):
    src = tmp_path / "img.png"
    image64.save(src)
    out = tmp_path / "fan.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(app, ["fan", str(src), "--prompt", "a boat", "--model", str(tiny_sd_path),
                                       "--columns", "2", "--steps", "4", "--seed", "5", "--labels",
                                       "-o", str(out)])
    assert res.exit_code == 0, res.output
    with Image.open(out) as img:
        assert img.width == 64 and img.height > 64
        assert np.array_equal(np.asarray(img.convert("RGB"))[:64, :32], np.asarray(image64.convert("RGB"))[:, :32])
    meta = read_metadata(out)
    assert meta["seed"] == 5 and meta["columns"] == 2 and meta["image_file"] == "img.png"


@pytest.mark.parametrize(
    "extra",
    [
        ["--columns", "0"],
        ["--min", "0.9", "--max", "0.1"],
        ["--rows", "guidance"],
        ["--rows", "colour", "--row-values", "1,2"],
        ["--rows", "seed", "--row-values", "1,x"],
        ["--rows", "seed", "--row-values", "1,2", "--seed", "3"],
        ["--map", "{missing}"],
        ["--steps", "0"],
    ],
)
def test_cli_fan_rejects_bad_input_before_loading(tmp_path: Path, image64, extra):
    src = tmp_path / "img.png"
    image64.save(src)
    out = tmp_path / "fan.png"
    args = [a.format(missing=str(tmp_path / "nope.png")) for a in extra]
    # A model that does not exist: validation must fail first, with its own message.
    res = CliRunner().invoke(app, ["fan", str(src), "--prompt", "x", "--model", str(tmp_path / "no-model"),
                                   "-o", str(out), *args])
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines()[-1].startswith("error: ")
    assert "loading" not in res.output and "Traceback" not in res.output
    assert not out.exists()
