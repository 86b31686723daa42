"""Inpainting checkpoints (9-channel UNets, Flux Fill) driven by a graded change map, step by step.

An inpainting UNet is fed, at every step, the noisy latents plus a mask (1 = generate here) and the
latents of the *masked image* (the original with the masked pixels blanked). Under Differential
Diffusion the set of pixels the model generates grows as the steps go on: model step ``k`` (0-based,
of the run's ``N`` executed steps) computes the pixels that the blend after it keeps, which is
``free_mask(change, k + 1, N)`` (:func:`diffdiff.core.free_mask`) -- the map's white pixels at the
first step, every pixel with map > 0 at the last. This module owns that schedule:

* :class:`InpaintMasks` wraps the run's :class:`~diffdiff.hook.DifferentialStep`. It gives the
  pipeline the first step's mask as ``mask_image`` and, after each full step, hands the pipeline the
  next step's ``mask`` and ``masked_image_latents`` through diffusers' own ``callback_on_step_end``
  tensors (the SD and SDXL inpainting pipelines read both back). A new masked image is encoded with
  the pipeline's own ``prepare_mask_latents`` only when the mask actually grew, so a full-change map
  costs exactly what the plain inpainting pipeline costs.
* At strength 1 diffusers' inpainting pipelines start from pure noise without ever calling the
  scheduler's ``add_noise``, so there is nothing for :class:`~diffdiff.hook.NoiseCapture` to record.
  :meth:`InpaintMasks.prepare` then draws that noise itself (same generator, same order, passed as
  ``latents=``) and encodes the original with the pipeline's VAE, so the blend has its reference
  (not needed, and not encoded, when every pixel is free from the first blend on).

Masks live on the latent grid; the pixel mask is that grid upsampled by the VAE factor (nearest), so
diffusers' own nearest downsampling gives back exactly the latent mask.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from .core import free_mask
from .hook import DifferentialStep, Reference

#: Diffusers pipelines whose step callback can replace the mask inputs.
INPAINT_PIPELINES = ("StableDiffusionInpaintPipeline", "StableDiffusionXLInpaintPipeline")


def is_inpaint_checkpoint(pipe: Any) -> bool:
    """True for an inpainting UNet: latents + mask + masked-image latents as input channels."""
    unet = getattr(pipe, "unet", None)
    vae = getattr(pipe, "vae", None)
    if unet is None or vae is None:
        return False
    latent = int(getattr(vae.config, "latent_channels", 4))
    return int(getattr(unet.config, "in_channels", latent)) == 2 * latent + 1


def as_inpaint_pipeline(pipe: Any) -> Any:
    """The diffusers inpainting pipeline sharing ``pipe``'s weights (``pipe`` itself if it is one)."""
    if type(pipe).__name__ in INPAINT_PIPELINES:
        return pipe
    from diffusers import AutoPipelineForInpainting

    return AutoPipelineForInpainting.from_pipe(pipe)


def _prompt_dtype(pipe: Any) -> torch.dtype:
    """The dtype diffusers draws the initial noise in (that of the prompt embeddings)."""
    for name in ("text_encoder", "text_encoder_2", "unet"):
        module = getattr(pipe, name, None)
        if module is not None:
            return module.dtype
    return torch.float32


class InpaintMasks:
    """``callback_on_step_end`` for inpainting pipelines: the Differential Diffusion blend plus the mask.

    ``hook`` is the run's :class:`DifferentialStep` (its ``change`` on the latent grid); ``total`` the
    run's executed steps; ``image`` the work-size RGB original; ``seed`` seeds the generator used to
    encode later masked images (the pipeline's own generator is left to the pipeline).
    ``masks`` records the latent mask handed to the model for each model step, for tests and debugging.
    """

    tensor_inputs: tuple[str, ...] = ("latents", "mask")

    def __init__(self, pipe: Any, hook: DifferentialStep, total: int, image: Image.Image, seed: int) -> None:
        self.hook = hook
        self.total = int(total)
        self.scale = int(getattr(pipe, "vae_scale_factor", 8))
        self.width, self.height = image.size
        self.change = hook.change.detach().to(dtype=torch.float32)
        self.init = pipe.image_processor.preprocess(image, height=self.height, width=self.width).to(torch.float32)
        self.generator = torch.Generator().manual_seed(int(seed) + 1)
        self.current = self.latent_mask(0)
        self.masks: list[torch.Tensor] = []

    @property
    def records(self) -> list[Any]:
        """The wrapped hook's step records (what :func:`diffdiff.families.base.run_stage` collects)."""
        return self.hook.records

    # the schedule -----------------------------------------------------------------------------------
    def latent_mask(self, model_step: int) -> torch.Tensor:
        """The mask model step ``model_step`` sees: pixels the blend after it keeps, shape (1, 1, h, w)."""
        step = min(int(model_step) + 1, self.total)
        mask = free_mask(self.change, step, self.total)
        return mask.reshape(-1, 1, *mask.shape[-2:])[:1].to(torch.float32)

    def pixel_mask(self, latent: torch.Tensor) -> torch.Tensor:
        """The latent mask at pixel resolution (nearest), (1, 1, H, W) in {0, 1}."""
        up = latent.repeat_interleave(self.scale, -2).repeat_interleave(self.scale, -1)
        return up[..., : self.height, : self.width]

    def mask_image(self) -> Image.Image:
        """The first step's mask as the pipeline's ``mask_image`` (white = generate)."""
        arr = (self.pixel_mask(self.current)[0, 0].cpu().numpy() * 255).astype(np.uint8)
        return Image.fromarray(arr, "L")

    # the pipeline call -------------------------------------------------------------------------------
    def prepare(self, pipe: Any, kwargs: dict[str, Any], batch: int) -> dict[str, Any]:
        """Call arguments for the inpainting pipeline: the first mask and, at strength 1, the noise.

        ``batch`` is the number of images the call makes (prompts x images per prompt).
        """
        kwargs = dict(kwargs, mask_image=self.mask_image())
        if float(kwargs.get("strength", 1.0)) >= 1.0:
            from diffusers.utils.torch_utils import randn_tensor

            device = pipe._execution_device
            dtype = _prompt_dtype(pipe)
            h, w = self.height // self.scale, self.width // self.scale
            channels = int(pipe.vae.config.latent_channels)
            # Drawn exactly as the pipeline would (first draw of its generator), so the run matches it.
            noise = randn_tensor((batch, channels, h, w), generator=kwargs.get("generator"), device=device, dtype=dtype)
            if bool(free_mask(self.change, 1, self.total).all()):
                # Every pixel is free from the first blend on (a full-change map): the reference is never
                # read, so no encode is spent on it -- the run makes exactly the plain pipeline's calls.
                clean = torch.zeros_like(noise)
            else:
                with torch.inference_mode():
                    clean = pipe._encode_vae_image(self.init.to(device=device, dtype=dtype), generator=self.generator)
            self.hook.reference = Reference(clean=clean.repeat(batch // clean.shape[0], 1, 1, 1), noise=noise)
            kwargs["latents"] = noise
            kwargs["strength"] = 1.0
        return kwargs

    def __call__(self, pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The step hook, then the model's mask input for the next step: the pixels free by then."""
        before = len(self.hook.records)
        if not self.masks:
            self.masks.append(self.current)
        out = self.hook(pipe, i, t, callback_kwargs)
        if len(self.hook.records) == before:
            return out  # half of a second-order step, or the last step: the mask stays
        wanted = self.latent_mask(self.hook.records[-1].global_step)  # the next model step's index in the run
        self.masks.append(wanted)
        if torch.equal(wanted, self.current):
            return out
        self.current = wanted
        return self.update(pipe, wanted, out, callback_kwargs)

    def update(self, pipe: Any, wanted: torch.Tensor, out: dict[str, Any],
               callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The grown mask into the pipeline's mask inputs (a new masked image is encoded)."""
        current: Optional[torch.Tensor] = callback_kwargs.get("mask")
        batch = int(current.shape[0]) if current is not None else 1
        dtype = current.dtype if current is not None else torch.float32
        device = current.device if current is not None else self.change.device
        pixel = self.pixel_mask(wanted)
        masked = self.init * (pixel < 0.5)  # the original outside the mask, as diffusers builds it
        mask, masked_latents = pipe.prepare_mask_latents(
            pixel, masked, batch, self.height, self.width, dtype, device, self.generator, False,
        )
        out["mask"] = mask
        out["masked_image_latents"] = masked_latents
        return out


class FluxFillMasks(InpaintMasks):
    """:class:`InpaintMasks` for Flux Fill, whose mask and masked image reach the transformer packed.

    Flux Fill's step callback cannot replace its condition (the packed masked-image latents and the
    8x8-per-cell mask, concatenated after the latents). So, while the pipeline runs (this object is
    a context manager), the transformer's ``hidden_states`` get the current step's condition in
    place of the one the pipeline built for the first step. Flux noises with ``scale_noise`` at every
    strength, so the reference always comes from :class:`~diffdiff.hook.NoiseCapture`.
    """

    tensor_inputs: tuple[str, ...] = ("latents",)

    def __init__(self, pipe: Any, hook: DifferentialStep, total: int, image: Image.Image, seed: int) -> None:
        super().__init__(pipe, hook, total, image, seed)
        self.pipe = pipe
        self.condition: Optional[torch.Tensor] = None
        self._saved: Any = None

    def prepare(self, pipe: Any, kwargs: dict[str, Any], batch: int) -> dict[str, Any]:
        return dict(kwargs, mask_image=self.mask_image())

    def update(self, pipe: Any, wanted: torch.Tensor, out: dict[str, Any],
               callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        latents = callback_kwargs["latents"]
        pixel = self.pixel_mask(wanted)
        masked = self.init * (1 - pixel)  # the original outside the mask, as Flux Fill builds it
        mask, masked_latents = pipe.prepare_mask_latents(
            pixel, masked.to(device=latents.device, dtype=latents.dtype), int(latents.shape[0]),
            int(pipe.vae.config.latent_channels), 1, self.height, self.width, latents.dtype, latents.device,
            self.generator,
        )
        self.condition = torch.cat((masked_latents, mask), dim=-1)
        return out

    # the condition swap while the pipeline runs ----------------------------------------------------
    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        states = kwargs.get("hidden_states")
        if self.condition is not None and states is not None:
            width = self.condition.shape[-1]
            cond = self.condition.to(dtype=states.dtype, device=states.device)
            kwargs["hidden_states"] = torch.cat((states[..., : states.shape[-1] - width], cond), dim=-1)
        return self._inner(*args, **kwargs)

    def __enter__(self) -> FluxFillMasks:
        transformer = self.pipe.transformer
        self._saved = transformer.__dict__.get("forward")
        self._inner = transformer.forward
        transformer.forward = self._forward
        return self

    def __exit__(self, *exc: object) -> None:
        transformer = self.pipe.transformer
        if self._saved is not None:
            transformer.forward = self._saved
        else:
            transformer.__dict__.pop("forward", None)
