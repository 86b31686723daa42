"""Region crop: denoise only the part of the image the change map touches.

Work in a diffusion model grows with the pixel count (and faster, through attention), so a small
edit on a large image should not pay for the whole frame. :func:`plan` takes the bounding box
of ``map > 0``, widens it by some context padding and snaps it outwards to the model's pixel
multiple (whole latent cells, so the crop needs no resize); the editor edits that crop in its
ordinary flow (the map is read once) and :meth:`CropPlan.paste` puts the result back. Pixels
outside the box are copied from the input untouched, so they are byte-identical.

``crop_resolution="native"`` (or a number of pixels) upscales a small crop to the model's native
size before editing and back afterwards: a 128 px region on a 4 K photo is then edited with the
detail the model was trained for (AUTOMATIC1111's "inpaint only masked").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from PIL import Image

from .changemap import paste_back as paste_back_pixels
from .changemap import resize_array
from .errors import DiffDiffError
from .request import CropResolution

if TYPE_CHECKING:
    from .protocol import EditorLike

#: (left, top, right, bottom) in pixels, right/bottom exclusive (PIL's convention).
Box = tuple[int, int, int, int]

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


def native_resolution(editor: EditorLike) -> int:
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
    return sample * editor.vae_scale()


def upscaled_size(editor: EditorLike, width: int, height: int, resolution: CropResolution) -> tuple[int, int]:
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


@dataclass(frozen=True)
class CropPlan:
    """The box to edit (left, top, right, bottom) and the size the model runs it at."""

    box: Box
    run_size: tuple[int, int]

    def describe(self, padding: int, resolution: CropResolution) -> dict[str, Any]:
        """The crop's entry in the output's metadata."""
        return {"box": list(self.box), "padding": int(padding), "resolution": resolution,
                "run_size": list(self.run_size)}

    def inputs(self, source: Image.Image, change: np.ndarray) -> tuple[Image.Image, np.ndarray]:
        """The region's image and change map at the run size."""
        left, top, right, bottom = self.box
        region = source.crop(self.box)
        region_change = change[top:bottom, left:right]
        if self.run_size != region.size:
            return region.resize(self.run_size, Image.Resampling.LANCZOS), resize_array(region_change, *self.run_size)
        return region, region_change

    def paste(self, edited: list[Image.Image], source: Image.Image, change: np.ndarray,
              paste_back: bool) -> list[Image.Image]:
        """Each edited region pasted into a copy of the full ``source`` (outside the box: exact)."""
        left, top, right, bottom = self.box
        region = source.crop(self.box)
        region_change = change[top:bottom, left:right]
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


def plan(change: np.ndarray, padding: int, multiple: int,
         run_size: Callable[[int, int], tuple[int, int]]) -> Optional[CropPlan]:
    """The crop for ``change`` (None when nothing may change); ``run_size(w, h)`` sizes the run."""
    box = crop_box(change, int(padding), multiple)
    if box is None:
        return None
    left, top, right, bottom = box
    return CropPlan(box, run_size(right - left, bottom - top))
