"""Stable Diffusion 1.x/2.x and SDXL, with SDXL's refiner as a part of the family.

The refiner continues the base's run on one global schedule: the base stops at
``refiner_start`` (``denoising_end``), the refiner starts there (``denoising_start``) with the
same thresholds and the same reference, so a pixel's number of followed steps does not depend
on where the split falls.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import DiffDiffError
from ..hook import DifferentialStep, NoiseCapture
from .base import Adapter, Job, PartSpec, RunInfo, run_stage


class StableDiffusionAdapter(Adapter):
    name = "sd"
    pipeline_classes = ("StableDiffusionImg2ImgPipeline",)
    text_maps = True


class StableDiffusionXLAdapter(Adapter):
    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLImg2ImgPipeline",)
    extra_parts: ClassVar[dict[str, PartSpec]] = {"refiner": PartSpec()}
    text_maps = True

    def __init__(self, pipe: Any, **parts: Any) -> None:
        super().__init__(pipe, **parts)
        self.refiner_start = 0.8

    @property
    def refiner(self) -> Any:
        return self.parts.get("refiner")

    def set_refiner_start(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise DiffDiffError(f"refiner_start must be between 0 and 1, got {value}")
        self.refiner_start = float(value)

    def starts_after_split(self, num_inference_steps: int, strength: float) -> bool:
        """True when a low strength starts the run after the base/refiner split (base has no steps)."""
        sched = self.pipe.scheduler
        sched.set_timesteps(num_inference_steps)
        order = int(getattr(sched, "order", 1))
        steps = self.planned_steps(num_inference_steps, strength)
        start = sched.timesteps[(num_inference_steps - steps) * order]
        t_train = sched.config.num_train_timesteps
        cutoff = int(round(t_train - self.refiner_start * t_train))
        return bool(start < cutoff)

    def run(self, job: Job) -> tuple[Any, RunInfo]:
        refiner = self.refiner
        if refiner is None:
            return super().run(job)
        request = job.request
        work = self.prepare(job)
        info = work.info
        refiner_only = self.starts_after_split(request.num_inference_steps, request.strength)
        first = refiner if refiner_only else self.pipe
        capture = NoiseCapture(first.scheduler, self.noise_method)
        hook = self.hook_for(work, capture, job)
        first_kwargs = dict(work.kwargs, output_type=job.output if refiner_only else "latent")
        if not refiner_only:
            first_kwargs["denoising_end"] = self.refiner_start
        planned = self.planned_steps(request.num_inference_steps, request.strength)
        skip = self.skip_for(first, hook, planned, job, work.grid_width, work.width)
        images = run_stage(first, first_kwargs, hook, capture, skip, info)
        self.record_start(info, hook, capture, first)
        if not refiner_only:
            # Continue the same global schedule in the refiner: same thresholds, same reference.
            ref_capture = NoiseCapture(refiner.scheduler, self.noise_method)
            ref_hook = DifferentialStep(change=work.change, capture=ref_capture, reference=capture.reference,
                                        start=hook.start, trajectory=job.trajectory)
            ref_kwargs = dict(work.kwargs, image=images, denoising_start=self.refiner_start, output_type=job.output)
            # The refiner continues at global step `hook.completed`, with the same thresholds.
            ref_skip = self.skip_for(refiner, ref_hook, info.total_steps, job, work.grid_width, work.width,
                                     steps_before=hook.completed)
            images = run_stage(refiner, ref_kwargs, ref_hook, ref_capture, ref_skip, info)
        return self.output(images, job, work), info
