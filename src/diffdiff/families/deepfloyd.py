"""DeepFloyd IF: a pixel-space cascade (stage I 64 px, stage II 256 px, optional x4 stage III).

The map acts at each map-driven stage's own resolution; stage II starts from the original at its
size, conditioned on the stage-I result (upsampled and noised). Stage III (an upscaler) is
map-free. IF pipelines only have the old ``callback(i, t, x)``: :func:`run_stage` drives the
same hook through it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import diffusers
import torch
from diffusers.utils import is_bs4_available, is_ftfy_available

from ..changemap import to_latent_map
from ..errors import DiffDiffError
from ..hook import DifferentialStep, NoiseCapture
from ..numerics import to_uint8_images
from ..pipeinfo import call_parameter_names
from .base import Adapter, Job, PartSpec, RunInfo, run_stage


def if_size(size: tuple[int, int], sample_size: int) -> tuple[int, int]:
    """The (width, height) IF resizes an image to: short side ``sample_size``, long side a multiple of 8."""
    w, h = size
    coef = w / h
    if coef >= 1:
        return int(round(sample_size / 8 * coef) * 8), sample_size
    return sample_size, int(round(sample_size / 8 / coef) * 8)


def expand_prompts(prompt: str | list[str] | None, num_images: int, n_prompts: int) -> list[str] | None:
    """Per-image prompts in the order diffusers batches them (prompt-major, images repeated)."""
    if prompt is None:
        return None
    prompts = [prompt] * n_prompts if isinstance(prompt, str) else list(prompt)
    return [p for p in prompts for _ in range(num_images)]


class DeepFloydIFAdapter(Adapter):
    name = "deepfloyd-if"
    pipeline_classes = ("IFImg2ImgPipeline", "IFPipeline")
    extra_parts: ClassVar[dict[str, PartSpec]] = {
        # Stage II uses the same T5 as stage I: share it instead of loading a second copy.
        "stage_2": PartSpec("IFImg2ImgSuperResolutionPipeline", share=("text_encoder", "tokenizer")),
        "stage_3": PartSpec("DiffusionPipeline"),
    }
    native_output = True  # stage I alone gives 64 px, stage II 256 px, stage III x4
    noise_level_2: int = 250  # low-res condition noise for stage II (diffusers' default)
    noise_level_3: int = 100  # for the x4 upscaler (DeepFloyd's recommendation)

    def __init__(self, pipe: Any, **parts: Any) -> None:
        if type(pipe).__name__ != "IFImg2ImgPipeline":
            # diffusers classes by attribute: importing IF's pipeline module at our import time would
            # import (and warn about) transformers' image processors on every CLI start.
            pipe = diffusers.IFImg2ImgPipeline(**pipe.components)
        stage_2, stage_3 = parts.get("stage_2"), parts.get("stage_3")
        if stage_2 is not None and type(stage_2).__name__ != "IFImg2ImgSuperResolutionPipeline":
            if "image_noising_scheduler" not in getattr(stage_2, "components", {}):
                raise DiffDiffError(f"stage_2 must be a DeepFloyd IF stage II model, got {type(stage_2).__name__}")
            stage_2 = diffusers.IFImg2ImgSuperResolutionPipeline(**stage_2.components)
        if stage_3 is not None and not {"image", "prompt"} <= call_parameter_names(stage_3):
            raise DiffDiffError(f"stage_3 must be an upscaler taking prompt and image, got {type(stage_3).__name__}")
        super().__init__(pipe, stage_2=stage_2, stage_3=stage_3)
        self.stage_2, self.stage_3 = stage_2, stage_3

    def vae_scale(self) -> int:
        return 1  # pixel space

    def default_guidance(self) -> float | None:
        return 7.0

    def run(self, job: Job) -> tuple[Any, RunInfo]:
        request = job.request
        source, prompt, negative_prompt = job.source, request.prompt, request.negative_prompt
        if job.trajectory is not None and self.stage_2 is not None:
            raise DiffDiffError("custom trajectories work with IF stage I only; load it without stage_2")
        generator = torch.Generator().manual_seed(int(request.seed))  # type: ignore[arg-type]
        # Caption cleaning needs bs4 + ftfy; without them diffusers warns and skips it anyway.
        clean = bool(is_bs4_available() and is_ftfy_available())
        info = RunInfo()
        map_stages = [self.pipe] + ([self.stage_2] if self.stage_2 is not None else [])
        n = len(prompt) if isinstance(prompt, list) else 1
        prompts = expand_prompts(prompt, request.num_images, n)
        negatives = expand_prompts(negative_prompt, request.num_images, n)
        images: Any = None
        for index, stage in enumerate(map_stages):
            w, h = if_size(source.size, int(stage.unet.config.sample_size))
            capture = NoiseCapture(stage.scheduler, "add_noise")
            # The hook moves the map to the images' device itself (pipe.device walks every module).
            hook = DifferentialStep(change=to_latent_map(job.change, h, w), capture=capture,
                                    trajectory=job.trajectory if index == 0 else None)
            final = stage is map_stages[-1] and self.stage_3 is None and request.output_type != "latent"
            # DeepFloyd's recommended guidance: 7 for stage I, 4 for stage II, unless the user sets one.
            guidance = request.guidance_scale if request.guidance_scale is not None else (7.0 if index == 0 else 4.0)
            kw: dict[str, Any] = dict(
                strength=request.strength, num_inference_steps=request.num_inference_steps, generator=generator,
                guidance_scale=guidance, clean_caption=clean,
                output_type="np" if final else "pt",  # np runs the safety checker
            )
            if index == 0:
                kw.update(prompt=prompt, negative_prompt=negative_prompt, image=source,
                          num_images_per_prompt=request.num_images)
            else:
                kw.update(prompt=prompts, negative_prompt=negatives, image=images,
                          original_image=[source] * len(prompts or []), noise_level=self.noise_level_2)
            planned = self.planned_steps(request.num_inference_steps, request.strength)
            skip = self.skip_for(stage, hook, planned, job, w, source.size[0])
            images = run_stage(stage, self.with_pipeline_kwargs(kw, request), hook, capture, skip, info,
                               legacy_callback=True)
            info.work_size = (w, h)
            if index == 0:
                self.record_start(info, hook, capture, stage)
        if request.output_type == "latent":
            return images, info  # pixel space: the last map-driven stage's image in [-1, 1]
        if self.stage_3 is not None:
            up_kw: dict[str, Any] = dict(
                prompt=prompts, negative_prompt=negatives, image=images,
                num_inference_steps=request.num_inference_steps, generator=generator, output_type="np",
                noise_level=self.noise_level_3,
            )
            params = call_parameter_names(self.stage_3)
            with torch.inference_mode():
                images = self.stage_3(**{k: v for k, v in up_kw.items() if k in params and v is not None}).images
            info.pipeline_calls += 1
            info.work_size = (int(images.shape[2]), int(images.shape[1]))
        return to_uint8_images(images), info
