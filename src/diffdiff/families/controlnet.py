"""SD, SDXL (ControlNet Union too) and Flux through diffusers' ControlNet img2img pipelines.

Same geometry, noising and step rule as the base family; the control images reach the call through
:func:`diffdiff.addon_inputs.pipeline_inputs` like every add-on input. SDXL's refiner is not
offered here (it would run without the control).
"""

from __future__ import annotations

from typing import ClassVar

from .base import PartSpec
from .flow import FluxAdapter
from .sd import StableDiffusionAdapter, StableDiffusionXLAdapter


class StableDiffusionControlNetAdapter(StableDiffusionAdapter):
    name = "sd-controlnet"
    pipeline_classes = ("StableDiffusionControlNetImg2ImgPipeline",)


class StableDiffusionXLControlNetAdapter(StableDiffusionXLAdapter):
    name = "sdxl-controlnet"
    pipeline_classes = ("StableDiffusionXLControlNetImg2ImgPipeline", "StableDiffusionXLControlNetUnionImg2ImgPipeline")
    extra_parts: ClassVar[dict[str, PartSpec]] = {}


class FluxControlNetAdapter(FluxAdapter):
    name = "flux-controlnet"
    pipeline_classes = ("FluxControlNetImg2ImgPipeline",)
