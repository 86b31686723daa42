"""``diffdiff fan`` (strength fan, optional guidance/seed grid) and ``diffdiff soft-inpaint``.

Both take the add-on options of ``diffdiff edit`` (:mod:`.addon_options`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .addon_options import AddonOptions, addon_options
from .common import info, load_editor, run_command, save_outputs
from .edit import MODEL_HELP


def register(app: typer.Typer) -> None:
    @app.command()
    @addon_options
    def fan(
        image: Path = typer.Argument(..., help="Image to edit."),
        prompt: str = typer.Option(..., "--prompt", "-p", help="What the edited image should show."),
        output: Path = typer.Option(..., "--output", "-o", help="Output PNG (one image)."),
        columns: int = typer.Option(5, "--columns", "-c", help="Number of vertical bands."),
        min_strength: float = typer.Option(0.0, "--min", help="Strength of the leftmost band (0..1)."),
        max_strength: float = typer.Option(1.0, "--max", help="Strength of the rightmost band (0..1)."),
        change_map: Optional[Path] = typer.Option(None, "--map", "-m", help="Optional change map: fan only where it allows."),
        labels: bool = typer.Option(False, "--labels", help="Add a caption band with each column's strength."),
        rows: Optional[str] = typer.Option(None, "--rows", help="Second axis: 'guidance' or 'seed' (one edit per row)."),
        row_values: Optional[str] = typer.Option(None, "--row-values", help="Comma-separated values for --rows, e.g. 3,7.5,12."),
        negative: Optional[str] = typer.Option(None, "--negative", "-n", help="Negative prompt."),
        model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
        steps: int = typer.Option(50, "--steps", "-s", help="Number of inference steps."),
        guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Guidance scale (default: the model's)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
        polarity: str = typer.Option("change", "--polarity", help="Polarity of --map: 'change' (white = change) or 'keep'."),
        skip_frozen: bool = typer.Option(True, "--skip-frozen/--full-frame", help="Each step runs the model only on the columns free by then plus 32 px context (about 1/columns of separate edits' work); --full-frame runs every step on the whole image."),
        device: Optional[str] = typer.Option(None, "--device", help="cuda, mps or cpu (default: best available)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32."),
        *,
        addons: AddonOptions,
    ) -> None:
        """Strength fan: IMAGE in vertical bands from --min to --max strength, made by ONE edit."""

        def body() -> None:
            from ..changemap import prepare_change_map
            from ..errors import DiffDiffError
            from ..fan import band_edges, check_row_values, column_strengths, parse_row_values
            from ..io import check_output_path, open_image
            from ..request import EditRequest

            img = open_image(image, "image")
            cmap = open_image(change_map, "change map") if change_map is not None else None
            check_output_path(output)
            EditRequest(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance, strength=max_strength,
                        polarity=polarity, seed=seed, **addons.request_kw())  # type: ignore[arg-type]  # validates before any model loads
            column_strengths(columns, min_strength, max_strength)
            band_edges(img.width, columns)
            if cmap is not None:
                prepare_change_map(cmap, img.size, polarity)  # type: ignore[arg-type]
            values = None
            if rows is not None or row_values is not None:
                if rows is None or row_values is None:
                    raise DiffDiffError("--rows and --row-values go together (e.g. --rows guidance --row-values 3,7.5,12)")
                values = check_row_values(rows, parse_row_values(row_values))
                if (rows == "seed" and seed is not None) or (rows == "guidance" and guidance is not None):
                    raise DiffDiffError(f"--rows {rows} sweeps {rows}: drop --{rows}")
            addons.check(img.size)
            ed = load_editor(model, None, device, dtype, **addons.load_kw())
            meta = {"image_file": image.name}
            if change_map is not None:
                meta["map_file"] = change_map.name
            common = dict(negative_prompt=negative, num_inference_steps=steps, polarity=polarity, metadata=meta,
                          skip_frozen=skip_frozen, **addons.request_kw())
            if values is None:
                result = ed.fan(img, prompt, columns, min_strength, max_strength, cmap, labels=labels,
                                guidance_scale=guidance, seed=seed, **common)
            else:
                from ..fan import fan_grid

                extra = {"seed": seed} if rows == "guidance" else {"guidance_scale": guidance}
                info(f"{len(values)} rows: one edit each")
                result = fan_grid(ed, img, prompt, rows, values, columns, min_strength, max_strength, cmap,
                                  labels=labels, **extra, **common)
            save_outputs([result], output)

        run_command(body)

    @app.command("soft-inpaint")
    @addon_options
    def soft_inpaint(
        image: Path = typer.Argument(..., help="Image to edit."),
        mask: Path = typer.Option(..., "--mask", help="Binary mask: white = the hole to regenerate."),
        softness: float = typer.Option(..., "--softness", help="Fall-off sigma in image pixels; 0 beyond 3x this."),
        prompt: str = typer.Option(..., "--prompt", "-p", help="What should fill the hole."),
        output: Path = typer.Option(..., "--output", "-o", help="Output PNG; several images get -1, -2, ... suffixes."),
        negative: Optional[str] = typer.Option(None, "--negative", "-n", help="Negative prompt."),
        model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
        steps: int = typer.Option(50, "--steps", "-s", help="Number of inference steps."),
        guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Guidance scale (default: the model's)."),
        strength: float = typer.Option(1.0, "--strength", help="Strength inside the hole (0..1)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
        num_images: int = typer.Option(1, "--num-images", "-k", help="How many variations."),
        save_map: Optional[Path] = typer.Option(None, "--save-map", help="Also write the soft map used (PNG)."),
        skip_frozen: bool = typer.Option(False, "--skip-frozen", help="Run the model at each step only around the pixels free by then (faster for small holes)."),
        device: Optional[str] = typer.Option(None, "--device", help="cuda, mps or cpu (default: best available)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32."),
        *,
        addons: AddonOptions,
    ) -> None:
        """Regenerate the mask's hole; the surroundings adjust gradually, far pixels stay exact."""

        def body() -> None:
            from ..io import check_output_path, open_image, save_png_atomic
            from ..maps import to_image
            from ..request import EditRequest
            from ..softinpaint import soft_inpaint_map

            img = open_image(image, "image")
            m = open_image(mask, "mask")
            check_output_path(output)
            if save_map is not None:
                check_output_path(save_map)
            EditRequest(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance, strength=strength,
                        num_images=num_images, seed=seed, **addons.request_kw())  # validates before any model loads
            soft = soft_inpaint_map(m, softness, img.size)  # bad mask or softness fails before loading
            addons.check(img.size)
            ed = load_editor(model, None, device, dtype, **addons.load_kw())
            images = ed.soft_inpaint(
                img, m, softness, prompt, negative_prompt=negative, num_inference_steps=steps,
                guidance_scale=guidance, strength=strength, seed=seed, num_images=num_images, skip_frozen=skip_frozen,
                metadata={"image_file": image.name, "mask_file": mask.name}, **addons.request_kw(),
            )
            save_outputs(images, output)
            if save_map is not None:
                save_png_atomic(to_image(soft), save_map, {"tool": "map soft", "softness": softness})
                info(f"wrote {save_map}")

        run_command(body)
