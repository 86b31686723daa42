"""IP-Adapter (image prompts) on a loaded pipeline, through diffusers' ``load_ip_adapter``.

Owns the spec of where an IP-Adapter lives and the reference image's checks:

* a local weights file ``.../NAME.safetensors`` (its image encoder in an ``image_encoder`` folder
  beside it, as in the ``h94/IP-Adapter`` layout ``models/ip-adapter_sd15.safetensors`` +
  ``models/image_encoder``), or a hub path ``OWNER/REPO/SUBFOLDER/NAME.safetensors``;
* :func:`open_ip_image` -- the reference image, opened with one-line errors naming the file.

The image prompt conditions the UNet's cross-attention only; the change map still decides which
pixels may change, so black pixels stay byte-identical.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Union

from PIL import Image

from .errors import DiffDiffError, ModelLoadError
from .io import file_sha256, image_sha256, open_image
from .loading import hub_reachable

ImageLike = Union[Image.Image, str, os.PathLike]


def _where(spec: str) -> tuple[str, str, str, bool]:
    """(folder or repo, subfolder, weight file name, is local) for an IP-Adapter spec."""
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path.parent), "", path.name, True
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"IP-Adapter '{spec}' is not a weights file (.safetensors or .bin)")
    parts = spec.split("/")
    if len(parts) < 3 or not parts[-1].endswith((".safetensors", ".bin")):
        raise ModelLoadError(f"IP-Adapter '{spec}' does not exist; pass a local weights file or "
                             "OWNER/REPO/SUBFOLDER/FILE.safetensors (e.g. h94/IP-Adapter/models/ip-adapter_sd15.safetensors)")
    return "/".join(parts[:2]), "/".join(parts[2:-1]), parts[-1], False


def load_ip_adapter(pipe: Any, spec: str | os.PathLike[str], scale: float = 1.0) -> dict[str, Any]:
    """Load the IP-Adapter ``spec`` onto ``pipe`` at ``scale``; returns its metadata record."""
    name = str(spec)
    if not hasattr(pipe, "load_ip_adapter"):
        raise DiffDiffError(f"IP-Adapter '{name}' cannot be used with {type(pipe).__name__} (no IP-Adapter support)")
    check_scale(scale)
    repo, subfolder, weight, local = _where(name)
    kw: dict[str, Any] = {}
    if not local:
        kw["local_files_only"] = not hub_reachable()
    try:
        pipe.load_ip_adapter(repo, subfolder=subfolder, weight_name=weight, **kw)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        first = text[0] if text else type(exc).__name__
        if "size mismatch" in first.lower() or "shape" in first.lower():
            raise DiffDiffError(f"IP-Adapter '{name}' does not fit this model ({first})") from exc
        raise ModelLoadError(f"IP-Adapter '{name}' could not be loaded: {first}") from exc
    pipe.set_ip_adapter_scale(float(scale))
    record: dict[str, Any] = {"ip_adapter": weight if local else name, "scale": float(scale)}
    if local:
        record["sha256"] = file_sha256(Path(repo) / weight)
    return record


def check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise DiffDiffError(f"ip_adapter_scale must be a number >= 0, got {scale!r}")
    return float(scale)


def open_ip_image(image: ImageLike) -> tuple[Image.Image, dict[str, Any]]:
    """The IP-Adapter reference image (RGB) and its metadata (pixel hash, file name)."""
    if isinstance(image, Image.Image):
        img, meta = image, {}
    elif isinstance(image, (str, os.PathLike)):
        img, meta = open_image(image, "IP-Adapter image"), {"ip_adapter_image_file": Path(image).name}
    else:
        raise DiffDiffError(f"ip_adapter_image must be a PIL image or a file path, got {type(image).__name__}")
    meta["ip_adapter_image_sha256"] = image_sha256(img)
    return img.convert("RGB"), meta
