"""The family contract and the one way to run a hooked pipeline call.

A family adapter answers a few questions for the engine and nothing more, mostly as class
attributes (as diffusers pipelines declare theirs):

* which pipelines it drives (``matches``; ``pipeline_classes`` by name),
* its geometry (``pixel_multiple``, ``latent_hw``) and latent layout (``unpack``/``pack``),
* how the pipeline noises the image (``noise_method``: ``add_noise`` or flow matching's
  ``scale_noise``) and how many steps a strength executes (``planned_steps``),
* how the pipeline is called for an img2img run (``call_kwargs``),
* which extra pipelines it takes (``extra_parts``: SDXL's refiner, Kandinsky's prior, IF's stages).

:func:`run_stage` is the single place where a diffusers pipeline is called with the
Differential Diffusion hooks installed (noise capture, step callback, frozen-pixel skipping,
finite VAE decode). :meth:`Adapter.run` is the ordinary one-call run; multi-call families
(SDXL + refiner, the IF cascade) override it and call :func:`run_stage` once per stage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Optional

import numpy as np
import torch
from PIL import Image

from ..addon_inputs import pipeline_inputs
from ..changemap import to_latent_map
from ..hook import DifferentialStep, NoiseCapture, Reference, StepRecord
from ..levels import executed_steps, round_to_levels
from ..numerics import finite_vae_decode, to_uint8_images
from ..pipeinfo import accepted_kwargs, default_argument
from ..request import EditRequest
from ..skip import FrozenSkip, frozen_skip

#: A reference trajectory replacing the noised original (DiffEdit's inversion): (step, latents) -> target.
Trajectory = Callable[[int, torch.Tensor], torch.Tensor]

# Scheduler classes and model-name fragments of few-step (distilled) models.
FEW_STEP_SCHEDULERS = ("LCMScheduler", "TCDScheduler")
FEW_STEP_NAMES = ("turbo", "schnell", "lcm", "lightning", "hyper", "tcd")


class PartSpec(NamedTuple):
    """An extra pipeline a family takes: how to load it, its default, what it shares with the base.

    ``pipeline``: the diffusers class name to load it as (None: as an img2img pipeline, single files
    too); ``default``: loaded when the user gives none; ``share``: base components passed to it.
    """

    pipeline: Optional[str] = None
    default: Optional[str] = None
    share: tuple[str, ...] = ()


@dataclass
class RunInfo:
    """Details of the last run, for previews, tests and debugging."""

    total_steps: int = 0
    records: list[StepRecord] = field(default_factory=list)
    reference: Optional[Reference] = None
    work_size: tuple[int, int] = (0, 0)
    pipeline_calls: int = 0
    #: with ``skip_frozen``: per denoiser call, the fraction of the grid the model ran on (0 = skipped)
    denoised_fractions: list[float] = field(default_factory=list)


@dataclass
class Job:
    """What a family runs: the source at its edit size, the image-size change map, the request."""

    source: Image.Image  # RGB
    change: np.ndarray  # (H, W) float32 in [0, 1], the source's size
    request: EditRequest  # seed resolved
    trajectory: Optional[Trajectory] = None

    @property
    def skip_frozen(self) -> bool:
        return bool(self.request.skip_frozen) and self.trajectory is None

    @property
    def output(self) -> str:
        """The pipeline ``output_type`` of the run's last stage."""
        return "latent" if self.request.output_type == "latent" else "np"


@dataclass
class Work:
    """One run's prepared inputs: the work-size image, the map on the grid, the call arguments."""

    image: Image.Image
    width: int
    height: int
    grid_width: int
    change: torch.Tensor  # (1, 1, h, w) on the denoiser's grid
    generator: torch.Generator
    kwargs: dict[str, Any]
    info: RunInfo


def run_stage(
    pipe: Any,
    kwargs: dict[str, Any],
    hook: DifferentialStep,
    capture: NoiseCapture,
    skip: Optional[FrozenSkip],
    info: RunInfo,
    legacy_callback: bool = False,
    seam: Optional[contextlib.AbstractContextManager[Any]] = None,
    step_callback: bool = True,
) -> Any:
    """Call ``pipe(**kwargs)`` once with the hooks installed; returns its ``images`` and updates ``info``.

    ``legacy_callback``: pipelines with only the old ``callback(i, t, x)`` (DeepFloyd IF) get the
    hook through it, writing the blend back in place. ``seam``: the scheduler seam of our own
    img2img (:class:`diffdiff.ownnoise.ScheduleSeam`), installed inside the noise capture;
    ``step_callback=False`` when the seam runs the hook from ``scheduler.step`` instead. A hook that
    is also a context manager (Flux Fill's mask feed) is entered for the call.
    """
    hooks: dict[str, Any] = {}
    if legacy_callback:
        hooks = {"callback": _legacy_callback(pipe, hook), "callback_steps": 1}
    elif step_callback:
        hooks = {"callback_on_step_end": hook, "callback_on_step_end_tensor_inputs": list(hook.tensor_inputs)}
    entered: Any = hook if hasattr(hook, "__enter__") else contextlib.nullcontext()
    with torch.inference_mode(), capture, seam or contextlib.nullcontext(), entered, skip or contextlib.nullcontext(), \
            finite_vae_decode(getattr(pipe, "vae", None)):
        result = pipe(**kwargs, **hooks)
    info.pipeline_calls += 1
    info.records += hook.records
    if skip is not None:
        info.denoised_fractions += skip.fractions
    # Image pipelines return ``images``; video pipelines (Wan, CogVideoX, AnimateDiff) ``frames``.
    return result.images if hasattr(result, "images") else result.frames


def _legacy_callback(pipe: Any, hook: DifferentialStep) -> Callable[[int, Any, torch.Tensor], None]:
    def callback(i: int, t: Any, images: torch.Tensor) -> None:
        out = hook(pipe, i, t, {"latents": images})["latents"]
        if out is not images:
            images.copy_(out)

    return callback


def lineage(pipe: Any) -> set[str]:
    """The names of ``pipe``'s class and every class it derives from.

    A named family also drives subclasses of its pipelines (a community fork that overrides one
    method of ``StableDiffusionImg2ImgPipeline`` is still SD); pipelines of no named family are
    detected from their components (generic, own-noise).
    """
    return {c.__name__ for c in type(pipe).__mro__}


class Adapter:
    """Base adapter: a UNet/DiT img2img pipeline with VAE latents on a plain grid, run in one call."""

    name: ClassVar[str] = "generic"
    #: diffusers classes (by name) this adapter drives
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    #: model_index.json class names to load directly as another diffusers class (by name)
    load_as_classes: ClassVar[dict[str, str]] = {}
    noise_method: ClassVar[str] = "add_noise"
    #: extra pipelines the family takes (``Editor.from_pretrained`` keywords)
    extra_parts: ClassVar[dict[str, PartSpec]] = {}
    #: True when results come back at the model's own output size (IF cascades), not the input's.
    native_output: ClassVar[bool] = False
    #: pass the work size as ``height``/``width`` (pipelines that otherwise use a default size)
    pass_size: ClassVar[bool] = False
    #: the family's map-driven edits support automatic maps and DiffEdit (its UNet is called directly)
    text_maps: ClassVar[bool] = False
    #: instruction edits: the input image is also the model's reference, and ``EditRequest.reference_images``
    #: follow it (:meth:`diffdiff.Editor.run` refuses them elsewhere)
    reference_image: bool = False

    def __init__(self, pipe: Any, **parts: Any) -> None:
        self.pipe = pipe
        self.parts = {k: v for k, v in parts.items() if v is not None}
        self.model_name: str = ""

    def pipelines(self) -> list[Any]:
        """Every pipeline the family uses (for progress bars and device moves)."""
        return [self.pipe, *self.parts.values()]

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return bool(lineage(pipe) & set(cls.pipeline_classes))

    @classmethod
    def default_part(cls, name: str, pipe: Any) -> Optional[str]:
        """The extra pipeline ``name`` to load when the user gives none (None: go without)."""
        return cls.extra_parts[name].default

    # geometry -----------------------------------------------------------------------------------
    def vae_scale(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    def pixel_multiple(self) -> int:
        """Input sizes are rounded to a multiple of this (pixels)."""
        return self.vae_scale()

    def work_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the model runs at: the image's size rounded to the family's pixel multiple."""
        m = self.pixel_multiple()
        return max(m, int(round(width / m)) * m), max(m, int(round(height / m)) * m)

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
        return executed_steps(num_inference_steps, strength)

    def default_guidance(self) -> float | None:
        value = default_argument(self.pipe, "guidance_scale")
        return None if value is None else float(value)

    def call_kwargs(self, image: Any, request: EditRequest, generator: torch.Generator,
                    size: tuple[int, int]) -> dict[str, Any]:
        """The pipeline call's arguments for an img2img run of ``request`` on ``image`` at ``size``."""
        kw: dict[str, Any] = dict(
            image=image,
            prompt=request.prompt,
            num_inference_steps=request.num_inference_steps,
            strength=request.strength,
            num_images_per_prompt=request.num_images,
            generator=generator,
        )
        if request.negative_prompt is not None:
            kw["negative_prompt"] = request.negative_prompt
        if request.guidance_scale is not None:
            kw["guidance_scale"] = request.guidance_scale
        if self.pass_size:
            kw["width"], kw["height"] = size
        return self.with_pipeline_kwargs(accepted_kwargs(self.pipe, kw), request)

    @staticmethod
    def with_pipeline_kwargs(kw: dict[str, Any], request: EditRequest) -> dict[str, Any]:
        """The user's ``pipeline_kwargs`` over ours (they asked for them by name)."""
        return {**kw, **request.pipeline_kwargs} if request.pipeline_kwargs else kw

    def latents_from_output(self, images: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Pipeline ``output_type="latent"`` result as (B, C, h, w)."""
        return self.unpack(images, width, height)

    # few-step models ------------------------------------------------------------------------------
    def is_few_step(self, model_name: Optional[str] = None) -> bool:
        """A distilled few-step model (LCM, Turbo, schnell, Lightning, Hyper, TCD)."""
        if type(self.pipe.scheduler).__name__ in FEW_STEP_SCHEDULERS:
            return True
        name = model_name or self.model_name or getattr(getattr(self.pipe, "config", None), "_name_or_path", "") or ""
        name = str(name).lower()  # a pathlib.Path when the pipeline was loaded from one
        return any(part in name for part in FEW_STEP_NAMES)

    # running --------------------------------------------------------------------------------------
    def prepare(self, job: Job) -> Work:
        """Work-size image, the map on the grid (few-step models: rounded to levels), call arguments."""
        request = job.request
        ww, wh = self.work_size(*job.source.size)
        image = job.source if job.source.size == (ww, wh) else job.source.resize((ww, wh), Image.Resampling.LANCZOS)
        lh, lw = self.latent_hw(ww, wh)
        change = to_latent_map(job.change, lh, lw)
        if self.is_few_step():
            # Distilled models run few steps: round the map to the nearest of the N levels (unbiased).
            change = round_to_levels(change, self.planned_steps(request.num_inference_steps, request.strength))
        generator = torch.Generator().manual_seed(int(request.seed))  # type: ignore[arg-type]
        kwargs = self.call_kwargs(image, request, generator, (ww, wh))
        kwargs.update(pipeline_inputs(self.pipe, request, image, job.source.size))  # ControlNet, IP-Adapter inputs
        return Work(image, ww, wh, lw, change, generator, kwargs, RunInfo(work_size=(ww, wh)))

    def hook_for(self, work: Work, capture: NoiseCapture, job: Job, **kw: Any) -> DifferentialStep:
        """The step hook on the work's grid, with this family's latent layout."""
        return DifferentialStep(
            change=work.change, capture=capture, trajectory=job.trajectory,
            unpack=lambda x: self.unpack(x, work.width, work.height),
            pack=lambda x: self.pack(x, work.width, work.height), **kw,
        )

    def skip_for(self, pipe: Any, hook: DifferentialStep, total_steps: int, job: Job, grid_width: int,
                 image_width: int, steps_before: int = 0) -> Optional[FrozenSkip]:
        """Frozen-pixel skipping for one stage when the request asks for it."""
        if not job.skip_frozen:
            return None
        return frozen_skip(pipe, hook, total_steps, self.noise_method, job.request.crop_padding, grid_width,
                           image_width, steps_before=steps_before, pack=hook.pack)

    def run(self, job: Job) -> tuple[Any, RunInfo]:
        """One edit: uint8 arrays (B, H, W, 3) or latents (B, C, h, w), and the run's details."""
        work = self.prepare(job)
        capture = NoiseCapture(self.pipe.scheduler, self.noise_method)
        hook = self.hook_for(work, capture, job)
        planned = self.planned_steps(job.request.num_inference_steps, job.request.strength)
        skip = self.skip_for(self.pipe, hook, planned, job, work.grid_width, work.width)
        callback, kwargs = self.stage_callback(hook, dict(work.kwargs, output_type=job.output), work, job, planned)
        images = run_stage(self.pipe, kwargs, callback, capture, skip, work.info)
        self.record_start(work.info, hook, capture, self.pipe)
        return self.output(images, job, work), work.info

    def stage_callback(self, hook: DifferentialStep, kwargs: dict[str, Any], work: Work, job: Job,
                       planned: int) -> tuple[DifferentialStep, dict[str, Any]]:
        """The step callback and call arguments of a one-call run (inpainting checkpoints wrap the hook)."""
        return hook, kwargs

    @staticmethod
    def record_start(info: RunInfo, hook: DifferentialStep, capture: NoiseCapture, pipe: Any) -> None:
        """The run's reference and step count, from its first stage."""
        info.reference = capture.reference
        info.total_steps = hook.total_steps(pipe.scheduler) if hook.start is not None else 0

    def output(self, images: Any, job: Job, work: Work) -> Any:
        if job.request.output_type == "latent":
            return self.latents_from_output(images, work.width, work.height)
        return to_uint8_images(images)
