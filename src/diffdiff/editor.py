"""The user-facing :class:`Editor`: load a model, edit an image with a change map.

The editor prepares inputs (image size, change map, seed), asks the model-family adapter how to
call the diffusers pipeline, installs the two hooks from :mod:`diffdiff.hook` and post-processes
the output (resize back, paste-back of untouched pixels, metadata). The per-step rule itself lives
in :mod:`diffdiff.core`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from . import (
    __version__,
    addon_families,  # noqa: F401  # registers the inpainting and ControlNet families
)
from .adapters import Adapter, adapter_for, call_parameter_names, round_to_levels
from .addons import Addons, addons_of, load_addons
from .changemap import POLARITIES, MapLike, Polarity, prepare_change_map, to_latent_map
from .changemap import paste_back as paste_back_pixels
from .errors import DiffDiffError
from .hook import DifferentialStep, NoiseCapture, Reference, StepRecord
from .inpaint import InpaintMasks, as_inpaint_pipeline, is_inpaint_checkpoint
from .io import image_sha256, open_image
from .numerics import finite_vae_decode, to_uint8_images
from .skip import frozen_skip

ImageLike = Union[Image.Image, str, os.PathLike]

#: Below this many executed steps the map's gradation is visibly coarse.
FEW_STEPS = 10

#: Default size limit for one edit (4096 x 4096). Larger images: crop=True edits only the changed box.
DEFAULT_MAX_PIXELS = 4096 * 4096


def check_pixel_limit(width: int, height: int, max_pixels: Optional[int]) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise DiffDiffError(
            f"image is {width}x{height} ({width * height / 1e6:.1f} MP), above the limit of "
            f"{max_pixels / 1e6:.1f} MP; use --crop (crop=True) to edit only the changed region, "
            "use a smaller image, or raise the limit with --max-pixels"
        )


class DiffDiffWarning(UserWarning):
    """Something the user should know about a run (shown by the CLI as a one-line warning)."""


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
    #: inpainting checkpoints: the latent mask given to the model at each step (1 = generate)
    inpaint_masks: list[torch.Tensor] = field(default_factory=list)


def _as_img2img(pipe: Any) -> Any:
    """Accept a text-to-image pipeline too, by switching to its img2img sibling (shared weights)."""
    if "strength" in call_parameter_names(pipe):
        return pipe
    try:
        from diffusers import AutoPipelineForImage2Image

        return AutoPipelineForImage2Image.from_pipe(pipe)
    except Exception:  # unsupported: adapter_for() reports it clearly
        return pipe


def _hash_map(change_map: Any) -> str:
    if isinstance(change_map, Image.Image):
        return image_sha256(change_map)
    if isinstance(change_map, torch.Tensor):
        change_map = change_map.detach().cpu().numpy()
    arr = np.ascontiguousarray(change_map)
    return hashlib.sha256(f"{arr.dtype}:{arr.shape}".encode() + arr.tobytes()).hexdigest()


def validate_edit_params(
    prompt: Any,
    num_inference_steps: Any,
    guidance_scale: Any,
    strength: Any,
    num_images: Any,
    polarity: Any,
    seed: Any,
    output_type: Any = "pil",
) -> None:
    """Raise :class:`DiffDiffError` naming the first bad parameter."""
    if not isinstance(prompt, str) and not (
        isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt)
    ):
        raise DiffDiffError("prompt must be a string")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
        raise DiffDiffError(f"steps must be a positive integer, got {num_inference_steps!r}")
    if guidance_scale is not None:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise DiffDiffError(f"guidance must be a number >= 0, got {guidance_scale!r}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not np.isfinite(strength) or not 0 <= strength <= 1:
        raise DiffDiffError(f"strength must be between 0 and 1, got {strength!r}")
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise DiffDiffError(f"num_images must be a positive integer, got {num_images!r}")
    if polarity not in POLARITIES:
        raise DiffDiffError(f"polarity must be 'change' or 'keep', got {polarity!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63):
        raise DiffDiffError(f"seed must be a non-negative integer, got {seed!r}")
    if output_type not in ("pil", "latent"):
        raise DiffDiffError(f"output_type must be 'pil' or 'latent', got {output_type!r}")


class Editor:
    """Graded image editing with Differential Diffusion on a diffusers pipeline.

    ``Editor(pipe)`` wraps a pipeline you built; :meth:`from_pretrained` loads one by hub id, local
    folder or single ``.safetensors``/``.ckpt`` file. The model family is detected from the pipeline.
    """

    def __init__(
        self,
        pipe: Any,
        refiner: Any = None,
        refiner_start: float = 0.8,
        model_name: Optional[str] = None,
        refiner_name: Optional[str] = None,
        progress: bool = True,
        prior: Any = None,
        stage_2: Any = None,
        stage_3: Any = None,
    ) -> None:
        self._device: Optional[torch.device] = None
        self.pipe = _as_img2img(pipe)
        if is_inpaint_checkpoint(self.pipe):  # 9-channel UNet: its own pipeline feeds the mask input
            self.pipe = as_inpaint_pipeline(self.pipe)
        #: add-ons on the pipeline (ControlNet, LoRA, IP-Adapter); from_pretrained fills in what it loaded
        self.addons: Addons = addons_of(self.pipe)
        # Extra pipelines of multi-model families: Kandinsky's prior, DeepFloyd IF's later stages.
        self.adapter: Adapter = adapter_for(self.pipe, prior=prior, stage_2=stage_2, stage_3=stage_3)
        self.pipe = self.adapter.pipe  # a family may swap in its img2img half (e.g. Kandinsky's decoder)
        self.refiner = _as_img2img(refiner) if refiner is not None else None
        if self.refiner is not None and not self.adapter.supports_refiner:
            raise DiffDiffError(f"a refiner is only supported for SDXL, not for the {self.adapter.name} family")
        if not 0 < refiner_start < 1:
            raise DiffDiffError(f"refiner_start must be between 0 and 1, got {refiner_start}")
        self.refiner_start = float(refiner_start)
        self.model_name = model_name or getattr(getattr(self.pipe, "config", None), "_name_or_path", None) or type(self.pipe).__name__
        self.refiner_name = refiner_name
        self.progress = progress
        self.last_run = RunInfo()
        #: Largest image (in pixels) edit() accepts; None for no limit. Guards against accidental
        #: multi-hundred-megapixel inputs that would exhaust memory hours into a run.
        self.max_pixels: Optional[int] = DEFAULT_MAX_PIXELS
        self.set_progress_bar(progress)

    # construction ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str],
        refiner: str | os.PathLike[str] | None = None,
        refiner_start: float = 0.8,
        device: Optional[str] = None,
        torch_dtype: Any = None,
        progress: bool = True,
        prior: str | os.PathLike[str] | None = None,
        stage_2: str | os.PathLike[str] | None = None,
        stage_3: str | os.PathLike[str] | None = None,
        controlnet: Any = None,
        lora: Any = None,
        ip_adapter: str | os.PathLike[str] | None = None,
        ip_adapter_scale: float = 1.0,
        **kw: Any,
    ) -> Editor:
        """Load ``model`` (hub id, diffusers folder or single-file checkpoint) and detect its family.

        Multi-model families: ``prior`` is Kandinsky 2.2's prior (default: the hub's 2.2 prior);
        ``stage_2`` / ``stage_3`` are DeepFloyd IF's super-resolution stages (optional).
        Add-ons (:mod:`diffdiff.addons`): ``controlnet`` one ControlNet or a list (folder, file or hub
        id; SD and SDXL); ``lora`` a list of ``"PATH_OR_ID[:SCALE]"``; ``ip_adapter`` an IP-Adapter
        weights file (its ``image_encoder`` folder beside it) at ``ip_adapter_scale``. A 9-channel
        inpainting checkpoint is detected and driven through its mask input.
        """
        from .adapters import load_family
        from .loading import load_pipeline

        pipe, parts = load_family(
            str(model), prior=None if prior is None else str(prior), stage_2=None if stage_2 is None else str(stage_2),
            stage_3=None if stage_3 is None else str(stage_3), device=device, torch_dtype=torch_dtype, **kw,
        )
        pipe, addons = load_addons(_as_img2img(pipe), controlnet=controlnet, lora=lora, ip_adapter=ip_adapter,
                                   ip_adapter_scale=ip_adapter_scale, dtype=torch_dtype)
        ref = None
        if refiner is not None:
            ref = load_pipeline(refiner, device=device, torch_dtype=torch_dtype)
        editor = cls(pipe, refiner=ref, refiner_start=refiner_start, model_name=str(model),
                     refiner_name=str(refiner) if refiner is not None else None, progress=progress, **parts)
        editor.addons = addons
        return editor

    def to(self, device: Any = None, dtype: Any = None) -> Editor:
        """Move the pipeline(s), like ``pipe.to()``."""
        args = [a for a in (device, dtype) if a is not None]
        self._device = None
        self.pipe = self.pipe.to(*args)
        self.adapter.pipe = self.pipe
        if self.refiner is not None:
            self.refiner = self.refiner.to(*args)
        for part in self.adapter.parts.values():  # Kandinsky prior, IF stages II/III
            part.to(*args)
        return self

    @property
    def device(self) -> torch.device:
        # diffusers' pipe.device walks every module (milliseconds); cache it until to() moves things.
        if self._device is None:
            self._device = self.pipe.device
        return self._device

    @property
    def family(self) -> str:
        return self.adapter.name

    def set_progress_bar(self, enabled: bool) -> None:
        self.progress = enabled
        for p in (self.pipe, self.refiner, *self.adapter.parts.values()):
            if p is not None and hasattr(p, "set_progress_bar_config"):
                p.set_progress_bar_config(disable=not enabled, desc="diffdiff", leave=False)

    # helpers --------------------------------------------------------------------------------------
    def work_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the model runs at: the image's size rounded to the family's pixel multiple."""
        m = self.adapter.pixel_multiple()
        return max(m, int(round(width / m)) * m), max(m, int(round(height / m)) * m)

    def planned_steps(self, num_inference_steps: int, strength: float) -> int:
        return self.adapter.planned_steps(num_inference_steps, strength)

    @staticmethod
    def _load(image: ImageLike, what: str) -> Image.Image:
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, (str, os.PathLike)):
            return open_image(image, what)
        raise DiffDiffError(f"{what} must be a PIL image or a file path, got {type(image).__name__}")

    # the edit -------------------------------------------------------------------------------------
    def edit(
        self,
        image: ImageLike,
        change_map: MapLike | str | os.PathLike[str],
        prompt: str,
        negative_prompt: Optional[str] = None,
        num_inference_steps: int = 50,
        guidance_scale: Optional[float] = None,
        strength: float = 1.0,
        seed: Optional[int] = None,
        num_images: int = 1,
        polarity: Polarity = "change",
        output_type: str = "pil",
        paste_back: bool = True,
        metadata: Optional[dict[str, Any]] = None,
        crop: bool = False,
        crop_padding: int = 32,
        crop_resolution: Optional[Union[str, int]] = None,
        skip_frozen: bool = False,
        control_image: Any = None,
        controlnet_conditioning_scale: Any = None,
        control_from: Optional[str] = None,
        ip_adapter_image: Any = None,
        control_mode: Any = None,
    ) -> Any:
        """Edit ``image`` where ``change_map`` allows it; returns a list of PIL images.

        ``change_map``: greyscale, 0 = keep, 1 = change fully (up to ``strength``) with
        ``polarity="change"``; white = keep with ``polarity="keep"`` (the authors' maps).
        ``output_type="latent"`` returns the final latents, shape (B, C, h, w).
        ``crop=True`` denoises only the box around map > 0 (plus ``crop_padding`` px) and pastes it back.
        ``skip_frozen=True`` runs the model at each step only where pixels are free by then (box +
        ``crop_padding`` px of context; :mod:`diffdiff.skip`): much less work for small or graded maps.
        With a ControlNet loaded: ``control_image`` (one, or one per ControlNet; the input's aspect
        ratio) or ``control_from="canny"``, and ``controlnet_conditioning_scale``; ControlNet Union
        also ``control_mode`` (a name such as ``"depth"`` or its number). With an IP-Adapter:
        ``ip_adapter_image``.
        """
        validate_edit_params(prompt, num_inference_steps, guidance_scale, strength, num_images, polarity, seed, output_type)
        addon_inputs = dict(control_image=control_image, control_from=control_from,
                            controlnet_scale=controlnet_conditioning_scale, ip_adapter_image=ip_adapter_image,
                            control_mode=control_mode)
        self.addons.check_inputs(**addon_inputs)
        if crop and any(v is not None for v in addon_inputs.values()):
            raise DiffDiffError("crop=True (--crop) does not work with ControlNet or IP-Adapter inputs yet; edit the full image")
        if crop:  # denoise only the changed region's box (diffdiff.crop), then paste it back
            from .crop import crop_edit

            return crop_edit(self, image, change_map, polarity=polarity, padding=crop_padding,
                             resolution=crop_resolution, paste_back=paste_back, output_type=output_type,
                             metadata=metadata, prompt=prompt, negative_prompt=negative_prompt,
                             num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                             strength=strength, seed=seed, num_images=num_images, skip_frozen=skip_frozen)
        img = self._load(image, "image")
        if isinstance(change_map, (str, os.PathLike)):
            change_map = open_image(change_map, "change map")
        width, height = img.size
        if width < 1 or height < 1:
            raise DiffDiffError("image is empty")
        check_pixel_limit(width, height, self.max_pixels)
        change = prepare_change_map(change_map, (width, height), polarity)
        if seed is None:
            seed = secrets.randbits(31)
        meta = {
            "model": self.model_name,
            "family": self.adapter.name,
            "refiner": self.refiner_name,
            "refiner_start": self.refiner_start if self.refiner is not None else None,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "seed": int(seed),
            "steps": int(num_inference_steps),
            "guidance": guidance_scale if guidance_scale is not None else self.adapter.default_guidance(),
            "strength": float(strength),
            "polarity": polarity,
            "num_images": int(num_images),
            "paste_back": bool(paste_back),
            "skip_frozen": bool(skip_frozen),
            "map_sha256": _hash_map(change_map),
            "image_sha256": image_sha256(img),
            "scheduler": type(self.pipe.scheduler).__name__,
            "diffdiff_version": __version__,
        }
        source = img if img.mode == "RGB" else img.convert("RGB")  # read only below: no copy needed
        ww, wh = self.work_size(width, height)
        work = source if source.size == (ww, wh) else source.resize((ww, wh), Image.Resampling.LANCZOS)
        pipeline_inputs, addon_meta = self.addons.call_inputs(work, source.size, **addon_inputs)
        meta.update(self.addons.metadata(), **addon_meta)
        if metadata:
            meta.update(metadata)
        planned = self.planned_steps(num_inference_steps, strength)
        if planned == 0 or not np.any(change > 0):
            if output_type == "latent":
                raise DiffDiffError("nothing to denoise: strength or the change map is zero everywhere")
            # Nothing may change: the exact input is the exact answer (no model call needed).
            return [self._finish(source.copy(), meta, i) for i in range(num_images)]
        if planned < FEW_STEPS:
            warnings.warn(
                f"only {planned} denoising steps will run: the change map is quantised to {planned} levels "
                "(use more steps or a higher strength for smoother gradation)",
                DiffDiffWarning,
                stacklevel=2,
            )
        out = self.run(
            source, change, prompt, negative_prompt, num_inference_steps, guidance_scale, strength,
            seed, num_images, output_type, skip_frozen=skip_frozen, context_px=crop_padding,
            pipeline_inputs=pipeline_inputs,
        )
        if output_type == "latent":
            return out
        results = []
        for i, arr in enumerate(out):
            res = Image.fromarray(arr, "RGB")
            reference, ref_change = source, change
            if res.size != (width, height):
                if self.adapter.native_output:
                    # Cascades (IF) end at their own resolution; keep-pixels are exact against the
                    # input resampled to that size.
                    reference = source.resize(res.size, Image.Resampling.LANCZOS)
                    ref_change = to_latent_map(change, res.size[1], res.size[0])[0, 0].numpy()
                else:
                    res = res.resize((width, height), Image.Resampling.LANCZOS)
            if paste_back:
                res = paste_back_pixels(res, reference, ref_change)
            results.append(self._finish(res, meta, i))
        return results

    @staticmethod
    def _finish(img: Image.Image, meta: dict[str, Any], index: int) -> Image.Image:
        img.info["diffdiff"] = dict(meta, index=index)
        return img

    def run(
        self,
        source: Image.Image,
        change: np.ndarray,
        prompt: str | list[str],
        negative_prompt: Optional[str],
        num_inference_steps: int,
        guidance_scale: Optional[float],
        strength: float,
        seed: int,
        num_images: int,
        output_type: str,
        trajectory: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
        skip_frozen: bool = False,
        context_px: int = 32,
        pipeline_inputs: Optional[dict[str, Any]] = None,
    ) -> Any:
        """One edit with an image-size change array: uint8 arrays (B, H, W, 3) or latents (B, C, h, w).

        ``pipeline_inputs``: extra pipeline-call arguments from the add-ons (control images, ...).

        ``skip_frozen``: run the denoiser only where pixels are free (:mod:`diffdiff.skip`), with
        ``context_px`` pixels of context around its box. Not with a custom ``trajectory``.
        """
        skip_frozen = bool(skip_frozen) and trajectory is None
        from .perf import configure_memory

        # Tiled/sliced VAE above a size (diffdiff.perf); here so fan, soft-inpaint and DiffEdit get it too.
        configure_memory(self, *self.work_size(*source.size))
        if self.adapter.custom_run:  # cascades (DeepFloyd IF) drive their own stages with the same hook
            out, self.last_run = self.adapter.run(
                source, change, prompt, negative_prompt, num_inference_steps, guidance_scale, strength, seed,
                num_images, output_type, trajectory=trajectory, skip_frozen=skip_frozen, context_px=context_px,
            )
            return out
        ww, wh = self.work_size(*source.size)
        work = source if source.size == (ww, wh) else source.resize((ww, wh), Image.Resampling.LANCZOS)
        lh, lw = self.adapter.latent_hw(ww, wh)
        latent_change = to_latent_map(change, lh, lw).to(self.device)
        if self.adapter.is_few_step(self.model_name):
            # Distilled models run few steps: round the map to the nearest of the N levels (unbiased).
            latent_change = round_to_levels(latent_change, self.planned_steps(num_inference_steps, strength))
        generator = torch.Generator().manual_seed(int(seed))
        info = RunInfo(work_size=(ww, wh))
        self.last_run = info
        adapter = self.adapter
        kwargs = adapter.call_kwargs(work, prompt, negative_prompt, num_inference_steps, guidance_scale, strength,
                                     num_images, generator, ww, wh)
        kwargs.update(pipeline_inputs or {})
        stage_output = "latent" if output_type == "latent" else "np"

        refiner_only = False
        use_refiner = self.refiner is not None
        if use_refiner:
            refiner_only = self._starts_after_split(num_inference_steps, strength)

        first_pipe = self.refiner if refiner_only else self.pipe
        capture = NoiseCapture(first_pipe.scheduler, adapter.noise_method)
        hook = DifferentialStep(
            change=latent_change,
            capture=capture,
            unpack=lambda x: adapter.unpack(x, ww, wh),
            pack=lambda x: adapter.pack(x, ww, wh),
            trajectory=trajectory,
        )
        first_kwargs = dict(kwargs)
        if use_refiner and not refiner_only:
            first_kwargs["denoising_end"] = self.refiner_start
            first_output = "latent"
        else:
            first_output = stage_output
        planned = self.planned_steps(num_inference_steps, strength)
        skip = frozen_skip(first_pipe, hook, planned, adapter.noise_method, context_px, lw, ww,
                           pack=hook.pack) if skip_frozen else None
        callback: Any = hook
        if getattr(adapter, "inpaint", False):  # inpainting UNets: the mask input follows the free pixels
            callback = InpaintMasks(first_pipe, hook, planned, work, int(seed))
            n_prompts = len(prompt) if isinstance(prompt, list) else 1
            first_kwargs = callback.prepare(first_pipe, first_kwargs, n_prompts * num_images)
            info.inpaint_masks = callback.masks
        with torch.inference_mode(), capture, skip or contextlib.nullcontext(), finite_vae_decode(getattr(first_pipe, "vae", None)):
            result = first_pipe(
                **first_kwargs,
                output_type=first_output,
                callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=list(getattr(callback, "tensor_inputs", hook.tensor_inputs)),
            )
        info.pipeline_calls += 1
        info.reference = capture.reference
        info.records = hook.records
        info.total_steps = hook.total_steps(first_pipe.scheduler) if hook.start is not None else 0
        if skip is not None:
            info.denoised_fractions += skip.fractions
        images = result.images

        if use_refiner and not refiner_only:
            # Continue the same global schedule in the refiner: same thresholds, same reference.
            ref_capture = NoiseCapture(self.refiner.scheduler, adapter.noise_method)
            ref_hook = DifferentialStep(
                change=latent_change, capture=ref_capture, reference=capture.reference, start=hook.start,
                trajectory=trajectory,
            )
            ref_kwargs = dict(kwargs, image=images, denoising_start=self.refiner_start)
            ref_kwargs.pop("strength", None)
            # The refiner continues at global step `hook._completed`, with the same thresholds.
            ref_skip = frozen_skip(self.refiner, ref_hook, info.total_steps, adapter.noise_method, context_px, lw, ww,
                                   steps_before=hook._completed) if skip_frozen else None
            with torch.inference_mode(), ref_capture, ref_skip or contextlib.nullcontext(), finite_vae_decode(getattr(self.refiner, "vae", None)):
                result = self.refiner(
                    **ref_kwargs,
                    strength=strength,
                    output_type=stage_output,
                    callback_on_step_end=ref_hook,
                    callback_on_step_end_tensor_inputs=["latents"],
                )
            info.pipeline_calls += 1
            info.records = hook.records + ref_hook.records
            if ref_skip is not None:
                info.denoised_fractions += ref_skip.fractions
            images = result.images

        if output_type == "latent":
            return adapter.latents_from_output(images, ww, wh)
        return to_uint8_images(images)

    def _starts_after_split(self, num_inference_steps: int, strength: float) -> bool:
        """True when a low strength starts the run after the base/refiner split (base has no steps)."""
        sched = self.pipe.scheduler
        sched.set_timesteps(num_inference_steps)
        order = int(getattr(sched, "order", 1))
        steps = self.planned_steps(num_inference_steps, strength)
        start = sched.timesteps[(num_inference_steps - steps) * order]
        t_train = sched.config.num_train_timesteps
        cutoff = int(round(t_train - self.refiner_start * t_train))
        return bool(start < cutoff)

    # soft-inpainting and the strength fan (logic in softinpaint.py / fan.py) ----------------------
    def soft_inpaint(self, image: ImageLike, mask: Any, softness: float, prompt: str, **edit_kwargs: Any) -> Any:
        """Regenerate the mask's white hole; the ring (sigma ``softness`` px) adjusts, far pixels stay exact."""
        from .softinpaint import soft_inpaint

        return soft_inpaint(self, image, mask, softness, prompt, **edit_kwargs)

    def fan(self, image: ImageLike, prompt: str, columns: int = 5, min_strength: float = 0.0,
            max_strength: float = 1.0, change_map: Any = None, **edit_kwargs: Any) -> Any:
        """One image in ``columns`` vertical bands at strengths ``min..max``, made by ONE edit."""
        from .fan import fan

        return fan(self, image, prompt, columns, min_strength, max_strength, change_map, **edit_kwargs)

    # DiffEdit and automatic change maps from text (logic in diffedit.py) ---------------------------
    def auto_map(self, image: ImageLike, source_prompt: str, target_prompt: str, num_maps: int = 10,
                 encode_strength: float = 0.5, seed: Optional[int] = None, **kw: Any) -> Image.Image:
        """Continuous change map (PIL "L", image size) where the two prompts' noise predictions differ."""
        from .diffedit import auto_map

        return auto_map(self, image, source_prompt, target_prompt, num_maps, encode_strength, seed, **kw)

    def diffedit(self, image: ImageLike, source_prompt: str, target_prompt: str, mask: Any = None,
                 threshold: float = 0.5, encode_ratio: float = 0.5, num_inference_steps: int = 50,
                 seed: Optional[int] = None, **kw: Any) -> Any:
        """DiffEdit: DDIM-invert under the source prompt, decode under the target inside the mask only."""
        from .diffedit import diffedit

        return diffedit(self, image, source_prompt, target_prompt, mask, threshold, encode_ratio,
                        num_inference_steps, seed, **kw)
