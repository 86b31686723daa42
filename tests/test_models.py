"""Every diffusers image model (issue 18): our own img2img through the scheduler seam.

Tiny random pipelines (:mod:`diffdiff.tiny_models`, 64 px, 4 steps) for PixArt-Sigma, Chroma,
Flux Kontext, Kandinsky 3, Qwen-Image, Sana, Lumina2, HunyuanDiT, CogView4 and Z-Image are saved once and loaded back with
``Editor.from_pretrained``. Per family: detected from its components, the map-0 half is
byte-identical, the map-1 half changes, a batch gives different images, and in latent space the
black half ends nearer the clean latents than with a full-change map. Where diffusers has an
img2img sibling (SD, SD3, Flux, Qwen-Image, Chroma, Kandinsky 3) our own noising of the
text-to-image pipeline gives the sibling's latents bit for bit for the same seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffdiff import DiffDiffError, Editor, UnsupportedModelError, read_metadata
from diffdiff.cli import app
from diffdiff.families import ADAPTERS, register_adapter
from diffdiff.families import own as own_family
from diffdiff.families.own import VIDEO_POINTER, OwnNoiseAdapter
from diffdiff.layouts import pack_2x2, unpack_2x2
from diffdiff.testing import build_tiny_flux, build_tiny_sd3, make_scheduler, sample_image, tiny_vae
from diffdiff.tiny_models import (
    build_tiny_chroma,
    build_tiny_cogview4,
    build_tiny_flux_kontext,
    build_tiny_hunyuandit,
    build_tiny_kandinsky3,
    build_tiny_lumina2,
    build_tiny_pixart_sigma,
    build_tiny_qwen_image,
    build_tiny_sana,
    build_tiny_z_image,
)

STEPS = 4
HALF = np.zeros((64, 64), np.float32)
HALF[:, 32:] = 1.0  # left half keep, right half change
ONE = np.ones((64, 64), np.float32)

BUILDERS = {  # name: (builder, the pipeline the editor drives, the family detected)
    "pixart_sigma": (build_tiny_pixart_sigma, "PixArtSigmaPipeline", "own-noise"),
    "chroma": (build_tiny_chroma, "ChromaPipeline", "own-noise"),
    "flux_kontext": (build_tiny_flux_kontext, "FluxKontextPipeline", "own-noise"),
    "kandinsky3": (build_tiny_kandinsky3, "Kandinsky3Pipeline", "own-noise"),
    "qwen_image": (build_tiny_qwen_image, "QwenImagePipeline", "own-noise"),
    "sana": (build_tiny_sana, "SanaPipeline", "own-noise"),
    "lumina2": (build_tiny_lumina2, "Lumina2Pipeline", "own-noise"),
    "hunyuandit": (build_tiny_hunyuandit, "HunyuanDiTPipeline", "own-noise"),
    "cogview4": (build_tiny_cogview4, "CogView4Pipeline", "own-noise"),
    "z_image": (build_tiny_z_image, "ZImageImg2ImgPipeline", "generic"),  # diffusers' img2img, driven as is
}
OWN = [name for name, spec in BUILDERS.items() if spec[2] == "own-noise"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models18")
    return {name: spec[0](root / name) for name, spec in BUILDERS.items()}


@pytest.fixture(scope="module")
def editors(built: dict[str, Path]) -> dict[str, Editor]:
    return {name: Editor.from_pretrained(path, progress=False) for name, path in built.items()}


def _latents(ed: Editor, change: np.ndarray, strength: float = 1.0, num_images: int = 1, steps: int = STEPS,
             **kw: Any) -> torch.Tensor:
    return ed.edit(sample_image(64, 64, seed=3), change, "a red cat", num_inference_steps=steps, seed=11,
                   strength=strength, num_images=num_images, output_type="latent", **kw)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_family_detected_halves_and_batch(name: str, editors: dict[str, Editor]) -> None:
    ed = editors[name]
    assert (type(ed.pipe).__name__, ed.family) == BUILDERS[name][1:]
    img = sample_image(64, 64, seed=3)
    out = ed.edit(img, HALF, "a red cat", num_inference_steps=STEPS, seed=7, num_images=2)
    src = np.asarray(img)
    for res in out:
        assert res.size == img.size
        arr = np.asarray(res)
        np.testing.assert_array_equal(arr[:, :32], src[:, :32])
        assert np.abs(arr[:, 32:].astype(int) - src[:, 32:]).mean() > 5
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))
    assert ed.last_run.total_steps == STEPS and len(ed.last_run.records) == STEPS - 1


@pytest.mark.parametrize("name", OWN)
def test_size_off_the_grid_comes_back_at_the_input_size(name: str, editors: dict[str, Editor]) -> None:
    ed = editors[name]
    img = sample_image(72, 56, seed=4)  # not a multiple of any family's grid
    change = np.zeros((56, 72), np.float32)
    change[:, 40:] = 1.0
    out = ed.edit(img, change, "a red cat", num_inference_steps=3, seed=2)[0]
    assert out.size == (72, 56)
    w, h = ed.last_run.work_size
    assert w % ed.adapter.pixel_multiple() == 0 and h % ed.adapter.pixel_multiple() == 0
    np.testing.assert_array_equal(np.asarray(out)[:, :40], np.asarray(img)[:, :40])


def test_z_image_full_change_equals_its_img2img(editors: dict[str, Editor]) -> None:
    import diffusers

    ed = editors["z_image"]
    ours = _latents(ed, ONE, strength=0.75, num_images=2)
    ref = _sibling_latents(diffusers.ZImageImg2ImgPipeline(**ed.pipe.components), 0.75, STEPS, 2, lambda x: x)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("name", OWN)
def test_black_half_ends_nearer_the_clean_latents(name: str, editors: dict[str, Editor]) -> None:
    ed = editors[name]
    half = _latents(ed, HALF, steps=8)
    clean = ed.last_run.reference.clean  # type: ignore[union-attr]
    full = _latents(ed, ONE, steps=8)
    w = half.shape[-1] // 2
    d_half = (half[..., :w] - clean[..., :w]).abs().mean()
    d_full = (full[..., :w] - clean[..., :w]).abs().mean()
    assert d_half < 0.6 * d_full, (float(d_half), float(d_full))


# --- exactness: our own noising == the img2img sibling --------------------------------------------

def _sibling_latents(sibling: Any, strength: float, steps: int, num_images: int, layout: Any,
                     size: bool = True) -> torch.Tensor:
    sibling.set_progress_bar_config(disable=True)
    kw = dict(height=64, width=64) if size else {}
    ref = sibling("a red cat", image=sample_image(64, 64, seed=3), strength=strength, num_inference_steps=steps,
                  num_images_per_prompt=num_images, generator=torch.Generator().manual_seed(11),
                  output_type="latent", **kw).images
    return layout(ref)


@pytest.mark.parametrize("name,sibling,size", [
    ("qwen_image", "QwenImageImg2ImgPipeline", True),
    ("chroma", "ChromaImg2ImgPipeline", True),
    ("kandinsky3", "Kandinsky3Img2ImgPipeline", False),
])
def test_img2img_pipeline_given_is_driven_and_equals_its_own_img2img(name: str, sibling: str, size: bool,
                                                                     editors: dict[str, Editor]) -> None:
    import diffusers

    pipe_cls = getattr(diffusers, sibling)
    given = pipe_cls(**editors[name].pipe.components)
    ed = Editor(given, progress=False)  # the user hands us the img2img pipeline itself
    assert ed.family == "own-noise" and type(ed.pipe).__name__ == BUILDERS[name][1]
    ours = _latents(ed, ONE, strength=0.75, num_images=2)
    ref = _sibling_latents(pipe_cls(**ed.pipe.components), 0.75, STEPS, 2,
                           lambda x: ed.adapter.unpack(x, 64, 64), size=size)
    assert ours.shape == ref.shape
    assert torch.equal(ours, ref)


@pytest.fixture(scope="module")
def t2i_pipes(tiny_sd_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import diffusers

    root = tmp_path_factory.mktemp("t2i18")
    return {
        "sd": diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd_path),
        "sd3": diffusers.StableDiffusion3Pipeline.from_pretrained(build_tiny_sd3(root / "sd3")),
        "flux": diffusers.FluxPipeline.from_pretrained(build_tiny_flux(root / "flux")),
    }


@pytest.mark.parametrize("name,sibling,strength,steps,scheduler", [
    ("sd", "StableDiffusionImg2ImgPipeline", 0.6, 5, None),  # Euler: init_noise_sigma != 1
    ("sd", "StableDiffusionImg2ImgPipeline", 1.0, 4, None),
    ("sd", "StableDiffusionImg2ImgPipeline", 0.6, 5, "ddim"),
    ("sd", "StableDiffusionImg2ImgPipeline", 0.75, 4, "dpm++"),  # multistep: truncated sigmas stay aligned
    ("sd3", "StableDiffusion3Img2ImgPipeline", 0.55, 10, None),  # flow truncation: 10 x 0.55 runs 6
    ("flux", "FluxImg2ImgPipeline", 0.8, 4, None),  # packed latents, resolution-dependent shift
])
def test_own_noising_of_text_to_image_equals_img2img_sibling(name: str, sibling: str, strength: float, steps: int,
                                                             scheduler: Any, t2i_pipes: dict[str, Any]) -> None:
    import diffusers

    t2i = t2i_pipes[name]
    if scheduler is not None:
        t2i = type(t2i)(**{**t2i.components, "scheduler": make_scheduler(scheduler)})
    ed = Editor(t2i, progress=False)
    ed.adapter = OwnNoiseAdapter(t2i)  # force our own noising on a family diffusers also drives itself
    ed.adapter.model_name = ed.model_name
    assert type(ed.pipe).__name__ == type(t2i).__name__
    ours = _latents(ed, ONE, strength=strength, num_images=2, steps=steps)
    assert ed.last_run.total_steps == ed.planned_steps(steps, strength)
    ref = _sibling_latents(getattr(diffusers, sibling)(**t2i.components), strength, steps, 2,
                           lambda x: ed.adapter.unpack(x, 64, 64))
    assert torch.equal(ours, ref)


# --- the two blend routes, layouts ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sana", "qwen_image"])
def test_step_wrapper_blend_equals_callback_blend(name: str, editors: dict[str, Editor],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The seam blends from scheduler.step; on pipelines whose callback_on_step_end is honest the
    # callback route must give the same latents.
    ed = editors[name]
    via_step = _latents(ed, HALF, num_images=2)
    monkeypatch.setattr(OwnNoiseAdapter, "use_callback", True)
    via_callback = _latents(ed, HALF, num_images=2)
    assert len(ed.last_run.records) == STEPS - 1
    assert torch.equal(via_callback, via_step)


def test_cogview4_callback_is_handed_the_sigma_so_the_seam_blends(editors: dict[str, Editor],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ed = editors["cogview4"]
    _latents(ed, HALF)
    assert [r.global_step for r in ed.last_run.records] == list(range(1, STEPS))
    monkeypatch.setattr(OwnNoiseAdapter, "use_callback", True)  # what the callback route would do
    _latents(ed, HALF)
    assert len(ed.last_run.records) < STEPS - 1


def test_pixart_has_no_step_callback_and_blends_in_step(editors: dict[str, Editor]) -> None:
    ed = editors["pixart_sigma"]
    assert not own_family.blends_in_callback(ed.pipe)
    _latents(ed, HALF)
    assert [r.global_step for r in ed.last_run.records] == list(range(1, STEPS))


def test_pack_unpack_round_trip() -> None:
    grid = torch.randn(2, 16, 8, 6)
    tokens = pack_2x2(grid)
    assert tokens.shape == (2, 12, 64)
    assert torch.equal(unpack_2x2(tokens, 8, 6), grid)


def test_layouts_detected_from_components(editors: dict[str, Editor]) -> None:
    layouts = {name: (ed.adapter.codec.layout.name, ed.adapter.codec.frames, ed.vae_scale())  # type: ignore[attr-defined]
               for name, ed in editors.items() if name in OWN}
    assert layouts == {
        "pixart_sigma": ("grid", False, 8), "chroma": ("packed", False, 8), "flux_kontext": ("packed", False, 8),
        "kandinsky3": ("grid", False, 8), "qwen_image": ("packed", True, 4), "sana": ("grid", False, 32),
        "lumina2": ("grid", False, 8), "hunyuandit": ("grid", False, 8), "cogview4": ("grid", False, 8),
    }


def test_kontext_gets_the_input_as_reference_at_the_work_size(editors: dict[str, Editor]) -> None:
    ed = editors["flux_kontext"]
    img = sample_image(64, 64, seed=3)
    from diffdiff.request import EditRequest

    kw = ed.adapter.call_kwargs(img, EditRequest(prompt="make it red", seed=1), torch.Generator(), (64, 64))
    assert kw["image"] is img and kw["_auto_resize"] is False and kw["max_area"] == 64 * 64
    assert (kw["width"], kw["height"]) == (64, 64)


def test_pipeline_kwargs_reach_the_own_noise_call(editors: dict[str, Editor]) -> None:
    ed = editors["flux_kontext"]
    default = _latents(ed, HALF)
    short = _latents(ed, HALF, pipeline_kwargs={"max_sequence_length": 8})  # T5 sees 8 tokens, not 512
    assert not torch.equal(default, short)
    assert torch.equal(short, _latents(ed, HALF, pipeline_kwargs={"max_sequence_length": 8}))


# --- what stays with the other families, what is refused ----------------------------------------------

def test_plain_grid_img2img_pipelines_stay_generic(tiny_sd_path: Path) -> None:
    import diffusers

    sd = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd_path)
    pag = diffusers.StableDiffusionPAGImg2ImgPipeline(**sd.components, pag_applied_layers=["mid"])
    ed = Editor(pag, progress=False)
    assert ed.family == "generic"
    out = ed.edit(sample_image(64, 64, seed=3), HALF, "a red cat", num_inference_steps=STEPS, seed=1)
    np.testing.assert_array_equal(np.asarray(out[0])[:, :32], np.asarray(sample_image(64, 64, seed=3))[:, :32])


def _one_line_refusal(pipe: Any) -> str:
    with pytest.raises(UnsupportedModelError) as info:
        Editor(pipe, progress=False)
    message = str(info.value)
    assert "\n" not in message and type(pipe).__name__ in message
    return message


def test_pipeline_without_autoencoder_is_refused_in_one_line() -> None:
    import diffusers

    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    message = _one_line_refusal(diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()))
    assert "no autoencoder" in message and "own-noise" in message


def test_video_pipelines_are_left_to_the_video_families(editors: dict[str, Editor]) -> None:
    import diffusers

    kontext = editors["flux_kontext"].pipe
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1], num_res_blocks=1,
                                     temperal_downsample=[False])
    transformer = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                                  in_channels=4, out_channels=4, text_dim=32, freq_dim=16,
                                                  ffn_dim=16, num_layers=1, rope_max_seq_len=32)
    wan = diffusers.WanVideoToVideoPipeline(tokenizer=kontext.tokenizer_2, text_encoder=kontext.text_encoder_2,
                                            transformer=transformer, vae=vae,
                                            scheduler=diffusers.FlowMatchEulerDiscreteScheduler())
    assert own_family.is_video(wan) and not OwnNoiseAdapter.matches(wan)
    assert own_family.obstacle(wan) == VIDEO_POINTER  # the video families own them (tests/test_video*.py)


def test_pipeline_without_latents_input_is_refused_in_one_line() -> None:
    import diffusers

    transformer = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                                  out_channels=8, num_layers=1, sample_size=8, patch_size=2)
    dit = diffusers.DiTPipeline(transformer=transformer, vae=tiny_vae(0), scheduler=diffusers.DDIMScheduler())
    assert "takes no latents=" in _one_line_refusal(dit)


def test_a_pipeline_that_rescales_its_latents_is_refused_at_its_first_step(editors: dict[str, Editor]) -> None:
    import diffusers

    class Rescaling(diffusers.PixArtSigmaPipeline):  # a third-party pipeline detection cannot see into
        def prepare_latents(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            return 2 * super().prepare_latents(*args, **kwargs)

    ed = Editor(Rescaling(**editors["pixart_sigma"].pipe.components), progress=False)
    with pytest.raises(DiffDiffError, match="did not start from the latents= it was given"):
        ed.edit(sample_image(64, 64, seed=3), HALF, "a red cat", num_inference_steps=2, seed=1)


def test_a_registered_family_wins_over_detection(editors: dict[str, Editor]) -> None:
    class Mine(OwnNoiseAdapter):
        name = "mine"
        pipeline_classes = ("PixArtSigmaPipeline",)

        @classmethod
        def matches(cls, pipe: Any) -> bool:
            return type(pipe).__name__ in cls.pipeline_classes

    register_adapter(Mine)
    try:
        assert Editor(editors["pixart_sigma"].pipe, progress=False).family == "mine"
    finally:
        ADAPTERS.remove(Mine)
    assert Editor(editors["pixart_sigma"].pipe, progress=False).family == "own-noise"


def _first(out: Any) -> np.ndarray:
    return np.asarray(out[0] if isinstance(out, list) else out)


def test_pipeline_kwargs_reach_fan_and_soft_inpaint(editors: dict[str, Editor]) -> None:
    ed = editors["flux_kontext"]
    img = sample_image(64, 64, seed=3)
    kw = dict(num_inference_steps=STEPS, seed=5)
    fans = [_first(ed.fan(img, "a red cat", columns=2, **kw, **extra))
            for extra in ({}, {"pipeline_kwargs": {"max_sequence_length": 8}})]
    assert not np.array_equal(*fans)
    hole = np.zeros((64, 64), np.uint8)
    hole[16:48, 16:48] = 255
    soft = [_first(ed.soft_inpaint(img, hole, 4.0, "a red cat", **kw, **extra))
            for extra in ({}, {"pipeline_kwargs": {"max_sequence_length": 8}})]
    assert not np.array_equal(*soft)
    np.testing.assert_array_equal(soft[1][:4], np.asarray(img)[:4])  # far from the hole: exact


def test_path_loaded_pipeline_edits(tiny_sd_path: Path) -> None:
    import diffusers

    ed = Editor(diffusers.StableDiffusionPipeline.from_pretrained(Path(tiny_sd_path)), progress=False)
    assert not ed.adapter.is_few_step()
    out = ed.edit(sample_image(64, 64, seed=3), HALF, "a red cat", num_inference_steps=2, seed=1)
    assert out[0].size == (64, 64)


@pytest.mark.parametrize("name", OWN)
def test_cli_model_folder_of_each_family(name: str, built: dict[str, Path], tmp_path: Path) -> None:
    img, cmap, out = tmp_path / "in.png", tmp_path / "map.png", tmp_path / "out.png"
    sample_image(64, 64, seed=3).save(img)
    Image.fromarray((HALF * 255).astype(np.uint8), "L").save(cmap)
    res = CliRunner().invoke(app, ["edit", str(img), "--map", str(cmap), "-p", "a red cat", "-o", str(out),
                                   "--model", str(built[name]), "--steps", "3", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert read_metadata(out)["family"] == "own-noise"
    np.testing.assert_array_equal(np.asarray(Image.open(out))[:, :32], np.asarray(Image.open(img))[:, :32])


def test_cli_pipeline_kwargs_reach_the_call_and_bad_json_is_one_line(built: dict[str, Path], tmp_path: Path) -> None:
    img, cmap = tmp_path / "in.png", tmp_path / "map.png"
    sample_image(64, 64, seed=3).save(img)
    Image.fromarray((HALF * 255).astype(np.uint8), "L").save(cmap)
    base = ["edit", str(img), "--map", str(cmap), "-p", "a red cat", "--model", str(built["flux_kontext"]),
            "--steps", "3", "--seed", "2"]
    outs = []
    for i, extra in enumerate(([], ["--pipeline-kwargs", '{"max_sequence_length": 8}'])):
        out = tmp_path / f"out{i}.png"
        res = CliRunner().invoke(app, [*base, "-o", str(out), *extra])
        assert res.exit_code == 0, res.output
        outs.append(np.asarray(Image.open(out)))
    assert read_metadata(tmp_path / "out1.png")["pipeline_kwargs"] == {"max_sequence_length": 8}
    assert not np.array_equal(*outs)
    for bad in ("{oops", "[1, 2]"):
        res = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "bad.png"), "--pipeline-kwargs", bad])
        assert res.exit_code != 0 and "--pipeline-kwargs" in res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
        assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("name", ["chroma", "pixart_sigma"])
def test_crop_denoises_only_the_changed_box(name: str, editors: dict[str, Editor]) -> None:
    ed = editors[name]
    img = sample_image(128, 128, seed=3)
    change = np.zeros((128, 128), np.float32)
    change[40:80, 50:90] = 1.0
    out = np.asarray(ed.edit(img, change, "a red cat", num_inference_steps=3, seed=7, crop=True, crop_padding=8)[0])
    src = np.asarray(img)
    assert ed.last_run.work_size[0] < 128 and ed.last_run.work_size[1] < 128
    np.testing.assert_array_equal(out[change == 0], src[change == 0])
    assert np.abs(out[change > 0].astype(int) - src[change > 0]).mean() > 5
