"""ControlNet under the change map: loading ControlNets, the ControlNet img2img pipelines, control images.

Owns three things and nothing else:

* :func:`load_controlnet` -- one ControlNet from a diffusers folder (its ``config.json`` names the
  class: ``ControlNetModel``, ``ControlNetUnionModel``), a single
  ``.safetensors`` file, or a hub id (local cache first), with one-line errors;
* :func:`controlnet_pipeline` -- diffusers' ControlNet img2img pipeline for the base model's family
  built with ``from_pipe``, so it shares every base weight (and any LoRA already loaded);
* :func:`control_image_for` / :func:`canny` -- the control image at the run's work size, checked
  against the input's aspect ratio, or derived from the input with OpenCV's Canny detector (the
  detector ControlNet's canny models were trained on).

The change map acts exactly as without ControlNet: the hook blends the latents after each step; the
ControlNet only adds residuals to the UNet's (or transformer's) features.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from .errors import DiffDiffError, ModelLoadError
from .io import image_sha256, open_image
from .loading import dtype_kwargs, hub_reachable

#: img2img pipeline class of the base model -> (family, ControlNet img2img class, ControlNet-Union class)
CONTROLNET_PIPELINES: dict[str, tuple[str, str, Optional[str]]] = {
    "StableDiffusionImg2ImgPipeline": ("sd", "StableDiffusionControlNetImg2ImgPipeline", None),
    "StableDiffusionXLImg2ImgPipeline": ("sdxl", "StableDiffusionXLControlNetImg2ImgPipeline",
                                         "StableDiffusionXLControlNetUnionImg2ImgPipeline"),
}

#: The ControlNet img2img pipelines, by class name -> the base family they drive.
CONTROLNET_FAMILIES: dict[str, str] = {
    cls: family for family, plain, union in CONTROLNET_PIPELINES.values() for cls in (plain, union) if cls
}

#: Control images whose aspect ratio differs from the input's by more than this are refused.
ASPECT_TOLERANCE = 0.02

#: Derivations of a control image from the input (``control_from=``).
CONTROL_FROM = ("canny",)

#: ControlNet Union (SDXL) control types, as its model card numbers them (``control_mode=``).
UNION_MODES = {"openpose": 0, "depth": 1, "scribble": 2, "canny": 3, "normal": 4, "segment": 5, "tile": 6, "repaint": 7}


def union_mode(mode: Any, control_from: Optional[str]) -> int:
    """The ControlNet Union control type: a number, a name from :data:`UNION_MODES`, or from ``control_from``."""
    if mode is None and control_from is not None:
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

ControlLike = Union[Image.Image, str, os.PathLike]


def _dtype_kwargs(dtype: Any) -> dict[str, Any]:
    return dtype_kwargs(dtype) if dtype is not None else {}


def _controlnet_class(folder: Path) -> Any:
    import diffusers

    config = folder / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"ControlNet '{folder}' is not a diffusers model folder (no config.json)")
    try:
        name = json.loads(config.read_text()).get("_class_name", "ControlNetModel")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"ControlNet '{folder}': config.json is not readable JSON ({exc})") from exc
    cls = getattr(diffusers, str(name), None)
    if cls is None or "ControlNet" not in str(name):
        raise ModelLoadError(f"ControlNet '{folder}' is a {name}, not a ControlNet")
    return cls


def load_controlnet(spec: str | os.PathLike[str], dtype: Any = None) -> Any:
    """Load one ControlNet: diffusers folder, single ``.safetensors`` file or hub id (cache first)."""
    import diffusers

    name = str(spec)
    path = Path(name).expanduser()
    try:
        if path.is_dir():
            return _controlnet_class(path).from_pretrained(str(path), **_dtype_kwargs(dtype))
        if path.is_file():
            if path.suffix not in (".safetensors", ".ckpt", ".pt", ".bin", ".pth"):
                raise ModelLoadError(f"ControlNet '{name}' is a file but not a checkpoint (.safetensors, .ckpt, .pth)")
            return diffusers.ControlNetModel.from_single_file(str(path), **_dtype_kwargs(dtype))
        if name.startswith((".", "/", "~")) or path.suffix in (".safetensors", ".ckpt", ".pth"):
            raise ModelLoadError(f"ControlNet path '{name}' does not exist")
        try:
            return diffusers.ControlNetModel.from_pretrained(name, local_files_only=True, **_dtype_kwargs(dtype))
        except Exception as exc:
            if not hub_reachable():
                raise ModelLoadError(f"ControlNet '{name}' is not in the local cache and the hub cannot be reached; "
                                     "run once with network access or pass a local path") from exc
        return diffusers.ControlNetModel.from_pretrained(name, **_dtype_kwargs(dtype))
    except ModelLoadError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ModelLoadError(f"could not load ControlNet '{name}': {text[0] if text else type(exc).__name__}") from exc


def _fits(net: Any, pipe: Any, name: str) -> None:
    """Refuse a ControlNet built for another model shape, before any step runs."""
    unet = getattr(pipe, "unet", None)
    if unet is None:
        return
    for key in ("cross_attention_dim", "block_out_channels", "addition_embed_type"):
        want, have = getattr(unet.config, key, None), getattr(net.config, key, None)
        if isinstance(want, list):
            want = tuple(want)
        if isinstance(have, list):
            have = tuple(have)
        if want != have:
            raise DiffDiffError(f"ControlNet '{name}' does not fit this model: its {key} is {have}, the model's is {want}")


def controlnet_family(pipe: Any, name: str) -> tuple[str, str, Optional[str]]:
    """(family, ControlNet img2img class, Union class) for ``pipe``; refuses families without ControlNet."""
    base = type(pipe).__name__
    if base in CONTROLNET_FAMILIES:  # already a ControlNet pipeline: its base family
        base = next(k for k, v in CONTROLNET_PIPELINES.items() if v[0] == CONTROLNET_FAMILIES[base])
    if base not in CONTROLNET_PIPELINES:
        families = ", ".join(v[0] for v in CONTROLNET_PIPELINES.values())
        raise DiffDiffError(f"ControlNet '{name}' cannot be used with {base}: ControlNet img2img is supported for "
                            f"{families}")
    return CONTROLNET_PIPELINES[base]


def controlnet_pipeline(pipe: Any, nets: list[Any], names: Optional[list[str]] = None) -> Any:
    """Diffusers' ControlNet img2img pipeline for ``pipe``'s family, sharing its weights (``from_pipe``)."""
    import diffusers

    if not nets:
        raise DiffDiffError("no ControlNet given")
    names = names or [type(n).__name__ for n in nets]
    family, plain, union = controlnet_family(pipe, names[0])
    for net, name in zip(nets, names):
        _fits(net, pipe, name)
    is_union = any(type(n).__name__ == "ControlNetUnionModel" for n in nets)
    if is_union and (union is None or len(nets) > 1):
        raise DiffDiffError(f"ControlNet Union '{names[0]}' works alone and with SDXL only (this model is {family})")
    cls = getattr(diffusers, union if is_union else plain)
    controlnet: Any = nets[0] if len(nets) == 1 else list(nets)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is not None:
        controlnet = [n.to(denoiser.device) for n in controlnet] if isinstance(controlnet, list) else controlnet.to(denoiser.device)
    return cls.from_pipe(pipe, controlnet=controlnet)


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """Canny edges of ``image`` (OpenCV, thresholds ``low``/``high``) as a white-on-black RGB image."""
    try:
        import cv2
    except ImportError as exc:
        raise DiffDiffError('control_from="canny" needs OpenCV: pip install "diffdiff[control]"') from exc
    grey = np.asarray(image.convert("L"))
    edges = cv2.Canny(grey, int(low), int(high))
    return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")


def open_control_image(image: ControlLike, what: str = "control image") -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return open_image(image, what)
    raise DiffDiffError(f"{what} must be a PIL image or a file path, got {type(image).__name__}")


def check_control_shape(img: Image.Image, source_size: tuple[int, int], label: str = "control image") -> None:
    """Refuse a control image whose aspect ratio is not the input's (it would be stretched)."""
    cw, ch = img.size
    sw, sh = source_size
    if cw < 1 or ch < 1:
        raise DiffDiffError(f"{label} is empty")
    if abs(cw / ch - sw / sh) > ASPECT_TOLERANCE * (sw / sh):
        raise DiffDiffError(f"{label} is {cw}x{ch}, another aspect ratio than the image ({sw}x{sh}); "
                            "give a control image of the same shape")


def control_image_for(image: ControlLike, source_size: tuple[int, int], work_size: tuple[int, int],
                      what: str = "control image") -> Image.Image:
    """``image`` as an RGB control image at ``work_size``; refused when its shape is not the input's."""
    img = open_control_image(image, what)
    check_control_shape(img, source_size, _label(image) if isinstance(image, (str, os.PathLike)) else what)
    img = img.convert("RGB")
    return img if img.size == work_size else img.resize(work_size, Image.Resampling.LANCZOS)


def control_images(
    images: Union[ControlLike, list[ControlLike], None],
    control_from: Optional[str],
    count: int,
    work: Image.Image,
    source_size: tuple[int, int],
) -> tuple[list[Image.Image], dict[str, Any]]:
    """One control image per loaded ControlNet at the work size (``work`` is the resized input),
    and their PNG metadata: the hash of each control image as given (decoded pixels) or derived."""
    if control_from is not None and control_from not in CONTROL_FROM:
        raise DiffDiffError(f"control_from must be one of {', '.join(CONTROL_FROM)}, got {control_from!r}")
    given = [] if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])
    if not given and control_from is None:
        raise DiffDiffError("a ControlNet is loaded: pass control_image= (CLI: --control-image FILE) "
                            "or control_from='canny' (--control-from canny)")
    if given and control_from is not None:
        raise DiffDiffError("pass either control_image= or control_from=, not both")
    meta: dict[str, Any] = {}
    if control_from == "canny":
        given = [canny(work)]
        meta["control_from"] = control_from
    names = [Path(g).name for g in given if isinstance(g, (str, os.PathLike))]
    if names:
        meta["control_image_files"] = names
    opened = [(open_control_image(g), g) for g in given]
    meta["control_image_sha256"] = [image_sha256(img) for img, _ in opened]
    if len(opened) == 1 and count > 1:
        opened = opened * count
    if len(opened) != count:
        raise DiffDiffError(f"{len(opened)} control images for {count} ControlNets; give one per ControlNet")
    out = [control_image_for(img, source_size, work.size, _label(g)) for img, g in opened]
    return out, meta


def _label(given: ControlLike) -> str:
    return f"control image '{given}'" if isinstance(given, (str, os.PathLike)) else "control image"


def control_scales(scale: Union[float, list[float], None], count: int) -> Union[float, list[float]]:
    """``controlnet_conditioning_scale`` for ``count`` ControlNets (default 1.0 each)."""
    values = [1.0] if scale is None else (list(scale) if isinstance(scale, (list, tuple)) else [scale])
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            raise DiffDiffError(f"controlnet_conditioning_scale must be a number >= 0, got {v!r}")
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise DiffDiffError(f"{len(values)} control scales for {count} ControlNets; give one, or one per ControlNet")
    return float(values[0]) if count == 1 else [float(v) for v in values]
