"""IP-Adapter (image prompts) on a loaded pipeline, through diffusers' ``load_ip_adapter``.

Owns where an IP-Adapter lives and how it is loaded:

* a local weights file ``.../NAME.safetensors`` (its image encoder in an ``image_encoder`` folder
  beside it, as in the ``h94/IP-Adapter`` layout ``models/ip-adapter_sd15.safetensors`` +
  ``models/image_encoder``), or a hub path ``OWNER/REPO/SUBFOLDER/NAME.safetensors``;
* :func:`load_ip_adapter` -- diffusers' loader, its failures as one line naming the file, the scale.

The reference image of each edit is :mod:`diffdiff.addon_inputs`'s.

The image prompt conditions the UNet's cross-attention only; the change map still decides which
pixels may change, so black pixels stay byte-identical.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .addon_inputs import check_scales
from .errors import DiffDiffError, ModelLoadError
from .io import file_sha256
from .loading import _cache_then_hub


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
    check_scales(scale, "ip_adapter_scale")
    repo, subfolder, weight, local = _where(name)
    try:
        if local:
            pipe.load_ip_adapter(repo, subfolder=subfolder, weight_name=weight)
        else:  # a hub path: the local cache first
            _cache_then_hub(name, lambda **extra: pipe.load_ip_adapter(repo, subfolder=subfolder, weight_name=weight,
                                                                       **extra))
    except ModelLoadError:
        raise
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
