"""Any pipeline that takes ``latents=``: our own img2img through the scheduler seam (issue 18).

The family is recognised from the pipeline's components, not its class name, so a diffusers
pipeline released next month is driven without a release of ours:

* an autoencoder (``vae`` or ``movq``) to encode the image, a scheduler with ``add_noise`` or
  ``scale_noise`` or a TrigFlow config (Sana Sprint's ``SCMScheduler``: our formula,
  :mod:`diffdiff.ownnoise`), and a ``__call__`` taking ``latents=``: text-to-image pipelines (PixArt, Sana,
  Lumina2, CogView4, HunyuanDiT, Kandinsky 3...), or img2img pipelines through their
  text-to-image form (Qwen-Image, Chroma, Kandinsky 3 img2img) when diffusers' own img2img would
  not do (packed latents, an autoencoder not called ``vae``);
* instruction-edit pipelines (``image`` but no ``strength``: Flux Kontext, Qwen-Image-Edit and
  Edit-Plus) get the input image as their reference too, so black pixels keep, white ones follow
  the instruction, grey between. Extra reference images (Edit-Plus takes a list) go in
  ``pipeline_kwargs["image"]``: they are handed on after the input, which stays the first;
* the latent layout (plain grid, 2x2-packed tokens, a VAE frame axis) and the latent
  normalisation come from :mod:`diffdiff.layouts`; the noising and the blend from
  :class:`diffdiff.ownnoise.ScheduleSeam`, run through the one :func:`~.base.run_stage`;
* a pipeline that generates at a size of its own choosing (HiDream: one fixed area whatever
  height/width it is given) is run again at the size it names (:class:`~diffdiff.ownnoise.ChosenSize`),
  remembered per requested size; the editor resizes the result back and pastes the kept pixels.

TrigFlow consistency models run 1-4 steps, so they count as few-step models: the map is rounded
to the nearest of the N + 1 behaviours (:func:`diffdiff.levels.round_to_levels`), and the
blend after the last step puts kept pixels on the clean latents (their schedule ends at t = 0).
``SanaSprintImg2ImgPipeline`` noises inline (nothing to capture), so it runs through its
text-to-image form, which reproduces it.

Img2img pipelines on a plain grid that the generic family drives exactly with their own noising
(PAG, Kolors, LCM, Z-Image) stay with it. What detection cannot know (a pipeline that rescales its
``latents=`` or renames its scheduler) is what :func:`diffdiff.families.register_adapter` is for.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch

from ..errors import DiffDiffError, UnsupportedModelError
from ..io import load_image
from ..layouts import DENOISER_NAMES, VAE_NAMES, LatentCodec, component
from ..ownnoise import (
    ChosenSize,
    ScheduleSeam,
    blends_in_callback,
    capture_for,
    draw_start,
    ends_at_zero,
    loop_dtype,
    loop_scale,
    noise_method,
    planned_steps,
    size_kwargs,
)
from ..pipeinfo import accepted_kwargs, call_parameter_names
from ..request import EditRequest
from .base import Adapter, Job, RunInfo, run_stage
from .generic import GenericAdapter

#: Runs one edit may take to find the size a pipeline generates at (each one encodes the prompt).
SIZE_ATTEMPTS = 3

#: Where video pipelines go: the video families (``Editor.edit_video``, ``diffdiff edit-video``).
VIDEO_POINTER = "video pipelines are edited with Editor.edit_video / 'diffdiff edit-video' by the video families"


def is_video(pipe: Any) -> bool:
    """A video pipeline: its call takes ``video`` or ``num_frames``."""
    return bool({"video", "num_frames"} & call_parameter_names(pipe))


def latents_form(pipe: Any) -> Optional[Any]:
    """The pipeline itself when it takes ``latents=`` and no ``strength``; else its text-to-image form."""
    params = call_parameter_names(pipe)
    if "latents" in params and "strength" not in params:
        return pipe
    if "strength" not in params:
        return None
    t2i = _text_to_image_form(pipe)
    if t2i is None:
        return None
    t2i_params = call_parameter_names(t2i)
    return t2i if "latents" in t2i_params and "strength" not in t2i_params else None


def _text_to_image_form(pipe: Any) -> Optional[Any]:
    """The same components under diffusers' text-to-image pipeline: its AutoPipeline table, else the
    class diffusers' naming gives it (``ChromaImg2ImgPipeline`` -> ``ChromaPipeline``)."""
    import diffusers

    try:
        return diffusers.AutoPipelineForText2Image.from_pipe(pipe)
    except Exception:  # not in diffusers' table
        pass
    cls = getattr(diffusers, type(pipe).__name__.replace("Img2Img", ""), None)
    if cls is None or cls is type(pipe):
        return None
    try:
        return cls(**pipe.components)
    except Exception:  # different components
        return None


def reference_images(image: Any, extra: Any) -> Any:
    """An instruction-edit pipeline's ``image`` argument: the edited input (at the work size) first,
    then the user's extra references (``EditRequest.reference_images``: one image, a list, or None)."""
    if extra is None:
        return image
    return [image, *(extra if isinstance(extra, (list, tuple)) else [extra])]


def obstacle(pipe: Any) -> Optional[str]:
    """Why diffdiff cannot noise the image itself for ``pipe`` (one line), or None when it can."""
    if is_video(pipe):
        return VIDEO_POINTER
    _, vae = component(pipe, VAE_NAMES)
    if vae is None or not hasattr(vae, "encode"):
        return "it has no autoencoder (" + " / ".join(VAE_NAMES) + ") to encode the image"
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None or not callable(getattr(scheduler, "set_timesteps", None)):
        return "it has no scheduler with set_timesteps"
    if noise_method(scheduler) is None:
        return (f"its scheduler {type(scheduler).__name__} has neither add_noise nor scale_noise nor a "
                "TrigFlow config, so the image cannot be noised to a start step")
    if latents_form(pipe) is None:
        return "its __call__ takes no latents= (nor does a text-to-image form of it)"
    return None


class OwnNoiseAdapter(Adapter):
    """Differential Diffusion on any ``latents=`` pipeline: we encode, noise and truncate ourselves."""

    name = "own-noise"
    pass_size = True
    #: Blend from ``callback_on_step_end`` where the pipeline has one, instead of from the seam's
    #: ``scheduler.step`` wrapper. Off: the wrapper sees the timestep the scheduler really steps
    #: with, while some pipelines hand their callback something else (CogView4 passes the sigma).
    #: Both routes give identical latents where the callback is honest (tested on Sana).
    use_callback: ClassVar[bool] = False

    def __init__(self, pipe: Any, **parts: Any) -> None:
        form = latents_form(pipe)
        if form is None or obstacle(pipe) is not None:
            raise UnsupportedModelError(f"{type(pipe).__name__}: {obstacle(pipe) or 'no latents= input'}")
        super().__init__(form, **parts)
        self.codec = LatentCodec.of(form)
        self.noise_method = noise_method(form.scheduler)  # type: ignore[misc]
        self.reference_image = "image" in call_parameter_names(form)  # an instruction-edit pipeline
        #: requested work size -> the size the pipeline generates at, where they differ (learned)
        self.chosen_sizes: dict[tuple[int, int], tuple[int, int]] = {}

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        if "strength" in call_parameter_names(pipe) and GenericAdapter.matches(pipe) and \
                LatentCodec.of(pipe).layout.name == "grid":
            return False  # diffusers' own img2img noising, driven exactly by the generic family
        return obstacle(pipe) is None

    # geometry ---------------------------------------------------------------------------------------
    def vae_scale(self) -> int:
        return self.codec.scale

    def pixel_multiple(self) -> int:
        return self.codec.pixel_multiple()

    def latent_hw(self, width: int, height: int) -> tuple[int, int]:
        return self.codec.latent_hw(width, height)

    def work_size(self, width: int, height: int) -> tuple[int, int]:
        size = super().work_size(width, height)
        return self.chosen_sizes.get(size, size)

    def unpack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return self.codec.layout.to_grid(latents, *self.latent_hw(width, height))

    def pack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return self.codec.layout.from_grid(latents)

    # calling ----------------------------------------------------------------------------------------
    def planned_steps(self, num_inference_steps: int, strength: float) -> int:
        return planned_steps(self.noise_method, num_inference_steps, strength)

    def is_few_step(self, model_name: Optional[str] = None) -> bool:
        """A consistency model (TrigFlow) is few-step by construction; else the name/scheduler rule."""
        return self.noise_method == "trigflow" or super().is_few_step(model_name)

    def call_kwargs(self, image: Any, request: EditRequest, generator: torch.Generator,
                    size: tuple[int, int]) -> dict[str, Any]:
        kw: dict[str, Any] = dict(prompt=request.prompt, num_inference_steps=request.num_inference_steps,
                                  num_images_per_prompt=request.num_images, generator=generator,
                                  **size_kwargs(self.pipe, *size))
        if request.negative_prompt is not None:
            kw["negative_prompt"] = request.negative_prompt
        if request.guidance_scale is not None:
            kw["guidance_scale"] = request.guidance_scale
        if self.reference_image:
            kw["image"] = image
        if request.num_inference_steps != 2:
            kw["intermediate_timesteps"] = None  # SCM's intermediate time is for 2-step schedules only
        kw = self.with_pipeline_kwargs(accepted_kwargs(self.pipe, kw), request)
        if self.reference_image and request.reference_images:
            kw["image"] = reference_images(image, [load_image(r, "reference image").convert("RGB")
                                                   for r in request.reference_images])
        return kw

    def run(self, job: Job) -> tuple[Any, RunInfo]:
        asked = super().work_size(*job.source.size)
        sizes = [self.work_size(*job.source.size)]
        for _ in range(SIZE_ATTEMPTS):
            try:
                return self._run_once(job)
            except ChosenSize as chosen:
                if chosen.size in sizes:  # no size it keeps: give up in one line
                    break
                sizes.append(chosen.size)
                self.chosen_sizes[asked] = chosen.size
        self.chosen_sizes.pop(asked, None)
        tried = ", ".join(f"{w}x{h}" for w, h in sizes)
        raise DiffDiffError(f"{type(self.pipe).__name__} generates at a size of its own choosing and keeps none of "
                            f"those it chose ({tried}); diffdiff cannot give it a work size")

    def _run_once(self, job: Job) -> tuple[Any, RunInfo]:
        work = self.prepare(job)
        request = job.request
        pipe = self.pipe
        device = pipe._execution_device
        _, denoiser = component(pipe, DENOISER_NAMES)
        dtype = loop_dtype(self.noise_method,
                           getattr(denoiser, "dtype", None) or getattr(self.codec.vae, "dtype", torch.float32))
        with torch.inference_mode():
            clean, noise = draw_start(self.codec, work.image, request.num_images, work.generator, device, dtype)
        planned = self.planned_steps(request.num_inference_steps, request.strength)
        latents = torch.zeros_like(self.codec.layout.from_grid(noise))
        capture = capture_for(pipe.scheduler, self.noise_method)  # records the seam's own noising
        end_point = ends_at_zero(self.noise_method)
        seam = ScheduleSeam(pipe=pipe, codec=self.codec, method=self.noise_method,
                            skip_full_steps=request.num_inference_steps - planned, clean=clean, noise=noise,
                            latents=latents, capture=capture, scale=loop_scale(pipe.scheduler, self.noise_method),
                            end_point=end_point, size=(work.width, work.height))
        hook = self.hook_for(work, capture, job, end_point=end_point)
        seam.hook = hook
        seam.blend_in_step = not (self.use_callback and blends_in_callback(pipe))
        skip = self.skip_for(pipe, hook, planned, job, work.grid_width, work.width)
        kwargs = dict(work.kwargs, latents=latents, output_type=job.output)
        images = run_stage(pipe, kwargs, hook, capture, skip, work.info, seam=seam,
                           step_callback=not seam.blend_in_step)
        self.record_start(work.info, hook, capture, pipe)
        return self.output(images, job, work), work.info
