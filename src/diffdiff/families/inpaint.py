"""SD and SDXL inpainting checkpoints (9-channel UNets): the mask input follows the change map per step.

The family is SD's or SDXL's (same geometry, noising and step rule) run through diffusers'
inpainting pipeline; :class:`diffdiff.inpaint.InpaintMasks` wraps the step hook and hands the
model, before each step, the mask of the pixels free at that step and the original outside it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..hook import NoiseCapture
from ..inpaint import InpaintMasks, is_inpaint_checkpoint
from .base import Job, PartSpec, RunInfo, run_stage
from .sd import StableDiffusionAdapter, StableDiffusionXLAdapter


class InpaintRun:
    """The one-call run of an inpainting pipeline, with the per-step mask."""

    pass_size = True  # inpainting pipelines otherwise run at the UNet's default size
    text_maps = False  # automatic maps call the UNet with 4 latent channels
    extra_parts: ClassVar[dict[str, PartSpec]] = {}

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return type(pipe).__name__ in cls.pipeline_classes and is_inpaint_checkpoint(pipe)  # type: ignore[attr-defined]

    def run(self, job: Job) -> tuple[Any, RunInfo]:
        adapter: Any = self
        request = job.request
        work = adapter.prepare(job)
        pipe = adapter.pipe
        capture = NoiseCapture(pipe.scheduler, adapter.noise_method)
        hook = adapter.hook_for(work, capture, job)
        planned = adapter.planned_steps(request.num_inference_steps, request.strength)
        masks = InpaintMasks(pipe, hook, planned, work.image, int(request.seed))
        prompts = len(request.prompt) if isinstance(request.prompt, list) else 1
        kwargs = masks.prepare(pipe, dict(work.kwargs, output_type=job.output), prompts * request.num_images)
        skip = adapter.skip_for(pipe, hook, planned, job, work.grid_width, work.width)
        images = run_stage(pipe, kwargs, masks, capture, skip, work.info)  # type: ignore[arg-type]
        adapter.record_start(work.info, hook, capture, pipe)
        return adapter.output(images, job, work), work.info


class StableDiffusionInpaintAdapter(InpaintRun, StableDiffusionAdapter):
    name = "sd-inpaint"
    pipeline_classes = ("StableDiffusionInpaintPipeline",)
    load_as_classes: ClassVar[dict[str, str]] = {"StableDiffusionInpaintPipeline": "StableDiffusionInpaintPipeline"}


class StableDiffusionXLInpaintAdapter(InpaintRun, StableDiffusionXLAdapter):
    name = "sdxl-inpaint"
    pipeline_classes = ("StableDiffusionXLInpaintPipeline",)
    load_as_classes: ClassVar[dict[str, str]] = {"StableDiffusionXLInpaintPipeline": "StableDiffusionXLInpaintPipeline"}
