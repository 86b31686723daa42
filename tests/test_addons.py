"""Add-ons under the change map: inpainting checkpoints, ControlNet, LoRA, IP-Adapter, depth maps (issue 13).

Every add-on is tiny and random (:mod:`diffdiff.testing_addons`), saved with its library's own save
path and loaded back by path through ``Editor.from_pretrained`` or the CLI. For each: the black half
of the map is byte-identical to the input, the output differs from the same edit without the add-on,
and the PNG metadata names it. Expected values are computed here independently (numpy thresholds,
OpenCV, diffusers pipelines called directly), never read back from the code under test.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffdiff import Editor
from diffdiff.cli import app
from diffdiff.errors import DiffDiffError
from diffdiff.io import file_sha256, image_sha256, read_metadata
from diffdiff.lora import lora_names, parse_lora, parse_scale_overrides
from diffdiff.testing import build_tiny_flux, sample_image
from diffdiff.testing_addons import (
    build_tiny_controlnet,
    build_tiny_flux_controlnet,
    build_tiny_flux_fill,
    build_tiny_inpaint,
    build_tiny_marigold,
    save_kohya_lora,
    save_random_lora,
)

pytestmark = pytest.mark.filterwarnings("ignore::diffdiff.errors.DiffDiffWarning")  # 4-step runs, on purpose
runner = CliRunner()
STEPS = 4
# Eight 8-px column bands (one latent column each): the left half black, then graded up to white.
# The values sit away from every threshold k / STEPS, so the expected masks do not hinge on rounding.
BANDS = np.array([0, 0, 0, 0, 40, 100, 160, 255], dtype=np.uint8)


def band_map(size: int = 64) -> Image.Image:
    return Image.fromarray(np.tile(np.repeat(BANDS, size // 8), (size, 1)), "L")


def expected_mask(model_step: int, total: int) -> torch.Tensor:
    """The pixels model step k generates: those the blend after it keeps (change * N > N - (k + 1))."""
    values = BANDS.astype(np.float64) / 255
    cols = values * total > total - min(model_step + 1, total)
    return torch.tensor(np.tile(cols, (8, 1)), dtype=torch.float32)


def left_half_identical(out: Image.Image, src: Image.Image) -> bool:
    return np.array_equal(np.asarray(out)[:, :32], np.asarray(src.convert("RGB"))[:, :32])


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def addon_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("addons")


@pytest.fixture(scope="module")
def inpaint_path(addon_dir: Path) -> Path:
    return build_tiny_inpaint(addon_dir / "sd-inpaint")


@pytest.fixture(scope="module")
def sdxl_inpaint_path(addon_dir: Path, tiny_sdxl_path: Path) -> Path:
    return build_tiny_inpaint(addon_dir / "sdxl-inpaint", base="sdxl", base_model=tiny_sdxl_path)


@pytest.fixture(scope="module")
def files(addon_dir: Path) -> Path:
    folder = addon_dir / "files"
    folder.mkdir()
    sample_image(64, 64, seed=3).save(folder / "in.png")
    band_map().save(folder / "map.png")
    sample_image(64, 64, seed=7).save(folder / "control.png")
    sample_image(96, 48, seed=7).save(folder / "wide.png")
    sample_image(40, 40, seed=9).save(folder / "ref.png")
    (folder / "broken.png").write_bytes(b"not a png at all")
    return folder


def edit_cli(files: Path, model: Path, out: str, *extra: str) -> tuple[int, str]:
    r = runner.invoke(app, ["edit", str(files / "in.png"), "--map", str(files / "map.png"), "--prompt", "a fox",
                            "--model", str(model), "--steps", str(STEPS), "--seed", "5", "-o", str(files / out), *extra])
    return r.exit_code, r.output


# ------------------------------------------------------------------------------ inpainting models
@pytest.mark.parametrize("model, family, strength", [
    ("inpaint_path", "sd-inpaint", 1.0), ("inpaint_path", "sd-inpaint", 0.75), ("sdxl_inpaint_path", "sdxl-inpaint", 1.0),
])
def test_inpaint_checkpoint_mask_channel_is_the_free_mask_at_every_call(model: str, family: str, strength: float,
                                                                        request: pytest.FixtureRequest) -> None:
    ed = Editor.from_pretrained(request.getfixturevalue(model), progress=False)
    assert ed.family == family and ed.pipe.unet.config.in_channels == 9
    seen: list[torch.Tensor] = []
    inner = ed.pipe.unet.forward

    def record(sample: torch.Tensor, *args: object, **kwargs: object) -> object:
        seen.append(sample[:, 4].clone())  # channels: 4 latents, 1 mask, 4 masked-image latents
        return inner(sample, *args, **kwargs)

    ed.pipe.unet.forward = record
    img = sample_image(64, 64, seed=3)
    try:
        out = ed.edit(img, band_map(), "a fox", num_inference_steps=8, strength=strength, seed=2)[0]
    finally:
        del ed.pipe.unet.forward
    total = min(int(8 * strength), 8)
    assert len(seen) == total
    for k, mask in enumerate(seen):
        want = expected_mask(k, total)
        assert all(torch.equal(m, want) for m in mask), f"model step {k}"
    assert torch.equal(seen[0][0], expected_mask(0, total)) and seen[0][0].sum() < seen[-1][0].sum()  # it grows
    assert seen[-1][0].sum() == 4 * 8  # at the last step every pixel with map > 0
    assert left_half_identical(out, img)
    assert not np.array_equal(np.asarray(out)[:, 32:], np.asarray(img)[:, 32:])
    assert out.info["diffdiff"]["family"] == family and out.info["diffdiff"]["inpaint_checkpoint"] is True


def test_inpaint_checkpoint_full_change_is_the_plain_inpainting_pipeline(inpaint_path: Path) -> None:
    """At strength 1 with an all-white map (once "the pipeline never noised the input image")."""
    from diffusers import StableDiffusionInpaintPipeline

    ed = Editor.from_pretrained(inpaint_path, progress=False)
    img = sample_image(64, 64, seed=3)
    white = Image.new("L", (64, 64), 255)
    ours = np.asarray(ed.edit(img, white, "a fox", num_inference_steps=STEPS, seed=4)[0])
    pipe = StableDiffusionInpaintPipeline.from_pretrained(inpaint_path, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(prompt="a fox", image=img, mask_image=white, height=64, width=64, strength=1.0,
                 num_inference_steps=STEPS, generator=torch.Generator().manual_seed(4), output_type="np").images[0]
    assert np.array_equal(ours, (plain * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def flux_path(addon_dir: Path) -> Path:
    return build_tiny_flux(addon_dir / "flux")


@pytest.fixture(scope="module")
def flux_fill_path(addon_dir: Path, flux_path: Path) -> Path:
    return build_tiny_flux_fill(addon_dir / "flux-fill", flux_path)


@pytest.mark.parametrize("strength, total", [(1.0, 8), (0.75, 6)])
def test_flux_fill_mask_input_is_the_free_mask_at_every_call(flux_fill_path: Path, strength: float, total: int) -> None:
    from diffusers import FluxFillPipeline

    ed = Editor.from_pretrained(flux_fill_path, progress=False)
    assert ed.family == "flux-fill"
    seen: list[torch.Tensor] = []
    inner = ed.pipe.transformer.forward

    def record(*args: object, **kwargs: torch.Tensor) -> object:
        seen.append(kwargs["hidden_states"][..., 128:].clone())  # 64 latents, 64 masked image, 256 mask
        return inner(*args, **kwargs)

    ed.pipe.transformer.forward = record
    img = sample_image(64, 64, seed=3)
    try:
        out = ed.edit(img, band_map(), "a fox", num_inference_steps=8, strength=strength, seed=2)[0]
    finally:
        del ed.pipe.transformer.forward
    assert len(seen) == total
    for k, packed in enumerate(seen):
        cells = FluxFillPipeline._unpack_latents(packed, 64, 64, 8)  # (B, 64 pixels of a cell, 8, 8)
        assert all(torch.equal(c, expected_mask(k, total)) for c in cells[0]), f"model step {k}"
    assert left_half_identical(out, img)
    assert out.info["diffdiff"]["family"] == "flux-fill"
    if strength == 1.0:  # an all-white map: exactly diffusers' Flux Fill with a white mask
        white = Image.new("L", (64, 64), 255)
        ours = ed.edit(img, white, "a fox", num_inference_steps=STEPS, seed=4)[0]
        plain = ed.pipe(prompt="a fox", image=img, mask_image=white, height=64, width=64, strength=1.0,
                        num_inference_steps=STEPS, generator=torch.Generator().manual_seed(4), output_type="np").images[0]
        assert np.array_equal(np.asarray(ours), (plain * 255).round().astype(np.uint8))


# ----------------------------------------------------------------------------------------- ControlNet
def test_cli_controlnet_by_path(files: Path, tiny_sd_path: Path, controlnet_path: Path) -> None:
    code, output = edit_cli(files, tiny_sd_path, "plain.png")
    assert code == 0, output
    code, output = edit_cli(files, tiny_sd_path, "cn.png", "--controlnet", str(controlnet_path),
                            "--control-image", str(files / "control.png"), "--control-scale", "0.7")
    assert code == 0, output
    src, plain, cn = (Image.open(files / n) for n in ("in.png", "plain.png", "cn.png"))
    assert left_half_identical(cn, src)
    assert not np.array_equal(np.asarray(cn), np.asarray(plain))
    meta = read_metadata(files / "cn.png")
    assert meta["controlnet"] == ["controlnet"] and meta["family"] == "sd-controlnet"
    assert meta["controlnet_scale"] == 0.7
    assert meta["control_image_files"] == ["control.png"]
    assert meta["control_image_sha256"] == [image_sha256(Image.open(files / "control.png"))]


def test_cli_control_from_canny_with_two_controlnets(files: Path, tiny_sd_path: Path, controlnet_path: Path) -> None:
    code, output = edit_cli(files, tiny_sd_path, "canny.png", "--controlnet", str(controlnet_path),
                            "--controlnet", str(controlnet_path), "--control-from", "canny", "--control-scale", "0.5",
                            "--control-scale", "1.5")
    assert code == 0, output
    meta = read_metadata(files / "canny.png")
    assert meta["control_from"] == "canny" and meta["controlnet"] == ["controlnet", "controlnet"]
    assert meta["controlnet_scale"] == [0.5, 1.5]
    assert left_half_identical(Image.open(files / "canny.png"), Image.open(files / "in.png"))


def test_control_from_canny_feeds_the_controlnet_opencv_edges(tiny_sd_path: Path, controlnet_path: Path) -> None:
    import cv2

    ed = Editor.from_pretrained(tiny_sd_path, controlnet=controlnet_path, progress=False)
    seen: list[torch.Tensor] = []
    inner = ed.pipe.controlnet.forward

    def record(*args: object, **kwargs: torch.Tensor) -> object:
        seen.append(kwargs["controlnet_cond"].clone())
        return inner(*args, **kwargs)

    ed.pipe.controlnet.forward = record
    arr = np.asarray(sample_image(64, 64, seed=3)).copy()
    arr[16:48, 20:44] = 0  # a dark box: sharp edges for Canny
    img = Image.fromarray(arr, "RGB")
    try:
        ed.edit(img, band_map(), "a fox", num_inference_steps=STEPS, seed=1, control_from="canny")
    finally:
        del ed.pipe.controlnet.forward
    edges = cv2.Canny(np.asarray(img.convert("L")), 100, 200)
    assert seen and edges.any()
    for cond in seen:  # what the ControlNet saw, in [0, 1], for every step and both guidance halves
        for c in cond:
            assert np.array_equal((c.permute(1, 2, 0).numpy() * 255).round(), np.stack([edges] * 3, -1))


def test_sdxl_controlnet_from_python(addon_dir: Path, tiny_sdxl_path: Path) -> None:
    net = build_tiny_controlnet(addon_dir / "controlnet-xl", tiny_sdxl_path, seed=1)
    ed = Editor.from_pretrained(tiny_sdxl_path, controlnet=net, progress=False)
    assert ed.family == "sdxl-controlnet"
    img, control = sample_image(64, 64, seed=3), sample_image(64, 64, seed=8)
    kw = dict(num_inference_steps=STEPS, seed=6)
    with_cn = ed.edit(img, band_map(), "a fox", control_image=control, **kw)[0]
    weak = ed.edit(img, band_map(), "a fox", control_image=control, controlnet_conditioning_scale=0.0, **kw)[0]
    plain = Editor.from_pretrained(tiny_sdxl_path, progress=False).edit(img, band_map(), "a fox", **kw)[0]
    assert left_half_identical(with_cn, img)
    assert not np.array_equal(np.asarray(with_cn), np.asarray(plain))
    assert np.array_equal(np.asarray(weak), np.asarray(plain))  # scale 0 switches the ControlNet off
    assert with_cn.info["diffdiff"]["controlnet"] == ["controlnet-xl"]


def test_sdxl_controlnet_union_takes_a_control_mode(union_controlnet_path: Path, tiny_sdxl_path: Path) -> None:
    ed = Editor.from_pretrained(tiny_sdxl_path, controlnet=union_controlnet_path, progress=False)
    img, control = sample_image(64, 64, seed=3), sample_image(64, 64, seed=8)
    with pytest.raises(DiffDiffError, match="control_mode"):
        ed.edit(img, band_map(), "a fox", num_inference_steps=STEPS, control_image=control)
    depth = ed.edit(img, band_map(), "a fox", num_inference_steps=STEPS, seed=1, control_image=control,
                    control_mode="depth")[0]
    seg = ed.edit(img, band_map(), "a fox", num_inference_steps=STEPS, seed=1, control_image=control, control_mode=5)[0]
    assert left_half_identical(depth, img)
    assert not np.array_equal(np.asarray(depth), np.asarray(seg))  # the mode reaches the model
    assert depth.info["diffdiff"]["control_mode"] == 1 and seg.info["diffdiff"]["control_mode"] == 5


def test_flux_controlnet_from_python(addon_dir: Path, flux_path: Path, controlnet_path: Path) -> None:
    flux = flux_path
    net = build_tiny_flux_controlnet(addon_dir / "flux-controlnet", flux)
    ed = Editor.from_pretrained(flux, controlnet=net, progress=False)
    assert ed.family == "flux-controlnet"
    img, control = sample_image(64, 64, seed=3), sample_image(64, 64, seed=8)
    kw = dict(num_inference_steps=STEPS, seed=6)
    with_cn = ed.edit(img, band_map(), "a fox", control_image=control, **kw)[0]
    off = ed.edit(img, band_map(), "a fox", control_image=control, controlnet_conditioning_scale=0.0, **kw)[0]
    plain = Editor.from_pretrained(flux, progress=False).edit(img, band_map(), "a fox", **kw)[0]
    assert left_half_identical(with_cn, img)
    assert not np.array_equal(np.asarray(with_cn), np.asarray(plain))
    # (Flux's ControlNet pipeline samples the control image's VAE latents from the generator, so scale 0
    # is not the plain pipeline's result; the scale reaches the model.)
    assert not np.array_equal(np.asarray(off), np.asarray(with_cn)) and left_half_identical(off, img)
    assert with_cn.info["diffdiff"]["controlnet"] == ["flux-controlnet"]
    with pytest.raises(DiffDiffError, match="not one for"):  # an SD ControlNet on Flux
        Editor.from_pretrained(flux, controlnet=controlnet_path, progress=False)


def test_controlnet_pipeline_shares_the_base_weights(tiny_sd_path: Path, controlnet_path: Path) -> None:
    from diffusers import AutoPipelineForImage2Image, ControlNetModel

    from diffdiff.control import controlnet_pipeline

    base = AutoPipelineForImage2Image.from_pretrained(tiny_sd_path)
    pipe = controlnet_pipeline(base, [ControlNetModel.from_pretrained(controlnet_path)])
    assert type(pipe).__name__ == "StableDiffusionControlNetImg2ImgPipeline"
    assert pipe.unet is base.unet and pipe.vae is base.vae and pipe.text_encoder is base.text_encoder


def test_controlnet_with_crop_or_a_refiner_is_refused(tiny_sdxl_path: Path, tiny_refiner_path: Path,
                                                      addon_dir: Path) -> None:
    net = build_tiny_controlnet(addon_dir / "controlnet-xl-2", tiny_sdxl_path, seed=3)
    with pytest.raises(DiffDiffError, match="refiner"):
        Editor.from_pretrained(tiny_sdxl_path, controlnet=net, refiner=tiny_refiner_path, progress=False)
    ed = Editor.from_pretrained(tiny_sdxl_path, controlnet=net, progress=False)
    img = sample_image(64, 64, seed=3)
    with pytest.raises(DiffDiffError, match="crop"):
        ed.edit(img, band_map(), "a fox", num_inference_steps=STEPS, control_image=img, crop=True)


def test_controlnet_hub_id_offline_is_one_line(files: Path, tiny_sd_path: Path) -> None:
    code, output = edit_cli(files, tiny_sd_path, "hub.png", "--controlnet", "nobody/no-such-controlnet",
                            "--control-image", str(files / "control.png"))
    assert code == 1
    (line,) = error_lines(output)
    assert "nobody/no-such-controlnet" in line and "cache" in line
    assert not (files / "hub.png").exists()


# ----------------------------------------------------------------------------------------------- LoRA
def test_cli_lora_file_with_scale(files: Path, tiny_sd_path: Path, lora_file: Path) -> None:
    code, output = edit_cli(files, tiny_sd_path, "base.png")
    assert code == 0, output
    code, output = edit_cli(files, tiny_sd_path, "lora.png", "--lora", f"{lora_file}:0.8")
    assert code == 0, output
    src, base, out = (Image.open(files / n) for n in ("in.png", "base.png", "lora.png"))
    assert left_half_identical(out, src)
    assert not np.array_equal(np.asarray(out), np.asarray(base))
    (record,) = read_metadata(files / "lora.png")["lora"]
    assert record["lora"] == lora_file.name and record["scale"] == 0.8 and record["sha256"] == file_sha256(lora_file)


def test_lora_scale_zero_is_the_base_model(tiny_sd_path: Path, lora_file: Path) -> None:
    img = sample_image(64, 64, seed=3)
    kw = dict(num_inference_steps=STEPS, seed=9)
    base = Editor.from_pretrained(tiny_sd_path, progress=False).edit(img, band_map(), "a fox", **kw)[0]
    off = Editor.from_pretrained(tiny_sd_path, lora=[f"{lora_file}:0"], progress=False).edit(img, band_map(), "a fox", **kw)[0]
    half = Editor.from_pretrained(tiny_sd_path, lora=[(str(lora_file), 0.5)], progress=False).edit(
        img, band_map(), "a fox", **kw)[0]
    assert np.array_equal(np.asarray(off), np.asarray(base))
    assert not np.array_equal(np.asarray(half), np.asarray(base))


def test_kohya_single_file_lora_loads_like_the_diffusers_one(tiny_sd_path: Path, lora_file: Path,
                                                           addon_dir: Path) -> None:
    kohya = save_kohya_lora(lora_file, addon_dir / "kohya_style.safetensors")
    img = sample_image(64, 64, seed=3)
    kw = dict(num_inference_steps=STEPS, seed=9)
    ours = Editor.from_pretrained(tiny_sd_path, lora=[f"{lora_file}:0.8"], progress=False).edit(img, band_map(), "a", **kw)
    theirs = Editor.from_pretrained(tiny_sd_path, lora=[f"{kohya}:0.8"], progress=False).edit(img, band_map(), "a", **kw)
    assert np.array_equal(np.asarray(ours[0]), np.asarray(theirs[0]))
    assert theirs[0].info["diffdiff"]["lora"][0]["lora"] == "kohya_style.safetensors"


def test_addons_extra_installs_peft_and_opencv() -> None:
    import tomllib

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {req.split(">")[0].split("=")[0] for req in extras["addons"]}
    assert {"peft", "opencv-python-headless"} <= names


@pytest.mark.parametrize("spec, want", [
    ("a.safetensors:0.8", ("a.safetensors", 0.8)),
    ("a.safetensors", ("a.safetensors", 1.0)),
    ("C:/loras/x.safetensors", ("C:/loras/x.safetensors", 1.0)),
    ("C:/loras/x.safetensors:-0.5", ("C:/loras/x.safetensors", -0.5)),
    ("owner/repo:1.5", ("owner/repo", 1.5)),
])
def test_parse_lora(spec: str, want: tuple[str, float]) -> None:
    assert parse_lora(spec) == want


def test_parse_lora_refuses_a_bad_scale() -> None:
    with pytest.raises(DiffDiffError, match="scale"):
        parse_lora("missing.safetensors:lots")


# ----------------------------------------------------------------------------------------- IP-Adapter
def test_cli_ip_adapter(files: Path, ip_weights: Path, tiny_sd_path: Path) -> None:
    weights = ip_weights
    code, output = edit_cli(files, tiny_sd_path, "noip.png")
    assert code == 0, output
    code, output = edit_cli(files, tiny_sd_path, "ip.png", "--ip-adapter", str(weights), "--ip-adapter-image",
                            str(files / "ref.png"), "--ip-adapter-scale", "0.6")
    assert code == 0, output
    src, base, out = (Image.open(files / n) for n in ("in.png", "noip.png", "ip.png"))
    assert left_half_identical(out, src)
    assert not np.array_equal(np.asarray(out), np.asarray(base))
    meta = read_metadata(files / "ip.png")
    assert meta["ip_adapter"] == {"ip_adapter": weights.name, "scale": 0.6, "sha256": file_sha256(weights)}
    assert meta["ip_adapter_image_sha256"] == image_sha256(Image.open(files / "ref.png"))


# ------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def bad_inputs(files: Path, addon_dir: Path, tiny_sdxl_path: Path, inpaint_path: Path, controlnet_path: Path,
               ip_weights: Path) -> dict:
    junk = addon_dir / "junk.safetensors"
    from safetensors.torch import save_file

    save_file({"something.weight": torch.zeros(2, 2)}, str(junk))
    return {
        "family": (inpaint_path, ["--controlnet", str(controlnet_path), "--control-image", str(files / "control.png")],
                   "cannot be used with"),
        "aspect": (None, ["--controlnet", str(controlnet_path), "--control-image", str(files / "wide.png")],
                   "another aspect ratio"),
        "lora-shape": (None, ["--lora", str(save_random_lora(tiny_sdxl_path, addon_dir / "lora-xl"))],
                       "lora-xl/pytorch_lora_weights.safetensors' does not fit"),
        "lora-junk": (None, ["--lora", f"{junk}:0.5"], "junk.safetensors"),
        "lora-missing": (None, ["--lora", str(addon_dir / "nope.safetensors")], "does not exist"),
        "ip-image": (None, ["--ip-adapter", str(ip_weights),
                            "--ip-adapter-image", str(files / "broken.png")], "broken.png"),
        "control-without-net": (None, ["--control-image", str(files / "control.png")], "--controlnet"),
        "control-twice": (None, ["--controlnet", str(controlnet_path), "--control-image", str(files / "control.png"),
                                 "--control-from", "canny"], "either"),
        "control-from-unknown": (None, ["--controlnet", str(controlnet_path), "--control-from", "sobel"], "sobel"),
        "control-mode-no-union": (None, ["--controlnet", str(controlnet_path), "--control-from", "canny",
                                         "--control-mode", "depth"], "ControlNet Union"),
        "control-scales": (None, ["--controlnet", str(controlnet_path), "--control-from", "canny",
                                  "--control-scale", "1", "--control-scale", "2"], "2 control scales for 1"),
        "ip-without-adapter": (None, ["--ip-adapter-image", str(files / "ref.png")], "--ip-adapter"),
        "ip-missing": (None, ["--ip-adapter", str(addon_dir / "no-ip.safetensors"), "--ip-adapter-image",
                              str(files / "ref.png")], "no-ip.safetensors"),
        "ip-without-image": (None, ["--ip-adapter", str(ip_weights)], "--ip-adapter-image"),
        "controlnet-without-image": (None, ["--controlnet", str(controlnet_path)], "--control-image"),
        "controlnet-missing": (None, ["--controlnet", str(addon_dir / "no-cn"), "--control-from", "canny"], "no-cn"),
    }


@pytest.mark.parametrize("case", ["family", "aspect", "lora-shape", "lora-junk", "lora-missing", "ip-image",
                                  "control-without-net", "control-twice", "control-from-unknown",
                                  "control-mode-no-union", "control-scales", "ip-without-adapter", "ip-missing",
                                  "ip-without-image", "controlnet-missing", "controlnet-without-image"])
def test_cli_bad_addon_input_is_one_line_and_writes_nothing(case: str, bad_inputs: dict, files: Path,
                                                             tiny_sd_path: Path) -> None:
    model, args, message = bad_inputs[case]
    out = f"bad-{case}.png"
    code, output = edit_cli(files, model or tiny_sd_path, out, *args)
    assert code == 1
    (line,) = error_lines(output)
    assert message in line and "Traceback" not in output
    assert not (files / out).exists()
    assert not [p for p in files.iterdir() if p.name.startswith(f".bad-{case}")]  # no temp file left


def test_python_addon_inputs_without_the_addon_are_refused(sd_editor: Editor) -> None:
    img = sample_image(64, 64, seed=3)
    with pytest.raises(DiffDiffError, match="ControlNet"):
        sd_editor.edit(img, band_map(), "x", num_inference_steps=2, control_image=img)
    with pytest.raises(DiffDiffError, match="IP-Adapter"):
        sd_editor.edit(img, band_map(), "x", num_inference_steps=2, ip_adapter_image=img)


# ---------------------------------------------------------------------------------------- depth maps
def test_cli_map_depth_with_marigold(files: Path, addon_dir: Path) -> None:
    from diffusers import MarigoldDepthPipeline

    model = build_tiny_marigold(addon_dir / "marigold")
    r = runner.invoke(app, ["map", "depth", str(files / "in.png"), "--depth-model", str(model), "--near", "0",
                            "--far", "1", "--seed", "3", "-o", str(files / "depth-map.png")])
    assert r.exit_code == 0, r.output
    pipe = MarigoldDepthPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    depth = pipe(Image.open(files / "in.png"), generator=torch.Generator().manual_seed(3)).prediction[0, :, :, 0]
    grey = np.round(np.clip(depth, 0, 1) * 255)
    want = (grey - grey.min()) / (grey.max() - grey.min())  # near (0) keeps, far (1) changes, linear between
    got = np.asarray(Image.open(files / "depth-map.png")).astype(np.float64) / 255
    assert got.shape == (64, 64) and np.abs(got - want).max() <= 1 / 255 + 1e-9
    meta = json.loads(Image.open(files / "depth-map.png").info["diffdiff"])
    assert meta["depth_model"] == str(model)


# -------------------------------------------------------------------------------------------- REST API
def test_rest_edit_takes_a_control_image_for_a_served_controlnet(tiny_sd_path: Path, controlnet_path: Path,
                                                                  sd_editor: Editor, files: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from diffdiff.web import create_app

    def post(client: TestClient, **extra: object) -> object:
        upload = {name: (f"{name}.png", (files / f).read_bytes(), "image/png")
                  for name, f in (("image", "in.png"), ("map", "map.png"), *extra.pop("uploads", []))}  # type: ignore[misc]
        return client.post("/api/edit", files=upload, data={"prompt": "a fox", "steps": STEPS, "seed": 2, **extra})

    def edit_fields(client: TestClient) -> set[str]:
        schema = client.get("/openapi.json").json()
        ref = schema["paths"]["/api/edit"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        return set(schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])

    ed = Editor.from_pretrained(tiny_sd_path, controlnet=controlnet_path, progress=False)
    with TestClient(create_app(ed, ui=False)) as client:
        assert {"control_image", "control_from", "controlnet_scale"} <= edit_fields(client)
        assert "ip_adapter_image" not in edit_fields(client)  # documented only for what the model has loaded
        r = post(client, uploads=[("control_image", "control.png")], controlnet_scale="0.6")
        assert r.status_code == 200, r.text
        out = Image.open(io.BytesIO(r.content))
        meta = read_metadata(out)
        assert meta["controlnet"] == ["controlnet"] and meta["controlnet_scale"] == 0.6
        assert meta["control_image_sha256"] == [image_sha256(Image.open(files / "control.png"))]
        assert left_half_identical(out.convert("RGB"), Image.open(files / "in.png"))
        wide = post(client, uploads=[("control_image", "wide.png")])
        assert wide.status_code == 422 and "aspect ratio" in wide.json()["error"]
        canny = post(client, control_from="canny")
        assert canny.status_code == 200 and read_metadata(Image.open(io.BytesIO(canny.content)))["control_from"] == "canny"
    with TestClient(create_app(sd_editor, ui=False)) as client:
        assert not {"control_image", "ip_adapter_image"} & edit_fields(client)
        r = post(client, uploads=[("control_image", "control.png")])
        assert r.status_code == 422 and "ControlNet" in r.json()["error"]


def test_rest_edit_takes_an_ip_adapter_image(tiny_sd_path: Path, ip_weights: Path, files: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from diffdiff.web import create_app

    ed = Editor.from_pretrained(tiny_sd_path, ip_adapter=ip_weights, progress=False)
    upload = {name: (f"{name}.png", (files / f).read_bytes(), "image/png")
              for name, f in (("image", "in.png"), ("map", "map.png"), ("ip_adapter_image", "ref.png"))}
    with TestClient(create_app(ed, ui=False)) as client:
        r = client.post("/api/edit", files=upload, data={"prompt": "a fox", "steps": STEPS, "seed": 2})
        assert r.status_code == 200, r.text
        meta = read_metadata(Image.open(io.BytesIO(r.content)))
        assert meta["ip_adapter_image_sha256"] == image_sha256(Image.open(files / "ref.png"))
        del upload["ip_adapter_image"]
        missing = client.post("/api/edit", files=upload, data={"prompt": "a fox", "steps": STEPS})
        assert missing.status_code == 422 and "ip_adapter_image" in missing.json()["error"]


def test_serve_takes_the_addon_flags_and_fails_before_binding(tiny_sd_path: Path, addon_dir: Path) -> None:
    pytest.importorskip("fastapi")
    r = runner.invoke(app, ["serve", "--model", str(tiny_sd_path), "--lora", str(addon_dir / "nope.safetensors"),
                            "--port", "7861"])
    assert r.exit_code == 1
    (line,) = error_lines(r.output)
    assert "nope.safetensors' does not exist" in line


def test_inpaint_checkpoint_with_two_images_and_skip_frozen(inpaint_path: Path) -> None:
    ed = Editor.from_pretrained(inpaint_path, progress=False)
    img = sample_image(64, 64, seed=3)
    plain = ed.edit(img, band_map(), "a fox", num_inference_steps=8, seed=2, num_images=2)
    skipped = ed.edit(img, band_map(), "a fox", num_inference_steps=8, seed=2, num_images=2, skip_frozen=True)
    assert len(plain) == len(skipped) == 2
    assert any(f < 1 for f in ed.last_run.denoised_fractions)  # the early steps ran on part of the grid only
    for out in (*plain, *skipped):
        assert left_half_identical(out, img)
    assert not np.array_equal(np.asarray(plain[0]), np.asarray(plain[1]))  # two different variations


def test_rest_lora_field_scales_one_request(tiny_sd_path: Path, lora_file: Path, sd_editor: Editor, files: Path,
                                            addon_dir: Path) -> None:
    """``lora=NAME:SCALE`` on /api/edit: that request runs at those scales (checked against models
    loaded at those scales), the metadata records them, the next request is back at the load-time
    scales; bad names and scales are one-line 422s; a server without LoRAs neither documents nor takes it."""
    pytest.importorskip("fastapi")
    import re

    from fastapi.testclient import TestClient

    from diffdiff.web import create_app

    folder = addon_dir / "named-loras"
    folder.mkdir()
    style = folder / "style.safetensors"
    style.write_bytes(lora_file.read_bytes())
    ink = folder / "ink.safetensors"
    ink.write_bytes(save_random_lora(tiny_sd_path, addon_dir / "lora-ink", seed=1).read_bytes())
    img, cmap = Image.open(files / "in.png"), Image.open(files / "map.png")
    upload = {name: (f"{name}.png", (files / f).read_bytes(), "image/png") for name, f in (("image", "in.png"), ("map", "map.png"))}

    def post(client: TestClient, lora: object = None) -> object:
        data: dict[str, object] = {"prompt": "a fox", "steps": STEPS, "seed": 2}
        if lora is not None:
            data["lora"] = lora
        return client.post("/api/edit", files=upload, data=data)

    def pixels(response: object) -> np.ndarray:
        assert response.status_code == 200, response.text  # type: ignore[attr-defined]
        return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))  # type: ignore[attr-defined]

    def python_edit(*loras: str) -> np.ndarray:
        ed = Editor.from_pretrained(tiny_sd_path, lora=list(loras), progress=False) if loras else sd_editor
        return np.asarray(ed.edit(img, cmap, "a fox", num_inference_steps=STEPS, seed=2)[0])

    ed = Editor.from_pretrained(tiny_sd_path, lora=[f"{style}:0.8", f"{ink}:0.3"], progress=False)
    with TestClient(create_app(ed, ui=False)) as client:
        schema = client.get("/openapi.json").json()
        ref = schema["paths"]["/api/edit"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        field = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]["lora"]
        assert re.fullmatch(field["pattern"], "style:0.5,ink.safetensors:-1") and not re.fullmatch(field["pattern"], "x:1")
        first = post(client)
        half = post(client, "style:0.5")
        both_off = post(client, ["style:0", "ink:0"])  # repeated fields
        again = post(client)
        assert np.array_equal(pixels(half), python_edit(f"{style}:0.5", f"{ink}:0.3"))
        # By the file name too; a LoRA named twice takes its last scale.
        assert np.array_equal(pixels(post(client, "style.safetensors:0.9,style:0.5")), pixels(half))
        assert np.array_equal(pixels(both_off), python_edit())  # scale 0 everywhere: the base model
        assert np.array_equal(pixels(again), pixels(first))  # the request's scales were for that request only
        assert not np.array_equal(pixels(half), pixels(first))
        scales = [[r["scale"] for r in read_metadata(Image.open(io.BytesIO(r.content)))["lora"]]
                  for r in (first, half, both_off)]
        assert scales == [[0.8, 0.3], [0.5, 0.3], [0.0, 0.0]]
        for bad, needle in (("nope:1", "no LoRA named 'nope'"), ("style:lots", "decimal number"),
                            ("style:11", "from -10 to 10"), ("style", "is not NAME:SCALE")):
            r = post(client, bad)
            assert r.status_code == 422 and needle in r.json()["error"] and "\n" not in r.json()["error"], (bad, r.text)
        assert np.array_equal(pixels(post(client)), pixels(first))  # refused requests changed nothing
    with TestClient(create_app(sd_editor, ui=False)) as client:
        r = post(client, "style:0.5")
        assert r.status_code == 422 and r.json()["error"] == "lora: this server's model has no LoRA loaded"
        assert "lora" not in client.get("/openapi.json").text
        ip = client.post("/api/edit", files={**upload, "ip_adapter_image": upload["image"]}, data={"prompt": "a"})
        assert ip.status_code == 422 and ip.json()["error"] == "ip_adapter_image: this server's model has no IP-Adapter loaded"


def test_lora_names_and_per_call_scales() -> None:
    """The names a per-call scale list may use: file name, file name without extension, hub id;
    a name two LoRAs share is nobody's. Scales run from -10 to 10."""
    records = [{"lora": "style.safetensors", "scale": 0.8}, {"lora": "owner/repo", "scale": 1.0},
               {"lora": "style.bin", "scale": 1.0}]
    assert lora_names(records) == {"style.safetensors": 0, "owner/repo": 1, "style.bin": 2}
    assert parse_scale_overrides(["owner/repo:-10", "style.bin:10,owner/repo:0.25", ""], records) == {1: 0.25, 2: 10.0}
    with pytest.raises(DiffDiffError, match="no LoRA named 'style'"):
        parse_scale_overrides(["style:1"], records)
    with pytest.raises(DiffDiffError, match="from -10 to 10, got '-10.5'"):
        parse_scale_overrides(["owner/repo:-10.5"], records)


# ------------------------------------------------------------------------------------------------ web UI
@pytest.fixture(scope="module")
def control_ip_editor(tiny_sd_path: Path, controlnet_path: Path, ip_weights: Path) -> Editor:
    return Editor.from_pretrained(tiny_sd_path, controlnet=controlnet_path, ip_adapter=ip_weights, progress=False)


def ui_of(editor: Editor) -> tuple[object, dict[str, object]]:
    """The Gradio Blocks for ``editor`` and its components by elem_id."""
    pytest.importorskip("gradio")
    from diffdiff.web.service import EditService
    from diffdiff.web.ui import build_ui

    demo = build_ui(EditService(editor))
    comps = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}  # type: ignore[attr-defined]
    return demo, comps


def event_of(demo: object, name: str) -> object:
    """The Blocks' event whose function is ``name`` (its ``.fn`` and ``.inputs``)."""
    (event,) = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name]  # type: ignore[attr-defined]
    return event


def run_edit_of(demo: object) -> object:
    return event_of(demo, "run_edit").fn  # type: ignore[attr-defined]


def test_ui_shows_addon_inputs_only_for_what_is_loaded(control_ip_editor: Editor, sd_editor: Editor) -> None:
    import gradio as gr  # noqa: F401  (skipped above when missing)

    demo, comps = ui_of(control_ip_editor)
    addon_ids = {"dd-control-image", "dd-control-source", "dd-control-scale", "dd-ip-image"}
    assert addon_ids <= set(comps)
    assert [v for _, v in comps["dd-control-source"].choices] == ["upload", "canny"]  # type: ignore[attr-defined]
    assert "canny" in comps["dd-control-source"].choices[1][0]  # type: ignore[attr-defined]
    scale = comps["dd-control-scale"]
    assert (scale.minimum, scale.maximum, scale.value) == (0, 2, 1.0)  # type: ignore[attr-defined]
    # The run button's edit takes them (the event's inputs), in the order run_edit reads them.
    (event,) = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "run_edit"]  # type: ignore[attr-defined]
    ids = [getattr(c, "elem_id", None) for c in event.inputs]  # then the Union's control type, the references
    assert ids[-6:-2] == ["dd-control-source", "dd-control-image", "dd-control-scale", "dd-ip-image"]
    _, plain = ui_of(sd_editor)
    assert not addon_ids & set(plain) and "dd-run" in plain


def test_ui_run_edit_passes_the_control_and_reference_images(control_ip_editor: Editor, files: Path) -> None:
    """The UI's edit function, called as Gradio calls it: its result is the Python API's edit with the
    same control image, scale and reference image; canny derives the control image; a missing upload is one line."""
    import gradio as gr

    demo, _ = ui_of(control_ip_editor)
    run_edit = run_edit_of(demo)
    img = Image.open(files / "in.png").convert("RGB")
    control, ref, cmap = Image.open(files / "control.png"), Image.open(files / "ref.png"), band_map()
    canvas = {"background": img, "layers": [], "composite": img}

    def ui(source: str, control_image: object, ip_image: object = ref) -> tuple[np.ndarray, dict]:
        history, meta, _ = run_edit(canvas, cmap, "a fox", "", STEPS, 7.5, 1.0, 4, "change", [], source,  # type: ignore[operator]
                                    control_image, 0.6, ip_image, progress=lambda *a, **k: None)
        out = Image.open(history[0])
        assert read_metadata(out) == meta
        return np.asarray(out.convert("RGB")), meta

    got, meta = ui("upload", control)
    want = control_ip_editor.edit(img, cmap, "a fox", num_inference_steps=STEPS, guidance_scale=7.5, seed=4,
                                  control_image=control, controlnet_conditioning_scale=0.6, ip_adapter_image=ref)[0]
    assert np.array_equal(got, np.asarray(want)) and left_half_identical(Image.fromarray(got), img)
    assert meta["control_image_sha256"] == [image_sha256(control)] and meta["controlnet_scale"] == 0.6
    assert meta["ip_adapter_image_sha256"] == image_sha256(ref) and meta["controlnet"] == ["controlnet"]
    canny, canny_meta = ui("canny", None)
    want_canny = control_ip_editor.edit(img, cmap, "a fox", num_inference_steps=STEPS, guidance_scale=7.5, seed=4,
                                        control_from="canny", controlnet_conditioning_scale=0.6, ip_adapter_image=ref)[0]
    assert np.array_equal(canny, np.asarray(want_canny)) and canny_meta["control_from"] == "canny"
    assert not np.array_equal(canny, got)
    with pytest.raises(gr.Error, match="upload a control image, or choose 'derive from input: canny'"):
        ui("upload", None)
    with pytest.raises(gr.Error, match="upload its reference image"):
        ui("canny", None, None)
    with pytest.raises(gr.Error, match="aspect ratio"):
        ui("upload", Image.open(files / "wide.png"))


def test_ui_fan_passes_the_edit_tabs_control_and_reference_images(control_ip_editor: Editor, files: Path) -> None:
    """The Fan tab runs with the Edit tab's add-on inputs: the UI's fan is Editor.fan with the same control
    image, scale and reference image (same pixels and metadata); a missing upload is the Edit tab's one line."""
    import gradio as gr

    demo, comps = ui_of(control_ip_editor)
    # A ControlNet model is a family of its own, which the auto map and DiffEdit do not run.
    assert comps["dd-auto"].interactive is False and "sd-controlnet family" in comps["dd-diffedit-off"].value  # type: ignore[attr-defined]
    event = event_of(demo, "run_fan")
    ids = [getattr(c, "elem_id", None) for c in event.inputs]  # type: ignore[attr-defined]
    assert ids[-5:-1] == ["dd-control-source", "dd-control-image", "dd-control-scale", "dd-ip-image"]  # the Edit tab's
    img = Image.open(files / "in.png").convert("RGB")
    control, ref = Image.open(files / "control.png"), Image.open(files / "ref.png")
    canvas = {"background": img, "layers": [], "composite": img}

    def ui(source: str, control_image: object, ip_image: object = ref) -> Image.Image:
        path = event.fn(canvas, None, "a fox", "", STEPS, 7.5, 4, "change", 4, 0.0, 1.0, False,  # type: ignore[attr-defined]
                        source, control_image, 0.6, ip_image, progress=lambda *a, **k: None)
        return Image.open(path)

    got = ui("upload", control)
    want = control_ip_editor.fan(img, "a fox", columns=4, num_inference_steps=STEPS, guidance_scale=7.5, seed=4,
                                 control_image=control, controlnet_conditioning_scale=0.6, ip_adapter_image=ref)
    assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want))
    meta = read_metadata(got)
    assert meta == want.info["diffdiff"] and meta["tool"] == "fan"
    assert meta["control_image_sha256"] == [image_sha256(control)] and meta["controlnet_scale"] == 0.6
    assert meta["ip_adapter_image_sha256"] == image_sha256(ref)
    # The strength-0 column is the input, byte for byte; the control image reaches the others.
    assert np.array_equal(np.asarray(got.convert("RGB"))[:, :16], np.asarray(img)[:, :16])
    canny = ui("canny", None)
    assert read_metadata(canny)["control_from"] == "canny"
    assert not np.array_equal(np.asarray(canny.convert("RGB")), np.asarray(got.convert("RGB")))
    with pytest.raises(gr.Error, match="upload a control image, or choose 'derive from input: canny'"):
        ui("upload", None)
    with pytest.raises(gr.Error, match="upload its reference image"):
        ui("canny", None, None)
    with pytest.raises(gr.Error, match="aspect ratio"):
        ui("upload", Image.open(files / "wide.png"))


def test_auto_map_and_diffedit_refuse_an_ip_adapter_in_one_line(tiny_sd_path: Path, ip_weights: Path,
                                                               files: Path) -> None:
    """They call the UNet with text only (no reference image input): one line, 501 from the API, and the
    UI offers neither (instead of diffusers' TypeError from the IP-Adapter'd UNet)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from diffdiff.errors import UnsupportedFeatureError
    from diffdiff.web import create_app

    ed = Editor.from_pretrained(tiny_sd_path, ip_adapter=ip_weights, progress=False)
    img = Image.open(files / "in.png")
    for run in (lambda: ed.auto_map(img, "a cat", "a dog", num_maps=1, seed=1),
                lambda: ed.diffedit(img, "a cat", "a dog", num_inference_steps=2, seed=1)):
        with pytest.raises(UnsupportedFeatureError, match="^automatic maps and DiffEdit take no IP-Adapter"):
            run()
    with TestClient(create_app(ed, ui=False)) as client:
        features = client.get("/api/health").json()["features"]
        assert features == {"edit": True, "fan": True, "auto_map": False, "diffedit": False}
        for path, extra in (("/api/auto-map", {"num_maps": 1}), ("/api/diffedit", {"steps": 2})):
            r = client.post(path, files={"image": ("in.png", (files / "in.png").read_bytes(), "image/png")},
                            data={"source_prompt": "a cat", "target_prompt": "a dog", **extra})
            assert r.status_code == 501 and r.json()["error"].startswith("automatic maps and DiffEdit take no IP-Adapter")
    _, comps = ui_of(ed)
    assert comps["dd-auto"].interactive is False and "IP-Adapter" in comps["dd-auto"].value  # type: ignore[attr-defined]
    assert "IP-Adapter" in comps["dd-diffedit-off"].value and "dd-diffedit-run" not in comps  # type: ignore[attr-defined]


def test_rest_fan_takes_the_edits_addon_fields(control_ip_editor: Editor, sd_editor: Editor, files: Path) -> None:
    """/api/fan declares and takes control_image / control_from / controlnet_scale / ip_adapter_image for
    what the served model has loaded, as /api/edit does: its PNG is Editor.fan's with those images."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from diffdiff.web import create_app

    def post(client: TestClient, *names: tuple[str, str], **data: object) -> object:
        upload = {field: (f, (files / f).read_bytes(), "image/png") for field, f in (("image", "in.png"), *names)}
        return client.post("/api/fan", files=upload, data={"prompt": "a fox", "steps": STEPS, "seed": 4,
                                                             "guidance": 7.5, "columns": 4, **data})

    def fan_fields(client: TestClient) -> set[str]:
        schema = client.get("/openapi.json").json()
        ref = schema["paths"]["/api/fan"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        return set(schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])

    addon = {"control_image", "control_from", "controlnet_scale", "ip_adapter_image"}
    img = Image.open(files / "in.png")
    control, ref = Image.open(files / "control.png"), Image.open(files / "ref.png")
    with TestClient(create_app(control_ip_editor, ui=False)) as client:
        assert addon <= fan_fields(client)
        r = post(client, ("control_image", "control.png"), ("ip_adapter_image", "ref.png"), controlnet_scale="0.6")
        assert r.status_code == 200, r.text
        got = Image.open(io.BytesIO(r.content))
        want = control_ip_editor.fan(img, "a fox", columns=4, num_inference_steps=STEPS, guidance_scale=7.5, seed=4,
                                     control_image=control, controlnet_conditioning_scale=0.6, ip_adapter_image=ref)
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want))
        assert read_metadata(got)["control_image_sha256"] == [image_sha256(control)]
        missing = post(client, ("ip_adapter_image", "ref.png"))
        assert missing.status_code == 422 and "a ControlNet is loaded" in missing.json()["error"]
        canny = post(client, ("ip_adapter_image", "ref.png"), control_from="canny")
        assert canny.status_code == 200 and read_metadata(Image.open(io.BytesIO(canny.content)))["control_from"] == "canny"
    with TestClient(create_app(sd_editor, ui=False)) as client:
        assert not addon & fan_fields(client)
        r = post(client, ("control_image", "control.png"))
        assert r.status_code == 422 and r.json()["error"] == "control_image: this server's model has no ControlNet loaded"
