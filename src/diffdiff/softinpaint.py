"""Soft-inpainting: regenerate a masked hole and let the surroundings adjust gradually.

A binary mask (white = hole) becomes a change map with :func:`diffdiff.maps.soft_map`: the hole
changes fully, the ring around it changes less with distance (Gaussian, sigma = ``softness``
pixels) and everything from ``3 * softness`` pixels out is exactly 0, so the edit's paste-back
keeps those pixels byte-identical.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .changemap import MapLike
from .errors import DiffDiffError
from .io import ImageLike, image_sha256, load_image, open_image
from .maps import read_mask, soft_map
from .request import EditRequest

if TYPE_CHECKING:
    from .protocol import EditorLike


def soft_inpaint_map(mask: MapLike | str | os.PathLike[str], softness: float, size: tuple[int, int]) -> np.ndarray:
    """The soft-inpainting change map for an image of ``size`` (width, height), as float32.

    The mask is resized to the image (nearest neighbour; aspect ratios must match) before the
    fall-off is computed, so ``softness`` is in image pixels.
    """
    if isinstance(mask, (str, os.PathLike)):
        mask = open_image(mask, "mask")
    hole = read_mask(mask, size)
    if not hole.any():
        raise DiffDiffError("the mask has no hole: paint the area to regenerate white (values >= 50%)")
    return np.asarray(soft_map(hole, softness), dtype=np.float32)


def soft_inpaint(
    editor: EditorLike,
    image: ImageLike,
    mask: MapLike | str | os.PathLike[str],
    softness: float,
    prompt: str,
    **edit_kwargs: Any,
) -> Any:
    """Regenerate the mask's hole from ``prompt``; the ring adjusts, far pixels stay exact.

    ``edit_kwargs`` are the :class:`~diffdiff.request.EditRequest` fields (steps, guidance, strength, seed, ...). Returns what
    :meth:`Editor.edit` returns: a list of PIL images (metadata records the softness).
    """
    polarity = edit_kwargs.pop("polarity", "change")
    if polarity != "change":
        # The mask has its own fixed convention; a polarity would silently invert the result.
        raise DiffDiffError("soft-inpainting masks are always white = hole; invert the mask instead of passing polarity")
    return soft_inpaint_with(editor, image, mask, softness, EditRequest(prompt=prompt, **edit_kwargs))


def soft_inpaint_with(editor: EditorLike, image: ImageLike, mask: MapLike | str | os.PathLike[str], softness: float,
                      request: EditRequest) -> Any:
    """:func:`soft_inpaint` for a request built once (the batch runner's and the CLI's route)."""
    if request.polarity != "change":
        raise DiffDiffError("soft-inpainting masks are always white = hole; invert the mask instead of passing polarity")
    img = load_image(image, "image")
    if isinstance(mask, (str, os.PathLike)):
        mask = open_image(mask, "mask")
    change = soft_inpaint_map(mask, softness, img.size)
    meta: dict[str, Any] = {"tool": "soft-inpaint", "softness": float(softness)}
    if isinstance(mask, Image.Image):
        meta["mask_sha256"] = image_sha256(mask)
    meta.update(request.metadata)
    return editor.edit_with(img, change, request.replace(metadata=meta))
