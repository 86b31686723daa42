"""Reading user images and writing results: clear errors, content hashes, PNG metadata, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import DiffDiffError

METADATA_KEY = "diffdiff"

# Decompression-bomb guard: Pillow's default warns at ~89 MP; we refuse clearly instead.
Image.MAX_IMAGE_PIXELS = None


def open_image(path: str | os.PathLike[str], what: str = "image") -> Image.Image:
    """Open and fully decode an image file, or raise a one-line :class:`DiffDiffError`."""
    p = Path(path)
    if not p.exists():
        raise DiffDiffError(f"{what} file '{p}' does not exist")
    if p.is_dir():
        raise DiffDiffError(f"{what} path '{p}' is a directory, not an image file")
    try:
        with Image.open(p) as img:
            img.load()
            return img.copy() if img.mode != "P" else img.copy()
    except PermissionError as exc:
        raise DiffDiffError(f"{what} file '{p}' cannot be read: permission denied") from exc
    except UnidentifiedImageError as exc:
        raise DiffDiffError(f"{what} file '{p}' is not a readable image (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DiffDiffError(f"{what} file '{p}' is corrupt or truncated ({exc})") from exc


#: Default size limit for one edit (4096 x 4096). Larger images: crop=True edits only the changed box.
DEFAULT_MAX_PIXELS = 4096 * 4096


def check_pixel_limit(width: int, height: int, max_pixels: int | None) -> None:
    """Refuse an image above ``max_pixels`` with a hint to crop (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise DiffDiffError(
            f"image is {width}x{height} ({width * height / 1e6:.1f} MP), above the limit of "
            f"{max_pixels / 1e6:.1f} MP; use --crop (crop=True) to edit only the changed region, "
            "use a smaller image, or raise the limit with --max-pixels"
        )


#: What the editing API accepts as an image: a PIL image or a file path.
ImageLike = Union[Image.Image, str, os.PathLike]


def load_image(image: ImageLike, what: str = "image") -> Image.Image:
    """A PIL image as given, or the decoded file at a path; a one-line error for anything else."""
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, (str, os.PathLike)):
        img = open_image(image, what)
    else:
        raise DiffDiffError(f"{what} must be a PIL image or a file path, got {type(image).__name__}")
    if img.width < 1 or img.height < 1:
        raise DiffDiffError(f"{what} is empty")
    return img


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_sha256(img: Image.Image) -> str:
    """Hash of an image's decoded pixels, mode and size (independent of file encoding)."""
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def map_sha256(change_map: Any) -> str:
    """Hash of a change map as the user gave it: an image's pixels, or an array's dtype, shape and bytes."""
    if isinstance(change_map, Image.Image):
        return image_sha256(change_map)
    if isinstance(change_map, torch.Tensor):
        change_map = change_map.detach().cpu().numpy()
    arr = np.ascontiguousarray(change_map)
    return hashlib.sha256(f"{arr.dtype}:{arr.shape}".encode() + arr.tobytes()).hexdigest()


def pnginfo_for(metadata: Mapping[str, Any]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(dict(metadata), sort_keys=True, default=str))
    # A1111-style human-readable line, shown by many image viewers.
    readable = ", ".join(f"{k}: {v}" for k, v in metadata.items() if k not in ("prompt", "negative_prompt"))
    prompt = metadata.get("prompt", "")
    negative = metadata.get("negative_prompt")
    text = f"{prompt}\n" + (f"Negative prompt: {negative}\n" if negative else "") + readable
    info.add_text("parameters", text)
    return info


def read_metadata(path_or_image: str | os.PathLike[str] | Image.Image) -> dict[str, Any]:
    """The parameters diffdiff recorded in a PNG it wrote."""
    if isinstance(path_or_image, Image.Image):
        text = path_or_image.info.get(METADATA_KEY)
    else:
        with Image.open(path_or_image) as img:
            text = img.info.get(METADATA_KEY)
    return json.loads(text) if text else {}


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Validate an output path before any work is done."""
    p = Path(path)
    if p.is_dir():
        raise DiffDiffError(f"output path '{p}' is a directory; give a file name such as '{p / 'out.png'}'")
    if not p.parent.exists():
        raise DiffDiffError(f"output folder '{p.parent}' does not exist")
    if not os.access(p.parent, os.W_OK):
        raise DiffDiffError(f"output folder '{p.parent}' is not writable")
    if p.suffix.lower() not in (".png", ""):
        raise DiffDiffError(f"output '{p}' must be a .png file (PNG keeps the parameters as metadata)")
    return p


def numbered_paths(path: str | os.PathLike[str], count: int) -> list[Path]:
    """``out.png`` for one image; ``out-1.png``, ``out-2.png``, ... for several."""
    p = Path(path)
    if p.suffix == "":
        p = p.with_suffix(".png")
    if count == 1:
        return [p]
    return [p.with_name(f"{p.stem}-{i + 1}{p.suffix}") for i in range(count)]


def save_png_atomic(img: Image.Image, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``img`` as PNG with metadata: temporary file in the same folder, then rename.

    A crash or Ctrl-C mid-write never leaves a half-written file at ``path``.
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG", pnginfo=pnginfo_for(metadata) if metadata else None)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p
