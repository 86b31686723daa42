"""The strength fan: one image, cut into vertical bands edited at increasing strengths.

Instead of one img2img run per strength, the fan is ONE Differential Diffusion edit at the
largest strength whose change map is the column bands: a band meant for strength ``s`` gets the
map value that makes its pixels follow the model for exactly the steps img2img at ``s`` would
run (``int(steps * s)``). So the cost is at most one edit at ``max_strength``, and a band at
strength 0 has map value exactly 0 and comes back byte-identical (paste-back). With
``skip_frozen`` (the default) each step runs the model only on the bands free by then plus some
context, so the fan costs about ``1/k`` of ``k`` separate edits.

:func:`fan_grid` adds a second axis (guidance or seed), one edit per row.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .changemap import MapLike, Polarity, prepare_change_map
from .errors import DiffDiffError
from .io import ImageLike, load_image, open_image
from .levels import executed_steps, level_value
from .request import EditRequest

if TYPE_CHECKING:
    from .protocol import EditorLike

ROW_AXES: tuple[str, ...] = ("guidance", "seed")
MAX_COLUMNS = 64


def column_strengths(columns: int, min_strength: float = 0.0, max_strength: float = 1.0) -> list[float]:
    """Evenly spaced strengths, left to right; exact ``min_strength`` and ``max_strength`` ends."""
    _check_columns(columns)
    for name, v in (("min strength", min_strength), ("max strength", max_strength)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise DiffDiffError(f"{name} must be between 0 and 1, got {v!r}")
    if min_strength > max_strength:
        raise DiffDiffError(f"min strength ({min_strength}) must not exceed max strength ({max_strength})")
    if columns == 1:
        return [float(max_strength)]
    out = [min_strength + (max_strength - min_strength) * i / (columns - 1) for i in range(columns)]
    out[0], out[-1] = float(min_strength), float(max_strength)
    return out


def _check_columns(columns: Any) -> None:
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or not 1 <= columns <= MAX_COLUMNS:
        raise DiffDiffError(f"columns must be an integer from 1 to {MAX_COLUMNS}, got {columns!r}")


def band_edges(width: int, columns: int) -> list[int]:
    """Pixel x positions of the ``columns + 1`` band edges (bands differ by at most one pixel)."""
    _check_columns(columns)
    if width < columns:
        raise DiffDiffError(f"the image is {width} px wide: too narrow for {columns} columns")
    return [(i * width + columns // 2) // columns for i in range(columns + 1)]


def fan_map(
    size: tuple[int, int],
    strengths: Sequence[float],
    num_inference_steps: int,
    max_strength: float,
    planned_steps: Any = None,
    change_map: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The band map (float32, H x W) for one edit at ``max_strength``.

    ``planned_steps(n, s)`` is the model's executed-step rule (default: diffusers' ``int(n * s)``).
    A band at strength ``s`` gets the map value for which :func:`diffdiff.core.quantised_levels`
    says a pixel follows the model for ``k`` = planned steps at ``s`` (out of ``P`` at
    ``max_strength``): the middle of that value interval, so float round-off in resizing cannot
    push it to a neighbouring level. ``k = 0`` gives exactly 0.
    """
    rule = planned_steps or executed_steps
    w, h = size
    total = rule(num_inference_steps, max_strength)
    edges = band_edges(w, len(strengths))
    row = np.zeros(w, dtype=np.float64)
    for i, s in enumerate(strengths):
        k = rule(num_inference_steps, s)
        row[edges[i]:edges[i + 1]] = level_value(k, total)
    arr = np.broadcast_to(row[None, :], (h, w))
    if change_map is not None:
        arr = arr * change_map
    return np.ascontiguousarray(arr, dtype=np.float32)


def fan(
    editor: EditorLike,
    image: ImageLike,
    prompt: str,
    columns: int = 5,
    min_strength: float = 0.0,
    max_strength: float = 1.0,
    change_map: MapLike | str | os.PathLike[str] | None = None,
    labels: bool = False,
    **edit_kwargs: Any,
) -> Any:
    """One image of the input's size in ``columns`` bands at strengths ``min..max`` (one edit).

    ``change_map`` (optional) restricts the fan to part of the image: band value x map.
    ``labels=True`` appends a caption band with each column's strength (the image gets taller).
    ``edit_kwargs`` go to :meth:`Editor.edit`; ``output_type="latent"`` returns the latents.
    ``skip_frozen`` is on by default: a step runs the model only on the columns free by then (plus
    context), so the fan costs about one edit's worth of pixel-steps spread over its columns
    (:mod:`diffdiff.skip`); ``skip_frozen=False`` runs every step on the whole frame.
    """
    edit_kwargs.setdefault("skip_frozen", True)
    if edit_kwargs.get("num_images", 1) != 1:
        raise DiffDiffError("a fan is one image; sweep seeds with fan_grid(rows='seed') for variations")
    if "strength" in edit_kwargs:
        raise DiffDiffError("a fan sets strength per column: use min_strength / max_strength")
    polarity: Polarity = edit_kwargs.pop("polarity", "change")
    steps = edit_kwargs.pop("num_inference_steps", 50)
    extra_meta = edit_kwargs.pop("metadata", None) or {}
    # The bands are a change-polarity map; the user's polarity only reads the optional region map.
    EditRequest(prompt=prompt, num_inference_steps=steps, strength=max_strength, polarity=polarity)
    request = EditRequest(prompt=prompt, num_inference_steps=steps, strength=max_strength, **edit_kwargs)
    strengths = column_strengths(columns, min_strength, max_strength)
    img = load_image(image, "image")
    cmap = None
    if change_map is not None:
        if isinstance(change_map, (str, os.PathLike)):
            change_map = open_image(change_map, "change map")
        cmap = prepare_change_map(change_map, img.size, polarity)
    bands = fan_map(img.size, strengths, steps, max_strength, editor.planned_steps, cmap)
    meta = {
        "tool": "fan",
        "columns": int(columns),
        "column_strengths": [round(s, 6) for s in strengths],
        "column_steps": [editor.planned_steps(steps, s) for s in strengths],
        "band_edges": band_edges(img.size[0], columns),
        "fan_change_map": change_map is not None,
    }
    meta.update(extra_meta)
    out = editor.edit_with(img, bands, request.with_metadata(meta))
    if request.output_type == "latent":
        return out
    result = out[0]
    if labels:
        result = add_column_labels(result, strengths)
    return result


def fan_grid(
    editor: EditorLike,
    image: ImageLike,
    prompt: str,
    rows: str,
    row_values: Sequence[float],
    columns: int = 5,
    min_strength: float = 0.0,
    max_strength: float = 1.0,
    change_map: MapLike | str | os.PathLike[str] | None = None,
    labels: bool = True,
    **edit_kwargs: Any,
) -> Image.Image:
    """Fans stacked as rows sweeping ``rows`` = ``"guidance"`` or ``"seed"`` (one edit per row).

    Row labels go in a left margin; with ``labels`` the column strengths go under the grid.
    """
    values = check_row_values(rows, row_values)
    key = "guidance_scale" if rows == "guidance" else "seed"
    if key in edit_kwargs and edit_kwargs[key] is not None:
        raise DiffDiffError(f"rows sweep {rows}: do not also pass a single {rows}")
    edit_kwargs.pop(key, None)
    if edit_kwargs.get("output_type", "pil") != "pil":
        raise DiffDiffError("a fan grid is an image: output_type must be 'pil'")
    strengths = column_strengths(columns, min_strength, max_strength)
    fans = [
        fan(editor, image, prompt, columns, min_strength, max_strength, change_map, labels=False,
            **dict(edit_kwargs, **{key: v}))
        for v in values
    ]
    texts = [f"{'guidance' if rows == 'guidance' else 'seed'} {_fmt(v)}" for v in values]
    grid = stack_rows(fans, texts)
    if labels:
        grid = add_column_labels(grid, strengths, left=grid.width - fans[0].width)
    meta = dict(fans[0].info.get("diffdiff", {}))
    meta.update({"grid_rows": rows, "grid_row_values": [float(v) if rows == "guidance" else int(v) for v in values],
                 "grid_seeds": [f.info["diffdiff"].get("seed") for f in fans]})
    meta.pop(rows, None)  # the per-row value is in grid_row_values
    grid.info["diffdiff"] = meta
    return grid


def check_row_values(rows: str, row_values: Sequence[float]) -> list[Any]:
    """Validate a row sweep; seeds must be non-negative integers, guidance numbers >= 0."""
    if rows not in ROW_AXES:
        raise DiffDiffError(f"rows must be one of {', '.join(ROW_AXES)}; got {rows!r}")
    vals = list(row_values)
    if not vals:
        raise DiffDiffError("rows need at least one value (e.g. --row-values 3,7.5,12)")
    if len(vals) > MAX_COLUMNS:
        raise DiffDiffError(f"at most {MAX_COLUMNS} rows, got {len(vals)}")
    out: list[Any] = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) or v < 0:
            raise DiffDiffError(f"{rows} values must be numbers >= 0, got {v!r}")
        if rows == "seed":
            if float(v) != int(v):
                raise DiffDiffError(f"seeds must be whole numbers, got {v!r}")
            out.append(int(v))
        else:
            out.append(float(v))
    return out


def parse_row_values(text: str) -> list[float]:
    """``"3,7.5,12"`` -> [3.0, 7.5, 12.0], or a one-line error."""
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise DiffDiffError(f"row values must be comma-separated numbers (e.g. 3,7.5,12), got {text!r}") from None
    return vals


# drawing ------------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType
        return ImageFont.load_default()


def _text_w(draw: ImageDraw.ImageDraw, text: str, font: Any) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return int(box[2] - box[0])


def add_column_labels(img: Image.Image, strengths: Sequence[float], left: int = 0) -> Image.Image:
    """``img`` with a caption band underneath naming each column's strength.

    The columns are ``len(strengths)`` equal bands of ``img`` from x = ``left`` on. Labels that do
    not fit their band side by side are staggered on two lines.
    """
    width = img.width - left
    edges = [left + e for e in band_edges(width, len(strengths))]
    texts = [_fmt(s) for s in strengths]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = 14
    font = _font(size)
    band_w = min(b - a for a, b in zip(edges, edges[1:]))
    while size > 8 and max(_text_w(probe, t, font) for t in texts) > band_w - 2:
        size -= 1
        font = _font(size)
    stagger = max(_text_w(probe, t, font) for t in texts) > band_w - 2 and len(texts) > 1
    line_h = size + 4
    band_h = line_h * (2 if stagger else 1) + 6
    out = Image.new("RGB", (img.width, img.height + band_h), (255, 255, 255))
    out.paste(img.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    for i, t in enumerate(texts):
        cx = (edges[i] + edges[i + 1]) / 2
        tw = _text_w(draw, t, font)
        x = int(round(min(max(cx - tw / 2, 0), out.width - tw)))
        y = img.height + 3 + (line_h if stagger and i % 2 else 0)
        draw.text((x, y), t, fill=(0, 0, 0), font=font)
        # Tick marks at the band edges tie labels to columns.
        draw.line([(edges[i], img.height), (edges[i], img.height + 2)], fill=(120, 120, 120))
    out.info.update(img.info)
    return out


def stack_rows(rows: Sequence[Image.Image], texts: Sequence[str], gap: int = 2) -> Image.Image:
    """Stack equal-size images vertically with a left margin holding each row's label."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = _font(12)
    margin = max(_text_w(probe, t, font) for t in texts) + 8
    w, h = rows[0].size
    out = Image.new("RGB", (margin + w, len(rows) * h + (len(rows) - 1) * gap), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, (im, t) in enumerate(zip(rows, texts)):
        y = i * (h + gap)
        out.paste(im.convert("RGB"), (margin, y))
        draw.text((4, y + max(0, h // 2 - 7)), t, fill=(0, 0, 0), font=font)
    return out
