"""Region crop: denoise only the part of the image the change map touches.

Work in a diffusion model grows with the pixel count (and faster, through attention), so a small
edit on a large image should not pay for the whole frame. :func:`crop_edit` takes the bounding box
of ``map > 0``, widens it by some context padding, snaps it outwards to the model's pixel multiple
(whole latent cells, so the crop needs no resize), edits that crop with the ordinary
:meth:`Editor.edit` and pastes the result back. Pixels outside the box are copied from the input
untouched, so they are byte-identical.

``crop_resolution="native"`` (or a number of pixels) upscales a small crop to the model's native
size before editing and back afterwards: a 128 px region on a 4 K photo is then edited with the
detail the model was trained for (AUTOMATIC1111's "inpaint only masked").
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
from PIL import Image

from .changemap import paste_back as paste_back_pixels
from .changemap import prepare_change_map, resize_array
from .errors import DiffDiffError
from .io import image_sha256, open_image

if TYPE_CHECKING:
    from .editor import Editor

#: (left, top, right, bottom) in pixels, right/bottom exclusive (PIL's convention).
Box = tuple[int, int, int, int]
CropResolution = Union[None, str, int]

#: Used when a pipeline does not say what size it was trained at.
_FALLBACK_NATIVE = 512


def _span(lo: int, hi: int, padding: int, multiple: int, size: int) -> tuple[int, int]:
    """Pad ``[lo, hi)``, snap it outwards to ``multiple`` and keep it inside ``[0, size)``."""
    lo = max(0, lo - padding) // multiple * multiple
    hi = min(size, hi + padding)
    length = -(-(hi - lo) // multiple) * multiple  # whole latent cells
    if length >= size:
        return 0, size  # the whole side: the edit rounds it like any full-frame edit
    # At the far edge of an image whose side is not a multiple, slide the box inwards rather
    # than shrink it, so it still spans whole latent cells.
    lo = min(lo, size - length)
    return lo, lo + length


def crop_box(change: np.ndarray, padding: int = 32, multiple: int = 8) -> Optional[Box]:
    """Bounding box of ``change > 0`` plus ``padding``, on the ``multiple`` grid, inside the image.

    Returns ``None`` when nothing may change. Each side of the box is a multiple of ``multiple``
    unless it spans the whole image side.
    """
    if padding < 0:
        raise DiffDiffError(f"crop padding must be >= 0, got {padding}")
    if multiple < 1:
        raise DiffDiffError(f"pixel multiple must be >= 1, got {multiple}")
    rows = np.flatnonzero(np.any(change > 0, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(change > 0, axis=0))
    height, width = change.shape
    top, bottom = _span(int(rows[0]), int(rows[-1]) + 1, padding, multiple, height)
    left, right = _span(int(cols[0]), int(cols[-1]) + 1, padding, multiple, width)
    return left, top, right, bottom


def native_resolution(editor: Editor) -> int:
    """The side in pixels the model was trained at: denoiser sample size x VAE scale (SDXL: 1024)."""
    pipe = editor.pipe
    sample = getattr(pipe, "default_sample_size", None)
    if not isinstance(sample, int):
        for name in ("unet", "transformer"):
            model = getattr(pipe, name, None)
            cfg_sample = getattr(getattr(model, "config", None), "sample_size", None)
            if isinstance(cfg_sample, int):
                sample = cfg_sample
                break
            if isinstance(cfg_sample, (tuple, list)) and cfg_sample:
                sample = int(cfg_sample[0])
                break
    if not isinstance(sample, int) or sample < 1:
        return _FALLBACK_NATIVE
    return sample * editor.adapter.vae_scale()


def upscaled_size(editor: Editor, width: int, height: int, resolution: CropResolution) -> tuple[int, int]:
    """Size to edit a ``width`` x ``height`` crop at: its own, or upscaled to ``resolution``'s area."""
    if resolution is None:
        return width, height
    if resolution == "native":
        target = native_resolution(editor)
    elif isinstance(resolution, (int, np.integer)) and not isinstance(resolution, bool) and resolution > 0:
        target = int(resolution)
    else:
        raise DiffDiffError(f"crop_resolution must be None, 'native' or a positive number of pixels, got {resolution!r}")
    # Match the area (not the long side): models are trained on roughly constant pixel counts
    # across aspect ratios. Only ever upscale: a crop larger than native is edited as it is.
    scale = target / math.sqrt(width * height)
    if scale <= 1:
        return width, height
    return editor.work_size(round(width * scale), round(height * scale))


def crop_edit(
    editor: Editor,
    image: Union[Image.Image, str, os.PathLike[str]],
    change_map: Any,
    *,
    polarity: str = "change",
    padding: int = 32,
    resolution: CropResolution = None,
    paste_back: bool = True,
    output_type: str = "pil",
    metadata: Optional[dict[str, Any]] = None,
    **edit_kwargs: Any,
) -> list[Image.Image]:
    """:meth:`Editor.edit` on the changed region only; see the module docstring.

    ``edit_kwargs`` are passed on to :meth:`Editor.edit` (prompt, steps, seed, ...). The result has
    the input's full size; ``info["diffdiff"]["crop"]`` records the box and the size it ran at.
    """
    if output_type != "pil":
        raise DiffDiffError("crop=True returns images; use output_type='pil'")
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise DiffDiffError(f"crop_padding must be an integer >= 0, got {padding!r}")
    img = editor._load(image, "image")
    if isinstance(change_map, (str, os.PathLike)):
        change_map = open_image(change_map, "change map")
    source = img.convert("RGB")
    change = prepare_change_map(change_map, source.size, polarity)  # type: ignore[arg-type]
    box = crop_box(change, int(padding), editor.adapter.pixel_multiple())
    if box is None:
        # Nothing may change: the ordinary edit already returns the input untouched.
        return editor.edit(source, change, polarity="change", paste_back=paste_back,
                           metadata=metadata, crop=False, **edit_kwargs)
    left, top, right, bottom = box
    region = source.crop(box)
    region_change = change[top:bottom, left:right]
    run_w, run_h = upscaled_size(editor, right - left, bottom - top, resolution)
    if (run_w, run_h) != region.size:
        work_img = region.resize((run_w, run_h), Image.Resampling.LANCZOS)
        work_change = resize_array(region_change, run_w, run_h)
    else:
        work_img, work_change = region, region_change
    from .editor import _hash_map  # the editor's own map hash, so metadata matches a full edit

    # Metadata describes the user's inputs, not the crop we made of them.
    meta = {
        "image_sha256": image_sha256(img),
        "map_sha256": _hash_map(change_map),
        "polarity": polarity,
        "crop": {"box": list(box), "padding": int(padding), "resolution": resolution,
                 "run_size": [run_w, run_h]},
    }
    meta.update(metadata or {})
    edited = editor.edit(work_img, work_change, polarity="change", paste_back=paste_back,
                         metadata=meta, crop=False, **edit_kwargs)
    results = []
    for res in edited:
        info = res.info.get("diffdiff")
        if res.size != region.size:
            res = res.resize(region.size, Image.Resampling.LANCZOS)
            if paste_back:  # the round trip through the upscale blurs untouched pixels: restore them
                res = paste_back_pixels(res, region, region_change)
        full = source.copy()
        full.paste(res, (left, top))
        if info is not None:
            full.info["diffdiff"] = info
        results.append(full)
    return results
