"""Change-map toolkit: documented shapes and values of every map function, and the ``map`` CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffdiff import maps
from diffdiff.changemap import map_to_array
from diffdiff.cli import app
from diffdiff.core import quantised_levels
from diffdiff.errors import DiffDiffError
from diffdiff.io import read_metadata

runner = CliRunner()


def brute_distance(mask: np.ndarray) -> np.ndarray:
    """Reference Euclidean distance to the nearest True pixel, by exhaustive search."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    d2 = (yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2
    return np.sqrt(d2.min(-1))


# gradients ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "direction, first, last",
    [
        ("left-right", (slice(None), 0), (slice(None), -1)),
        ("right-left", (slice(None), -1), (slice(None), 0)),
        ("top-bottom", (0, slice(None)), (-1, slice(None))),
        ("bottom-top", (-1, slice(None)), (0, slice(None))),
    ],
)
def test_linear_gradient_exact_endpoints_and_monotone(direction, first, last):
    g = maps.gradient((37, 23), direction, start=0.3, end=0.9, as_array=True)
    assert g.shape == (23, 37) and g.dtype == np.float32
    assert np.all(g[first] == np.float32(0.3)) and np.all(g[last] == np.float32(0.9))
    axis = 1 if direction in ("left-right", "right-left") else 0
    diffs = np.diff(g, axis=axis)
    if direction in ("right-left", "bottom-top"):
        diffs = -diffs
    assert np.all(diffs > 0)  # strictly rising from the start edge to the end edge
    # Constant across the other axis.
    assert np.all(g == (g[:1] if axis == 1 else g[:, :1]))


def test_gradient_pil_polarity_white_is_change():
    img = maps.gradient((64, 16))
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (64, 16)
    px = np.asarray(img)
    assert px[0, 0] == 0 and px[0, -1] == 255  # black (keep) at the left, white (change) at the right
    change = map_to_array(img, "change")
    assert change[0, 0] == 0.0 and change[0, -1] == 1.0
    assert np.allclose(map_to_array(img, "keep"), 1.0 - change, atol=1e-6)


def test_radial_gradient_centre_and_corners():
    g = maps.gradient((31, 21), "radial", start=1.0, end=0.0, as_array=True)
    assert g[10, 15] == 1.0  # the centre pixel of an odd-sized map
    for corner in (g[0, 0], g[0, -1], g[-1, 0], g[-1, -1]):
        assert corner == 0.0
    # Symmetric and decreasing outwards along the middle row.
    assert np.allclose(g, g[::-1, ::-1])
    assert np.all(np.diff(g[10, 15:]) < 0)


def test_gradient_single_pixel_wide_is_start():
    assert np.all(maps.gradient((1, 5), "left-right", 0.25, 0.75, as_array=True) == 0.25)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"direction": "up"},
        {"start": 1.5},
        {"end": -0.1},
        {"start": float("nan")},
    ],
)
def test_gradient_rejects_bad_arguments(kwargs):
    with pytest.raises(DiffDiffError):
        maps.gradient((8, 8), **kwargs)


@pytest.mark.parametrize("text", ["64", "64x", "x64", "64by64", "0x64", "64x-1", "axb", "99999x10"])
def test_parse_size_rejects(text):
    with pytest.raises(DiffDiffError):
        maps.parse_size(text)


def test_parse_size_accepts():
    assert maps.parse_size("512x768") == (512, 768)
    assert maps.parse_size("64X32") == (64, 32)


# the soft-inpainting map --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distance_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((23, 31)) > 0.97
    mask[rng.integers(23), rng.integers(31)] = True
    ref = brute_distance(mask)
    got = maps.distance_to_mask(mask, max_distance=12.0)
    near = ref <= 12.0
    assert np.allclose(got[near], ref[near])
    assert np.all(np.isinf(got[~near]))


def test_soft_map_hole_full_monotone_and_exactly_zero_far():
    mask = np.zeros((60, 80), dtype=bool)
    mask[20:32, 30:44] = True
    sigma = 4.0
    soft = maps.soft_map(mask, sigma)
    assert soft.shape == mask.shape and soft.dtype == np.float32
    assert np.all(soft[mask] == 1.0)
    d = brute_distance(mask)
    # Monotone: sorting pixels by distance sorts their change values (non-increasing).
    order = np.argsort(d, axis=None, kind="stable")
    vals = soft.ravel()[order]
    dist = d.ravel()[order]
    for a, b in zip(np.unique(dist)[:-1], np.unique(dist)[1:]):
        assert vals[dist == a].min() >= vals[dist == b].max()
    # Exactly zero from 3 sigma on, strictly positive before.
    assert np.all(soft[d >= 3 * sigma] == 0.0)
    assert np.all(soft[(d < 3 * sigma - 0.5)] > 0.0)
    # Gaussian profile: at one sigma, the truncated-and-rescaled Gaussian value.
    floor = math.exp(-4.5)
    at_sigma = soft[d == sigma]
    assert at_sigma.size and np.allclose(at_sigma, (math.exp(-0.5) - floor) / (1 - floor), atol=1e-6)


def test_soft_map_from_pil_resizes_and_zero_softness_is_hard_mask():
    m = Image.new("L", (32, 32), 0)
    m.paste(255, (8, 8, 16, 16))
    hard = maps.soft_map(m, 0)
    assert isinstance(hard, Image.Image)
    assert np.array_equal(np.asarray(hard) == 255, np.asarray(m) == 255)
    big = maps.soft_map(m, 2.0, size=(64, 64))
    px = np.asarray(big)
    assert big.size == (64, 64)
    assert np.all(px[16:32, 16:32] == 255) and px[0, 0] == 0 and px[63, 63] == 0
    assert 0 < px[24, 33] < 255  # one pixel outside the hole: partial change


def test_soft_map_rejects_negative_softness_and_aspect_mismatch():
    with pytest.raises(DiffDiffError):
        maps.soft_map(np.ones((8, 8), bool), -1)
    with pytest.raises(DiffDiffError):
        maps.soft_map(np.ones((8, 8), bool), 1.0, size=(32, 8))


# adjustments --------------------------------------------------------------------------------------
def test_invert_exact_for_8bit_and_arrays():
    img = maps.gradient((50, 3))
    inv = maps.invert(img)
    assert np.array_equal(np.asarray(inv).astype(int), 255 - np.asarray(img).astype(int))
    arr = np.random.default_rng(0).random((5, 6)).astype(np.float32)
    assert np.allclose(maps.invert(arr), 1 - arr)


def test_levels_black_white_and_gamma():
    x = np.tile(np.linspace(0, 1, 101, dtype=np.float32), (2, 1))
    out = maps.levels(x, black=0.2, white=0.8)
    assert np.all(out[x <= 0.2] == 0) and np.all(out[x >= 0.8] == 1)
    assert np.allclose(out[0, 50], 0.5, atol=1e-6)
    lifted = maps.levels(x, gamma=2.0)
    lowered = maps.levels(x, gamma=0.5)
    mid = (x > 0) & (x < 1)
    assert np.all(lifted[mid] > x[mid]) and np.all(lowered[mid] < x[mid])
    for bad in ({"black": 0.5, "white": 0.5}, {"gamma": 0}, {"white": 2}):
        with pytest.raises(DiffDiffError):
            maps.levels(x, **bad)


def test_blur_keeps_constants_mass_and_far_zeros():
    const = np.full((20, 20), 0.4, dtype=np.float32)
    assert np.allclose(maps.blur(const, 3.0), 0.4, atol=1e-6)
    spot = np.zeros((64, 64), dtype=np.float32)
    spot[30:34, 30:34] = 1.0
    b = maps.blur(spot, 2.0)
    assert math.isclose(float(b.sum()), 16.0, rel_tol=1e-4)  # interior blur preserves the total
    assert b[0, 0] == 0.0 and b[31, 31] < 1.0 and b[31, 36] > 0
    assert np.array_equal(maps.blur(spot, 0), spot)
    with pytest.raises(DiffDiffError):
        maps.blur(spot, -1)


def test_combine_modes_and_resizing():
    rng = np.random.default_rng(1)
    a, b = rng.random((8, 8)).astype(np.float32), rng.random((8, 8)).astype(np.float32)
    assert np.allclose(maps.combine([a, b], "max"), np.maximum(a, b))
    assert np.allclose(maps.combine([a, b], "min"), np.minimum(a, b))
    assert np.allclose(maps.combine([a, b], "multiply"), a * b)
    # A differently sized map of the same aspect is resized to the first.
    out = maps.combine([maps.gradient((16, 8)), Image.new("L", (32, 16), 255)], "multiply")
    assert out.size == (16, 8)
    with pytest.raises(DiffDiffError):
        maps.combine([a, np.ones((8, 20), np.float32)], "max")
    with pytest.raises(DiffDiffError):
        maps.combine([a, b], "xor")


def test_from_depth_near_far():
    depth = np.tile(np.linspace(0.2, 0.7, 11, dtype=np.float32), (3, 1))  # white = near
    out = maps.from_depth(depth, near=0.0, far=1.0)
    assert np.all(out[:, -1] == 0.0) and np.all(out[:, 0] == 1.0)  # nearest kept, farthest changed
    assert np.all(np.diff(out[0]) < 0)
    rev = maps.from_depth(depth, near=1.0, far=0.0, white_is_near=False)
    assert np.allclose(rev, out)  # flipping both polarity and near/far gives the same map
    raw = maps.from_depth(depth, near=0.0, far=1.0, normalize=False)
    # No stretch: the grey value is the nearness itself (0.2 -> change 0.8, 0.7 -> 0.3).
    assert np.allclose(raw[0, [0, -1]], [0.8, 0.3], atol=1e-6)
    with pytest.raises(DiffDiffError):
        maps.from_depth(depth, near=2.0)


# preview ------------------------------------------------------------------------------------------
def test_preview_uses_the_quantised_levels(image64):
    uniform = np.full((64, 64), 0.5, dtype=np.float32)
    prev = maps.preview(image64, uniform, steps=10)
    # 10 steps, change 0.5: the pixel behaves like img2img at strength 0.5, i.e. 5 steps.
    assert prev.info["diffdiff_levels"] == {5: 64 * 64}
    assert prev.width >= 64 and prev.height > prev.width  # legend strip under the image


def test_preview_counts_match_core_levels_and_keeps_unchanged_pixels(image64, ramp64):
    prev = maps.preview(image64, ramp64, steps=20, strength=0.5, min_width=64)
    expected = quantised_levels(torch.from_numpy(map_to_array(ramp64)), 10)
    values, counts = np.unique(expected.numpy(), return_counts=True)
    assert prev.info["diffdiff_levels"] == dict(zip(values.tolist(), counts.tolist()))
    assert max(prev.info["diffdiff_levels"]) <= 10  # int(20 * 0.5) executed steps
    # Level-0 pixels are shown uncoloured: the image itself.
    panel = np.asarray(prev)[:64]
    level0 = (expected == 0).numpy()
    assert np.array_equal(panel[level0], np.asarray(image64.convert("RGB"))[level0])
    assert not np.array_equal(panel[~level0], np.asarray(image64.convert("RGB"))[~level0])


def test_preview_rejects_bad_steps(image64, ramp64):
    with pytest.raises(DiffDiffError):
        maps.preview(image64, ramp64, steps=0)
    with pytest.raises(DiffDiffError):
        maps.preview(image64, ramp64, steps=10, strength=1.5)


# CLI ----------------------------------------------------------------------------------------------
def _run(args: list[str]):
    return runner.invoke(app, args)


def test_cli_gradient_writes_map_with_metadata(tmp_path: Path):
    out = tmp_path / "g.png"
    res = _run(["map", "gradient", "--size", "40x20", "--direction", "top-bottom", "--start", "0.2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    with Image.open(out) as img:
        assert img.size == (40, 20) and img.mode == "L"
        px = np.asarray(img)
    assert np.all(px[0] == round(0.2 * 255)) and np.all(px[-1] == 255)
    assert read_metadata(out)["direction"] == "top-bottom"


def test_cli_map_pipeline_of_commands(tmp_path: Path, image64):
    mask = tmp_path / "mask.png"
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (24, 24, 40, 40))
    m.save(mask)
    image64.save(tmp_path / "img.png")
    steps = [
        ["map", "soft", str(mask), "--softness", "3", "-o", "soft.png"],
        ["map", "invert", "soft.png", "-o", "inv.png"],
        ["map", "levels", "soft.png", "--black", "0.1", "--gamma", "2", "-o", "lev.png"],
        ["map", "blur", "mask.png", "--sigma", "2", "-o", "blur.png"],
        ["map", "gradient", "--size", "64x64", "-o", "grad.png"],
        ["map", "combine", "--mode", "multiply", "soft.png", "grad.png", "-o", "comb.png"],
        ["map", "depth", "grad.png", "--near", "1", "--far", "0", "-o", "depth.png"],
        ["map", "preview", "img.png", "soft.png", "--steps", "12", "-o", "prev.png"],
    ]
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for args in steps:
            res = _run(args)
            assert res.exit_code == 0, (args, res.output)
            assert (tmp_path / args[-1]).exists()
    finally:
        os.chdir(cwd)
    soft = np.asarray(Image.open(tmp_path / "soft.png"))
    inv = np.asarray(Image.open(tmp_path / "inv.png"))
    assert soft[30, 30] == 255 and soft[0, 0] == 0
    assert np.array_equal(inv.astype(int), 255 - soft.astype(int))
    comb = np.asarray(Image.open(tmp_path / "comb.png"))
    assert comb[0, 0] == 0 and comb[32, 0] == 0  # multiplied by a gradient that is 0 at the left
    depth = np.asarray(Image.open(tmp_path / "depth.png"))
    assert depth[0, -1] == 255 and depth[0, 0] == 0  # white (near) -> near=1
    assert Image.open(tmp_path / "prev.png").height > 64


@pytest.mark.parametrize(
    "args",
    [
        ["map", "gradient", "--size", "64by64", "-o", "{out}"],
        ["map", "gradient", "--size", "0x64", "-o", "{out}"],
        ["map", "gradient", "--size", "64x64", "--direction", "diagonal", "-o", "{out}"],
        ["map", "gradient", "--size", "64x64", "--start", "2", "-o", "{out}"],
        ["map", "soft", "{missing}", "--softness", "3", "-o", "{out}"],
        ["map", "soft", "{mask}", "--softness", "-3", "-o", "{out}"],
        ["map", "levels", "{mask}", "--black", "0.8", "--white", "0.2", "-o", "{out}"],
        ["map", "combine", "{mask}", "-o", "{out}"],
        ["map", "combine", "--mode", "xor", "{mask}", "{mask}", "-o", "{out}"],
        ["map", "blur", "{mask}", "--sigma", "-1", "-o", "{out}"],
        ["map", "preview", "{mask}", "{mask}", "--steps", "0", "-o", "{out}"],
        ["map", "invert", "{mask}", "-o", "{dir}"],
        ["map", "invert", "{mask}", "-o", "{out_jpg}"],
    ],
)
def test_cli_rejects_bad_input_without_output(tmp_path: Path, args):
    mask = tmp_path / "mask.png"
    Image.new("L", (16, 16), 255).save(mask)
    out = tmp_path / "out.png"
    fill = {"out": str(out), "missing": str(tmp_path / "nope.png"), "mask": str(mask), "dir": str(tmp_path),
            "out_jpg": str(tmp_path / "out.jpg")}
    res = _run([a.format(**fill) for a in args])
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png"]
