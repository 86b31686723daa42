"""``diffdiff fan`` and ``diffdiff soft-inpaint`` take ``diffdiff edit``'s add-on options.

The options are declared once (:mod:`diffdiff.cli.addon_options`); here each command's click
parameters are compared, the CLI's PNG (pixels, metadata, file bytes) is compared with the Python
API called directly with the same control or reference image (an independent route: no CLI code
runs there), and bad add-on input is one ``error:`` line, exit code 1 and no output file. The tiny
random ControlNet and IP-Adapter come from :mod:`diffdiff.testing_addons`, loaded back by path.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from diffdiff import Editor
from diffdiff.cli import app
from diffdiff.fan import fan_grid
from diffdiff.io import file_sha256, image_sha256, read_metadata, save_png_atomic
from diffdiff.testing import sample_image

pytestmark = pytest.mark.filterwarnings("ignore::diffdiff.errors.DiffDiffWarning")  # 4-step runs, on purpose
runner = CliRunner()
STEPS = 4
ADDON_OPTIONS = ["--controlnet", "--control-image", "--control-scale", "--control-from", "--control-mode", "--lora",
                 "--ip-adapter", "--ip-adapter-image", "--ip-adapter-scale"]


@pytest.fixture(scope="module")
def addon_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-addons")


@pytest.fixture(scope="module")
def files(addon_dir: Path) -> Path:
    folder = addon_dir / "files"
    folder.mkdir()
    sample_image(64, 64, seed=3).save(folder / "in.png")
    sample_image(64, 64, seed=7).save(folder / "control.png")
    sample_image(96, 48, seed=7).save(folder / "wide.png")
    sample_image(40, 40, seed=9).save(folder / "ref.png")
    sample_image(40, 40, seed=13).save(folder / "ref-2.png")
    hole = np.zeros((64, 64), np.uint8)
    hole[24:40, 40:56] = 255
    Image.fromarray(hole, "L").save(folder / "mask.png")
    return folder


def fan_args(files: Path, model: Path, out: str) -> list[str]:
    return ["fan", str(files / "in.png"), "--prompt", "a fox", "--model", str(model), "--steps", str(STEPS),
            "--columns", "4", "--guidance", "7.5", "-o", str(files / out)]


def soft_args(files: Path, model: Path, out: str) -> list[str]:
    return ["soft-inpaint", str(files / "in.png"), "--mask", str(files / "mask.png"), "--softness", "4",
            "--prompt", "a fox", "--model", str(model), "--steps", str(STEPS), "--guidance", "7.5", "-o", str(files / out)]


def cli(args: list[str], *extra: str) -> tuple[int, str]:
    r = runner.invoke(app, [*args, *extra])
    return r.exit_code, r.output


def same_png(path: Path, want: Image.Image, scratch: Path) -> bool:
    """The CLI's file is byte for byte the Python API's image saved with its own metadata."""
    save_png_atomic(want, scratch, want.info["diffdiff"])
    return path.read_bytes() == scratch.read_bytes()


def test_edit_fan_and_soft_inpaint_share_one_addon_option_list() -> None:
    """Same names, types, defaults and help text in all three commands (one definition), under one help panel."""
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]

    def addon_params(name: str) -> list[tuple]:
        params = {p.opts[0]: p for p in commands[name].params}
        return [(o, params[o].type_descriptor.annotation, params[o].multiple, params[o].default, params[o].help, params[o].metavar,
                 params[o].rich_help_panel) for o in ADDON_OPTIONS]

    edit = addon_params("edit")
    assert addon_params("fan") == edit and addon_params("soft-inpaint") == edit
    assert {panel for *_, panel in edit} == {"Add-ons: ControlNet, LoRA, IP-Adapter"}
    for name in ("edit", "fan", "soft-inpaint"):
        shown = runner.invoke(app, [name, "--help"], terminal_width=200).output
        assert "Add-ons: ControlNet, LoRA, IP-Adapter" in shown and all(o in shown for o in ADDON_OPTIONS)


def test_cli_fan_with_a_controlnet_is_editor_fan_with_that_control_image(
        files: Path, tiny_sd_path: Path, controlnet_path: Path, ip_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a ControlNet and an IP-Adapter loaded; the --rows grid too."""
    seen: list[torch.Tensor] = []
    inner = diffusers.ControlNetModel.forward

    def record(self: object, *args: object, **kwargs: torch.Tensor) -> object:
        seen.append(kwargs["controlnet_cond"].clone())
        return inner(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(diffusers.ControlNetModel, "forward", record)
        code, output = cli(fan_args(files, tiny_sd_path, "fan-cn.png"), "--controlnet", str(controlnet_path),
                           "--control-image", str(files / "control.png"), "--control-scale", "0.6", "--seed", "4",
                           "--ip-adapter", str(ip_weights), "--ip-adapter-image", str(files / "ref.png"))
    assert code == 0, output
    # What the ControlNet saw at every step (both guidance halves): control.png's pixels, in [0, 1]
    # (the image is the work size; a step limited to the free columns sees their right-aligned window).
    control = np.asarray(Image.open(files / "control.png").convert("RGB"), dtype=np.float64)
    assert len(seen) == STEPS
    for cond in seen:
        for c in cond:
            assert np.array_equal((c.permute(1, 2, 0).numpy() * 255).round(), control[:, 64 - c.shape[-1]:])
    ed = Editor.from_pretrained(tiny_sd_path, controlnet=controlnet_path, ip_adapter=ip_weights, progress=False)
    img = Image.open(files / "in.png")
    want = ed.fan(img, "a fox", columns=4, num_inference_steps=STEPS, guidance_scale=7.5, seed=4,
                  control_image=str(files / "control.png"), controlnet_conditioning_scale=0.6,
                  ip_adapter_image=str(files / "ref.png"), metadata={"image_file": "in.png"})
    got = Image.open(files / "fan-cn.png")
    assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want))
    assert same_png(files / "fan-cn.png", want, files / "fan-cn-python.png")
    meta = read_metadata(got)
    assert meta["tool"] == "fan" and meta["controlnet"] == ["controlnet"] and meta["controlnet_scale"] == 0.6
    assert meta["control_image_files"] == ["control.png"]
    assert meta["control_image_sha256"] == [image_sha256(Image.open(files / "control.png"))]
    assert meta["ip_adapter_image_file"] == "ref.png" and meta["ip_adapter"]["ip_adapter"] == ip_weights.name
    # The strength-0 band is the input, byte for byte.
    assert np.array_equal(np.asarray(got.convert("RGB"))[:, :16], np.asarray(img.convert("RGB"))[:, :16])
    # The --rows grid runs each row's fan with the same add-on inputs.
    code, output = cli(fan_args(files, tiny_sd_path, "grid-cn.png"), "--controlnet", str(controlnet_path),
                       "--control-image", str(files / "control.png"), "--control-scale", "0.6",
                       "--rows", "seed", "--row-values", "1,2", "--ip-adapter", str(ip_weights),
                       "--ip-adapter-image", str(files / "ref.png"))
    assert code == 0, output
    want_grid = fan_grid(ed, img, "a fox", "seed", [1, 2], 4, labels=False, num_inference_steps=STEPS,
                         guidance_scale=7.5, control_image=[str(files / "control.png")],
                         controlnet_conditioning_scale=[0.6], ip_adapter_image=str(files / "ref.png"),
                         metadata={"image_file": "in.png"})
    assert same_png(files / "grid-cn.png", want_grid, files / "grid-cn-python.png")
    assert read_metadata(files / "grid-cn.png")["control_image_files"] == ["control.png"]


def test_cli_soft_inpaint_with_an_ip_adapter_is_editor_soft_inpaint_with_that_reference(
        files: Path, tiny_sd_path: Path, ip_weights: Path, controlnet_path: Path, lora_file: Path) -> None:
    """With an IP-Adapter, a ControlNet fed by --control-from canny and a LoRA loaded."""
    code, output = cli(soft_args(files, tiny_sd_path, "soft-ip.png"), "--ip-adapter", str(ip_weights),
                       "--ip-adapter-image", str(files / "ref.png"), "--ip-adapter-scale", "0.6", "--seed", "4",
                       "--controlnet", str(controlnet_path), "--control-from", "canny", "--lora", f"{lora_file}:0.8")
    assert code == 0, output
    ed = Editor.from_pretrained(tiny_sd_path, ip_adapter=ip_weights, ip_adapter_scale=0.6, controlnet=controlnet_path,
                                lora=[f"{lora_file}:0.8"], progress=False)
    img = Image.open(files / "in.png")

    def python_soft(ref: str) -> Image.Image:
        (out,) = ed.soft_inpaint(img, Image.open(files / "mask.png"), 4, "a fox", num_inference_steps=STEPS,
                                 guidance_scale=7.5, seed=4, ip_adapter_image=str(files / ref), control_from="canny",
                                 metadata={"image_file": "in.png", "mask_file": "mask.png"})
        return out

    want = python_soft("ref.png")
    got = Image.open(files / "soft-ip.png")
    assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want))
    assert same_png(files / "soft-ip.png", want, files / "soft-ip-python.png")
    meta = read_metadata(got)
    assert meta["tool"] == "soft-inpaint" and meta["ip_adapter_image_file"] == "ref.png"
    assert meta["ip_adapter"] == {"ip_adapter": ip_weights.name, "scale": 0.6, "sha256": file_sha256(ip_weights)}
    assert meta["ip_adapter_image_sha256"] == image_sha256(Image.open(files / "ref.png"))
    assert meta["control_from"] == "canny" and meta["controlnet"] == ["controlnet"]
    assert [(r["lora"], r["scale"]) for r in meta["lora"]] == [(lora_file.name, 0.8)]
    # The reference reaches the model; pixels 3 x softness (12 px) or more from the hole stay exact.
    assert not np.array_equal(np.asarray(python_soft("ref-2.png")), np.asarray(want))
    far = np.ones((64, 64), bool)
    far[24 - 12:40 + 12, 40 - 12:] = False
    assert np.array_equal(np.asarray(got.convert("RGB"))[far], np.asarray(img.convert("RGB"))[far])


def test_cli_fan_with_a_lora_is_editor_fan_with_that_lora(files: Path, tiny_sd_path: Path, lora_file: Path,
                                                          sd_editor: Editor) -> None:
    lora = lora_file
    code, output = cli(fan_args(files, tiny_sd_path, "fan-lora.png"), "--lora", f"{lora}:0.8", "--seed", "4")
    assert code == 0, output
    kw: dict = dict(columns=4, num_inference_steps=STEPS, guidance_scale=7.5, seed=4, metadata={"image_file": "in.png"})
    img = Image.open(files / "in.png")
    want = Editor.from_pretrained(tiny_sd_path, lora=[f"{lora}:0.8"], progress=False).fan(img, "a fox", **kw)
    assert same_png(files / "fan-lora.png", want, files / "fan-lora-python.png")
    (record,) = read_metadata(files / "fan-lora.png")["lora"]
    assert record["lora"] == lora.name and record["scale"] == 0.8 and record["sha256"] == file_sha256(lora)
    assert not np.array_equal(np.asarray(want), np.asarray(sd_editor.fan(img, "a fox", **kw)))  # the LoRA acts


BAD = {  # case: (add-on options, what the error line names); {cn}, {ip}, {files} filled in below
    "controlnet-without-image": (["--controlnet", "{cn}"], "--control-image FILE or --control-from canny"),
    "control-image-missing": (["--controlnet", "{cn}", "--control-image", "{files}/nope.png"], "nope.png' does not exist"),
    "control-image-aspect": (["--controlnet", "{cn}", "--control-image", "{files}/wide.png"], "another aspect ratio"),
    "control-without-net": (["--control-image", "{files}/control.png"], "--controlnet"),
    "control-scales": (["--controlnet", "{cn}", "--control-image", "{files}/control.png", "--control-scale", "1",
                        "--control-scale", "2"], "2 control scales for 1 ControlNets"),
    "control-mode-no-union": (["--controlnet", "{cn}", "--control-from", "canny", "--control-mode", "depth"],
                              "ControlNet Union"),
    "ip-without-image": (["--ip-adapter", "{ip}"], "--ip-adapter-image FILE"),
    "ip-image-missing": (["--ip-adapter", "{ip}", "--ip-adapter-image", "{files}/no-ref.png"], "no-ref.png' does not exist"),
    "ip-without-adapter": (["--ip-adapter-image", "{files}/ref.png"], "--ip-adapter FILE"),
}


@pytest.mark.parametrize("command", ["fan", "soft-inpaint"])
@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_addon_input_is_one_line_and_writes_nothing(command: str, case: str, files: Path, tiny_sd_path: Path,
                                                             controlnet_path: Path, ip_weights: Path) -> None:
    options, message = BAD[case]
    extra = [o.format(cn=controlnet_path, ip=ip_weights, files=files) for o in options]
    out = f"bad-{command}-{case}.png"
    code, output = cli((fan_args if command == "fan" else soft_args)(files, tiny_sd_path, out), *extra)
    assert code == 1, output
    (line,) = [t for t in output.splitlines() if t.startswith("error:")]
    assert message in line and "Traceback" not in output
    assert not (files / out).exists()
    assert not [p for p in files.iterdir() if p.name.startswith(f".bad-{command}-{case}")]  # no temp file left
