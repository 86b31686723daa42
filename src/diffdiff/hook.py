"""Drive the Differential Diffusion blend from inside any diffusers pipeline.

Two small hooks, no forked pipeline:

* :class:`NoiseCapture` wraps the scheduler's noising method (``add_noise`` for DDPM-family
  schedulers, ``scale_noise`` for flow matching) for the duration of one pipeline call and records
  the clean latents and the noise the pipeline itself drew. The reference trajectory is then the
  pipeline's own: a full-change map reproduces plain img2img exactly, and the image is encoded once.
  A scheduler kind with no noising method (TrigFlow) gets its formula passed in; whoever noises the
  start then calls :meth:`NoiseCapture.noise` (diffdiff's own img2img, :mod:`diffdiff.ownnoise`).
* :class:`DifferentialStep` is a ``callback_on_step_end``. After every *full* scheduler step it
  blends the latents with the original noised to the next step (:func:`diffdiff.core.blend`).
  Second-order schedulers (Heun, DPM2) call back after each half step; the intermediate state is
  left alone so the correction is not double-blended.

Step positions are counted in the *global* schedule, so a run split over two pipelines (SDXL base
then refiner) uses one set of thresholds: pass the first stage's ``start`` to the second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .core import blend, free_mask

# Map a tensor between the pipeline's latent layout and the (B, C, h, w) grid the map lives on.
LayoutFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Reference:
    """The original image in the denoiser's space and the noise used to noise it."""

    clean: torch.Tensor
    noise: torch.Tensor


class NoiseCapture:
    """Context manager recording the first call of ``scheduler.<method>`` (the img2img noising).

    ``formula`` (``add_noise``'s arguments: clean, noise, timesteps) replaces a scheduler method the
    scheduler lacks; nothing is patched then, and the start is noised through :meth:`noise`.
    """

    def __init__(self, scheduler: Any, method: str = "add_noise",
                 formula: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> None:
        self.scheduler = scheduler
        self.method = method
        self.reference: Optional[Reference] = None
        self.formula = formula
        self.original: Callable[..., torch.Tensor] = formula or getattr(scheduler, method)
        #: scale_noise(sample, timestep, noise); add_noise and formulas take (clean, noise, timesteps)
        self._flow_order = formula is None and method == "scale_noise"

    def _wrapped(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.reference is None:
            if self._flow_order:  # scale_noise(sample, timestep, noise)
                names = ("sample", "timestep", "noise")
            else:  # add_noise(original_samples, noise, timesteps)
                names = ("original_samples", "noise", "timesteps")
            bound = dict(zip(names, args))
            bound.update(kwargs)
            clean = bound[names[0]]
            noise = bound["noise"]
            self.reference = Reference(clean=clean.detach().clone(), noise=noise.detach().clone())
        return self.original(*args, **kwargs)

    def noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise ``clean`` to ``timesteps`` (one per image) and record the reference, as a pipeline call would."""
        if self._flow_order:
            return self._wrapped(clean, timesteps, noise)
        return self._wrapped(clean, noise, timesteps)

    def noise_to(self, clean: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The clean latents noised to ``timestep`` with the scheduler's own formula."""
        ts = timestep.reshape(1).repeat(clean.shape[0]).to(clean.device)
        if self._flow_order:
            return self.original(clean, ts, noise)
        return self.original(clean, noise, ts)

    def __enter__(self) -> NoiseCapture:
        if self.formula is None:
            setattr(self.scheduler, self.method, self._wrapped)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.formula is not None:
            return
        # Remove the instance attribute so the class method shows through again.
        try:
            delattr(self.scheduler, self.method)
        except AttributeError:
            pass


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class StepRecord:
    """What the hook did at one callback (kept for tests, previews and debugging)."""

    loop_index: int
    global_step: int
    free_fraction: float


@dataclass
class DifferentialStep:
    """``callback_on_step_end`` applying the change map after each full scheduler step.

    ``change`` is the map on the denoiser's grid, shape (1 or B, 1, h, w). ``capture`` supplies the
    reference (clean latents and noise) and the noising formula. ``reference`` overrides the captured
    one (used by the SDXL refiner, which continues the base's trajectory without re-noising).
    ``start`` is the position of the run's first step in the scheduler's full-step schedule; the
    first stage finds it by itself, later stages receive it. ``end_point``: the schedule's last
    entry is the time the last step goes to (TrigFlow's 0), not a step; the blend after the last
    step then noises the reference to it too (at 0: the clean latents themselves).
    """

    change: torch.Tensor
    capture: NoiseCapture
    reference: Optional[Reference] = None
    start: Optional[int] = None
    unpack: LayoutFn = _identity
    pack: LayoutFn = _identity
    trajectory: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None
    records: list[StepRecord] = field(default_factory=list)
    tensor_inputs: tuple[str, ...] = ("latents",)
    end_point: bool = False
    _offset: Optional[int] = None
    _first_full: Optional[int] = None
    _completed: int = 0
    # Per-run caches: the map on the latents' device, and every step's free fraction for the records,
    # computed once instead of once per step (the per-step ``float()`` was also a device sync).
    _change_dev: Optional[torch.Tensor] = None
    _fractions: Optional[list[float]] = None
    _fractions_total: int = -1

    def total_steps(self, scheduler: Any) -> int:
        """Steps of the run in ``scheduler``'s schedule (from the run's first step to the end)."""
        return self._total(len(scheduler.timesteps), int(getattr(scheduler, "order", 1)))

    def _total(self, n_timesteps: int, order: int) -> int:
        n_full = (n_timesteps - int(self.end_point) + order - 1) // order
        assert self.start is not None
        return n_full - self.start

    def _locate(self, times: torch.Tensor, order: int, loop_index: int, t: Any) -> None:
        t_val = torch.as_tensor(t, dtype=times.dtype, device=times.device)
        hits = (times == t_val).nonzero().flatten().tolist()
        if not hits:  # float timesteps: nearest match
            hits = [int((times - t_val).abs().argmin())]
        aligned = [h for h in hits if (h - loop_index) % order == 0]
        pos = (aligned or hits)[-1] - loop_index
        self._offset = pos
        self._first_full = pos // order
        if self.start is None:
            self.start = self._first_full

    # the public step API ------------------------------------------------------------------------------
    @property
    def located(self) -> bool:
        """Whether the hook has seen the run's first step (and so knows where it is in the schedule)."""
        return self._first_full is not None and self.start is not None

    @property
    def completed(self) -> int:
        """Full scheduler steps completed so far in this pipeline call."""
        return self._completed

    def steps_done(self) -> Optional[int]:
        """Steps of the run (global schedule, from its first step) completed so far; None before the first."""
        if not self.located:
            return None
        return self._first_full - self.start + self._completed  # type: ignore[operator]

    def __call__(self, pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """diffusers' ``callback_on_step_end``: blend ``callback_kwargs["latents"]`` after step ``i``."""
        scheduler = pipe.scheduler
        callback_kwargs["latents"] = self.step(
            callback_kwargs["latents"], i, t, scheduler.timesteps, int(getattr(scheduler, "order", 1)),
            bool(getattr(scheduler, "state_in_first_order", True)),
        )
        return callback_kwargs

    def step(self, latents: torch.Tensor, i: int, t: Any, timesteps: torch.Tensor, order: int = 1,
             full_step: bool = True) -> torch.Tensor:
        """The latents after loop step ``i`` (at timestep ``t`` of ``timesteps``), blended for the next step.

        ``order`` is the scheduler's order (2 for Heun); ``full_step`` False means the scheduler is
        half-way through a second-order step, which is left alone. Callers that run their own loop
        (DiffEdit's decoding) use this directly with their own timesteps.
        """
        if self._offset is None:
            self._locate(timesteps, order, i, t)
        if not full_step:
            return latents  # half-way through a second-order step: leave it alone
        self._completed += 1
        next_index = self._offset + i + 1  # type: ignore[operator]
        if next_index >= len(timesteps):
            return latents  # no blend after the last step (as in the paper), unless the end time is listed
        ref = self.reference or self.capture.reference
        if ref is None:
            raise RuntimeError("the pipeline never noised the input image; cannot apply the change map")
        total = self._total(len(timesteps), order)
        step = self.steps_done()
        assert step is not None
        t_next = timesteps[next_index]
        if self.trajectory is not None:
            target = self.trajectory(step, latents)
        else:
            target = self.capture.noise_to(ref.clean, ref.noise, t_next)
        grid = self.unpack(latents)  # references and targets live on the (B, C, h, w) grid
        change = self._change_on(grid.device)
        mixed = blend(grid, target.to(grid.dtype), change, step, total)
        self.records.append(StepRecord(i, step, self._free_fraction(change, step, total)))
        return self.pack(mixed)

    def _change_on(self, device: torch.device) -> torch.Tensor:
        """The map in float32 on ``device`` (moved once per run, not once per step)."""
        if self._change_dev is None or self._change_dev.device != device:
            self._change_dev = self.change.to(device=device, dtype=torch.float32)
            self._fractions = None
        return self._change_dev

    def _free_fraction(self, change: torch.Tensor, step: int, total: int) -> float:
        """``free_mask(change, step, total).float().mean()``, for every step of the run at once."""
        if self._fractions is None or self._fractions_total != total:
            # Pixels free at step s: scaled > total - s. Counting them by binary search in the sorted
            # map gives every step's fraction with one transfer; count / numel in float32 is exactly
            # what the float32 mean of the 0/1 mask gives (counts are exact integers in float32).
            ordered = (change * total).flatten().sort().values
            bounds = torch.arange(total, -1, -1, device=change.device).to(ordered.dtype)  # total - s, s = 0..total
            counts = ordered.numel() - torch.searchsorted(ordered, bounds, right=True)
            self._fractions = (counts.to(torch.float32) / ordered.numel()).tolist()
            self._fractions_total = total
        if 0 <= step <= total:
            return self._fractions[step]
        return float(free_mask(change, step, total).float().mean())
