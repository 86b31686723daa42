"""Model families as thin adapters around diffusers img2img pipelines.

An adapter answers four questions for the engine and nothing more:

* does this pipeline belong to the family (``matches``)?
* what pixel multiple and latent grid does it use (``pixel_multiple``, ``latent_hw``)?
* how is the pipeline called for an img2img run (``call_kwargs``) and how does it noise the image
  (``noise_method``: ``add_noise`` or ``scale_noise``)?
* how do its callback latents map to a (B, C, h, w) grid (``unpack``/``pack``; identity for UNets)?

The blend itself is :func:`diffdiff.core.blend`, driven by :class:`diffdiff.hook.DifferentialStep`.
Adding a family means adding a subclass here and registering it in ``ADAPTERS``.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch

from .errors import UnsupportedModelError


class Adapter:
    """Base adapter: a UNet/DiT img2img pipeline with VAE latents on a plain grid."""

    name: ClassVar[str] = "generic"
    #: diffusers classes (by name) this adapter drives
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    noise_method: ClassVar[str] = "add_noise"
    supports_refiner: ClassVar[bool] = False

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return type(pipe).__name__ in cls.pipeline_classes

    # geometry -----------------------------------------------------------------------------------
    def vae_scale(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    def pixel_multiple(self) -> int:
        """Input sizes are rounded to a multiple of this (pixels)."""
        return self.vae_scale()

    def latent_hw(self, width: int, height: int) -> tuple[int, int]:
        s = self.vae_scale()
        return height // s, width // s

    def unpack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return latents

    def pack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return latents

    # calling --------------------------------------------------------------------------------------
    def planned_steps(self, num_inference_steps: int, strength: float) -> int:
        """Denoising steps an img2img run will execute (diffusers' ``get_timesteps`` rule)."""
        return min(int(num_inference_steps * strength), num_inference_steps)

    def default_guidance(self) -> float | None:
        param = inspect.signature(self.pipe.__call__).parameters.get("guidance_scale")
        if param is None or param.default is inspect.Parameter.empty:
            return None
        return float(param.default)

    def call_kwargs(
        self,
        image: Any,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        num_inference_steps: int,
        guidance_scale: float | None,
        strength: float,
        num_images: int,
        generator: torch.Generator,
        width: int,
        height: int,
    ) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            image=image,
            prompt=prompt,
            num_inference_steps=num_inference_steps,
            strength=strength,
            num_images_per_prompt=num_images,
            generator=generator,
        )
        if negative_prompt is not None:
            kw["negative_prompt"] = negative_prompt
        if guidance_scale is not None:
            kw["guidance_scale"] = guidance_scale
        return self._accepted(kw)

    def _accepted(self, kw: dict[str, Any]) -> dict[str, Any]:
        """Drop arguments the pipeline's ``__call__`` does not take (e.g. negative prompts on Flux)."""
        params = inspect.signature(self.pipe.__call__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return kw
        return {k: v for k, v in kw.items() if k in params}

    def latents_from_output(self, images: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Pipeline ``output_type="latent"`` result as (B, C, h, w)."""
        return self.unpack(images, width, height)


class StableDiffusionAdapter(Adapter):
    name = "sd"
    pipeline_classes = ("StableDiffusionImg2ImgPipeline",)


class StableDiffusionXLAdapter(Adapter):
    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLImg2ImgPipeline",)
    supports_refiner = True


class GenericAdapter(Adapter):
    """Any other diffusers img2img pipeline whose per-step callback exposes standard ``latents``.

    Accepted when the pipeline takes ``image``, ``strength`` and ``callback_on_step_end``, lists
    ``latents`` among its callback tensors, and has a scheduler with ``add_noise``.
    """

    name = "generic"

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        try:
            params = inspect.signature(pipe.__call__).parameters
        except (TypeError, ValueError):
            return False
        needed = {"image", "strength", "callback_on_step_end"}
        return (
            needed <= set(params)
            and "latents" in getattr(pipe, "_callback_tensor_inputs", [])
            and hasattr(getattr(pipe, "scheduler", None), "add_noise")
            and hasattr(pipe, "vae")
        )


#: Families tried in order; the generic adapter comes last.
ADAPTERS: list[type[Adapter]] = [StableDiffusionAdapter, StableDiffusionXLAdapter]


def register_adapter(adapter: type[Adapter], first: bool = True) -> None:
    """Add a model family (placed before the existing ones so it wins over the generic fallback)."""
    if adapter in ADAPTERS:
        return
    if first:
        ADAPTERS.insert(0, adapter)
    else:
        ADAPTERS.append(adapter)


def supported_families() -> list[str]:
    return [a.name for a in ADAPTERS] + [GenericAdapter.name]


def adapter_for(pipe: Any) -> Adapter:
    for cls in ADAPTERS:
        if cls.matches(pipe):
            return cls(pipe)
    if GenericAdapter.matches(pipe):
        return GenericAdapter(pipe)
    raise UnsupportedModelError(
        f"{type(pipe).__name__} is not a supported model family; supported: "
        + ", ".join(supported_families())
        + " (any diffusers img2img pipeline whose step callback exposes 'latents')"
    )
