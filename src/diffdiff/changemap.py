"""Reading change maps: any image mode or array in, a float change tensor in [0, 1] out.

Polarity is explicit. ``"change"`` (our default, ComfyUI's convention): white = change fully,
black = keep. ``"keep"`` (the authors' convention in exx8/differential-diffusion): white = keep.
Inversion for ``"keep"`` happens on the integer pixel values before any resizing, so a map read
with ``polarity="keep"`` is bit-for-bit the same as its inverted image read with ``"change"``.
"""

from __future__ import annotations

from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import DiffDiffError

Polarity = Literal["change", "keep"]
MapLike = Union[Image.Image, np.ndarray, torch.Tensor]

POLARITIES: tuple[str, ...] = ("change", "keep")

# Aspect ratios closer than this are treated as equal (rounding of odd sizes).
_ASPECT_TOLERANCE = 0.02


def _pil_to_array(img: Image.Image) -> tuple[np.ndarray, float]:
    """Greyscale values of ``img`` as a float64 array and the mode's maximum value."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "I":
            # 16-bit PNGs open as mode "I" in recent Pillow; anything above 16 bits is clipped.
            arr = np.clip(arr, 0, 65535)
            maxval = 65535.0 if arr.max(initial=0) > 255 else 255.0
        else:
            maxval = 65535.0
        return arr, maxval
    if mode == "F":
        return np.clip(np.asarray(img, dtype=np.float64), 0, 1), 1.0
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Transparent pixels carry no intent: treat them as black (no change) in their colour's place.
        rgba = img.convert("RGBA")
        grey = np.asarray(rgba.convert("L"), dtype=np.float64)
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0
        return grey * alpha, 255.0
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.float64), 255.0
    return np.asarray(img.convert("L"), dtype=np.float64), 255.0


def map_to_array(change_map: MapLike, polarity: Polarity = "change") -> np.ndarray:
    """Normalise a map to a float32 (H, W) array of *change* values in [0, 1]."""
    if polarity not in POLARITIES:
        raise DiffDiffError(f"polarity must be 'change' or 'keep', got {polarity!r}")
    if isinstance(change_map, Image.Image):
        arr, maxval = _pil_to_array(change_map)
        if polarity == "keep":
            arr = maxval - arr
        out = arr / maxval
    else:
        if isinstance(change_map, torch.Tensor):
            arr = change_map.detach().to("cpu", torch.float64).numpy()
        elif isinstance(change_map, np.ndarray):
            if change_map.dtype == np.uint8:
                arr = change_map.astype(np.float64) / 255.0
            elif change_map.dtype == np.uint16:
                arr = change_map.astype(np.float64) / 65535.0
            elif change_map.dtype == bool:
                arr = change_map.astype(np.float64)
            else:
                arr = change_map.astype(np.float64)
        else:
            raise DiffDiffError(f"change map must be a PIL image, numpy array or tensor, got {type(change_map).__name__}")
        # Drop batch/channel axes of size 1 ((1, 1, H, W), (1, H, W), (H, W, 1)), never H or W
        # themselves: a 1-pixel-tall (1, W) map is a map (np.squeeze made it 1-D).
        while arr.ndim > 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim > 2 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = arr[..., :3].mean(-1)
        if arr.ndim != 2:
            raise DiffDiffError(f"change map must be 2-D (H, W), got shape {tuple(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise DiffDiffError("change map contains NaN or infinite values")
        if arr.min(initial=0) < -1e-6 or arr.max(initial=0) > 1 + 1e-6:
            raise DiffDiffError(
                f"change map values must lie in [0, 1] (got {arr.min():.3g}..{arr.max():.3g}); "
                "pass uint8 arrays or PIL images for 0..255 data"
            )
        arr = np.clip(arr, 0.0, 1.0)
        out = 1.0 - arr if polarity == "keep" else arr
    if out.shape[0] < 1 or out.shape[1] < 1:
        raise DiffDiffError("change map is empty")
    return out.astype(np.float32)


def check_aspect(map_size: tuple[int, int], image_size: tuple[int, int]) -> None:
    """Raise if the map's aspect ratio differs from the image's. Sizes are (width, height)."""
    mw, mh = map_size
    iw, ih = image_size
    if abs(mw / mh - iw / ih) > _ASPECT_TOLERANCE * (iw / ih):
        raise DiffDiffError(
            f"change map is {mw}x{mh} but the image is {iw}x{ih}: aspect ratios differ "
            f"({mw / mh:.3f} vs {iw / ih:.3f}); crop or pad the map to the image's shape"
        )


def resize_array(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear (antialiased) resize of a float map; exact zeros stay where the map is all zero."""
    if arr.shape == (height, width):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    out = F.interpolate(t, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].clamp_(0, 1).numpy()


def prepare_change_map(
    change_map: MapLike, image_size: tuple[int, int], polarity: Polarity = "change"
) -> np.ndarray:
    """Read a map, check its aspect ratio against the image, and resize it to the image."""
    arr = map_to_array(change_map, polarity)
    h, w = arr.shape
    check_aspect((w, h), image_size)
    return resize_array(arr, image_size[0], image_size[1])


def to_latent_map(change: np.ndarray, latent_height: int, latent_width: int) -> torch.Tensor:
    """Downsample an image-size change map to the denoiser's grid as a (1, 1, h, w) tensor."""
    t = torch.from_numpy(np.ascontiguousarray(change))[None, None]
    if t.shape[-2:] == (latent_height, latent_width):
        return t.clamp(0, 1)
    if t.shape[-2] >= latent_height and t.shape[-1] >= latent_width:
        # Each latent pixel takes the mean of the image pixels it covers (box filter): a block of
        # constant map value stays exactly that value on the grid.
        t = F.adaptive_avg_pool2d(t, (latent_height, latent_width))
    else:
        t = F.interpolate(t, size=(latent_height, latent_width), mode="bilinear", align_corners=False)
    return t.clamp(0, 1)


def paste_back(result: Image.Image, original: Image.Image, change: np.ndarray) -> Image.Image:
    """Copy ``original`` into ``result`` wherever the change map is exactly zero.

    The VAE round trip shifts colours even where nothing should change; this restores them.
    """
    keep = change <= 0.0
    if not keep.any():
        return result
    # PIL's masked paste copies the 255-mask pixels exactly, in C, with no round trip through numpy.
    out = result.copy() if result.mode == "RGB" else result.convert("RGB")
    orig = original if original.mode == "RGB" else original.convert("RGB")
    if orig.size != out.size or keep.shape != (out.size[1], out.size[0]):
        raise ValueError(f"paste_back: sizes differ (result {out.size}, original {orig.size}, map {keep.shape})")
    out.paste(orig, (0, 0), Image.fromarray(keep.view(np.uint8) * np.uint8(255), "L"))
    return out
