"""``diffdiff diffedit`` and ``diffdiff map auto``: edit regions found from text (DiffEdit)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..mapsettings import MAP_ENCODE_STRENGTH, MAP_NUM_MAPS
from .common import info, load_editor, run_command, save_outputs
from .maps import map_app

MODEL_HELP = "Model (SD 1.x/2.x or SDXL): hub id, local diffusers folder or single file (default: SDXL base 1.0)."
SOURCE_HELP = "What the image shows now, e.g. 'a bowl of fruits'."
TARGET_HELP = "What it should show, e.g. 'a bowl of pears'."


def _auto_command(map_app: typer.Typer) -> None:
    @map_app.command("auto")
    def auto(
        image: Path = typer.Argument(..., help="Image the map is for."),
        source: str = typer.Option(..., "--source", help=SOURCE_HELP),
        target: str = typer.Option(..., "--target", help=TARGET_HELP),
        output: Path = typer.Option(..., "--output", "-o", help="Output PNG (8-bit greyscale, white = change)."),
        num_maps: int = typer.Option(MAP_NUM_MAPS, "--num-maps", help="Noise draws averaged (more = smoother, slower)."),
        encode_strength: float = typer.Option(MAP_ENCODE_STRENGTH, "--encode-strength", help="Noise level the prompts are compared at (0..1]."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for the noise draws."),
        model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
        device: Optional[str] = typer.Option(None, "--device", help="cuda, mps or cpu (default: best available)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32."),
    ) -> None:
        """Change map from text: where the TARGET prompt's prediction differs from the SOURCE's."""

        def body() -> None:
            from ..automap import validate_map_params
            from ..io import check_output_path, open_image, save_png_atomic

            img = open_image(image, "image")
            check_output_path(output)
            validate_map_params(source, target, num_maps, encode_strength, seed)
            ed = load_editor(model, device=device, dtype=dtype)
            m = ed.auto_map(img, source, target, num_maps=num_maps, encode_strength=encode_strength, seed=seed)
            save_png_atomic(m, output, dict(m.info["diffdiff"], tool="map auto", image_file=image.name))
            info(f"wrote {output}")

        run_command(body)


def register(app: typer.Typer) -> None:
    _auto_command(map_app)

    @app.command()
    def diffedit(
        image: Path = typer.Argument(..., help="Image to edit."),
        source: str = typer.Option(..., "--source", help=SOURCE_HELP),
        target: str = typer.Option(..., "--target", help=TARGET_HELP),
        output: Path = typer.Option(..., "--output", "-o", help="Output PNG; several images get -1, -2, ... suffixes."),
        mask: Optional[Path] = typer.Option(None, "--mask", help="Edit only here (white); default: found from the prompts."),
        threshold: float = typer.Option(0.5, "--threshold", help="Automatic mask: map values above this are edited."),
        save_map: Optional[Path] = typer.Option(None, "--save-map", help="Also write the binary mask used (PNG)."),
        encode_ratio: float = typer.Option(0.5, "--encode-ratio", help="How far the image is inverted (0..1]: higher = bigger changes."),
        steps: int = typer.Option(50, "--steps", "-s", help="DDIM steps for the full schedule."),
        guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Guidance for the target prompt (default: the model's)."),
        negative: Optional[str] = typer.Option(None, "--negative", "-n", help="Negative prompt."),
        num_maps: int = typer.Option(MAP_NUM_MAPS, "--num-maps", help="Noise draws for the automatic mask."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (recorded in the PNG metadata)."),
        model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
        device: Optional[str] = typer.Option(None, "--device", help="cuda, mps or cpu (default: best available)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32."),
    ) -> None:
        """DiffEdit IMAGE: invert it under SOURCE, regenerate the masked region under TARGET, keep the rest."""

        def body() -> None:
            from ..diffedit import prepare_mask, validate_diffedit_params
            from ..errors import DiffDiffError
            from ..io import check_output_path, open_image, save_png_atomic

            img = open_image(image, "image")
            user_mask = open_image(mask, "mask") if mask is not None else None
            check_output_path(output)
            if save_map is not None:
                check_output_path(save_map)
                if save_map.resolve() == output.resolve():
                    raise DiffDiffError("--save-map and --output name the same file")
            validate_diffedit_params(source, target, threshold, encode_ratio, steps, guidance, 1, seed,
                                     negative_prompt=negative)
            if user_mask is not None:
                prepare_mask(user_mask, img.size)  # a bad mask fails before a model is loaded
            ed = load_editor(model, device=device, dtype=dtype)
            images = ed.diffedit(
                img, source, target, mask=user_mask, threshold=threshold, encode_ratio=encode_ratio,
                num_inference_steps=steps, seed=seed, guidance_scale=guidance, negative_prompt=negative,
                num_maps=num_maps, metadata={"image_file": image.name, "mask_file": mask.name if mask else None},
            )
            if save_map is not None:
                from PIL import Image

                used = ed.last_diffedit.mask
                save_png_atomic(Image.fromarray((used * 255).astype("uint8"), "L"), save_map,
                                {"tool": "diffedit mask", **images[0].info["diffdiff"]})
                info(f"wrote {save_map}")
            save_outputs(images, output)

        run_command(body)
