"""Single-file checkpoints (.safetensors in the original LDM / Stability layout), loaded offline.

The tiny models are written with :func:`diffdiff.testing.save_single_file` and loaded back through
diffusers' real ``from_single_file`` conversion. ``config=`` points at a copy of the model folder
WITHOUT weights, so every tensor compared below provably came out of the single file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from diffdiff import Editor
from diffdiff.errors import ModelLoadError
from diffdiff.loading import _own_unaligned_weights, load_pipeline
from diffdiff.testing import (
    build_tiny_sdxl_distinct,
    copy_model_configs,
    gradient_map,
    sample_image,
    save_single_file,
)

# 4 steps keep the test fast; the editor's few-steps warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:only 4 denoising steps")


def _single(folder: Path, out: Path) -> tuple[Path, Path]:
    """(checkpoint file, config-only folder) for a diffusers folder."""
    return save_single_file(folder, out / f"{folder.name}.safetensors"), copy_model_configs(folder, out / f"{folder.name}-cfg")


@pytest.fixture(scope="module")
def sf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("single-file")


@pytest.fixture(scope="module")
def sdxl_distinct_path(sf_dir: Path) -> Path:
    # build_tiny_sdxl's two text encoders are equally wide, which diffusers can't tell apart in a file.
    return build_tiny_sdxl_distinct(sf_dir / "tiny-sdxl-distinct")


def _assert_same_weights(a: Any, b: Any) -> int:
    """Every tensor of every model component is identical (and none is left on the meta device)."""
    count = 0
    for name, module in b.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        sa, sb = getattr(a, name).state_dict(), module.state_dict()
        assert sa.keys() == sb.keys(), name
        for key, value in sb.items():
            assert sa[key].device.type != "meta", f"{name}.{key} was not loaded"
            assert torch.equal(sa[key], value), f"{name}.{key} differs"
            count += 1
    return count


def _latents(ed: Editor) -> torch.Tensor:
    img, cmap = sample_image(64, 64, seed=3), gradient_map(64, 64)
    return ed.edit(img, cmap, "a cat", num_inference_steps=4, seed=0, output_type="latent")


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_single_file_editor_matches_folder(family: str, tiny_sd_path: Path, sdxl_distinct_path: Path,
                                           sf_dir: Path) -> None:
    folder = tiny_sd_path if family == "sd" else sdxl_distinct_path
    ckpt, cfg = _single(folder, sf_dir)
    ed_file = Editor.from_pretrained(ckpt, config=cfg, device="cpu", progress=False)
    ed_dir = Editor.from_pretrained(folder, device="cpu", progress=False)
    # CPU kernels round differently for differently aligned weights; single-file loads are aligned,
    # so align the folder-loaded copy too before asking for bit-identical latents.
    _own_unaligned_weights(ed_dir.pipe)
    assert ed_file.family == family
    assert type(ed_file.pipe) is type(ed_dir.pipe)
    assert _assert_same_weights(ed_file.pipe, ed_dir.pipe) > 300
    assert torch.equal(_latents(ed_file), _latents(ed_dir))


def test_refiner_single_file_round_trip(tiny_refiner_path: Path, sf_dir: Path) -> None:
    # The refiner has only the open-clip encoder, stored as conditioner.embedders.0.model.*.
    ckpt, cfg = _single(tiny_refiner_path, sf_dir)
    a = load_pipeline(ckpt, device="cpu", config=cfg)
    b = load_pipeline(tiny_refiner_path, device="cpu")
    assert a.text_encoder is None and a.config.requires_aesthetics_score
    assert _assert_same_weights(a, b) > 300


def test_equal_width_sdxl_is_refused(tiny_sdxl_path: Path, sf_dir: Path) -> None:
    # diffusers would silently load text encoder 1 into text_encoder_2: refuse to write such a file.
    with pytest.raises(ValueError, match="build_tiny_sdxl_distinct"):
        save_single_file(tiny_sdxl_path, sf_dir / "equal.safetensors")


def test_original_layout_keys(tiny_sd_path: Path, sdxl_distinct_path: Path, sf_dir: Path) -> None:
    from safetensors import safe_open

    def keys(folder: Path) -> set[str]:
        with safe_open(str(save_single_file(folder, sf_dir / f"keys-{folder.name}.safetensors")), "pt") as f:
            return {k.split(".")[0] + "." + k.split(".")[1] for k in f.keys()}

    assert keys(tiny_sd_path) == {"model.diffusion_model", "first_stage_model.encoder", "first_stage_model.decoder",
                                  "first_stage_model.quant_conv", "first_stage_model.post_quant_conv",
                                  "cond_stage_model.transformer"}
    assert {"conditioner.embedders"} <= keys(sdxl_distinct_path)


# errors ------------------------------------------------------------------------------------------

def test_missing_config_offline_is_one_clear_line(tiny_sd_path: Path, sf_dir: Path) -> None:
    ckpt, _ = _single(tiny_sd_path, sf_dir)
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(ckpt, device="cpu")
    msg = str(info.value)
    assert "needs its model configs" in msg and "config=" in msg and "\n" not in msg


@pytest.mark.parametrize("content", [b"garbage" * 50, b""])
def test_corrupt_file(content: bytes, tmp_path: Path, tiny_sd_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError, match="not a valid .safetensors checkpoint") as info:
        Editor.from_pretrained(bad, config=tiny_sd_path, device="cpu")
    assert "\n" not in str(info.value)


def test_diffusers_layout_file_is_rejected(tmp_path: Path, tiny_sd_path: Path) -> None:
    # The original failure: diffusers-format keys flattened into one file.
    from safetensors.torch import load_file, save_file

    flat = tmp_path / "flat.safetensors"
    save_file(load_file(str(tiny_sd_path / "unet" / "diffusion_pytorch_model.safetensors")), str(flat))
    with pytest.raises(ModelLoadError, match="original single-file layout"):
        load_pipeline(flat, device="cpu", config=tiny_sd_path)


def test_config_errors(tiny_sd_path: Path, sf_dir: Path) -> None:
    ckpt, _ = _single(tiny_sd_path, sf_dir)
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_pipeline(ckpt, device="cpu", config=tiny_sd_path / "unet")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(ckpt, device="cpu", config=sf_dir / "nowhere")
    with pytest.raises(ModelLoadError, match="original config .* does not exist"):
        load_pipeline(ckpt, device="cpu", original_config=str(sf_dir / "v1-inference.yaml"))
    with pytest.raises(ModelLoadError, match="only applies to a single-file checkpoint"):
        load_pipeline(tiny_sd_path, device="cpu", config=tiny_sd_path)


def test_original_config_is_passed_through(tiny_sd_path: Path, sf_dir: Path) -> None:
    # Tiny models can't be described by an LDM .yaml (no norm-group setting), so spy on the call.
    ckpt, _ = _single(tiny_sd_path, sf_dir)
    yaml_file = sf_dir / "v1-inference.yaml"
    yaml_file.write_text("model:\n  params: {}\n")
    seen: dict[str, Any] = {}

    class Spy:
        @classmethod
        def from_single_file(cls, path: str, **kw: Any) -> Any:
            seen.update(kw, path=path)
            return cls()

        def to(self, device: str) -> Any:
            return self

    load_pipeline(ckpt, device="cpu", original_config=yaml_file, config=tiny_sd_path, pipeline_class=Spy)
    assert seen["original_config"] == str(yaml_file) and seen["config"] == str(tiny_sd_path)
    assert seen["path"] == str(ckpt)


# CLI ---------------------------------------------------------------------------------------------

def _cli(args: list[str]) -> Any:
    from diffdiff.cli import app

    return CliRunner().invoke(app, args)


def test_cli_edit_single_file(tiny_sd_path: Path, sf_dir: Path, tmp_path: Path) -> None:
    ckpt, cfg = _single(tiny_sd_path, sf_dir)
    img, cmap, out = tmp_path / "in.png", tmp_path / "map.png", tmp_path / "out.png"
    sample_image(64, 64).save(img)
    gradient_map(64, 64).save(cmap)
    res = _cli(["edit", str(img), "--map", str(cmap), "--prompt", "a cat", "--model", str(ckpt),
                "--model-config", str(cfg), "--steps", "4", "--seed", "1", "--device", "cpu", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()


def test_cli_corrupt_checkpoint(tiny_sd_path: Path, tmp_path: Path) -> None:
    img, cmap, bad = tmp_path / "in.png", tmp_path / "map.png", tmp_path / "bad.safetensors"
    sample_image(64, 64).save(img)
    gradient_map(64, 64).save(cmap)
    bad.write_bytes(b"\x00" * 64)
    res = _cli(["edit", str(img), "--map", str(cmap), "--prompt", "p", "--model", str(bad),
                "--model-config", str(tiny_sd_path), "--device", "cpu", "-o", str(tmp_path / "out.png")])
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "not a valid .safetensors checkpoint" in lines[0], res.output
