"""Model families: one small adapter per family, and the registry that picks one for a pipeline.

Each family is a file in this package (``sd``, ``flow``, ``kandinsky``, ``deepfloyd``,
``inpaint``, ``controlnet``, ``own`` (any ``latents=`` pipeline, detected from its components), ``generic``;
video-to-video: ``wan``, ``cogvideox``, ``animatediff`` on the shared ``video`` base) holding an
:class:`~diffdiff.families.base.Adapter` subclass. The registry tries
the registered families in order and falls back to :class:`GenericAdapter`, which drives any
img2img pipeline exposing ``latents`` to its step callback. Named families match a pipeline's
class or any class it derives from (:func:`~.base.lineage`) and add what components cannot
tell (SDXL's refiner, Kandinsky's prior, IF's stages, text maps); everything else is detected
from its components (``generic``, ``own``). :func:`register_adapter` adds a
family diffdiff does not ship (place it first so it wins over the generic fallback).
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import DiffDiffError, UnsupportedModelError
from .animatediff import AnimateDiffAdapter
from .base import Adapter, Job, PartSpec, RunInfo, run_stage
from .cogvideox import CogVideoXAdapter
from .controlnet import FluxControlNetAdapter, StableDiffusionControlNetAdapter, StableDiffusionXLControlNetAdapter
from .deepfloyd import DeepFloydIFAdapter
from .flow import FluxAdapter, StableDiffusion3Adapter
from .generic import GenericAdapter
from .inpaint import FluxFillAdapter, StableDiffusionInpaintAdapter, StableDiffusionXLInpaintAdapter
from .kandinsky import DEFAULT_KANDINSKY_PRIOR, KandinskyAdapter
from .own import OwnNoiseAdapter, obstacle
from .sd import StableDiffusionAdapter, StableDiffusionXLAdapter
from .video import VIDEO_FAMILIES, RefusedVideoAdapter, VideoAdapter
from .wan import WanAdapter

__all__ = [
    "ADAPTERS", "Adapter", "AnimateDiffAdapter", "CogVideoXAdapter", "DEFAULT_KANDINSKY_PRIOR",
    "DeepFloydIFAdapter", "FluxAdapter", "GenericAdapter", "Job", "KandinskyAdapter", "OwnNoiseAdapter", "PartSpec",
    "RunInfo", "StableDiffusion3Adapter", "StableDiffusionAdapter", "StableDiffusionXLAdapter", "VideoAdapter",
    "WanAdapter", "adapter_class", "adapter_for", "check_parts", "load_as_class", "register_adapter", "run_stage",
    "supported_families",
]

#: Families tried in order; the generic adapter comes last.
ADAPTERS: list[type[Adapter]] = [
    StableDiffusionAdapter, StableDiffusionXLAdapter, StableDiffusion3Adapter, FluxAdapter, KandinskyAdapter,
    DeepFloydIFAdapter, WanAdapter, CogVideoXAdapter, AnimateDiffAdapter,
    StableDiffusionInpaintAdapter, StableDiffusionXLInpaintAdapter, StableDiffusionControlNetAdapter,
    StableDiffusionXLControlNetAdapter, FluxControlNetAdapter, FluxFillAdapter, RefusedVideoAdapter, OwnNoiseAdapter,
]
VIDEO_FAMILIES.extend([WanAdapter, CogVideoXAdapter, AnimateDiffAdapter])


def register_adapter(adapter: type[Adapter], first: bool = True) -> None:
    """Add a model family (placed before the existing ones so it wins over the generic fallback)."""
    if adapter in ADAPTERS:
        return
    if issubclass(adapter, VideoAdapter) and adapter not in VIDEO_FAMILIES:
        VIDEO_FAMILIES.append(adapter)  # named in the video refusals
    if first:
        ADAPTERS.insert(0, adapter)
    else:
        ADAPTERS.append(adapter)


def supported_families() -> list[str]:
    return [a.name for a in ADAPTERS if a is not RefusedVideoAdapter] + [GenericAdapter.name]


def _part_option(name: str) -> str:
    return f"{name}= (--{name.replace('_', '-')})"


def check_parts(cls: type[Adapter], parts: dict[str, Any]) -> None:
    """Reject extra pipelines a family does not use (e.g. a prior for SDXL) with one clear line."""
    for name, value in parts.items():
        if value is None or name in cls.extra_parts:
            continue
        owners = [a.name for a in ADAPTERS if name in a.extra_parts]
        raise DiffDiffError(
            f"{_part_option(name)} is only for the {' / '.join(owners) or 'no'} family, not {cls.name}"
        )


def adapter_class(pipe: Any) -> type[Adapter]:
    """The family adapter class for ``pipe``; raises :class:`UnsupportedModelError` listing the families."""
    for cls in ADAPTERS:
        if cls.matches(pipe):
            return cls
    if GenericAdapter.matches(pipe):
        return GenericAdapter
    raise UnsupportedModelError(
        f"{type(pipe).__name__} is not a supported model family ({obstacle(pipe)}); supported: "
        + ", ".join(supported_families())
        + " (any diffusers img2img pipeline whose step callback exposes 'latents', and any pipeline taking"
        " latents= with a VAE and an add_noise/scale_noise/TrigFlow scheduler)"
    )


def adapter_for(pipe: Any, **parts: Any) -> Adapter:
    """The family adapter driving ``pipe`` plus its extra pipelines (``refiner``, ``prior``, ``stage_2``, ...)."""
    cls = adapter_class(pipe)
    check_parts(cls, parts)
    return cls(pipe, **parts)


def load_as_class(model_class_name: Optional[str]) -> Optional[str]:
    """The diffusers class a family loads a model of this ``model_index.json`` class as (if any)."""
    for cls in ADAPTERS:
        if model_class_name in cls.load_as_classes:
            return cls.load_as_classes[model_class_name]
    return None
