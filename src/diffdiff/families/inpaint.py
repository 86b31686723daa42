"""Inpainting checkpoints (SD/SDXL 9-channel UNets, Flux Fill): the mask input follows the change map per step.

The family is SD's, SDXL's or Flux's (same geometry, noising and step rule) run through diffusers'
inpainting pipeline; :class:`diffdiff.inpaint.InpaintMasks` (:class:`~diffdiff.inpaint.FluxFillMasks`)
wraps the step hook and hands the model, before each step, the mask of the pixels free at that
step and the original outside it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..hook import DifferentialStep
from ..inpaint import FluxFillMasks, InpaintMasks, is_inpaint_checkpoint
from .base import Job, PartSpec, Work
from .flow import FluxAdapter
from .sd import StableDiffusionAdapter, StableDiffusionXLAdapter


class InpaintMasksMixin:
    """The one-call run of an inpainting pipeline, its step callback feeding the per-step mask."""

    pass_size = True  # inpainting pipelines otherwise run at the UNet's default size
    text_maps = False  # automatic maps call the UNet with 4 latent channels
    extra_parts: ClassVar[dict[str, PartSpec]] = {}
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    pipe: Any
    masks_class: ClassVar[type[InpaintMasks]] = InpaintMasks

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return super().matches(pipe) and is_inpaint_checkpoint(pipe)  # type: ignore[misc]

    def stage_callback(self, hook: DifferentialStep, kwargs: dict[str, Any], work: Work, job: Job,
                       planned: int) -> tuple[Any, dict[str, Any]]:
        request = job.request
        masks = self.masks_class(self.pipe, hook, planned, work.image, int(request.seed))  # type: ignore[arg-type]
        prompts = len(request.prompt) if isinstance(request.prompt, list) else 1
        return masks, masks.prepare(self.pipe, kwargs, prompts * request.num_images)


class StableDiffusionInpaintAdapter(InpaintMasksMixin, StableDiffusionAdapter):
    name = "sd-inpaint"
    pipeline_classes = ("StableDiffusionInpaintPipeline",)
    load_as_classes: ClassVar[dict[str, str]] = {"StableDiffusionInpaintPipeline": "StableDiffusionInpaintPipeline"}


class StableDiffusionXLInpaintAdapter(InpaintMasksMixin, StableDiffusionXLAdapter):
    name = "sdxl-inpaint"
    pipeline_classes = ("StableDiffusionXLInpaintPipeline",)
    load_as_classes: ClassVar[dict[str, str]] = {"StableDiffusionXLInpaintPipeline": "StableDiffusionXLInpaintPipeline"}


class FluxFillAdapter(InpaintMasksMixin, FluxAdapter):
    name = "flux-fill"
    pipeline_classes = ("FluxFillPipeline",)
    load_as_classes: ClassVar[dict[str, str]] = {"FluxFillPipeline": "FluxFillPipeline"}
    masks_class = FluxFillMasks

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return super(InpaintMasksMixin, cls).matches(pipe)  # type: ignore[misc]  # every Flux Fill model inpaints
