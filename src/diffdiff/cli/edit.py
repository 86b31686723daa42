"""``diffdiff edit``: Differential Diffusion from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .addon_options import AddonOptions, addon_options
from .common import load_editor, run_command, save_outputs

MODEL_HELP = "Model: hub id, local diffusers folder or single .safetensors/.ckpt file (default: SDXL base 1.0)."


def register(app: typer.Typer) -> None:
    @app.command()
    @addon_options
    def edit(
        image: Path = typer.Argument(..., help="Image to edit (PNG, JPEG, WebP, ...)."),
        change_map: Optional[Path] = typer.Option(None, "--map", "-m", help="Change map: greyscale image, white = change (see --polarity)."),
        auto_map: Optional[str] = typer.Option(None, "--auto-map", help="Instead of --map: find the map from text; give what the image shows now (DiffEdit-style, --prompt is the target)."),
        prompt: str = typer.Option(..., "--prompt", "-p", help="What the edited image should show."),
        output: Path = typer.Option(..., "--output", "-o", help="Output PNG; several images get -1, -2, ... suffixes."),
        negative: Optional[str] = typer.Option(None, "--negative", "-n", help="Negative prompt."),
        model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
        refiner: Optional[str] = typer.Option(None, "--refiner", help="SDXL refiner (hub id, folder or file)."),
        model_config: Optional[str] = typer.Option(None, "--model-config", help="For a single-file --model: diffusers folder (or hub id) with its configs, or the original .yaml; needed offline."),
        refiner_start: float = typer.Option(0.8, "--refiner-start", help="Fraction of the schedule where the refiner takes over."),
        prior: Optional[str] = typer.Option(None, "--prior", help="Kandinsky 2.2 prior (default: kandinsky-community/kandinsky-2-2-prior)."),
        stage_2: Optional[str] = typer.Option(None, "--stage-2", help="DeepFloyd IF stage II (super-resolution; the map acts there too)."),
        stage_3: Optional[str] = typer.Option(None, "--stage-3", help="DeepFloyd IF stage III x4 upscaler (map-free)."),
        steps: int = typer.Option(50, "--steps", "-s", help="Number of inference steps."),
        guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale (default: the model's)."),
        strength: float = typer.Option(1.0, "--strength", help="Maximum strength, reached where the map is white (0..1)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (recorded in the PNG metadata)."),
        num_images: int = typer.Option(1, "--num-images", "-k", help="How many variations to produce."),
        polarity: str = typer.Option("change", "--polarity", help="'change': white = change (default). 'keep': white = keep (the paper's maps)."),
        paste_back: bool = typer.Option(True, "--paste-back/--no-paste-back", help="Copy untouched (map = 0) pixels back exactly."),
        crop: bool = typer.Option(False, "--crop", help="Denoise only the box around the changed region (faster for small edits)."),
        crop_padding: int = typer.Option(32, "--crop-padding", help="Context pixels kept around the changed region with --crop."),
        crop_resolution: Optional[str] = typer.Option(None, "--crop-resolution", help="'native': upscale a small --crop region to the model's native size, or a size in pixels."),
        skip_frozen: bool = typer.Option(False, "--skip-frozen", help="Run the model at each step only on the box of pixels free by then (+ --crop-padding context): faster for small or graded maps, slightly less context early on."),
        device: Optional[str] = typer.Option(None, "--device", help="cuda, mps or cpu (default: best available)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32 (default: fp16 on GPU, fp32 on CPU)."),
        max_pixels: int = typer.Option(4096 * 4096, "--max-pixels", help="Refuse images (or --crop regions) larger than this many pixels."),
        reference: Optional[list[Path]] = typer.Option(None, "--reference", help="Instruction-edit models taking several images (Qwen-Image-Edit-Plus): an extra reference image after IMAGE. Repeat for several."),
        pipeline_kwargs: Optional[str] = typer.Option(None, "--pipeline-kwargs", help="""Extra arguments for the diffusers call, as a JSON object, e.g. '{"max_sequence_length": 128}'."""),
        *,
        addons: AddonOptions,
    ) -> None:
        """Edit IMAGE: each pixel changes as much as the change map allows."""

        def body() -> None:
            from ..errors import DiffDiffError
            from ..io import check_output_path, check_pixel_limit, file_sha256, open_image

            img = open_image(image, "image")
            if not crop:
                check_pixel_limit(*img.size, max_pixels)  # before any model is loaded
            if (change_map is None) == (auto_map is None):
                raise DiffDiffError("pass one of --map MAP or --auto-map SOURCE_PROMPT (see 'diffdiff map' to make maps)")
            cmap = open_image(change_map, "change map") if change_map is not None else None
            check_output_path(output)
            from ..changemap import prepare_change_map
            from ..request import EditRequest, pipeline_kwargs_from_json

            request = EditRequest(
                pipeline_kwargs=pipeline_kwargs_from_json(pipeline_kwargs, "--pipeline-kwargs"),
                prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                strength=strength, seed=seed, num_images=num_images, polarity=polarity,  # type: ignore[arg-type]
                paste_back=paste_back, crop=crop, crop_padding=crop_padding, skip_frozen=skip_frozen,
                crop_resolution=int(crop_resolution) if crop_resolution and crop_resolution.isdigit() else crop_resolution,
                metadata={"image_file": image.name, **({"map_file": change_map.name, "map_file_sha256": file_sha256(change_map)}
                                                       if change_map is not None else {"auto_map_source": auto_map}),
                          **({"reference_files": [r.name for r in reference]} if reference else {})},
                **addons.request_kw(),
                reference_images=[open_image(r, "reference image") for r in reference or []],
            )
            if cmap is not None:
                prepare_change_map(cmap, img.size, polarity)  # type: ignore[arg-type]  # fail on a bad map before loading a model
            addons.check(img.size)
            ed = load_editor(model, refiner, device, dtype, **_config_kw(model_config), **_family_kw(prior, stage_2, stage_3),
                             **addons.load_kw())
            ed.refiner_start = refiner_start
            ed.max_pixels = max_pixels
            if cmap is None:
                from ..automap import recorded_settings

                cmap = ed.auto_map(img, auto_map, prompt, seed=seed)
                # automatic maps are white = change; the metadata records how the map was made
                request = request.replace(polarity="change").with_metadata({"auto_map": recorded_settings(cmap)})
            images = ed.edit_with(img, cmap, request)
            save_outputs(images, output)

        run_command(body)


def _config_kw(model_config: Optional[str]) -> dict[str, str]:
    """--model-config: a .yaml is the original (LDM) config, anything else a diffusers folder or hub id."""
    if not model_config:
        return {}
    key = "original_config" if model_config.endswith((".yaml", ".yml")) else "config"
    return {key: model_config}


def _family_kw(prior: Optional[str], stage_2: Optional[str], stage_3: Optional[str]) -> dict[str, str]:
    """Extra pipelines of multi-model families (only those given, so other models load as before)."""
    given = {"prior": prior, "stage_2": stage_2, "stage_3": stage_3}
    return {k: v for k, v in given.items() if v}
