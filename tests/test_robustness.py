"""Bad input, interruption, numerical failure, determinism across processes, property tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from diffdiff import DiffDiffError, Editor, ModelLoadError
from diffdiff.changemap import map_to_array, prepare_change_map
from diffdiff.cli import app
from diffdiff.io import read_metadata
from diffdiff.numerics import finite_vae_decode
from diffdiff.request import validate_edit_params
from diffdiff.testing import gradient_map, sample_image, tiny_vae

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    paths = {
        "image": d / "image.png",
        "map": d / "map.png",
        "wide_map": d / "wide.png",
        "corrupt_png": d / "corrupt.png",
        "corrupt_jpg": d / "corrupt.jpg",
        "text": d / "notes.txt",
        "big": d / "big.png",
    }
    sample_image(64, 64).save(paths["image"])
    gradient_map(64, 64).save(paths["map"])
    gradient_map(64, 32).save(paths["wide_map"])
    good = paths["image"].read_bytes()
    paths["corrupt_png"].write_bytes(good[: len(good) // 3])
    paths["corrupt_jpg"].write_bytes(b"\xff\xd8\xff\xe0garbage-not-a-jpeg" * 10)
    paths["text"].write_text("hello")
    Image.new("RGB", (300, 300), "grey").save(paths["big"])
    return paths


def _edit(files: dict[str, Path], model: Path, out: Path, *extra: str, image: str = "image", cmap: str = "map"):
    args = ["edit", str(files[image]), "--map", str(files[cmap]), "--prompt", "a cat", "--model", str(model),
            "--steps", "2", "--seed", "0", "-o", str(out), *extra]
    return runner.invoke(app, args)


def _one_line_error(result, needle: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert needle.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "kwargs, extra, needle",
    [
        ({"image": "missing"}, (), "does not exist"),
        ({"image": "corrupt_png"}, (), "corrupt"),
        ({"image": "corrupt_jpg"}, (), "corrupt"),
        ({"image": "text"}, (), "not a readable image"),
        ({"cmap": "missing"}, (), "does not exist"),
        ({"cmap": "wide_map"}, (), "aspect"),
        ({}, ("--strength", "1.5"), "strength"),
        ({}, ("--strength", "-0.2"), "strength"),
        ({}, ("--guidance", "-1"), "guidance"),
        ({}, ("--polarity", "white"), "polarity"),
    ],
)
def test_cli_bad_input_one_line_no_output(files, tiny_sd_path, tmp_path, kwargs, extra, needle) -> None:
    files = dict(files, missing=tmp_path / "nope.png")
    out = tmp_path / "out.png"
    result = _edit(files, tiny_sd_path, out, *extra, **kwargs)
    _one_line_error(result, needle)
    assert list(tmp_path.iterdir()) == [] or not out.exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_cli_steps_must_be_positive(files, tiny_sd_path, tmp_path) -> None:
    args = ["edit", str(files["image"]), "--map", str(files["map"]), "--prompt", "a cat", "--model",
            str(tiny_sd_path), "--steps", "0", "-o", str(tmp_path / "o.png")]
    _one_line_error(runner.invoke(app, args), "steps")


def test_cli_output_paths(files, tiny_sd_path, tmp_path) -> None:
    _one_line_error(_edit(files, tiny_sd_path, tmp_path / "no-such-dir" / "o.png"), "does not exist")
    _one_line_error(_edit(files, tiny_sd_path, tmp_path), "is a directory")


def test_cli_model_problems(files, tmp_path) -> None:
    _one_line_error(_edit(files, tmp_path / "no-model", tmp_path / "o.png"), "does not exist")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    _one_line_error(_edit(files, empty, tmp_path / "o.png"), "model_index.json")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    _one_line_error(_edit(files, broken, tmp_path / "o.png"), "could not load model")
    assert not (tmp_path / "o.png").exists()


def test_unsupported_family_lists_supported(tmp_path) -> None:
    class NotAPipeline:
        def __call__(self, prompt: str) -> None: ...

    with pytest.raises(DiffDiffError, match="supported: .*sd.*sdxl"):
        Editor(NotAPipeline())


def test_uncached_hub_id_offline_is_one_clear_line(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the local cache.*pass a local path"):
        Editor.from_pretrained("nobody/definitely-not-cached-model")


def test_image_above_pixel_limit(files, tiny_sd_path, tmp_path) -> None:
    args = ["edit", str(files["big"]), "--map", str(files["big"]), "--prompt", "a cat", "--model",
            str(tiny_sd_path), "--max-pixels", "10000", "-o", str(tmp_path / "o.png")]
    result = runner.invoke(app, args)
    _one_line_error(result, "limit")
    assert "--crop" in result.output


def test_editor_pixel_limit(sd_editor: Editor) -> None:
    img = Image.new("RGB", (200, 200))
    old = sd_editor.max_pixels
    sd_editor.max_pixels = 100 * 100
    try:
        with pytest.raises(DiffDiffError, match="limit"):
            sd_editor.edit(img, np.ones((200, 200), np.float32), "a cat", num_inference_steps=2)
    finally:
        sd_editor.max_pixels = old


def test_odd_map_modes_accepted_by_cli(files, tiny_sd_path, tmp_path) -> None:
    base = np.asarray(gradient_map(64, 64))
    variants = {
        "rgba": Image.fromarray(base).convert("RGBA"),
        "i16": Image.fromarray(base.astype(np.uint16) * 257, "I;16"),
        "palette": Image.fromarray(base).convert("P"),
    }
    outputs = []
    for name, img in variants.items():
        p = tmp_path / f"{name}.png"
        img.save(p)
        out = tmp_path / f"out-{name}.png"
        result = _edit(dict(files, m=p), tiny_sd_path, out, cmap="m")
        assert result.exit_code == 0, result.output
        outputs.append(np.asarray(Image.open(out)))
    assert outputs[0].shape == (64, 64, 3)


def test_metadata_reproduces_the_output(files, tiny_sd_path, tmp_path) -> None:
    out = tmp_path / "first.png"
    assert _edit(files, tiny_sd_path, out, "--negative", "blur", "--strength", "0.9").exit_code == 0
    meta = read_metadata(out)
    for key in ("model", "prompt", "negative_prompt", "seed", "steps", "guidance", "strength", "polarity",
                "map_file_sha256"):
        assert key in meta, key
    again = tmp_path / "again.png"
    args = ["edit", str(files["image"]), "--map", str(files["map"]), "--prompt", meta["prompt"],
            "--negative", meta["negative_prompt"], "--model", meta["model"], "--steps", str(meta["steps"]),
            "--seed", str(meta["seed"]), "--strength", str(meta["strength"]), "--guidance", str(meta["guidance"]),
            "--polarity", meta["polarity"], "-o", str(again)]
    assert runner.invoke(app, args).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def _cli_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def test_same_seed_same_bytes_across_processes(files, tiny_sd_path, tmp_path) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"p{i}.png"
        cmd = [sys.executable, "-m", "diffdiff", "edit", str(files["image"]), "--map", str(files["map"]),
               "--prompt", "a cat", "--model", str(tiny_sd_path), "--steps", "3", "--seed", "5", "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_cli_env(), timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_ctrl_c_exits_130_and_leaves_nothing(files, tiny_sd_path, tmp_path) -> None:
    out_dir = tmp_path / "outdir"
    out_dir.mkdir()
    out = out_dir / "result.png"
    cmd = [sys.executable, "-m", "diffdiff", "edit", str(files["image"]), "--map", str(files["map"]),
           "--prompt", "a cat", "--model", str(tiny_sd_path), "--steps", "5000", "--seed", "0", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cli_env())
    assert proc.stderr is not None
    deadline = time.time() + 240
    seen = ""
    while time.time() < deadline:  # wait until the model is loading, then interrupt mid-run
        line = proc.stderr.readline()
        seen += line
        if line.startswith("loading") or not line:
            break
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + err
    assert "interrupted" in err and "Traceback" not in err
    assert list(out_dir.iterdir()) == []


def test_nan_decode_is_retried_in_float32() -> None:
    vae = tiny_vae().to(torch.float16)
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(3e4)  # overflows fp16 (max 65504), fine in fp32
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)).to(torch.float16) * 3
    with torch.inference_mode():
        raw = vae.decode(z).sample
        assert not torch.isfinite(raw).all()  # the failure is real
        with finite_vae_decode(vae) as stats:
            fixed = vae.decode(z).sample
    assert torch.isfinite(fixed).all() and stats["retries"] == 1
    assert fixed.dtype == torch.float16 and vae.dtype == torch.float16
    assert "decode" not in vars(vae)  # unwrapped afterwards


def test_nan_in_float32_is_a_clear_error() -> None:
    vae = tiny_vae()
    with torch.no_grad():
        vae.decoder.conv_in.weight.fill_(float("nan"))
    with torch.inference_mode(), finite_vae_decode(vae), pytest.raises(DiffDiffError, match="NaN"):
        vae.decode(torch.zeros(1, 4, 4, 4))


# ---- property-based tests -------------------------------------------------------------------------

_modes = st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "I", "F"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=st.integers(1, 40), h=st.integers(1, 40), mode=_modes, seed=st.integers(0, 2**16),
       polarity=st.sampled_from(["change", "keep"]))
def test_any_pil_map_reads_into_unit_range(w: int, h: int, mode: str, seed: int, polarity: str) -> None:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    img = img.convert(mode) if mode not in ("I;16",) else Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16), "I;16")
    arr = map_to_array(img, polarity)  # type: ignore[arg-type]
    assert arr.shape == (h, w) and arr.dtype == np.float32
    assert np.all(np.isfinite(arr)) and arr.min() >= 0 and arr.max() <= 1


@settings(max_examples=80, deadline=None)
@given(
    data=st.one_of(
        st.builds(lambda s: np.zeros(s), st.tuples(st.integers(0, 5), st.integers(0, 5))),
        st.builds(lambda v, s: np.full(s, v), st.floats(allow_nan=True, allow_infinity=True),
                  st.tuples(st.integers(1, 4), st.integers(1, 4))),
        st.builds(lambda s: np.ones(s, np.uint16), st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5))),
        st.builds(lambda s: np.ones(s, bool), st.tuples(st.integers(1, 4), st.integers(1, 4))),
        st.builds(lambda s: np.ones(s), st.lists(st.integers(1, 3), min_size=0, max_size=4).map(tuple)),
        st.just("not a map"),
        st.just(None),
    ),
    size=st.tuples(st.integers(1, 50), st.integers(1, 50)),
)
def test_any_array_map_is_accepted_or_clear_error(data, size) -> None:
    try:
        out = prepare_change_map(data, size)
    except DiffDiffError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert out.shape == (size[1], size[0]) and np.all((out >= 0) & (out <= 1))


_anything = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                      st.text(max_size=5), st.lists(st.integers(), max_size=2))


@settings(max_examples=200, deadline=None)
@given(prompt=_anything, steps=_anything, guidance=_anything, strength=_anything, num=_anything,
       polarity=st.one_of(_anything, st.sampled_from(["change", "keep"])), seed=_anything)
def test_parameter_validation_never_crashes(prompt, steps, guidance, strength, num, polarity, seed) -> None:
    try:
        validate_edit_params(prompt, steps, guidance, strength, num, polarity, seed)
    except DiffDiffError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(steps, int) and steps >= 1 and 0 <= strength <= 1 and polarity in ("change", "keep")


# ---- the map toolkit under arbitrary input ----------------------------------------------------------

_map_inputs = st.one_of(
    st.builds(lambda w, h, m, s: Image.fromarray(np.random.default_rng(s).integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(m),
              st.integers(1, 24), st.integers(1, 24), st.sampled_from(["L", "RGB", "RGBA", "P", "1", "LA", "F", "I"]),
              st.integers(0, 1000)),
    st.builds(lambda w, h, v: np.full((h, w), v), st.integers(1, 24), st.integers(1, 24),
              st.floats(allow_nan=True, allow_infinity=True, width=32)),
    st.builds(lambda w, h: np.zeros((h, w), np.uint16), st.integers(1, 24), st.integers(1, 24)),
    st.builds(lambda s: np.ones(s), st.lists(st.integers(0, 4), max_size=4).map(tuple)),
)
_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-5, 50))


def _clear_or_unit_map(call) -> None:
    from diffdiff import maps

    try:
        out = call(maps)
    except DiffDiffError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    arr = map_to_array(out) if isinstance(out, Image.Image) else np.asarray(out)
    assert np.all(np.isfinite(arr)) and arr.min() >= 0 and arr.max() <= 1


@settings(max_examples=60, deadline=None)
@given(m=_map_inputs, a=_numbers, b=_numbers, c=_numbers, op=st.sampled_from(["invert", "levels", "blur", "soft", "depth", "combine"]))
def test_map_toolkit_never_crashes(m, a, b, c, op) -> None:
    calls = {
        "invert": lambda maps: maps.invert(m),
        "levels": lambda maps: maps.levels(m, black=a, white=b, gamma=c),
        "blur": lambda maps: maps.blur(m, sigma=a),
        "soft": lambda maps: maps.soft_map(m, softness=a),
        "depth": lambda maps: maps.from_depth(m, near=a, far=b),
        "combine": lambda maps: maps.combine([m, m], mode="max"),
    }
    _clear_or_unit_map(calls[op])


@settings(max_examples=60, deadline=None)
@given(w=st.integers(-3, 64), h=st.integers(-3, 64), start=_numbers, end=_numbers,
       direction=st.sampled_from(["left-right", "right-left", "top-bottom", "bottom-top", "radial", "diagonal"]))
def test_gradient_never_crashes(w, h, start, end, direction) -> None:
    _clear_or_unit_map(lambda maps: maps.gradient((w, h), direction=direction, start=start, end=end))


def test_cli_unsupported_family_lists_supported(files, tmp_path) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    result = _edit(files, tmp_path / "ddpm", tmp_path / "o.png")
    _one_line_error(result, "not a supported model family")
    assert "sdxl" in result.output and "flux" in result.output
    assert not (tmp_path / "o.png").exists()


def test_blur_with_a_huge_sigma_averages_instead_of_exhausting_memory() -> None:
    # Found by hypothesis: sigma 2.4e9 once asked numpy for a 109 GiB kernel.
    from diffdiff import maps

    arr = np.zeros((4, 6), np.float32)
    arr[:, :3] = 1.0
    out = maps.blur(arr, sigma=2.4e9)
    assert np.allclose(out, 0.5)


def test_non_finite_pipeline_output_is_refused_not_saved_black() -> None:
    from diffdiff.numerics import to_uint8_images

    with pytest.raises(DiffDiffError, match="NaN/inf"):
        to_uint8_images(np.full((1, 2, 2, 3), np.nan, np.float32))
    out = to_uint8_images(np.array([[[[0.0, 0.5, 1.2]]]], np.float32))
    assert out.dtype == np.uint8 and out.tolist() == [[[[0, 128, 255]]]]
