"""Making change maps: gradients, soft-inpainting maps, levels, blur, combine, depth, preview.

Every function works on maps given as PIL images (any mode), numpy arrays or tensors, read with
:func:`diffdiff.changemap.map_to_array` (0 = keep, 1 = change fully). The result follows the
input: a PIL image in gives a greyscale PIL image (mode ``"L"``) out, an array or tensor in gives a
float32 (H, W) array in [0, 1] out. Generators (:func:`gradient`) return PIL unless
``as_array=True``. Nothing here loads a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .changemap import MapLike, Polarity, check_aspect, map_to_array, prepare_change_map
from .core import quantised_levels
from .errors import DiffDiffError
from .levels import executed_steps

MapOut = Union[Image.Image, np.ndarray]

DIRECTIONS: tuple[str, ...] = ("left-right", "right-left", "top-bottom", "bottom-top", "radial")
COMBINE_MODES: tuple[str, ...] = ("max", "min", "multiply")

#: The soft map's Gaussian fall-off is cut to exactly 0 this many sigmas from the hole.
SOFT_CUTOFF_SIGMAS = 3.0
#: Gaussian blur kernels are truncated at this many sigmas (so far-away zeros stay exactly 0).
BLUR_TRUNCATE_SIGMAS = 3.0

# Tolerance for float32 round-off when comparing map values with user thresholds.
_EPS = 1e-6

# Largest map we generate from a --size argument (a typo such as 10000x10000 should fail fast).
MAX_SIDE = 16384


# conversions --------------------------------------------------------------------------------------
def to_image(arr: np.ndarray) -> Image.Image:
    """A float change array in [0, 1] as an 8-bit greyscale image (white = change)."""
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim != 2:
        raise DiffDiffError(f"a map must be 2-D, got shape {a.shape}")
    return Image.fromarray(np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8), "L")


def _read(m: MapLike, polarity: Polarity = "change") -> np.ndarray:
    return map_to_array(m, polarity).astype(np.float64)


def _like(template: object, arr: np.ndarray) -> MapOut:
    """Return ``arr`` in the kind of ``template``: PIL in, PIL out; otherwise a float32 array."""
    if isinstance(template, Image.Image):
        return to_image(arr)
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def parse_size(text: str) -> tuple[int, int]:
    """``"512x768"`` -> (512, 768), or a one-line error."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        w, h = int(parts[0]), int(parts[1])
    except ValueError:
        raise DiffDiffError(f"size must look like WIDTHxHEIGHT (e.g. 512x512), got {text!r}") from None
    check_size((w, h))
    return w, h


def check_size(size: tuple[int, int]) -> None:
    w, h = size
    if w < 1 or h < 1 or w > MAX_SIDE or h > MAX_SIDE:
        raise DiffDiffError(f"size must be between 1x1 and {MAX_SIDE}x{MAX_SIDE}, got {w}x{h}")


def _check_unit(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise DiffDiffError(f"{name} must be between 0 and 1, got {value!r}")


def _check_nonneg(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DiffDiffError(f"{name} must be a number >= 0, got {value!r}")


# generators ---------------------------------------------------------------------------------------
def gradient(
    size: tuple[int, int],
    direction: str = "left-right",
    start: float = 0.0,
    end: float = 1.0,
    as_array: bool = False,
) -> MapOut:
    """A linear or radial ramp of ``size`` = (width, height) from ``start`` to ``end``.

    Linear: the first pixel column (row) is exactly ``start``, the last exactly ``end``.
    Radial: ``start`` at the centre, ``end`` at the corners.
    """
    check_size(size)
    if direction not in DIRECTIONS:
        raise DiffDiffError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
    _check_unit("start", start)
    _check_unit("end", end)
    w, h = size

    def ramp(n: int) -> np.ndarray:
        # Pixel-centre positions mapped so the two end pixels are exactly 0 and 1.
        return np.arange(n, dtype=np.float64) / (n - 1) if n > 1 else np.zeros(1)

    if direction in ("left-right", "right-left"):
        t = np.broadcast_to(ramp(w)[None, :], (h, w))
        if direction == "right-left":
            t = t[:, ::-1]
    elif direction in ("top-bottom", "bottom-top"):
        t = np.broadcast_to(ramp(h)[:, None], (h, w))
        if direction == "bottom-top":
            t = t[::-1, :]
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        d = np.hypot(yy - cy, xx - cx)
        dmax = math.hypot(cy, cx)
        t = d / dmax if dmax > 0 else np.zeros((h, w))
    arr = start + (end - start) * t
    # Exact endpoints despite floating point (e.g. 0.3 + (0.9 - 0.3) * 1.0 != 0.9).
    arr = np.where(t == 0, start, np.where(t == 1, end, arr))
    arr = np.ascontiguousarray(arr)
    return arr.astype(np.float32) if as_array else to_image(arr)


# distances and the soft-inpainting map ------------------------------------------------------------
def distance_to_mask(mask: np.ndarray, max_distance: float) -> np.ndarray:
    """Euclidean distance (pixels) from each pixel to the nearest True pixel of ``mask``.

    Exact up to ``max_distance``; farther pixels get ``inf``. Two separable passes (column
    distances by cumulative scans, then a windowed minimum along rows), so the cost is
    O(H * W * max_distance) with no scipy.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    if not mask.any():
        return np.full((h, w), np.inf)
    rows = np.arange(h, dtype=np.float64)[:, None]
    # Vertical distance to the nearest hole pixel in the same column.
    above = np.where(mask, rows, -np.inf)
    above = np.maximum.accumulate(above, axis=0)
    below = np.where(mask, rows, np.inf)
    below = np.minimum.accumulate(below[::-1], axis=0)[::-1]
    vert = np.minimum(rows - above, below - rows)  # inf where the column has no hole
    g2 = vert**2
    r = int(math.ceil(max_distance))
    best = g2.copy()
    for dx in range(1, min(r, w - 1) + 1):
        dx2 = float(dx * dx)
        # Neighbours dx to the left and right contribute dx^2 + their vertical distance^2.
        np.minimum(best[:, dx:], g2[:, :-dx] + dx2, out=best[:, dx:])
        np.minimum(best[:, :-dx], g2[:, dx:] + dx2, out=best[:, :-dx])
    dist = np.sqrt(best)
    dist[dist > max_distance] = np.inf
    return dist


def soft_falloff(distance: np.ndarray, softness: float) -> np.ndarray:
    """Change as a function of distance from the hole: 1 at 0, Gaussian, exactly 0 from 3 sigma.

    The Gaussian exp(-d^2 / 2 sigma^2) is shifted and rescaled so it reaches 0 continuously at
    ``SOFT_CUTOFF_SIGMAS * sigma``: smooth, strictly decreasing inside, exactly 0 outside.
    """
    if softness <= 0:
        return (distance <= 0).astype(np.float64)
    cutoff = SOFT_CUTOFF_SIGMAS * softness
    floor = math.exp(-(SOFT_CUTOFF_SIGMAS**2) / 2.0)
    with np.errstate(over="ignore", invalid="ignore"):
        g = np.exp(-np.square(distance) / (2.0 * softness**2))
    out = (g - floor) / (1.0 - floor)
    out[~(distance < cutoff)] = 0.0
    return np.clip(out, 0.0, 1.0)


def read_mask(mask: MapLike, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """A binary hole mask (white / True / >= 0.5 = hole) as a bool array, optionally resized.

    Resizing uses nearest neighbour so the hole keeps hard edges; aspect ratios must match.
    """
    arr = map_to_array(mask, "change")
    if size is not None and arr.shape != (size[1], size[0]):
        check_aspect((arr.shape[1], arr.shape[0]), size)
        img = Image.fromarray((arr >= 0.5).astype(np.uint8) * 255, "L").resize(size, Image.Resampling.NEAREST)
        return np.asarray(img) >= 128
    return arr >= 0.5


def soft_map(mask: MapLike, softness: float, size: Optional[tuple[int, int]] = None) -> MapOut:
    """Soft-inpainting map from a binary mask: hole = 1, Gaussian fall-off outside, 0 far away.

    ``softness`` is the Gaussian sigma in pixels (of ``size`` if given, else of the mask); the
    change is exactly 0 from ``3 * softness`` pixels outside the hole. ``softness=0`` gives the
    hard mask.
    """
    _check_nonneg("softness", softness)
    hole = read_mask(mask, size)
    if softness == 0:
        arr = hole.astype(np.float64)
    else:
        dist = distance_to_mask(hole, SOFT_CUTOFF_SIGMAS * softness)
        arr = soft_falloff(dist, float(softness))
        arr[hole] = 1.0
    return _like(mask, arr)


# adjustments --------------------------------------------------------------------------------------
def invert(change_map: MapLike) -> MapOut:
    """1 - map: swap what is kept and what is changed."""
    if isinstance(change_map, Image.Image):
        # Invert the integer values so an 8-bit map inverts exactly.
        return to_image(map_to_array(change_map, "keep"))
    return _like(change_map, 1.0 - _read(change_map))


def levels(change_map: MapLike, black: float = 0.0, white: float = 1.0, gamma: float = 1.0) -> MapOut:
    """Image-editor levels: values <= ``black`` -> 0, >= ``white`` -> 1, midtones ** (1 / gamma).

    ``gamma`` > 1 lifts the midtones (more change), < 1 lowers them. Values below ``black``
    become exactly 0, so levels is also how to make "keep" regions exact.
    """
    _check_unit("black", black)
    _check_unit("white", white)
    if not white > black:
        raise DiffDiffError(f"white point ({white}) must be greater than black point ({black})")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise DiffDiffError(f"gamma must be a number > 0, got {gamma!r}")
    x = _read(change_map)
    t = np.clip((x - black) / (white - black), 0.0, 1.0) ** (1.0 / gamma)
    # float32 inputs carry ~1e-8 error (0.2 -> 0.2000000030): still "at" the black/white point.
    t[x <= black + _EPS] = 0.0
    t[x >= white - _EPS] = 1.0
    return _like(change_map, t)


def gaussian_blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of any 2-D float array (``sigma`` in cells; edges reflected; kernel cut at 3 sigma).

    No range check and no clipping: also for raw values such as the automatic map's differences.
    """
    arr = np.asarray(arr, dtype=np.float64)
    if sigma <= 0:
        return arr.copy()
    h, w = arr.shape
    if sigma > 10 * max(h, w):
        # A Gaussian this much wider than the map averages it; a kernel that size would not fit in memory.
        return np.full_like(arr, float(arr.mean()))
    radius = max(1, int(math.ceil(BLUR_TRUNCATE_SIGMAS * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2.0 * sigma**2))
    k /= k.sum()
    kt = torch.from_numpy(k)
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    # Reflect padding needs pad < size; replicate is the safe fallback for tiny maps.
    mode = "reflect" if radius < min(h, w) else "replicate"
    t = F.pad(t, (radius, radius, 0, 0), mode=mode)
    t = F.conv2d(t, kt.view(1, 1, 1, -1))
    t = F.pad(t, (0, 0, radius, radius), mode=mode)
    t = F.conv2d(t, kt.view(1, 1, -1, 1))
    return t[0, 0].numpy()


def blur(change_map: MapLike, sigma: float) -> MapOut:
    """Gaussian blur with ``sigma`` in pixels (edges reflected; kernel cut at 3 sigma)."""
    _check_nonneg("sigma", sigma)
    arr = _read(change_map)
    if sigma == 0:
        return _like(change_map, arr)
    out = gaussian_blur(arr, sigma)
    out[np.abs(out) < 1e-12] = 0.0  # round-off below any visible level stays "keep"
    return _like(change_map, out)


def combine(maps: Sequence[MapLike], mode: str = "max") -> MapOut:
    """Combine several maps pixel-wise: ``max`` (union), ``min`` (intersection) or ``multiply``.

    Maps are resized to the first one's size; their aspect ratios must match.
    """
    if mode not in COMBINE_MODES:
        raise DiffDiffError(f"combine mode must be one of {', '.join(COMBINE_MODES)}; got {mode!r}")
    if len(maps) < 1:
        raise DiffDiffError("combine needs at least one map")
    first = _read(maps[0])
    h, w = first.shape
    out = first
    for m in maps[1:]:
        arr = prepare_change_map(m, (w, h)).astype(np.float64)
        if mode == "max":
            out = np.maximum(out, arr)
        elif mode == "min":
            out = np.minimum(out, arr)
        else:
            out = out * arr
    return _like(maps[0], out)


def from_depth(
    depth: MapLike,
    near: float = 0.0,
    far: float = 1.0,
    white_is_near: bool = True,
    normalize: bool = True,
) -> MapOut:
    """A change map from a depth image: change ``near`` at the nearest point, ``far`` at the farthest.

    Change varies linearly with depth in between, so ``near=0, far=1`` keeps the subject and
    replaces the background gradually, ``near=1, far=0`` the reverse. Depth estimators (MiDaS,
    Depth Anything, ZoeDepth previews) draw near as white: ``white_is_near=True``. With
    ``normalize`` the depth image's own range is stretched to 0..1 first.
    """
    _check_unit("near", near)
    _check_unit("far", far)
    d = _read(depth)  # 0..1 grey value
    if normalize:
        lo, hi = float(d.min()), float(d.max())
        d = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
    nearness = d if white_is_near else 1.0 - d
    # nearness 1 -> near, nearness 0 -> far; exact at both ends.
    out = far + (near - far) * nearness
    out = np.where(nearness == 1, near, np.where(nearness == 0, far, out))
    return _like(depth, out)


# preview ------------------------------------------------------------------------------------------
# Piecewise-linear heat colours from few steps (dark blue) to all steps (red).
_HEAT = np.array([
    [0.0, 40, 40, 200],
    [0.35, 0, 190, 230],
    [0.65, 250, 220, 0],
    [1.0, 230, 30, 30],
])


def heat_colours(t: np.ndarray) -> np.ndarray:
    """RGB uint8 colours for values in [0, 1] (… x 3)."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0, 1)
    out = np.stack([np.interp(t, _HEAT[:, 0], _HEAT[:, c]) for c in (1, 2, 3)], axis=-1)
    return np.round(out).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def levels_for(change_map: MapLike, image_size: tuple[int, int], steps: int, strength: float = 1.0,
               polarity: Polarity = "change", planned_steps: Optional[Callable[[int, float], int]] = None,
               ) -> tuple[np.ndarray, int]:
    """Per-pixel number of denoising steps the edit will run, and the executed step count.

    ``planned_steps(steps, strength)`` is the model's executed-steps rule (an editor's
    ``planned_steps``; default :func:`diffdiff.levels.executed_steps`, diffusers' img2img rule), and
    :func:`diffdiff.core.quantised_levels` for each pixel. (The model applies the map on its
    latent grid, 8x coarser for SD-family models; this preview is at image resolution.)
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise DiffDiffError(f"steps must be a positive integer, got {steps!r}")
    _check_unit("strength", strength)
    change = prepare_change_map(change_map, image_size, polarity)
    total = (planned_steps or executed_steps)(steps, strength)
    if total == 0:
        return np.zeros(change.shape, dtype=np.int64), 0
    lv = quantised_levels(torch.from_numpy(change), total).numpy().astype(np.int64)
    return lv, total


def preview(
    image: Image.Image,
    change_map: MapLike,
    steps: int,
    strength: float = 1.0,
    polarity: Polarity = "change",
    alpha: float = 0.55,
    min_width: int = 384,
    planned_steps: Optional[Callable[[int, float], int]] = None,
) -> Image.Image:
    """The image with the map's quantised levels as a heat-map overlay, and a legend strip.

    Each colour is one of the ``int(steps * strength) + 1`` behaviours the edit can give a pixel
    (how many of the executed steps it follows the model; ``planned_steps`` is the model's rule, as
    in :func:`levels_for`); uncoloured pixels are kept exactly.
    The legend shows every level that occurs, its step count and its share of the image.
    """
    _check_unit("alpha", alpha)
    img = image.convert("RGB")
    lv, total = levels_for(change_map, img.size, steps, strength, polarity, planned_steps)
    base = np.asarray(img, dtype=np.float64)
    frac = lv / total if total else np.zeros(lv.shape)
    colours = heat_colours(frac).astype(np.float64)
    moving = (lv > 0)[..., None]
    over = np.where(moving, base * (1 - alpha) + colours * alpha, base)
    panel = Image.fromarray(np.round(over).astype(np.uint8), "RGB")
    # Small images are scaled up (nearest: the level boundaries stay crisp) so the legend is legible.
    scale = max(1, math.ceil(min_width / panel.width))
    if scale > 1:
        panel = panel.resize((panel.width * scale, panel.height * scale), Image.Resampling.NEAREST)
    legend = _legend(lv, total, steps, strength, panel.width)
    out = Image.new("RGB", (panel.width, panel.height + legend.height), (255, 255, 255))
    out.paste(panel, (0, 0))
    out.paste(legend, (0, panel.height))
    out.info["diffdiff_levels"] = {
        int(k): int(c) for k, c in zip(*np.unique(lv, return_counts=True))
    }
    return out


def _legend(lv: np.ndarray, total: int, steps: int, strength: float, width: int) -> Image.Image:
    """A strip with one swatch per possible level (0..total) and a title line."""
    font = _font(13)
    small = _font(11)
    n_levels = total + 1
    counts = np.bincount(lv.ravel(), minlength=n_levels)
    pixels = max(1, lv.size)
    used = int((counts > 0).sum())
    pad, title_h, sw_h, lab_h = 6, 34, 22, 28
    strip = Image.new("RGB", (width, pad + title_h + sw_h + lab_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    draw.text((pad, pad), f"{total} of {steps} steps run (strength {strength:g}): {n_levels} levels, {used} used",
              fill=(0, 0, 0), font=font)
    draw.text((pad, pad + 16), "number = steps a pixel follows the model; grey = not denoised",
              fill=(90, 90, 90), font=small)
    y0 = pad + title_h
    inner = width - 2 * pad
    sw = inner / n_levels
    # Label a subset of swatches when they are too narrow for text.
    label_every = max(1, math.ceil(34 / sw)) if sw > 0 else 1
    for k in range(n_levels):
        x0, x1 = pad + int(round(k * sw)), pad + int(round((k + 1) * sw))
        colour = (235, 235, 235) if k == 0 else tuple(int(c) for c in heat_colours(np.array(k / max(total, 1))))
        draw.rectangle([x0, y0, max(x0, x1 - 1), y0 + sw_h - 1], fill=colour,
                       outline=(0, 0, 0) if counts[k] else None)
        if k % label_every == 0 or k == n_levels - 1:
            share = 100.0 * counts[k] / pixels
            draw.text((x0 + 1, y0 + sw_h + 1), f"{k}", fill=(0, 0, 0), font=small)
            if counts[k]:
                draw.text((x0 + 1, y0 + sw_h + 14), f"{share:.0f}%", fill=(90, 90, 90), font=small)
    return strip


__all__ = [
    "COMBINE_MODES",
    "DIRECTIONS",
    "blur",
    "combine",
    "distance_to_mask",
    "from_depth",
    "gradient",
    "heat_colours",
    "invert",
    "levels",
    "levels_for",
    "parse_size",
    "preview",
    "read_mask",
    "soft_falloff",
    "soft_map",
    "to_image",
]
