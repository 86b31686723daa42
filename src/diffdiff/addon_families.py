"""Model families for the add-on pipelines: SD/SDXL inpainting checkpoints and the ControlNet img2img pipelines.

Each is its base family (same geometry, noising and step rule) driven through another diffusers
pipeline class. The inpainting families set ``inpaint``: the editor then feeds the model's mask
input step by step with :class:`diffdiff.inpaint.InpaintMasks`. The ControlNet families take their
control images through the pipeline call (:meth:`diffdiff.addons.Addons.call_inputs`).
"""

from __future__ import annotations

from typing import ClassVar

from .adapters import Adapter, StableDiffusionAdapter, StableDiffusionXLAdapter, register_adapter


class StableDiffusionInpaintAdapter(StableDiffusionAdapter):
    """SD 1.x/2.x inpainting checkpoints (9-channel UNet)."""

    name = "sd-inpaint"
    pipeline_classes = ("StableDiffusionInpaintPipeline",)
    pass_size = True  # the inpainting pipeline otherwise runs at the UNet's default size
    inpaint: ClassVar[bool] = True


class StableDiffusionXLInpaintAdapter(StableDiffusionXLAdapter):
    """SDXL inpainting checkpoints (9-channel UNet)."""

    name = "sdxl-inpaint"
    pipeline_classes = ("StableDiffusionXLInpaintPipeline",)
    supports_refiner = False
    pass_size = True
    inpaint: ClassVar[bool] = True


class StableDiffusionControlNetAdapter(StableDiffusionAdapter):
    name = "sd-controlnet"
    pipeline_classes = ("StableDiffusionControlNetImg2ImgPipeline",)


class StableDiffusionXLControlNetAdapter(StableDiffusionXLAdapter):
    name = "sdxl-controlnet"
    pipeline_classes = ("StableDiffusionXLControlNetImg2ImgPipeline", "StableDiffusionXLControlNetUnionImg2ImgPipeline")
    supports_refiner = False


ADDON_FAMILIES: tuple[type[Adapter], ...] = (
    StableDiffusionInpaintAdapter, StableDiffusionXLInpaintAdapter, StableDiffusionControlNetAdapter,
    StableDiffusionXLControlNetAdapter,
)

for _family in ADDON_FAMILIES:
    register_adapter(_family)
