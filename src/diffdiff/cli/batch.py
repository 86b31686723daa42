"""``diffdiff batch``: run a manifest of edits with one loaded model, resumable, locally or on Ray.

The add-on options come from :mod:`diffdiff.cli.addon_options` (``@addon_options``): the load
options load every worker's model, the per-edit ones are row defaults (:func:`_addon_defaults`).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ..mapsettings import MAP_ENCODE_STRENGTH, MAP_NUM_MAPS
from .addon_options import AddonOptions, addon_options
from .common import err, info, load_editor, run_command
from .edit import MODEL_HELP

#: How many failed rows the command lists before the summary line (all are in results.jsonl).
SHOW_FAILURES = 10


def register(app: typer.Typer) -> None:
    @app.command()
    @addon_options
    def batch(
        manifest: Path = typer.Argument(..., help="JSON Lines (.jsonl) or CSV (.csv) file: one edit per row with 'image' and one of 'map', 'mask' + 'softness', 'source_prompt'."),
        outdir: Path = typer.Option(..., "--output", "-o", help="Output folder: <id>.png per row and results.jsonl (created if missing)."),
        prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Default prompt for rows without one."),
        negative: Optional[str] = typer.Option(None, "--negative", "-n", help="Default negative prompt."),
        change_map: Optional[Path] = typer.Option(None, "--map", "-m", help="Default change map for rows with no map, mask or source_prompt."),
        mask: Optional[Path] = typer.Option(None, "--mask", help="Default soft-inpainting mask (white = hole) for rows with no map, mask or source_prompt."),
        softness: Optional[float] = typer.Option(None, "--softness", help="Default softness of 'mask' rows (fall-off sigma in pixels)."),
        auto_map: Optional[str] = typer.Option(None, "--auto-map", help="Default source prompt (automatic map) for rows with no map, mask or source_prompt."),
        model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
        model_config: Optional[str] = typer.Option(None, "--model-config", help="For a single-file --model: diffusers folder (or hub id) with its configs, or the original .yaml."),
        steps: int = typer.Option(50, "--steps", "-s", help="Default number of inference steps."),
        guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Default guidance scale (default: the model's)."),
        strength: float = typer.Option(1.0, "--strength", help="Default maximum strength (0..1)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Default seed for rows without one (default: a random seed per row, recorded)."),
        num_images: int = typer.Option(1, "--num-images", "-k", help="Default variations per row (<id>-1.png, <id>-2.png, ...)."),
        polarity: str = typer.Option("change", "--polarity", help="Default polarity of 'map' rows: 'change' (white = change) or 'keep'."),
        paste_back: bool = typer.Option(True, "--paste-back/--no-paste-back", help="Copy untouched (map = 0) pixels back exactly."),
        crop: bool = typer.Option(False, "--crop", help="Denoise only the box around each row's changed region."),
        crop_padding: int = typer.Option(32, "--crop-padding", help="Context pixels around the changed region with --crop / --skip-frozen."),
        crop_resolution: Optional[str] = typer.Option(None, "--crop-resolution", help="'native' or a size in pixels, with --crop."),
        skip_frozen: bool = typer.Option(False, "--skip-frozen", help="Run the model at each step only on the pixels free by then."),
        num_maps: int = typer.Option(MAP_NUM_MAPS, "--num-maps", help="Noise draws averaged for automatic maps ('source_prompt' rows)."),
        encode_strength: float = typer.Option(MAP_ENCODE_STRENGTH, "--encode-strength", help="Noise level automatic maps compare the prompts at (0..1]."),
        group_size: int = typer.Option(1, "--group-size", help="Rows that are the same edit without a seed share one pipeline call, up to this many (see README)."),
        ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray: 'auto' (the running cluster, else a new local one) or a cluster address."),
        workers: Optional[int] = typer.Option(None, "--workers", help="With --ray: N CPU workers instead of one per GPU."),
        shared_storage: bool = typer.Option(False, "--shared-storage", help="With --ray: workers read inputs and write outputs by path (a folder all nodes see) instead of receiving and returning bytes."),
        device: Optional[str] = typer.Option(None, "--device", help="cuda, mps or cpu (default: best available)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32 (default: fp16 on GPU, fp32 on CPU)."),
        max_pixels: int = typer.Option(4096 * 4096, "--max-pixels", help="Refuse images larger than this many pixels."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: when stderr is a terminal)."),
        *,
        addons: AddonOptions,
    ) -> None:
        """Edit every row of MANIFEST with one loaded model; a second run resumes where the first stopped."""

        def body() -> None:
            from ..batch import LoadedAddons, load_model
            from ..batch import run as run_batch
            from ..loading import DEFAULT_MODEL

            given: dict[str, Any] = {
                "prompt": prompt, "negative_prompt": negative, "softness": softness, "source_prompt": auto_map,
                "map": str(change_map.resolve()) if change_map is not None else None,
                "mask": str(mask.resolve()) if mask is not None else None,
                "steps": steps, "guidance": guidance, "strength": strength, "seed": seed, "num_images": num_images,
                "polarity": polarity, "paste_back": paste_back, "crop": crop, "crop_padding": crop_padding,
                "crop_resolution": crop_resolution, "skip_frozen": skip_frozen, "num_maps": num_maps,
                "encode_strength": encode_strength,
            }
            given.update(_addon_defaults(addons))
            defaults = {k: v for k, v in given.items() if v is not None}
            config = {**_model_config_kw(model_config), **addons.load_kw()}
            if ray is None:
                def source() -> Any:  # loaded only if some row still has to run
                    ed = load_editor(model, None, device, dtype, **config)
                    ed.max_pixels = max_pixels
                    return ed
            else:
                info(f"loading {model or DEFAULT_MODEL} in each Ray worker")
                source = functools.partial(load_model, model or DEFAULT_MODEL, device, dtype, max_pixels, **config)
            show = sys.stderr.isatty() if progress is None else progress
            try:
                summary = run_batch(manifest, outdir, source, defaults=defaults, group_size=group_size, ray=ray,
                                    workers=workers, shared_storage=shared_storage, progress=show,
                                    addons=LoadedAddons.from_load_kw(config))
            except KeyboardInterrupt:
                err("interrupted; finished rows are recorded: run the same command again to resume")
                raise typer.Exit(130) from None
            for row_id, error in summary.failures[:SHOW_FAILURES]:
                info(f"failed: {row_id}: {error}")
            if len(summary.failures) > SHOW_FAILURES:
                info(f"... and {len(summary.failures) - SHOW_FAILURES} more failed rows (see {summary.results})")
            info(summary.line())
            if not summary.ok:
                raise typer.Exit(1)

        run_command(body)


def _model_config_kw(model_config: Optional[str]) -> dict[str, str]:
    """--model-config as ``diffdiff edit`` reads it: a .yaml is the original (LDM) config, else a diffusers folder or hub id."""
    if not model_config:
        return {}
    return {"original_config" if model_config.endswith((".yaml", ".yml")) else "config": model_config}


def _addon_defaults(addons: AddonOptions) -> dict[str, Any]:
    """The per-edit add-on options as row defaults (one control image and one scale: a row has one of each)."""
    from ..errors import DiffDiffError

    for name, values in (("--control-image", addons.control_image), ("--control-scale", addons.control_scale)):
        if values and len(values) > 1:
            raise DiffDiffError(f"batch takes one {name} default (rows give their own in the manifest)")
    return {
        "control_image": str(addons.control_image[0].resolve()) if addons.control_image else None,
        "control_from": addons.control_from,
        "control_scale": addons.control_scale[0] if addons.control_scale else None,
        "control_mode": addons.control_mode,
        "ip_adapter_image": str(addons.ip_adapter_image.resolve()) if addons.ip_adapter_image is not None else None,
    }
