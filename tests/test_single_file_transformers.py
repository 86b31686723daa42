"""Single-file SD3 / Flux checkpoints and transformer-only files (issue 18, item 7), offline.

The files are written with :func:`diffdiff.testing.save_single_file` in Stability's / Black Forest
Labs' layout and loaded back through diffusers' real ``from_single_file`` conversion. The inverse
key mappings are proven first: diffusers' conversion of what we write gives back exactly the
tensors we started from. Bases passed as ``config=`` lack the weights under test, so every tensor
compared below provably came out of the single file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from diffdiff import Editor
from diffdiff.errors import ModelLoadError
from diffdiff.loading import _own_unaligned_weights
from diffdiff.testing import (
    _component_weights,
    build_tiny_flux,
    build_tiny_sd3_distinct,
    copy_model_configs,
    flux_original_transformer,
    gradient_map,
    sample_image,
    save_single_file,
    sd3_original_transformer,
)

pytestmark = pytest.mark.filterwarnings("ignore:only 4 denoising steps")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("single-file-dit")


@pytest.fixture(scope="module")
def sd3_path(root: Path) -> Path:
    return build_tiny_sd3_distinct(root / "tiny-sd3")


@pytest.fixture(scope="module")
def flux_path(root: Path) -> Path:
    return build_tiny_flux(root / "tiny-flux")


def _without(folder: Path, component: str, out: Path) -> Path:
    """A copy of a diffusers folder whose ``component`` has its config but no weights."""
    if not out.exists():
        shutil.copytree(folder, out)
        for f in (out / component).glob("*.safetensors"):
            f.unlink()
    return out


def _latents(ed: Editor) -> torch.Tensor:
    img, cmap = sample_image(64, 64, seed=3), gradient_map(64, 64)
    return ed.edit(img, cmap, "a cat", num_inference_steps=4, seed=0, output_type="latent")


def _same_weights(a: Any, b: Any, names: list[str]) -> int:
    count = 0
    for name in names:
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for key, value in sb.items():
            assert sa[key].device.type != "meta", f"{name}.{key} was not loaded"
            assert torch.equal(sa[key], value), f"{name}.{key} differs"
            count += 1
    return count


def _editor(model: Path, **kw: Any) -> Editor:
    ed = Editor.from_pretrained(model, device="cpu", progress=False, **kw)
    _own_unaligned_weights(ed.pipe)  # CPU kernels round by alignment; compare like with like
    return ed


# the inverse mappings ----------------------------------------------------------------------------

def test_sd3_inverse_mapping_is_exact(sd3_path: Path) -> None:
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    weights = _component_weights(sd3_path, "transformer")
    original = {"model.diffusion_model." + k: v for k, v in sd3_original_transformer(weights).items()}
    # QK-norm and SD 3.5's dual attention are in the tiny model, so their names are exercised too
    assert {"model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight",
            "model.diffusion_model.joint_blocks.1.context_block.attn.ln_q.weight"} <= original.keys()
    back = convert_sd3_transformer_checkpoint_to_diffusers(dict(original))
    assert back.keys() == weights.keys()
    assert all(torch.equal(back[k], weights[k]) for k in weights)


def test_flux_inverse_mapping_is_exact_at_full_width() -> None:
    # diffusers' Flux conversion hard-codes the real width (3072), so the proof runs at that width on a
    # 1+1-block transformer built on the meta device, with row-numbered int16 tensors (expanded: no memory)
    # that tell every row of every key apart; the mappings only move, split and join rows.
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with torch.device("meta"):
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                       attention_head_dim=128, num_attention_heads=24, joint_attention_dim=64,
                                       pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    weights = {}
    for i, (key, param) in enumerate(sorted(model.state_dict().items())):
        rows = ((torch.arange(param.shape[0], dtype=torch.int32) + 1000 * i) % 32768).to(torch.int16)
        weights[key] = rows.view(-1, *([1] * (param.ndim - 1))).expand(param.shape)
    original = {"model.diffusion_model." + k: v for k, v in flux_original_transformer(weights).items()}
    assert "model.diffusion_model.single_blocks.0.linear1.weight" in original
    assert "model.diffusion_model.guidance_in.in_layer.weight" in original
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    assert back.keys() == weights.keys()
    assert all(torch.equal(back[k], weights[k]) for k in weights)


# whole-pipeline files ----------------------------------------------------------------------------

def test_sd3_single_file_editor_matches_folder(sd3_path: Path, root: Path) -> None:
    ckpt = save_single_file(sd3_path, root / "sd3.safetensors")
    cfg = copy_model_configs(sd3_path, root / "sd3-cfg")  # no weights at all
    ed_file, ed_dir = _editor(ckpt, config=cfg), _editor(sd3_path)
    assert ed_file.family == ed_dir.family == "sd3"
    assert type(ed_file.pipe) is type(ed_dir.pipe)
    names = ["transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"]
    assert _same_weights(ed_file.pipe, ed_dir.pipe, names) > 300
    assert torch.equal(_latents(ed_file), _latents(ed_dir))


def test_equal_width_clips_are_refused(root: Path) -> None:
    from diffdiff.testing import build_tiny_sd3

    with pytest.raises(ValueError, match="build_tiny_sd3_distinct"):
        save_single_file(build_tiny_sd3(root / "sd3-equal"), root / "sd3-equal.safetensors")


# transformer-only files --------------------------------------------------------------------------

def test_sd3_transformer_file_with_its_base(sd3_path: Path, root: Path) -> None:
    # Stability-layout MMDiT alone (as a fine-tune ships it); VAE and text encoders from the base.
    ckpt = save_single_file(sd3_path, root / "sd3-mmdit.safetensors", denoiser_only=True)
    base = _without(sd3_path, "transformer", root / "sd3-base")
    ed_file, ed_dir = _editor(ckpt, config=base), _editor(sd3_path)
    assert ed_file.family == "sd3"
    assert _same_weights(ed_file.pipe, ed_dir.pipe, ["transformer"]) > 80
    assert torch.equal(_latents(ed_file), _latents(ed_dir))


def test_flux_transformer_file_as_file_or_component(flux_path: Path, root: Path) -> None:
    # A diffusers-layout Flux transformer in one file; diffusers takes its keys as they are.
    ckpt = root / "flux-transformer.safetensors"
    shutil.copy(next((flux_path / "transformer").glob("*.safetensors")), ckpt)
    base = _without(flux_path, "transformer", root / "flux-base")
    ed_dir = _editor(flux_path)
    expected = _latents(ed_dir)
    for ed in (_editor(ckpt, config=base), _editor(base, transformer=str(ckpt))):
        assert ed.family == ed_dir.family
        assert _same_weights(ed.pipe, ed_dir.pipe, ["transformer"]) > 30
        assert torch.equal(_latents(ed), expected)


def test_ldm_unet_file_with_its_base(tiny_sd_path: Path, root: Path) -> None:
    # An SD 1.x UNet alone in the LDM layout (model.diffusion_model.*), as UNet fine-tunes ship.
    ckpt = save_single_file(tiny_sd_path, root / "sd-unet.safetensors", denoiser_only=True)
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"model"}
    base = _without(tiny_sd_path, "unet", root / "sd-base")
    ed_file, ed_dir = _editor(ckpt, config=base), _editor(tiny_sd_path)
    assert ed_file.family == "sd"
    assert _same_weights(ed_file.pipe, ed_dir.pipe, ["unet"]) > 100
    assert torch.equal(_latents(ed_file), _latents(ed_dir))


# errors: one line each ---------------------------------------------------------------------------

def _one_line(info: pytest.ExceptionInfo[ModelLoadError], *parts: str) -> str:
    msg = str(info.value)
    assert "\n" not in msg and all(p in msg for p in parts), msg
    return msg


def test_transformer_file_without_base(sd3_path: Path, root: Path) -> None:
    ckpt = save_single_file(sd3_path, root / "sd3-mmdit-alone.safetensors", denoiser_only=True)
    with pytest.raises(ModelLoadError) as info:
        Editor.from_pretrained(ckpt, device="cpu")
    _one_line(info, str(ckpt), "config=", "--model-config")


def test_transformer_file_with_weightless_base(sd3_path: Path, root: Path) -> None:
    ckpt = save_single_file(sd3_path, root / "sd3-mmdit-2.safetensors", denoiser_only=True)
    cfg = copy_model_configs(sd3_path, root / "sd3-cfg-only")
    with pytest.raises(ModelLoadError) as info:
        Editor.from_pretrained(ckpt, config=cfg, device="cpu")
    _one_line(info, str(ckpt), "holds only a transformer", str(cfg))


def test_uncached_hub_base_offline(sd3_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt = save_single_file(sd3_path, root / "sd3-mmdit-3.safetensors", denoiser_only=True)
    with pytest.raises(ModelLoadError) as info:
        Editor.from_pretrained(ckpt, config="nobody/not-a-cached-model", device="cpu")
    _one_line(info, str(ckpt), "nobody/not-a-cached-model", "hub cannot be reached")


@pytest.mark.parametrize(("components", "message"), [
    ({"transformer": ["diffusers", "PixArtTransformer2DModel"]}, "cannot load a PixArtTransformer2DModel"),
    ({"vae": ["diffusers", "AutoencoderKL"]}, "has no transformer or UNet"),
])
def test_base_without_a_loadable_denoiser(components: dict[str, list[str]], message: str, sd3_path: Path,
                                          root: Path, tmp_path: Path) -> None:
    import json

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline", **components}))
    ckpt = save_single_file(sd3_path, root / "sd3-mmdit-4.safetensors", denoiser_only=True)
    with pytest.raises(ModelLoadError) as info:
        Editor.from_pretrained(ckpt, config=tmp_path, device="cpu")
    _one_line(info, str(ckpt), message)


def test_unrelated_file_with_base(sd3_path: Path, root: Path) -> None:
    from safetensors.torch import save_file

    lora = root / "lora-like.safetensors"
    save_file({"lora_unet_down.lora_A.weight": torch.zeros(4, 4)}, str(lora))
    with pytest.raises(ModelLoadError) as info:
        Editor.from_pretrained(lora, config=_without(sd3_path, "transformer", root / "sd3-base"), device="cpu")
    _one_line(info, str(lora), "cannot be loaded as the transformer (SD3Transformer2DModel)")


def test_narrow_flux_file_is_one_line(flux_path: Path, root: Path) -> None:
    # BFL layout, but narrower than diffusers' hard-coded 3072: its conversion fails; we say so in one line.
    ckpt = save_single_file(flux_path, root / "flux-narrow.safetensors")
    with pytest.raises(ModelLoadError) as info:
        Editor.from_pretrained(ckpt, config=copy_model_configs(flux_path, root / "flux-cfg"), device="cpu")
    _one_line(info, str(ckpt), "narrower than Flux.1's 3072 channels")


def test_component_file_missing_or_foreign(flux_path: Path, root: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        Editor.from_pretrained(flux_path, transformer=str(root / "nowhere.safetensors"), device="cpu")
    _one_line(info, "does not exist")
    bad = root / "corrupt.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError) as info:
        Editor.from_pretrained(flux_path, transformer=str(bad), device="cpu")
    _one_line(info, "not a valid .safetensors checkpoint")


# CLI ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["whole", "transformer"])
def test_cli_edit_with_sd3_file(kind: str, sd3_path: Path, root: Path, tmp_path: Path) -> None:
    from diffdiff.cli import app

    if kind == "whole":
        ckpt, cfg = save_single_file(sd3_path, root / "sd3-cli.safetensors"), copy_model_configs(sd3_path, root / "sd3-cfg")
    else:
        ckpt = save_single_file(sd3_path, root / "sd3-cli-t.safetensors", denoiser_only=True)
        cfg = _without(sd3_path, "transformer", root / "sd3-base")
    img, cmap, out = tmp_path / "in.png", tmp_path / "map.png", tmp_path / "out.png"
    sample_image(64, 64).save(img)
    gradient_map(64, 64).save(cmap)
    res = CliRunner().invoke(app, ["edit", str(img), "--map", str(cmap), "--prompt", "a cat", "--model", str(ckpt),
                                   "--model-config", str(cfg), "--steps", "4", "--seed", "1", "--device", "cpu",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()


# opt-in: a full-width (3072) Flux through BFL's layout end to end -------------------------------

@pytest.mark.skipif(os.environ.get("DIFFDIFF_FULL_WIDTH_FLUX") != "1",
                    reason="~30 s and ~9 GB: set DIFFDIFF_FULL_WIDTH_FLUX=1 to run")
def test_full_width_flux_files_match_folder(root: Path) -> None:
    # A ComfyUI-style whole file (BFL transformer + VAE + CLIP-L + T5) and a flux1-dev-style
    # transformer-only file, both read by diffusers' real conversion at Flux.1's width.
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from diffdiff.testing import _clip_text_encoder, _flow_vae, _t5_parts, _tokenizer

    path, tok = root / "flux-3072", root / ".tok-flux-3072"
    t5_tok, t5 = _t5_parts(tok / "t5", d_model=32, seed=2)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    FluxPipeline(transformer=transformer.eval(), vae=_flow_vae(0), text_encoder=_clip_text_encoder(32, seed=0),
                 tokenizer=_tokenizer(tok / "clip"), text_encoder_2=t5, tokenizer_2=t5_tok,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)).save_pretrained(path)
    del transformer
    expected = _latents(_editor(path))
    whole = save_single_file(path, root / "flux-3072.safetensors")
    ed = _editor(whole, config=copy_model_configs(path, root / "flux-3072-cfg"))
    assert ed.family == "flux" and torch.equal(_latents(ed), expected)
    del ed
    alone = save_single_file(path, root / "flux-3072-transformer.safetensors", denoiser_only=True)
    ed = _editor(alone, config=_without(path, "transformer", root / "flux-3072-base"))
    assert torch.equal(_latents(ed), expected)
