"""Flow-matching families: SD3 / SD3.5 and Flux.1 (flow matching's ``scale_noise``, float truncation).

Flux packs its latents in 2x2 patches (a sequence of 64-dim tokens, :data:`diffdiff.layouts.PACKED`);
the map lives on the unpacked grid and the hook packs and unpacks around the blend.
"""

from __future__ import annotations

import torch

from ..layouts import PACKED
from ..levels import flow_executed_steps
from .base import Adapter


class FlowAdapter(Adapter):
    """Shared by flow-matching pipelines: ``scale_noise`` and the float step-truncation rule."""

    noise_method = "scale_noise"
    pass_size = True  # the pipelines ignore the input size and would run at their default 1024 px

    def planned_steps(self, num_inference_steps: int, strength: float) -> int:
        return flow_executed_steps(num_inference_steps, strength)


class StableDiffusion3Adapter(FlowAdapter):
    """SD3 / SD3.5: MMDiT on 16-channel latents, patch size 2."""

    name = "sd3"
    pipeline_classes = ("StableDiffusion3Img2ImgPipeline",)

    def pixel_multiple(self) -> int:
        return self.vae_scale() * int(self.pipe.transformer.config.patch_size)


class FluxAdapter(FlowAdapter):
    """Flux.1 dev/schnell: 2x2-packed latents."""

    name = "flux"
    pipeline_classes = ("FluxImg2ImgPipeline",)

    def pixel_multiple(self) -> int:
        return self.vae_scale() * 2  # the latent grid is packed in 2x2 patches

    def latent_hw(self, width: int, height: int) -> tuple[int, int]:
        s = self.vae_scale() * 2
        return 2 * (height // s), 2 * (width // s)

    def unpack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return PACKED.to_grid(latents, *self.latent_hw(width, height))

    def pack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return PACKED.from_grid(latents)
