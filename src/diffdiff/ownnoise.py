"""Our own img2img for any diffusers pipeline that takes ``latents=``, through the scheduler seam.

Text-to-image pipelines (PixArt, Sana, Lumina2, CogView4, HunyuanDiT, Kandinsky 3, Qwen-Image,
Chroma, Flux, SD3...) and instruction-edit pipelines (Flux Kontext) have no ``strength``. Every
diffusers pipeline, though, calls ``scheduler.set_timesteps`` once and ``scheduler.step`` after
each model evaluation. :class:`ScheduleSeam` wraps those two methods for one pipeline call:

* ``set_timesteps``: the schedule is truncated to the strength's start (the pipeline runs only the
  last L steps, diffusers' ``get_timesteps`` rule), and the start latents are written into the
  ``latents=`` tensor the pipeline was given: the encoded image (:class:`diffdiff.layouts.LatentCodec`)
  noised to the first kept step with the scheduler's own ``add_noise`` / ``scale_noise`` and noise
  drawn from the user's generator, in the same order as the img2img siblings draw it. Writing at
  this moment, not before the call, lets the pipeline compute its own schedule first (Flux's
  resolution-dependent shift).
* ``step``: the first call checks that the pipeline really started from those latents (a pipeline
  that copied or rescaled them is refused in one line, never silently run from noise). The
  change-map blend (:class:`diffdiff.hook.DifferentialStep`) runs here after each step, with the
  timestep the scheduler really stepped with: every pipeline has this seam (PixArt has no
  ``callback_on_step_end``) and it cannot be misled by a callback that is handed something else
  (CogView4 passes its callback the sigma). ``callback_on_step_end`` remains available
  (``blend_in_step=False``) and gives the same latents where the pipeline's callback is honest.

* ``prepare_latents`` (given the work size): a pipeline that refuses our ``latents=`` because it
  generates at a size of its own choosing (HiDream scales every request to one fixed area) raises
  :class:`ChosenSize` naming that size, so the family runs again at it.

The result: where a pipeline has an img2img sibling (SD, SD3, Flux, Qwen-Image, Chroma), our
own noising reproduces the sibling's latents for the same seed.

Noising formulas, one per scheduler kind (:func:`noise_method`, told from the scheduler's methods
and config, never from a class name): the scheduler's own ``add_noise`` (DDPM family) or
``scale_noise`` (flow matching), and ``trigflow`` for TrigFlow consistency models (Sana Sprint's
``SCMScheduler``, ``prediction_type="trigflow"``), which have no noising method at all:
``x_t = cos(t) x0 + sin(t) z`` with ``t`` in radians (pi/2 is pure noise), ``x0`` and ``z`` in
units of ``sigma_data`` (:func:`loop_scale`), exactly as ``SanaSprintImg2ImgPipeline`` noises and
``SCMScheduler.step`` re-noises. Its schedules list the end time 0 after the last step
(:func:`ends_at_zero`), so the blend after the last step lands the kept pixels on ``x0`` itself.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .errors import DiffDiffError
from .hook import DifferentialStep, NoiseCapture
from .layouts import LatentCodec
from .levels import executed_steps, flow_executed_steps
from .pipeinfo import call_parameter_names

#: Noising formulas we know, by kind: the scheduler's own methods, then TrigFlow's (no method).
NOISE_METHODS = ("add_noise", "scale_noise", "trigflow")


def is_trigflow(scheduler: Any) -> bool:
    """A TrigFlow consistency-model scheduler (sCM: Sana Sprint's ``SCMScheduler``), from its config."""
    config = getattr(scheduler, "config", None)
    return getattr(config, "prediction_type", None) == "trigflow" and getattr(config, "sigma_data", None) is not None


def noise_method(scheduler: Any) -> Optional[str]:
    """``add_noise`` (DDPM family), ``scale_noise`` (flow matching), ``trigflow`` (sCM), or None (unknown)."""
    for name in ("scale_noise", "add_noise"):
        if callable(getattr(scheduler, name, None)):
            return name
    if is_trigflow(scheduler):
        return "trigflow"
    return None


def trigflow_noise(clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """TrigFlow noising ``cos(t) * clean + sin(t) * noise`` (``add_noise``'s argument order), ``t`` per image."""
    t = torch.as_tensor(timesteps).to(device=clean.device, dtype=torch.float32)
    t = t.reshape(-1, *([1] * (clean.ndim - 1)))
    return torch.cos(t) * clean + torch.sin(t) * noise


#: Noising formulas for scheduler kinds that have no method of their own (``add_noise`` argument order).
FORMULAS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "trigflow": trigflow_noise,
}


def capture_for(scheduler: Any, method: str) -> NoiseCapture:
    """The reference recorder for ``method``: it wraps the scheduler's method, or applies our formula."""
    return NoiseCapture(scheduler, method, formula=FORMULAS.get(method))


def loop_scale(scheduler: Any, method: str) -> float:
    """What the pipeline's loop multiplies normalised latents and unit noise by (and the ``latents=`` it is
    given): TrigFlow pipelines run in units of ``sigma_data``; every other kind in 1."""
    return float(scheduler.config.sigma_data) if method == "trigflow" else 1.0


def loop_dtype(method: str, denoiser_dtype: torch.dtype) -> torch.dtype:
    """The dtype the start latents and noise are drawn in: the denoiser's, except TrigFlow pipelines,
    whose loop runs in float32 whatever the transformer's dtype (Sana Sprint's ``prepare_latents``)."""
    return torch.float32 if method == "trigflow" else denoiser_dtype


def ends_at_zero(method: str) -> bool:
    """Whether the kind's ``timesteps`` list the end time after the last step (TrigFlow: N + 1 entries)."""
    return method == "trigflow"


def planned_steps(method: str, num_inference_steps: int, strength: float) -> int:
    """Steps a run executes: diffusers' img2img rule for the scheduler kind (:mod:`diffdiff.levels`).

    TrigFlow's img2img sibling (``SanaSprintImg2ImgPipeline``) truncates as flow matching does."""
    if method in ("scale_noise", "trigflow"):
        return flow_executed_steps(num_inference_steps, strength)
    return executed_steps(num_inference_steps, strength)


def truncate_schedule(scheduler: Any, skip_full_steps: int, end_point: bool = False) -> None:
    """Drop the first ``skip_full_steps`` full steps from ``timesteps`` (and ``sigmas``, kept aligned).

    ``end_point``: the schedule's last entry is the end time, not a step (:func:`ends_at_zero`)."""
    order = int(getattr(scheduler, "order", 1))
    k = skip_full_steps * order
    times = scheduler.timesteps
    n = len(times)
    if k >= n - int(end_point):
        raise DiffDiffError("the strength leaves no denoising step: raise strength or steps")
    if k == 0:
        return
    scheduler.timesteps = times[k:]
    sigmas = getattr(scheduler, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 and len(sigmas) in (n, n + 1):
        scheduler.sigmas = sigmas[k:]


_UNIT_SIGMA: dict[type, type] = {}


def _unit_sigma_class(cls: type) -> type:
    """``cls`` with ``init_noise_sigma`` = 1 (same name; cached per class)."""
    if cls not in _UNIT_SIGMA:
        _UNIT_SIGMA[cls] = type(cls.__name__, (cls,), {"init_noise_sigma": 1.0, "__module__": cls.__module__,
                                                        "__qualname__": cls.__qualname__})
    return _UNIT_SIGMA[cls]


def _forward(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return call


_STEP_NAMES = ("model_output", "timestep", "sample")


class ChosenSize(DiffDiffError):
    """The pipeline generates at ``size`` (width, height), not at the work size it was given."""

    def __init__(self, pipe: Any, asked: tuple[int, int], size: tuple[int, int]) -> None:
        super().__init__(f"{type(pipe).__name__} generates at {size[0]}x{size[1]} when asked for "
                         f"{asked[0]}x{asked[1]} (it does not take the height/width it is given)")
        self.asked = asked
        self.size = size


@dataclass
class ScheduleSeam:
    """Context manager: own img2img noising and the change-map blend for ONE pipeline call.

    ``clean`` (1 or B, C, h, w) are the normalised image latents, ``noise`` (B, C, h, w) the noise,
    ``latents`` the tensor passed as the pipeline's ``latents=`` (in its layout; filled here).
    ``hook`` is the change-map blend; ``blend_in_step`` runs it from ``scheduler.step`` (what the
    own-noise family does; False leaves it to the pipeline's ``callback_on_step_end``).
    ``capture`` (:func:`capture_for`) noises the start and records the reference; required for a
    kind without a scheduler method (TrigFlow). ``scale`` is :func:`loop_scale`, ``end_point``
    :func:`ends_at_zero`: the last step's blend then also replaces the step's ``x0`` prediction,
    which such pipelines return (at t = 0 it equals the stepped sample).
    """

    pipe: Any
    codec: LatentCodec
    method: str
    skip_full_steps: int
    clean: torch.Tensor
    noise: torch.Tensor
    latents: torch.Tensor
    hook: Optional[DifferentialStep] = None
    blend_in_step: bool = False
    capture: Optional[NoiseCapture] = None
    scale: float = 1.0
    end_point: bool = False
    #: the work size (width, height) in pixels: a pipeline refusing ``latents`` for a size of its own
    #: choosing raises :class:`ChosenSize` from its ``prepare_latents``
    size: Optional[tuple[int, int]] = None
    #: filled in: the start latents on the grid, step calls made, set_timesteps calls seen
    start: Optional[torch.Tensor] = None
    steps_called: int = 0
    schedules: int = 0
    _originals: dict[str, Callable[..., Any]] = field(default_factory=dict)
    _class: Optional[type] = None
    _sigma_attr: Any = None

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    # the wrapped scheduler methods -----------------------------------------------------------------
    def _set_timesteps(self, *args: Any, **kwargs: Any) -> Any:
        out = self._originals["set_timesteps"](*args, **kwargs)
        self.schedules += 1
        truncate_schedule(self.scheduler, self.skip_full_steps, self.end_point)
        first = self.scheduler.timesteps[:1].repeat(self.noise.shape[0])
        clean = self.clean.expand_as(self.noise) if self.clean.shape[0] != self.noise.shape[0] else self.clean
        noise = self.noise
        if self.scale != 1.0:  # the pipeline's units (TrigFlow: x0 and noise times sigma_data)
            clean, noise = clean * self.scale, noise * self.scale
        if self.capture is not None:
            start = self.capture.noise(clean, noise, first)
        elif self.method in FORMULAS:
            raise DiffDiffError(f"{type(self.pipe).__name__}: a {self.method} start needs the run's noise capture")
        elif self.method == "scale_noise":
            start = self.scheduler.scale_noise(clean, first, noise)
        else:
            start = self.scheduler.add_noise(clean, noise, first)
        self.start = start
        given = start / self.scale if self.scale != 1.0 else start  # the pipeline multiplies latents= by it
        packed = self.codec.layout.from_grid(given).to(self.latents.dtype)
        if packed.shape != self.latents.shape:
            raise DiffDiffError(f"{type(self.pipe).__name__}: start latents of shape {tuple(packed.shape)} do not fit "
                                f"the latents it takes {tuple(self.latents.shape)}")
        with torch.no_grad():
            # set_ (not copy_) keeps the start's memory layout too: the VAE's channels-last output
            # goes on into the denoiser exactly as in the img2img sibling (bit-identical results).
            self.latents.set_(packed.detach().clone(memory_format=torch.preserve_format))
        return out

    def _step(self, *args: Any, **kwargs: Any) -> Any:
        bound = dict(zip(_STEP_NAMES, args))
        bound.update({k: v for k, v in kwargs.items() if k in _STEP_NAMES})
        if self.steps_called == 0:
            self._check_start(bound.get("sample"))
        index = self.steps_called
        self.steps_called += 1
        out = self._originals["step"](*args, **kwargs)
        if not self.blend_in_step or self.hook is None:
            return out
        prev = out[0] if isinstance(out, tuple) else out.prev_sample
        sched = self.scheduler
        t = bound.get("timestep")
        if isinstance(t, torch.Tensor) and t.numel() > 1:  # Sana Sprint steps with t.expand(batch)
            t = t.flatten()[0]
        mixed = self.hook.step(prev, index, t, sched.timesteps, int(getattr(sched, "order", 1)),
                               bool(getattr(sched, "state_in_first_order", True)))
        # At the end time (t = 0) the stepped sample is the x0 prediction the pipeline returns.
        last = self.end_point and self.steps_called == len(sched.timesteps) - 1
        if isinstance(out, tuple):
            return (mixed, mixed, *out[2:]) if last and len(out) > 1 else (mixed, *out[1:])
        out.prev_sample = mixed
        if last and getattr(out, "pred_original_sample", None) is not None:
            out.pred_original_sample = mixed
        return out

    def _prepare_latents(self, *args: Any, **kwargs: Any) -> Any:
        original = self._originals["prepare_latents"]
        try:
            return original(*args, **kwargs)
        except ValueError as exc:  # diffusers' "Unexpected latents shape"
            try:
                bound = inspect.signature(original).bind_partial(*args, **kwargs).arguments
            except TypeError:
                raise exc from None
            size = (bound.get("width"), bound.get("height"))
            if self.size is not None and all(isinstance(v, int) for v in size) and size != self.size:
                raise ChosenSize(self.pipe, self.size, (int(size[0]), int(size[1]))) from exc  # type: ignore[arg-type]
            raise

    def _check_start(self, sample: Any) -> None:
        if self.start is None:
            raise DiffDiffError(f"{type(self.pipe).__name__} never called scheduler.set_timesteps before its "
                                "first step; diffdiff cannot noise the image for it")
        expected = self.codec.layout.from_grid(self.start)
        ok = isinstance(sample, torch.Tensor) and sample.numel() == expected.numel() and torch.allclose(
            sample.reshape(expected.shape).float(), expected.to(sample.device).float(), rtol=1e-3, atol=1e-3)
        if not ok:
            raise DiffDiffError(f"{type(self.pipe).__name__} did not start from the latents= it was given "
                                "(it copies or rescales them); diffdiff cannot drive it: register an adapter "
                                "(diffdiff.families.register_adapter)")

    def __enter__(self) -> ScheduleSeam:
        sched = self.scheduler
        # Pipelines multiply given latents by init_noise_sigma (Euler: sigma_max): our start is
        # already at the right scale, and dividing first would cost an ulp per value. So for this
        # call the scheduler reports 1 (a property on some classes: a same-named subclass does it).
        self._class = type(sched)
        if isinstance(getattr(self._class, "init_noise_sigma", None), property):
            sched.__class__ = _unit_sigma_class(self._class)
        elif "init_noise_sigma" in vars(sched):
            self._sigma_attr = vars(sched)["init_noise_sigma"]
            sched.init_noise_sigma = 1.0
        for name, fn in (("set_timesteps", self._set_timesteps), ("step", self._step)):
            original = getattr(sched, name)
            self._originals[name] = original
            # wraps(): pipelines inspect set_timesteps' signature for ``sigmas`` / ``timesteps``.
            setattr(sched, name, functools.wraps(original)(_forward(fn)))
        prepare = getattr(self.pipe, "prepare_latents", None)
        if self.size is not None and callable(prepare):
            self._originals["prepare_latents"] = prepare
            object.__setattr__(self.pipe, "prepare_latents", functools.wraps(prepare)(_forward(self._prepare_latents)))
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self._originals:
            try:
                delattr(self.pipe if name == "prepare_latents" else self.scheduler, name)  # the class method shows again
            except AttributeError:
                pass
        self._originals.clear()
        sched = self.scheduler
        if self._class is not None:
            sched.__class__ = self._class
        if self._sigma_attr is not None:
            sched.init_noise_sigma = self._sigma_attr
            self._sigma_attr = None


def draw_start(codec: LatentCodec, image: Any, num_images: int, generator: torch.Generator, device: Any,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean (B, C, h, w), noise (B, C, h, w)) drawn in the img2img siblings' order.

    The posterior sample comes first (batch 1, then repeated), then one noise tensor for the batch,
    both from ``generator`` (``diffusers.utils.torch_utils.randn_tensor``, as the pipelines draw it).
    The image is encoded in the VAE's dtype; latents and noise are in ``dtype`` (the denoiser's),
    so a pipeline with an fp32 VAE under an fp16 denoiser gets its ``latents=`` without a copy.
    """
    from diffusers.utils.torch_utils import randn_tensor

    vae_dtype = getattr(codec.vae, "dtype", dtype)
    clean = codec.encode(image, generator, device, vae_dtype).to(dtype)
    clean = torch.cat([clean] * num_images) if num_images > 1 else clean
    noise = randn_tensor(tuple(clean.shape), generator=generator, device=torch.device(device), dtype=dtype)
    return clean, noise


#: Arguments that would make a pipeline resize or re-bin our work size, and the value that keeps it.
_SIZE_KEEPERS: dict[str, Any] = {"use_resolution_binning": False, "_auto_resize": False}


def size_kwargs(pipe: Any, width: int, height: int) -> dict[str, Any]:
    """``height``/``width`` plus whatever keeps the pipeline at exactly that size (PixArt's resolution
    binning, Kontext's preferred resolutions and ``max_area``), for the arguments it accepts."""
    params = call_parameter_names(pipe)
    kw: dict[str, Any] = {k: v for k, v in (("height", height), ("width", width)) if k in params}
    kw.update({k: v for k, v in _SIZE_KEEPERS.items() if k in params})
    if "max_area" in params:
        kw["max_area"] = width * height
    return kw


def blends_in_callback(pipe: Any) -> bool:
    """True when the pipeline's ``callback_on_step_end`` hands us its ``latents``."""
    return "callback_on_step_end" in call_parameter_names(pipe) and "latents" in getattr(pipe, "_callback_tensor_inputs", [])
