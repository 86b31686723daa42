"""Qwen-Image-Edit and Qwen-Image-Edit-Plus (issue 18, instruction-edit models) in the own-noise family.

Tiny random pipelines (:mod:`diffdiff.tiny_models`, 64 px, 4 steps) are saved once and loaded back
with ``Editor.from_pretrained``. Like Flux Kontext, these pipelines take an ``image`` and no
``strength``: diffdiff noises the input itself and hands it to the pipeline as its reference, so
black pixels keep and white ones follow the instruction. Per pipeline: detected as own-noise from
its components, the black half byte-identical and the white half changed, a batch of two
differs, the black half ends nearer the clean latents than with an all-white map, an all-white
map at strength 1 gives the pipeline's own call bit for bit (same seed), the reference handed to
the pipeline is the input at the work size, and the CLI edits with ``--model <folder>``.

Cost: whatever the output size, both pipelines encode their reference at ~1 MP (diffusers'
``calculate_dimensions(1024 * 1024, ...)``, not an argument), so every call spends ~2 s in the
tiny VAE on one thread; the tests keep to few calls.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffdiff import DiffDiffError, Editor, ModelLoadError, read_metadata
from diffdiff.cli import app
from diffdiff.families.own import reference_images
from diffdiff.processors import image_only, substitutes, video_processors_available
from diffdiff.testing import sample_image
from diffdiff.tiny_models import build_tiny_qwen_image_edit, build_tiny_qwen_image_edit_plus

STEPS = 4
HALF = np.zeros((64, 64), np.float32)
HALF[:, 32:] = 1.0  # left half keep, right half change
ONE = np.ones((64, 64), np.float32)
PROMPT = "make it red"

BUILDERS = {  # name: (builder, the pipeline the editor drives)
    "edit": (build_tiny_qwen_image_edit, "QwenImageEditPipeline"),
    "edit_plus": (build_tiny_qwen_image_edit_plus, "QwenImageEditPlusPipeline"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwen_edit")
    return {name: spec[0](root / name) for name, spec in BUILDERS.items()}


@pytest.fixture(scope="module")
def editors(built: dict[str, Path]) -> dict[str, Editor]:
    return {name: Editor.from_pretrained(path, progress=False) for name, path in built.items()}


def _latents(ed: Editor, change: np.ndarray, num_images: int = 1, **kw: Any) -> torch.Tensor:
    return ed.edit(sample_image(64, 64, seed=3), change, PROMPT, num_inference_steps=STEPS, seed=11,
                   num_images=num_images, output_type="latent", **kw)


@pytest.fixture(scope="module")
def runs(editors: dict[str, Editor]) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """(latents, clean latents) of each pipeline for the half map and the all-white map at strength 1,
    batch of two (computed once: every call encodes a ~1 MP reference)."""
    out = {}
    for name, ed in editors.items():
        for key, change in (("half", HALF), ("full", ONE)):
            latents = _latents(ed, change, num_images=2)
            out[name, key] = (latents, ed.last_run.reference.clean)  # type: ignore[union-attr]
    return out


class ResizeSpy:
    """Records the images handed to a pipeline's image processor to resize, each once: its
    reference images (the input is also resized by diffdiff's own encoding through the same
    processor; the processor's own resized copies, which its ``preprocess`` resizes again, are left out)."""

    def __init__(self, processor: Any) -> None:
        self.resize = processor.resize
        self.seen: list[Any] = []
        self.areas: list[int] = []  # of what it returned
        self._made: set[int] = set()

    def __call__(self, image: Any, *args: Any, **kwargs: Any) -> Any:
        if id(image) not in self._made and not any(image is im for im in self.seen):
            self.seen.append(image)
        out = self.resize(image, *args, **kwargs)
        self._made.add(id(out))
        self.areas.append(out.width * out.height if isinstance(out, Image.Image) else 0)
        return out


@pytest.mark.parametrize("name", list(BUILDERS))
def test_family_detected_halves_batch_and_reference(name: str, editors: dict[str, Editor],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ed = editors[name]
    assert (type(ed.pipe).__name__, ed.family) == (BUILDERS[name][1], "own-noise")
    codec = ed.adapter.codec  # type: ignore[attr-defined]
    assert (codec.layout.name, codec.frames, ed.vae_scale()) == ("packed", True, 8)
    img = sample_image(72, 56, seed=4)  # off the x16 grid: the work size differs from the input's
    change = np.zeros((56, 72), np.float32)
    change[:, 40:] = 1.0
    spy = ResizeSpy(ed.pipe.image_processor)
    monkeypatch.setattr(ed.pipe.image_processor, "resize", spy)
    out = ed.edit(img, change, PROMPT, num_inference_steps=STEPS, seed=7, num_images=2)
    src = np.asarray(img)
    assert len(out) == 2
    for res in out:
        assert res.size == img.size
        arr = np.asarray(res)
        np.testing.assert_array_equal(arr[:, :40], src[:, :40])
        assert np.abs(arr[:, 40:].astype(int) - src[:, 40:]).mean() > 5
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))
    assert ed.last_run.total_steps == STEPS and len(ed.last_run.records) == STEPS - 1
    # the reference the pipeline gets: the input at the work size, as diffdiff resizes it
    work = ed.last_run.work_size
    assert work != img.size and work[0] % 16 == 0 and work[1] % 16 == 0
    assert len(spy.seen) == 1 and spy.seen[0].size == work
    assert abs(max(spy.areas) / 1024**2 - 1) < 0.05  # which the pipeline encodes at ~1 MP, whatever the output size
    np.testing.assert_array_equal(np.asarray(spy.seen[0]), np.asarray(img.resize(work, Image.Resampling.LANCZOS)))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_black_half_ends_nearer_the_clean_latents(name: str, runs: dict[Any, tuple[torch.Tensor, torch.Tensor]]) -> None:
    (half, clean), (full, _) = runs[name, "half"], runs[name, "full"]
    assert half.shape == full.shape == clean.shape == (2, 4, 8, 8)
    d_half = (half[..., :4] - clean[..., :4]).abs().mean()
    d_full = (full[..., :4] - clean[..., :4]).abs().mean()
    assert d_half < 0.6 * d_full, (float(d_half), float(d_full))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_all_white_at_strength_1_equals_the_pipelines_own_call(name: str, editors: dict[str, Editor],
                                                               runs: dict[Any, tuple[torch.Tensor, torch.Tensor]]) -> None:
    # At strength 1 our start is pure noise (flow matching: sigma 1 * noise + 0 * clean) and an
    # all-white map never blends, so the run is the pipeline's own edit of the same input. Our
    # noise is the generator's second draw: the first is the posterior sample of our own encoding
    # (the img2img siblings' order), while the edit pipeline encodes its reference with the
    # posterior mode (no draw). So the pipeline's own call gets the generator one posterior
    # draw on: shape (1, C, 1, h, w), as diffusers' DiagonalGaussianDistribution.sample draws it.
    from diffusers.utils.torch_utils import randn_tensor

    ed = editors[name]
    pipe = type(ed.pipe)(**ed.pipe.components)  # diffusers' own call on the same components
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(11)
    randn_tensor((1, 4, 1, 8, 8), generator=generator)
    ref = pipe(image=sample_image(64, 64, seed=3), prompt=PROMPT, height=64, width=64, num_inference_steps=STEPS,
               num_images_per_prompt=2, generator=generator, output_type="latent").images
    ref = ed.adapter.unpack(ref, 64, 64)
    ours = runs[name, "full"][0]
    assert ref.shape == ours.shape
    assert torch.equal(ours, ref)


def test_extra_references_follow_the_input(editors: dict[str, Editor], monkeypatch: pytest.MonkeyPatch,
                                           runs: dict[Any, tuple[torch.Tensor, torch.Tensor]]) -> None:
    # Edit-Plus takes a list of images: the edited one is the first, extras come from
    # reference_images, handed on as given (the pipeline sizes each reference itself).
    ed = editors["edit_plus"]
    extra = sample_image(48, 80, seed=9)
    spy = ResizeSpy(ed.pipe.image_processor)
    monkeypatch.setattr(ed.pipe.image_processor, "resize", spy)
    with_extra = _latents(ed, HALF, num_images=2, reference_images=[extra])
    assert len(spy.seen) == 2
    np.testing.assert_array_equal(np.asarray(spy.seen[1]), np.asarray(extra))
    np.testing.assert_array_equal(np.asarray(spy.seen[0]), np.asarray(sample_image(64, 64, seed=3)))
    alone, clean = runs["edit_plus", "half"]
    assert not torch.equal(with_extra, alone)  # the extra reference is seen...
    assert torch.equal(ed.last_run.reference.clean, clean)  # type: ignore[union-attr]  # ...the input still edited
    d_half = (with_extra[..., :4] - clean[..., :4]).abs().mean()
    d_full = (runs["edit_plus", "full"][0][..., :4] - clean[..., :4]).abs().mean()
    assert d_half < 0.6 * d_full  # and its black half kept


def test_reference_images_put_the_input_first() -> None:
    a, b, c = (sample_image(8, 8, seed=i) for i in range(3))
    assert reference_images(a, None) is a
    assert reference_images(a, b) == [a, b]
    assert reference_images(a, (b, c)) == [a, b, c]


def test_one_reference_pipeline_refuses_extra_references(editors: dict[str, Editor]) -> None:
    # Qwen-Image-Edit's prompt has one image slot: the pipeline refuses a list before denoising; one line.
    with pytest.raises(DiffDiffError, match="^reference_images: the pipeline refused them: ValueError: .*image_pad"):
        _latents(editors["edit"], HALF, reference_images=[sample_image(64, 64, seed=9)])


def test_references_are_refused_by_a_model_that_takes_none(tmp_path: Path) -> None:
    from diffdiff.testing import build_tiny_sd

    ed = Editor.from_pretrained(build_tiny_sd(tmp_path / "sd"), progress=False)
    with pytest.raises(DiffDiffError, match="reference_images are for instruction-edit pipelines.*takes none"):
        ed.edit(sample_image(64, 64), HALF, "a cat", num_inference_steps=2, reference_images=[sample_image(64, 64)])
    with pytest.raises(DiffDiffError, match="'image' is set by diffdiff itself"):
        ed.edit(sample_image(64, 64), HALF, "a cat", num_inference_steps=2, pipeline_kwargs={"image": [1]})


def test_cli_reference_option(built: dict[str, Path], tmp_path: Path) -> None:
    img, cmap, ref = tmp_path / "in.png", tmp_path / "map.png", tmp_path / "ref.png"
    sample_image(64, 64, seed=3).save(img)
    Image.fromarray((HALF * 255).astype(np.uint8), "L").save(cmap)
    sample_image(48, 80, seed=9).save(ref)
    out = tmp_path / "out.png"
    r = CliRunner().invoke(app, ["edit", str(img), "--map", str(cmap), "-p", PROMPT, "--model", str(built["edit_plus"]),
                                 "--steps", "2", "--seed", "1", "--reference", str(ref), "-o", str(out)])
    assert r.exit_code == 0, r.output
    meta = read_metadata(out)
    assert meta["reference_files"] == ["ref.png"] and meta["reference_images"] == ["<Image (48, 80)>"]
    missing = CliRunner().invoke(app, ["edit", str(img), "--map", str(cmap), "-p", PROMPT, "--model",
                                       str(built["edit_plus"]), "--reference", str(tmp_path / "nope.png"),
                                       "-o", str(tmp_path / "o2.png")])
    assert missing.exit_code != 0 and "Traceback" not in missing.output and "nope.png" in missing.output
    assert not (tmp_path / "o2.png").exists()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_processor_is_transformers_qwen2vl_without_its_video_half(name: str, built: dict[str, Path],
                                                                 editors: dict[str, Editor]) -> None:
    from transformers import Qwen2VLProcessor

    index = json.loads((built[name] / "model_index.json").read_text())
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]  # as in a real Qwen-Image-Edit folder
    proc = editors[name].pipe.processor
    assert isinstance(proc, Qwen2VLProcessor)
    if not video_processors_available():  # loaded by diffdiff.loading, image-only
        assert type(proc).__module__ == "diffdiff.processors"
        assert type(proc).get_attributes() == ["image_processor", "tokenizer"]
    # 56 x 56 px = 4 x 4 patches of 14 px, merged 2 x 2: four image tokens, 2 frames x 3 x 14 x 14 per patch
    out = proc(text=["<|vision_start|><|image_pad|><|vision_end|>make it red"], images=[sample_image(56, 56)],
               return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert tuple(out["pixel_values"].shape) == (16, 2 * 3 * 14 * 14)
    assert int((out["input_ids"] == proc.image_token_id).sum()) == 4


def test_image_only_processors_are_only_for_processors_with_a_video_part() -> None:
    from transformers import CLIPTokenizer, Qwen2VLProcessor

    with pytest.raises(TypeError, match="not a processor with image, text and video parts"):
        image_only(CLIPTokenizer)
    assert image_only(Qwen2VLProcessor) is image_only(Qwen2VLProcessor)  # one class per processor class
    assert substitutes({"tokenizer": ["transformers", "CLIPTokenizer"], "vae": ["diffusers", "AutoencoderKL"],
                        "_class_name": "StableDiffusionPipeline"}, "unused") == {}


def test_a_broken_processor_folder_is_one_line(built: dict[str, Path], tmp_path: Path) -> None:
    if video_processors_available():
        pytest.skip("with torchvision diffusers loads the processor itself")
    folder = tmp_path / "broken"
    shutil.copytree(built["edit"], folder)
    shutil.rmtree(folder / "processor")
    with pytest.raises(ModelLoadError, match="could not load the processor of") as info:
        Editor.from_pretrained(folder, progress=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_cli_model_folder(name: str, built: dict[str, Path], tmp_path: Path) -> None:
    img, cmap, out = tmp_path / "in.png", tmp_path / "map.png", tmp_path / "out.png"
    sample_image(64, 64, seed=3).save(img)
    Image.fromarray((HALF * 255).astype(np.uint8), "L").save(cmap)
    res = CliRunner().invoke(app, ["edit", str(img), "--map", str(cmap), "-p", PROMPT, "-o", str(out),
                                   "--model", str(built[name]), "--steps", "2", "--seed", "2"])
    assert res.exit_code == 0, res.output
    meta = read_metadata(out)
    assert meta["family"] == "own-noise"
    arr, src = np.asarray(Image.open(out)), np.asarray(Image.open(img))
    np.testing.assert_array_equal(arr[:, :32], src[:, :32])
    assert np.abs(arr[:, 32:].astype(int) - src[:, 32:]).mean() > 5
