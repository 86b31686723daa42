"""Loading ControlNets and switching a model to its ControlNet img2img pipeline.

Owns two things: :func:`load_controlnet` reads one ControlNet from a diffusers folder (its
``config.json`` names the class: ``ControlNetModel``, ``ControlNetUnionModel``, ``FluxControlNetModel``), a single
``.safetensors`` file, or a hub id (the local cache first), with one-line errors; and
:func:`controlnet_pipeline` builds diffusers' ControlNet img2img pipeline for the base model's family
with ``from_pipe``, so it shares every base weight (and any LoRA already loaded), after checking
that each ControlNet fits the model. Control images are :mod:`diffdiff.addon_inputs`'s.

The change map acts exactly as without ControlNet: the hook blends the latents after each step; the
ControlNet only adds residuals to the UNet's (or Flux transformer's) features.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from .errors import DiffDiffError, ModelLoadError
from .loading import _cache_then_hub, dtype_kwargs

#: img2img pipeline class of the base model -> (family, ControlNet img2img class, ControlNet-Union class)
CONTROLNET_PIPELINES: dict[str, tuple[str, str, Optional[str]]] = {
    "StableDiffusionImg2ImgPipeline": ("sd", "StableDiffusionControlNetImg2ImgPipeline", None),
    "StableDiffusionXLImg2ImgPipeline": ("sdxl", "StableDiffusionXLControlNetImg2ImgPipeline",
                                         "StableDiffusionXLControlNetUnionImg2ImgPipeline"),
    "FluxImg2ImgPipeline": ("flux", "FluxControlNetImg2ImgPipeline", None),
}

#: The ControlNet model class a hub id is loaded as, per family (folders name their own class).
HUB_CONTROLNET_CLASSES = {"sd": "ControlNetModel", "sdxl": "ControlNetModel", "flux": "FluxControlNetModel"}

#: The ControlNet img2img pipelines, by class name -> the base family they drive.
CONTROLNET_FAMILIES: dict[str, str] = {
    cls: family for family, plain, union in CONTROLNET_PIPELINES.values() for cls in (plain, union) if cls
}

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


def load_controlnet(spec: str | os.PathLike[str], dtype: Any = None, family: str = "sd") -> Any:
    """Load one ControlNet: diffusers folder, single ``.safetensors`` file or hub id (cache first).

    ``family`` (``sd``, ``sdxl``, ``flux``) picks the class for files and hub ids.
    """
    import diffusers

    cls = getattr(diffusers, HUB_CONTROLNET_CLASSES.get(family, "ControlNetModel"))
    name = str(spec)
    path = Path(name).expanduser()
    try:
        if path.is_dir():
            return _controlnet_class(path).from_pretrained(str(path), **_dtype_kwargs(dtype))
        if path.is_file():
            if path.suffix not in (".safetensors", ".ckpt", ".pt", ".bin", ".pth"):
                raise ModelLoadError(f"ControlNet '{name}' is a file but not a checkpoint (.safetensors, .ckpt, .pth)")
            return cls.from_single_file(str(path), **_dtype_kwargs(dtype))
        if name.startswith((".", "/", "~")) or path.suffix in (".safetensors", ".ckpt", ".pth"):
            raise ModelLoadError(f"ControlNet path '{name}' does not exist")
        return _cache_then_hub(name, lambda **extra: cls.from_pretrained(name, **_dtype_kwargs(dtype), **extra))
    except ModelLoadError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ModelLoadError(f"could not load ControlNet '{name}': {text[0] if text else type(exc).__name__}") from exc


def _fits(net: Any, pipe: Any, name: str) -> None:
    """Refuse a ControlNet built for another model shape, before any step runs."""
    unet = getattr(pipe, "unet", None)
    denoiser = unet if unet is not None else getattr(pipe, "transformer", None)
    if denoiser is None:
        return
    keys = (("cross_attention_dim", "block_out_channels", "addition_embed_type") if unet is not None else
            ("in_channels", "joint_attention_dim", "pooled_projection_dim", "attention_head_dim"))
    if (unet is None) != ("Flux" in type(net).__name__):
        raise DiffDiffError(f"ControlNet '{name}' is a {type(net).__name__}, not one for {type(pipe).__name__}")
    for key in keys:
        want, have = getattr(denoiser.config, key, None), getattr(net.config, key, None)
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
    if family == "flux" and len(nets) > 1:
        controlnet = diffusers.FluxMultiControlNetModel(list(nets))
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is not None:
        controlnet = [n.to(denoiser.device) for n in controlnet] if isinstance(controlnet, list) else controlnet.to(denoiser.device)
    return cls.from_pipe(pipe, controlnet=controlnet)
