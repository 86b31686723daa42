"""``diffdiff map ...``: make and inspect change maps without loading a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .common import info, run_command

map_app = typer.Typer(
    name="map",
    help="Make change maps (white = change, black = keep) and preview how an edit will use them.",
    no_args_is_help=True,
)

OUTPUT_HELP = "Output PNG (8-bit greyscale, white = change)."


def _save_map(img: Any, output: Path, meta: dict[str, Any]) -> None:
    from ..io import save_png_atomic

    save_png_atomic(img, output, meta)
    info(f"wrote {output}")


def _open(path: Path, what: str) -> Any:
    from ..io import open_image

    return open_image(path, what)


def _check_out(output: Path) -> None:
    from ..io import check_output_path

    check_output_path(output)


@map_app.command()
def gradient(
    size: str = typer.Option(..., "--size", help="WIDTHxHEIGHT, e.g. 512x512 (use your image's size)."),
    direction: str = typer.Option("left-right", "--direction", "-d",
                                  help="left-right, right-left, top-bottom, bottom-top or radial (from the centre)."),
    start: float = typer.Option(0.0, "--start", help="Change at the start edge (or the centre for radial), 0..1."),
    end: float = typer.Option(1.0, "--end", help="Change at the end edge (or the corners for radial), 0..1."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
) -> None:
    """A linear or radial ramp."""

    def body() -> None:
        from .. import maps

        w, h = maps.parse_size(size)
        _check_out(output)
        img = maps.gradient((w, h), direction, start, end)
        _save_map(img, output, {"tool": "map gradient", "size": f"{w}x{h}", "direction": direction,
                                "start": start, "end": end})

    run_command(body)


@map_app.command()
def soft(
    mask: Path = typer.Argument(..., help="Binary mask: white = the hole to regenerate."),
    softness: float = typer.Option(..., "--softness", "-s", help="Fall-off sigma in pixels; change is 0 from 3x this."),
    size: Optional[str] = typer.Option(None, "--size", help="Resize the mask to WIDTHxHEIGHT first (softness in those pixels)."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
) -> None:
    """Soft-inpainting map: hole = full change, smooth Gaussian fall-off, exactly 0 far away."""

    def body() -> None:
        from .. import maps

        m = _open(mask, "mask")
        wh = maps.parse_size(size) if size else None
        _check_out(output)
        img = maps.soft_map(m, softness, wh)
        _save_map(img, output, {"tool": "map soft", "mask_file": mask.name, "softness": softness})

    run_command(body)


@map_app.command()
def invert(
    change_map: Path = typer.Argument(..., metavar="MAP", help="Map to invert."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
) -> None:
    """Swap keep and change (also converts a white = keep map to diffdiff's polarity)."""

    def body() -> None:
        from .. import maps

        m = _open(change_map, "change map")
        _check_out(output)
        _save_map(maps.invert(m), output, {"tool": "map invert", "map_file": change_map.name})

    run_command(body)


@map_app.command()
def levels(
    change_map: Path = typer.Argument(..., metavar="MAP", help="Map to adjust."),
    black: float = typer.Option(0.0, "--black", help="Values at or below this become 0 (keep exactly)."),
    white: float = typer.Option(1.0, "--white", help="Values at or above this become 1 (change fully)."),
    gamma: float = typer.Option(1.0, "--gamma", help="Midtone gamma: > 1 more change, < 1 less."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
) -> None:
    """Black point, white point and gamma, as in an image editor."""

    def body() -> None:
        from .. import maps

        m = _open(change_map, "change map")
        _check_out(output)
        img = maps.levels(m, black, white, gamma)
        _save_map(img, output, {"tool": "map levels", "map_file": change_map.name, "black": black, "white": white,
                                "gamma": gamma})

    run_command(body)


@map_app.command()
def blur(
    change_map: Path = typer.Argument(..., metavar="MAP", help="Map to blur."),
    sigma: float = typer.Option(..., "--sigma", "-s", help="Gaussian sigma in pixels."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
) -> None:
    """Gaussian blur: soften hard edges of a map."""

    def body() -> None:
        from .. import maps

        m = _open(change_map, "change map")
        _check_out(output)
        _save_map(maps.blur(m, sigma), output, {"tool": "map blur", "map_file": change_map.name, "sigma": sigma})

    run_command(body)


@map_app.command()
def combine(
    change_maps: list[Path] = typer.Argument(..., metavar="MAP...", help="Two or more maps (resized to the first)."),
    mode: str = typer.Option("max", "--mode", help="max (union), min (intersection) or multiply."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
) -> None:
    """Combine several maps pixel by pixel."""

    def body() -> None:
        from .. import maps
        from ..errors import DiffDiffError

        if mode not in maps.COMBINE_MODES:
            raise DiffDiffError(f"--mode must be one of {', '.join(maps.COMBINE_MODES)}; got {mode!r}")
        if len(change_maps) < 2:
            raise DiffDiffError("combine needs at least two maps")
        ms = [_open(p, "change map") for p in change_maps]
        _check_out(output)
        img = maps.combine(ms, mode)
        _save_map(img, output, {"tool": "map combine", "mode": mode, "map_files": [p.name for p in change_maps]})

    run_command(body)


@map_app.command()
def depth(
    depth_image: Path = typer.Argument(..., metavar="DEPTH", help="Depth image (e.g. from Depth Anything / MiDaS), or with --depth-model the photo to estimate depth from."),
    near: float = typer.Option(0.0, "--near", help="Change at the nearest point (0..1)."),
    far: float = typer.Option(1.0, "--far", help="Change at the farthest point (0..1)."),
    white_is_near: bool = typer.Option(True, "--white-near/--white-far", help="Whether white means near (default) or far."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Stretch the depth image's range to 0..1 first."),
    depth_model: Optional[str] = typer.Option(None, "--depth-model", help="Estimate depth from the photo DEPTH with this Marigold depth model (folder or hub id, e.g. prs-eth/marigold-depth-v1-1)."),
    depth_steps: Optional[int] = typer.Option(None, "--depth-steps", help="Denoising steps of the depth model (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the depth model's noise."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, mps or cpu for the depth model (default: best available)."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
) -> None:
    """Map from depth: change varies linearly from --near (nearest) to --far (farthest)."""

    def body() -> None:
        from .. import maps

        d = _open(depth_image, "image" if depth_model else "depth image")
        _check_out(output)
        meta: dict[str, Any] = {"tool": "map depth", "depth_file": depth_image.name, "near": near, "far": far,
                                "white_is_near": white_is_near, "normalize": normalize}
        if depth_model:
            from ..depth import depth_map, load_depth_model

            maps.from_depth(d.convert("L"), near, far)  # check --near / --far before loading a model
            info(f"loading depth model {depth_model}")
            img = depth_map(load_depth_model(depth_model, device), d, near, far, normalize, depth_steps, seed)
            meta.update(depth_model=depth_model, depth_steps=depth_steps, seed=seed, white_is_near=False)
        else:
            img = maps.from_depth(d, near, far, white_is_near, normalize)
        _save_map(img, output, meta)

    run_command(body)


@map_app.command()
def preview(
    image: Path = typer.Argument(..., help="The image you will edit."),
    change_map: Path = typer.Argument(..., metavar="MAP", help="The change map."),
    steps: int = typer.Option(50, "--steps", "-s", help="Inference steps you will use."),
    strength: float = typer.Option(1.0, "--strength", help="Strength you will use (0..1)."),
    polarity: str = typer.Option("change", "--polarity", help="'change': white = change (default); 'keep': white = keep."),
    output: Path = typer.Option(..., "--output", "-o", help="Output PNG: heat-map overlay and legend."),
) -> None:
    """Show which quantised levels of the map the edit will actually use."""

    def body() -> None:
        from .. import maps

        img = _open(image, "image")
        m = _open(change_map, "change map")
        _check_out(output)
        out = maps.preview(img, m, steps, strength, polarity)  # type: ignore[arg-type]
        used = out.info.get("diffdiff_levels", {})
        _save_map(out, output, {"tool": "map preview", "image_file": image.name, "map_file": change_map.name,
                                "steps": steps, "strength": strength, "polarity": polarity,
                                "levels_used": len(used)})

    run_command(body)


def register(app: typer.Typer) -> None:
    app.add_typer(map_app, name="map")
