"""Skip the denoiser's work on pixels the change map still holds frozen (``skip_frozen=True``).

Differential Diffusion throws the model's prediction for a frozen pixel away: after the step its
latent is replaced by the reference (the original noised to the next step). So for each denoiser
call only the pixels that will be free at the blend after that step need a prediction.
:class:`FrozenSkip` wraps the pipeline's denoiser for one call and

* skips the call entirely when no pixel is needed (the early steps of a map whose maximum is < 1),
* for convolutional denoisers (UNets), runs it on the box around the needed pixels plus context
  padding, rounded to the denoiser's grid (a strength fan's early steps touch a few columns only),

and fills every other position with the *exact* prediction for the reference: a frozen latent is
the clean latent noised with known noise, so the ideal epsilon is that noise (v-prediction and
flow-matching targets follow from it). Those positions are overwritten by the blend anyway; the
exact fill keeps multistep schedulers' histories sensible.

The trade-off is context: in a cropped step the model sees the box, not the whole image (like
A1111's "only masked"). A map with a fully changing pixel in every row and column band it
touches gets no crop, and a full-change map is never cropped or skipped, so it is still exactly
img2img. Transformers (SD3, Flux) only skip whole calls: cropping would move their positional
embeddings.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch

from .core import free_mask
from .hook import DifferentialStep, LayoutFn, _identity

#: Keyword arguments that carry spatial tensors we cannot crop (ControlNet residuals): run in full.
SPATIAL_KWARGS = (
    "down_block_additional_residuals", "mid_block_additional_residual", "down_intrablock_additional_residuals",
    "controlnet_block_samples", "controlnet_single_block_samples", "block_controlnet_hidden_states",
)

#: Crop only when the box saves at least this fraction of the grid (slicing has a cost too).
MIN_SAVING = 0.05

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 on the map's grid
Plan = Union[str, Box]  # "skip", "full" or a box


def exact_prediction(kind: str, clean: torch.Tensor, noise: torch.Tensor, timestep: Any, scheduler: Any) -> torch.Tensor:
    """What a perfect denoiser predicts for ``clean`` noised with ``noise`` (at ``timestep``).

    ``kind``: ``epsilon``, ``v_prediction``, ``sample`` (DDPM family) or ``flow`` (flow matching,
    where the latent is ``sigma * noise + (1 - sigma) * clean`` and the velocity ``noise - clean``).
    """
    if kind == "epsilon":
        return noise
    if kind == "flow":
        return noise - clean
    if kind == "sample":
        return clean
    if kind == "v_prediction":
        acp = scheduler.alphas_cumprod
        t = int(round(float(torch.as_tensor(timestep).flatten()[0])))
        a = acp[t].to(torch.float64)
        return (a.sqrt() * noise.double() - (1 - a).sqrt() * clean.double()).to(noise.dtype)
    raise ValueError(f"unknown prediction type {kind!r}")


def prediction_kind(scheduler: Any, noise_method: str) -> Optional[str]:
    """The denoiser's target for ``scheduler``, or None when we do not know it (then nothing is skipped)."""
    if noise_method == "scale_noise":
        return "flow"
    kind = getattr(getattr(scheduler, "config", None), "prediction_type", "epsilon") or "epsilon"
    if kind == "v_prediction" and not hasattr(scheduler, "alphas_cumprod"):
        return None
    return kind if kind in ("epsilon", "v_prediction", "sample") else None


def _span(lo: int, hi: int, n: int, pad: int, multiple: int) -> tuple[int, int]:
    """[lo, hi) grown by ``pad`` and rounded up to a multiple of ``multiple``, inside [0, n)."""
    lo, hi = max(0, lo - pad), min(n, hi + pad)
    size = min(n, math.ceil((hi - lo) / multiple) * multiple)
    hi = min(n, lo + size)
    return max(0, hi - size), hi


def plan_step(change: torch.Tensor, step: int, total: int, pad: int, multiple: int, crop: bool) -> Plan:
    """What a denoiser call before blend ``step`` must compute: ``"skip"``, ``"full"`` or a box."""
    needed = free_mask(change, min(step, total), total)
    needed = needed.reshape(-1, *needed.shape[-2:]).any(0)  # any image of the batch
    if not bool(needed.any()):
        return "skip"
    if not crop:
        return "full"
    h, w = needed.shape
    rows = needed.any(1).nonzero().flatten()
    cols = needed.any(0).nonzero().flatten()
    y0, y1 = _span(int(rows[0]), int(rows[-1]) + 1, h, pad, multiple)
    x0, x1 = _span(int(cols[0]), int(cols[-1]) + 1, w, pad, multiple)
    if (y1 - y0) * (x1 - x0) > (1 - MIN_SAVING) * h * w:
        return "full"
    return (y0, y1, x0, x1)


class FrozenSkip:
    """Context manager wrapping ``denoiser.forward`` for one pipeline call (see module docstring).

    ``hook`` is the run's :class:`DifferentialStep` (it knows the step and the reference);
    ``total_steps`` the run's step count (the map's thresholds); ``padding`` context cells around
    a crop, on the map's grid; ``steps_before`` the global steps run by an earlier stage (SDXL base
    before the refiner); ``pack`` puts a grid tensor into the denoiser's layout (Flux's tokens).
    ``fractions`` records, per denoiser call, the fraction of the grid the model ran on.
    """

    def __init__(
        self,
        denoiser: torch.nn.Module,
        hook: DifferentialStep,
        total_steps: int,
        scheduler: Any,
        noise_method: str = "add_noise",
        padding: int = 4,
        steps_before: int = 0,
        pack: LayoutFn = _identity,
    ) -> None:
        self.denoiser = denoiser
        self.hook = hook
        self.total = int(total_steps)
        self.scheduler = scheduler
        self.kind = prediction_kind(scheduler, noise_method)
        self.padding = max(0, int(padding))
        self.steps_before = int(steps_before)
        self.pack = pack
        # Convolutional UNets crop cleanly; transformers would see shifted positional embeddings.
        self.crop = hasattr(denoiser, "down_blocks")
        ups = getattr(denoiser, "num_upsamplers", None)
        if ups is None:
            ups = len(getattr(getattr(denoiser, "config", None), "block_out_channels", (0,))) - 1
        self.multiple = 2 ** max(0, int(ups))
        # Only UNets' outputs are read on our grid (learned-variance ones have extra channels).
        self.out_channels = getattr(getattr(denoiser, "config", None), "out_channels", None) if self.crop else None
        self.change = hook.change.detach().to(device="cpu", dtype=torch.float32)  # plans are made on the CPU
        self.fractions: list[float] = []
        self.plans: dict[int, Plan] = {}
        self.mismatch = False
        self._inner: Any = None
        self._saved: Any = None

    # installation ---------------------------------------------------------------------------------
    def __enter__(self) -> FrozenSkip:
        # Keep an instance-level forward (accelerate's offload hooks) and restore it afterwards.
        self._saved = self.denoiser.__dict__.get("forward")
        self._inner = self.denoiser.forward
        self.denoiser.forward = self._forward
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            self.denoiser.forward = self._saved
        else:
            self.denoiser.__dict__.pop("forward", None)

    # the call -------------------------------------------------------------------------------------
    def _step(self) -> int:
        """The blend index after the step being computed, in the run's global schedule."""
        hook = self.hook
        done = hook.steps_done()
        if done is None:  # before the hook's first call: an earlier stage's steps, then ours
            return self.steps_before + hook.completed + 1
        if hook.total_steps(self.scheduler) != self.total and not self.mismatch:
            self.mismatch = True  # our plan would use the wrong thresholds: run in full from here
        return done + 1

    def _plan(self, step: int) -> Plan:
        if step not in self.plans:
            self.plans[step] = plan_step(self.change, step, self.total, self.padding, self.multiple, self.crop)
        return self.plans[step]

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        key = None
        if args:
            sample, rest = args[0], args[1:]
        else:
            key = "sample" if "sample" in kwargs else "hidden_states"
            sample, rest = kwargs.pop(key, None), ()

        def call(x: torch.Tensor) -> Any:
            if key is None:
                return self._inner(x, *rest, **kwargs)
            return self._inner(*rest, **{key: x}, **kwargs)

        ref = self.hook.reference or self.hook.capture.reference
        plan: Plan = "full"
        if (sample is not None and ref is not None and self.kind is not None and not self.mismatch
                and kwargs.get("return_dict", True) is False
                and not any(kwargs.get(k) is not None for k in SPATIAL_KWARGS)
                and sample.shape[0] % ref.noise.shape[0] == 0):
            step = self._step()  # may find the thresholds mismatched: then run in full
            if not self.mismatch:
                plan = self._plan(step)
                if not isinstance(plan, str) and sample.shape[-2:] != self.change.shape[-2:]:
                    plan = "full"  # the denoiser's input is not on the map's grid: do not guess a crop
        if plan == "full":
            self.fractions.append(1.0)
            return call(sample)

        timestep = rest[0] if rest else kwargs.get("timestep")
        fill = self._exact(ref, sample, timestep)
        if plan == "skip":
            self.fractions.append(0.0)
            return (fill,)
        y0, y1, x0, x1 = plan  # type: ignore[misc]
        out = call(sample[..., y0:y1, x0:x1])
        part = out[0]
        fill = fill if fill.shape[1] == part.shape[1] else self._channels(fill, part.shape[1])
        fill[..., y0:y1, x0:x1] = part.to(fill.dtype)
        self.fractions.append((y1 - y0) * (x1 - x0) / (sample.shape[-2] * sample.shape[-1]))
        return (fill, *out[1:])

    def _exact(self, ref: Any, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        """The exact prediction for the reference in the denoiser's output layout and batch."""
        assert self.kind is not None
        pred = exact_prediction(self.kind, ref.clean, ref.noise, timestep, self.scheduler)
        pred = pred.to(device=sample.device, dtype=sample.dtype)
        pred = pred.repeat(sample.shape[0] // pred.shape[0], *([1] * (pred.ndim - 1)))  # CFG halves
        if self.out_channels is not None and pred.ndim == 4 and int(self.out_channels) != pred.shape[1]:
            pred = self._channels(pred, int(self.out_channels))
        return self.pack(pred)  # repeat() copied: the crop path may write into it

    @staticmethod
    def _channels(pred: torch.Tensor, channels: int) -> torch.Tensor:
        """Learned-variance UNets (Kandinsky, IF) output extra channels: the middle of their range (0)."""
        if channels <= pred.shape[1]:
            return pred[:, :channels].clone()
        extra = pred.new_zeros(pred.shape[0], channels - pred.shape[1], *pred.shape[2:])
        return torch.cat([pred, extra], 1)


def frozen_skip(
    pipe: Any,
    hook: DifferentialStep,
    total_steps: int,
    noise_method: str,
    context_px: int,
    grid_width: int,
    image_width: int,
    steps_before: int = 0,
    pack: LayoutFn = _identity,
) -> Optional[FrozenSkip]:
    """A :class:`FrozenSkip` on ``pipe``'s denoiser (``unet`` or ``transformer``), or None if it has none.

    ``context_px`` image pixels of context become grid cells by the ratio of ``grid_width`` to
    ``image_width`` (8 px per cell for SD's latents, 1 for IF's stage I at its own size).
    """
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is None:
        return None
    padding = math.ceil(max(0, context_px) * grid_width / image_width)
    return FrozenSkip(denoiser, hook, total_steps, pipe.scheduler, noise_method, padding,
                      steps_before=steps_before, pack=pack)
