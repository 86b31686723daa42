"""The seeded procedural "shapes world": 64x64 images of one coloured shape on a background.

Owns the caption grammar, the palette, the renderer and the ground-truth object masks used to train
and to measure the micro model. Every image is a pure function of its seed (and ``GENERATOR_VERSION``),
so anyone can regenerate the training data or the held-out evaluation set.

Grammar (exactly)::

    a {colour} {shape} on a [{style} ]{background} background

colour, background: red, green, blue, yellow, orange, purple, white, black (never the same two);
shape: circle, square, triangle; style (optional): striped, gradient. Shapes are 10 to 28 px across
and lie fully inside the frame; shapes carry a soft shading that the caption does not mention.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Optional

import numpy as np
from PIL import Image

#: Bump when the renderer or the sampling of scenes changes (recorded in the model's provenance).
GENERATOR_VERSION = 1
SIZE = 64
SUPERSAMPLE = 4

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 30),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
STYLES: tuple[str, ...] = ("plain", "gradient", "striped")
MIN_SIZE, MAX_SIZE = 10, 28
#: Seeds at or above this are never used for training: the held-out evaluation set starts here.
HELDOUT_START = 1_000_000

_CAPTION = re.compile(
    rf"^a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) on a (?:(striped|gradient) )?({'|'.join(COLOURS)}) background$"
)


@dataclass(frozen=True)
class Scene:
    """Everything that determines one image."""

    colour: str
    shape: str
    background: str
    style: str  # plain | gradient | striped
    cx: float
    cy: float
    size: float  # across, in pixels
    shade_amount: float  # 0..0.12 of full scale, along shade_angle
    shade_angle: float
    bg_angle: float  # gradient direction (radians) or stripe orientation (0 or pi/2)
    stripe_period: int

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background, self.style)

    def to_dict(self) -> dict:
        return asdict(self)


def caption(colour: str, shape: str, background: str, style: str = "plain") -> str:
    """The grammar's caption for a scene."""
    bg = background if style == "plain" else f"{style} {background}"
    return f"a {colour} {shape} on a {bg} background"


def parse_caption(text: str) -> Optional[dict[str, str]]:
    """Parse a caption of the grammar into its parts; None when ``text`` is outside the grammar."""
    m = _CAPTION.match(text.strip())
    if m is None or m.group(1) == m.group(4):
        return None
    return {"colour": m.group(1), "shape": m.group(2), "style": m.group(3) or "plain", "background": m.group(4)}


def vocabulary() -> list[str]:
    """Every word the grammar uses."""
    words = ["a", "on", "background", "striped", "gradient", *COLOURS, *SHAPES]
    return list(dict.fromkeys(words))


def random_scene(seed: int, **fixed: object) -> Scene:
    """The scene for ``seed``; keyword arguments pin fields (e.g. ``colour="red"``) after sampling.

    Pinning keeps the other fields as the seed chose them, except that a background equal to a
    pinned colour (or vice versa) is moved to the next palette colour, so the rule "never the same
    two" holds.
    """
    rng = np.random.default_rng([GENERATOR_VERSION, int(seed)])
    colour_i, bg_shift = rng.integers(len(COLOURS)), rng.integers(1, len(COLOURS))
    colour = COLOURS[colour_i]
    background = COLOURS[(colour_i + bg_shift) % len(COLOURS)]
    shape = SHAPES[rng.integers(len(SHAPES))]
    style = STYLES[rng.choice(3, p=[0.5, 0.25, 0.25])]
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
    half = size / 2 + 1
    cx, cy = float(rng.uniform(half, SIZE - half)), float(rng.uniform(half, SIZE - half))
    shade_amount = float(rng.uniform(0.0, 0.12))
    shade_angle = float(rng.uniform(0, 2 * np.pi))
    stripe_vertical = bool(rng.integers(2))
    grad_angle = float(rng.uniform(0, 2 * np.pi))
    period = int(rng.integers(12, 21))
    scene = Scene(colour, shape, background, style, cx, cy, size, shade_amount, shade_angle,
                  (np.pi / 2 if stripe_vertical else 0.0) if style == "striped" else grad_angle, period)
    if fixed:
        scene = replace(scene, **fixed)  # type: ignore[arg-type]
        if scene.colour == scene.background:
            other = "background" if "colour" in fixed and "background" not in fixed else "colour"
            current = getattr(scene, other)
            scene = replace(scene, **{other: COLOURS[(COLOURS.index(current) + 1) % len(COLOURS)]})
        if scene.colour == scene.background:
            raise ValueError("a scene's shape and background must have different colours")
        half = scene.size / 2 + 1
        scene = replace(scene, cx=float(np.clip(scene.cx, half, SIZE - half)),
                        cy=float(np.clip(scene.cy, half, SIZE - half)))
    return scene


def _grid() -> tuple[np.ndarray, np.ndarray]:
    n = SIZE * SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float64) + 0.5) / SUPERSAMPLE
    return np.meshgrid(coords, coords)  # xx, yy in pixel units


def _inside(scene: Scene, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    h = scene.size / 2
    dx, dy = xx - scene.cx, yy - scene.cy
    if scene.shape == "circle":
        return dx * dx + dy * dy <= h * h
    if scene.shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if scene.shape == "triangle":  # apex up, base as wide as the triangle is tall
        top = scene.cy - h
        return (yy <= scene.cy + h) & (yy >= top) & (np.abs(dx) <= (yy - top) / 2)
    raise ValueError(f"unknown shape {scene.shape!r}")


def _tint(name: str) -> np.ndarray:
    """The stripes' second colour: the background mixed 20 % towards white (towards black for white)."""
    base = np.array(PALETTE[name], dtype=np.float64)
    target = 0.0 if name == "white" else 255.0
    return base + 0.2 * (target - base)


def _downsample(a: np.ndarray) -> np.ndarray:
    s = SUPERSAMPLE
    return a.reshape(SIZE, s, SIZE, s, *a.shape[2:]).mean(axis=(1, 3))


def render(scene: Scene) -> tuple[Image.Image, np.ndarray]:
    """The RGB image (antialiased, 4x supersampled) and the boolean object mask (coverage >= 0.5)."""
    xx, yy = _grid()
    bg = np.array(PALETTE[scene.background], dtype=np.float64)
    background = np.broadcast_to(bg, (*xx.shape, 3)).copy()
    if scene.style == "gradient":
        u = np.cos(scene.bg_angle) * (xx - SIZE / 2) + np.sin(scene.bg_angle) * (yy - SIZE / 2)
        background += (0.1 * 255 * u / (SIZE / np.sqrt(2)))[..., None]  # at most +-10 % at the corners
    elif scene.style == "striped":
        coord = xx if scene.bg_angle > 0.1 else yy
        stripe = (np.floor(coord / scene.stripe_period * 3) % 3) == 0  # one third tinted
        background[stripe] = _tint(scene.background)
    inside = _inside(scene, xx, yy)
    ux, uy = np.cos(scene.shade_angle), np.sin(scene.shade_angle)
    shade = ((xx - scene.cx) * ux + (yy - scene.cy) * uy) / max(scene.size / 2, 1.0)
    fg = np.array(PALETTE[scene.colour], dtype=np.float64) + (scene.shade_amount * 255 * shade)[..., None]
    pixels = np.where(inside[..., None], fg, background)
    arr = np.clip(np.round(_downsample(np.clip(pixels, 0, 255))), 0, 255).astype(np.uint8)
    mask = _downsample(inside.astype(np.float64)) >= 0.5
    return Image.fromarray(arr, "RGB"), mask


def sample(seed: int, **fixed: object) -> tuple[Image.Image, np.ndarray, str]:
    """Image, object mask and caption for ``seed`` (see :func:`random_scene` for ``fixed``)."""
    scene = random_scene(seed, **fixed)
    image, mask = render(scene)
    return image, mask, scene.caption


def batch(seeds: range | list[int]) -> tuple[np.ndarray, list[str]]:
    """uint8 images (N, 64, 64, 3) and their captions for ``seeds``."""
    images, captions = [], []
    for s in seeds:
        image, _, text = sample(int(s))
        images.append(np.asarray(image))
        captions.append(text)
    return np.stack(images), captions


def nearest_palette(pixels: np.ndarray) -> np.ndarray:
    """Index into ``COLOURS`` of the nearest palette colour for each RGB pixel (..., 3)."""
    pal = np.array([PALETTE[c] for c in COLOURS], dtype=np.float64)
    d = ((pixels[..., None, :].astype(np.float64) - pal) ** 2).sum(-1)
    return d.argmin(-1)


def dominant_colours(image: Image.Image | np.ndarray) -> tuple[str, str]:
    """(shape colour, background colour) by pixel count of nearest palette colours.

    The background is the most frequent palette colour; the shape's is the most frequent of the rest.
    """
    idx = nearest_palette(np.asarray(image)[..., :3]).ravel()
    counts = np.bincount(idx, minlength=len(COLOURS))
    bg = int(counts.argmax())
    counts[bg] = -1
    return COLOURS[int(counts.argmax())], COLOURS[bg]


def main(argv: list[str] | None = None) -> int:
    """``python -m diffdiff.micro.shapes --seed N -o picture.png [--mask mask.png]``: one shapes picture."""
    import argparse
    import sys

    from ..io import save_png_atomic

    parser = argparse.ArgumentParser(description="Render one shapes-world picture (and its object mask).")
    parser.add_argument("--seed", type=int, default=HELDOUT_START)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--mask", default=None, help="also write the object mask (white = object)")
    args = parser.parse_args(argv)
    image, mask, text = sample(args.seed)
    try:
        save_png_atomic(image, args.output, {"caption": text, "seed": args.seed})
        if args.mask:
            save_png_atomic(Image.fromarray((mask * 255).astype(np.uint8), "L"), args.mask)
    except OSError as exc:
        print(f"error: cannot write the picture: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
