"""``diffdiff edit``: Differential Diffusion from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .common import load_editor, run_command, save_outputs

MODEL_HELP = "Model: hub id, local diffusers folder or single .safetensors/.ckpt file [default: SDXL base 1.0]."


def register(app: typer.Typer) -> None:
    @app.command()
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
        guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale [default: the model's]."),
        strength: float = typer.Option(1.0, "--strength", help="Maximum strength, reached where the map is white (0..1)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (recorded in the PNG metadata)."),
        num_images: int = typer.Option(1, "--num-images", "-k", help="How many variations to produce."),
        polarity: str = typer.Option("change", "--polarity", help="'change': white = change (default). 'keep': white = keep (the paper's maps)."),
        paste_back: bool = typer.Option(True, "--paste-back/--no-paste-back", help="Copy untouched (map = 0) pixels back exactly."),
        crop: bool = typer.Option(False, "--crop", help="Denoise only the box around the changed region (faster for small edits)."),
        crop_padding: int = typer.Option(32, "--crop-padding", help="Context pixels kept around the changed region with --crop."),
        crop_resolution: Optional[str] = typer.Option(None, "--crop-resolution", help="'native': upscale a small --crop region to the model's native size, or a size in pixels."),
        skip_frozen: bool = typer.Option(False, "--skip-frozen", help="Run the model at each step only on the box of pixels free by then (+ --crop-padding context): faster for small or graded maps, slightly less context early on."),
        device: Optional[str] = typer.Option(None, "--device", help="cuda, mps or cpu [default: best available]."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32 [default: fp16 on GPU, fp32 on CPU]."),
        max_pixels: int = typer.Option(4096 * 4096, "--max-pixels", help="Refuse images (or --crop regions) larger than this many pixels."),
        controlnet: Optional[list[str]] = typer.Option(None, "--controlnet", help="ControlNet (folder, .safetensors or hub id; SD, SDXL and its ControlNet Union, Flux). Repeat for several."),
        control_image: Optional[list[Path]] = typer.Option(None, "--control-image", help="Control image (same aspect ratio as IMAGE); one, or one per --controlnet."),
        control_scale: Optional[list[float]] = typer.Option(None, "--control-scale", help="ControlNet conditioning scale [default: 1.0]; one, or one per --controlnet."),
        control_from: Optional[str] = typer.Option(None, "--control-from", help="Derive the control image from IMAGE instead: 'canny' (OpenCV Canny edges)."),
        control_mode: Optional[str] = typer.Option(None, "--control-mode", help="ControlNet Union only: control type (openpose, depth, scribble, canny, normal, segment; ProMax also tile, repaint; or its number)."),
        lora: Optional[list[str]] = typer.Option(None, "--lora", help="LoRA weights PATH_OR_ID[:SCALE] (diffusers, Kohya or A1111 file). Repeat for several."),
        ip_adapter: Optional[str] = typer.Option(None, "--ip-adapter", help="IP-Adapter weights file (its image_encoder folder beside it) or OWNER/REPO/SUBFOLDER/FILE."),
        ip_adapter_image: Optional[Path] = typer.Option(None, "--ip-adapter-image", help="Reference image for the IP-Adapter."),
        ip_adapter_scale: float = typer.Option(1.0, "--ip-adapter-scale", help="IP-Adapter strength (0 = off)."),
        reference: Optional[list[Path]] = typer.Option(None, "--reference", help="Instruction-edit models taking several images (Qwen-Image-Edit-Plus): an extra reference image after IMAGE. Repeat for several."),
        pipeline_kwargs: Optional[str] = typer.Option(None, "--pipeline-kwargs", help="""Extra arguments for the diffusers call, as a JSON object, e.g. '{"max_sequence_length": 128}'."""),
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
                control_image=[str(c) for c in control_image] if control_image else None, control_from=control_from,
                controlnet_conditioning_scale=list(control_scale) if control_scale else None, control_mode=control_mode,
                ip_adapter_image=str(ip_adapter_image) if ip_adapter_image is not None else None,
                reference_images=[open_image(r, "reference image") for r in reference or []],
            )
            if cmap is not None:
                prepare_change_map(cmap, img.size, polarity)  # type: ignore[arg-type]  # fail on a bad map before loading a model
            _check_addon_files(img.size, controlnet, control_image or control_from, ip_adapter, ip_adapter_image)
            addon_kw = addon_load_kw(controlnet, lora, ip_adapter, ip_adapter_scale)
            ed = load_editor(model, refiner, device, dtype, **_config_kw(model_config), **_family_kw(prior, stage_2, stage_3),
                             **addon_kw)
            ed.refiner_start = refiner_start
            ed.max_pixels = max_pixels
            if cmap is None:
                cmap = ed.auto_map(img, auto_map, prompt, seed=seed)
                request = request.replace(polarity="change")  # automatic maps are white = change
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


def _check_addon_files(
    size: tuple[int, int],
    controlnet: Optional[list[str]],
    control: Any,
    ip_adapter: Optional[str],
    ip_adapter_image: Optional[Path],
) -> None:
    """Check the add-on inputs and files before any model is loaded (``control``: the images or 'canny')."""
    from ..addon_inputs import check_control_shape, label
    from ..errors import DiffDiffError
    from ..io import open_image

    if control and not controlnet:
        raise DiffDiffError("--control-image / --control-from need a ControlNet: add --controlnet PATH")
    if controlnet and not control:
        raise DiffDiffError("--controlnet needs a control image: add --control-image FILE or --control-from canny")
    if ip_adapter and ip_adapter_image is None:
        raise DiffDiffError("--ip-adapter needs a reference image: add --ip-adapter-image FILE")
    for path in control if isinstance(control, list) else []:
        check_control_shape(open_image(path, "control image"), size, label(path))
    if ip_adapter_image is not None:
        if not ip_adapter:
            raise DiffDiffError("--ip-adapter-image needs an IP-Adapter: add --ip-adapter FILE")
        open_image(ip_adapter_image, "IP-Adapter image")


def addon_load_kw(controlnet: Optional[list[str]], lora: Optional[list[str]], ip_adapter: Optional[str],
                  ip_adapter_scale: float) -> dict[str, Any]:
    """``Editor.from_pretrained`` keywords for the add-ons given on the command line (none: none)."""
    from ..addon_inputs import check_scales
    from ..lora import parse_lora

    kw: dict[str, Any] = {}
    if controlnet:
        kw["controlnet"] = tuple(controlnet)
    if lora:
        kw["lora"] = tuple(parse_lora(spec) for spec in lora)
    if ip_adapter:
        kw["ip_adapter"] = ip_adapter
        kw["ip_adapter_scale"] = check_scales(ip_adapter_scale, "--ip-adapter-scale")[0]
    return kw

