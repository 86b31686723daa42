"""Per-edit inputs of the add-ons: control images, their scales and Union modes, the IP-Adapter image.

Owns the checks and the conversion of an :class:`~diffdiff.request.EditRequest`'s add-on fields
into diffusers call arguments (:func:`pipeline_inputs`, called by every family when it prepares a
run): a control image is refused when its aspect ratio is not the input's, resized to the work
size, or derived from the input with OpenCV's Canny detector (``control_from="canny"``, the
detector ControlNet's canny models were trained with); one image and one scale may serve several
ControlNets. Loading the add-ons is :mod:`diffdiff.addons`'s job; this module never loads a model.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from .errors import DiffDiffError
from .io import open_image

ImageInput = Union[Image.Image, str, os.PathLike]

#: Control images whose aspect ratio differs from the input's by more than this are refused.
ASPECT_TOLERANCE = 0.02

#: Derivations of a control image from the input (``control_from=``).
CONTROL_FROM = ("canny",)

#: ControlNet Union (SDXL) control types, numbered as on its model card (``control_mode=``).
UNION_MODES = {"openpose": 0, "depth": 1, "scribble": 2, "canny": 3, "normal": 4, "segment": 5, "tile": 6, "repaint": 7}

#: The request fields this module reads.
FIELDS = ("control_image", "control_from", "controlnet_conditioning_scale", "control_mode", "ip_adapter_image")


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def open_input(image: ImageInput, what: str) -> Image.Image:
    """A PIL image, or the image file at a path (one-line errors naming the file)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return open_image(image, what)
    raise DiffDiffError(f"{what} must be a PIL image or a file path, got {type(image).__name__}")


def check_control_from(control_from: Any) -> None:
    if control_from is not None and control_from not in CONTROL_FROM:
        raise DiffDiffError(f"control_from must be one of {', '.join(CONTROL_FROM)}, got {control_from!r}")


def check_scales(scale: Any, what: str = "controlnet_conditioning_scale") -> list[float]:
    values = as_list(scale)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v < 0:
            raise DiffDiffError(f"{what} must be a number >= 0, got {v!r}")
    return [float(v) for v in values]


def union_mode(mode: Any, control_from: Optional[str]) -> int:
    """The ControlNet Union control type: a number, a name from :data:`UNION_MODES`, or from ``control_from``."""
    if mode is None:
        mode = control_from
    if mode is None:
        names = ", ".join(f"{v} {k}" for k, v in UNION_MODES.items())
        raise DiffDiffError(f"ControlNet Union needs control_mode= (CLI: --control-mode): {names}")
    if isinstance(mode, str) and not mode.isdigit():
        if mode not in UNION_MODES:
            raise DiffDiffError(f"unknown control mode {mode!r}; use one of {', '.join(UNION_MODES)} or a number")
        return UNION_MODES[mode]
    if isinstance(mode, bool) or not str(mode).isdigit():
        raise DiffDiffError(f"control_mode must be a name or a number >= 0, got {mode!r}")
    return int(mode)


def served_union_modes(nets: list[Any]) -> dict[str, int]:
    """The :data:`UNION_MODES` the ControlNet Union(s) ``nets`` were built with (``num_control_type`` of them:
    6 for the first Union release, 8 for ProMax)."""
    counts = [int(getattr(n.config, "num_control_type", len(UNION_MODES))) for n in nets if is_union([n])]
    limit = min(counts, default=len(UNION_MODES))
    return {name: number for name, number in UNION_MODES.items() if number < limit}


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """Canny edges of ``image`` (OpenCV, thresholds ``low``/``high``) as a white-on-black RGB image."""
    try:
        import cv2
    except ImportError as exc:
        raise DiffDiffError('control_from="canny" needs OpenCV: pip install "diffdiff[control]"') from exc
    edges = cv2.Canny(np.asarray(image.convert("L")), int(low), int(high))
    return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")


def check_control_shape(img: Image.Image, source_size: tuple[int, int], label: str = "control image") -> None:
    """Refuse a control image whose aspect ratio is not the input's (it would be stretched)."""
    cw, ch = img.size
    sw, sh = source_size
    if cw < 1 or ch < 1:
        raise DiffDiffError(f"{label} is empty")
    if abs(cw / ch - sw / sh) > ASPECT_TOLERANCE * (sw / sh):
        raise DiffDiffError(f"{label} is {cw}x{ch}, another aspect ratio than the image ({sw}x{sh}); "
                            "give a control image of the same shape")


def label(given: Any, what: str = "control image") -> str:
    return f"{what} '{given}'" if isinstance(given, (str, os.PathLike)) else what


def controlnets_of(pipe: Any) -> list[Any]:
    """The ControlNet(s) of a ControlNet pipeline (empty for any other pipeline)."""
    net = getattr(pipe, "controlnet", None)
    if net is None:
        return []
    return list(getattr(net, "nets", [net]))


def is_union(nets: list[Any]) -> bool:
    return any(type(n).__name__ == "ControlNetUnionModel" for n in nets)


def pipeline_inputs(pipe: Any, request: Any, work: Image.Image, source_size: tuple[int, int]) -> dict[str, Any]:
    """The add-on arguments of ``pipe``'s call for ``request`` (``work``: the input at the work size)."""
    kwargs: dict[str, Any] = {}
    nets = controlnets_of(pipe)
    given = as_list(getattr(request, "control_image", None))
    control_from = getattr(request, "control_from", None)
    if nets:
        check_control_from(control_from)
        if not given and control_from is None:
            raise DiffDiffError("a ControlNet is loaded: pass control_image= (CLI: --control-image FILE) "
                                "or control_from='canny' (--control-from canny)")
        if given and control_from is not None:
            raise DiffDiffError("pass either control_image= or control_from=, not both")
        images = [canny(work)] if control_from == "canny" else []
        for g in given:
            img = open_input(g, "control image")
            check_control_shape(img, source_size, label(g))
            img = img.convert("RGB")
            images.append(img if img.size == work.size else img.resize(work.size, Image.Resampling.LANCZOS))
        images = images * len(nets) if len(images) == 1 else images
        if len(images) != len(nets):
            raise DiffDiffError(f"{len(images)} control images for {len(nets)} ControlNets; give one, or one per ControlNet")
        scales = check_scales(getattr(request, "controlnet_conditioning_scale", None)) or [1.0]
        scales = scales * len(nets) if len(scales) == 1 else scales
        if len(scales) != len(nets):
            raise DiffDiffError(f"{len(scales)} control scales for {len(nets)} ControlNets; give one, or one per ControlNet")
        kwargs["control_image"] = images[0] if len(images) == 1 else images
        kwargs["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else scales
        if is_union(nets):
            mode = union_mode(getattr(request, "control_mode", None), control_from)
            modes = served_union_modes(nets)
            if mode not in modes.values():
                names = ", ".join(f"{v} {k}" for k, v in modes.items())
                raise DiffDiffError(f"control mode {mode} is not one this ControlNet Union was trained with: {names}")
            kwargs["control_image"], kwargs["control_mode"] = list(images), [mode] * len(images)
    ip_image = getattr(request, "ip_adapter_image", None)
    if ip_image is not None:
        kwargs["ip_adapter_image"] = open_input(ip_image, "IP-Adapter image").convert("RGB")
    return kwargs
