"""Kandinsky 2.2: the prior turns the prompts into image embeddings; the map acts on MoVQ latents.

Accepts the decoder (img2img or text-to-image) with a ``prior`` part, or diffusers' combined
img2img pipeline (its own prior is used).
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import diffusers
import torch

from ..errors import DiffDiffError
from ..request import EditRequest
from .base import Adapter, PartSpec

#: Kandinsky 2.2 decoders need this prior unless another is given.
DEFAULT_KANDINSKY_PRIOR = "kandinsky-community/kandinsky-2-2-prior"


class KandinskyAdapter(Adapter):
    name = "kandinsky2.2"
    pipeline_classes = ("KandinskyV22Img2ImgPipeline", "KandinskyV22Pipeline", "KandinskyV22Img2ImgCombinedPipeline",
                        "KandinskyV22CombinedPipeline")
    # AutoPipeline would want the prior inside the decoder's repository: load the halves apart.
    load_as_classes: ClassVar[dict[str, str]] = {
        name: "KandinskyV22Img2ImgPipeline"
        for name in ("KandinskyV22Pipeline", "KandinskyV22Img2ImgPipeline", "KandinskyV22InpaintPipeline")
    }
    extra_parts: ClassVar[dict[str, PartSpec]] = {
        "prior": PartSpec("KandinskyV22PriorPipeline", default=DEFAULT_KANDINSKY_PRIOR),
    }
    pass_size = True
    #: prior settings, as in diffusers' combined pipeline
    prior_steps: int = 25
    prior_guidance: float = 4.0

    def __init__(self, pipe: Any, **parts: Any) -> None:
        prior = parts.get("prior")
        if hasattr(pipe, "decoder_pipe"):  # combined pipeline: split it into its two halves
            prior = prior if prior is not None else pipe.prior_pipe
            pipe = pipe.decoder_pipe
        if type(pipe).__name__ != "KandinskyV22Img2ImgPipeline":
            pipe = diffusers.KandinskyV22Img2ImgPipeline(**pipe.components)  # same weights, img2img call
        if prior is None:
            raise DiffDiffError(
                f"Kandinsky 2.2 needs its prior: pass prior= (e.g. '{DEFAULT_KANDINSKY_PRIOR}')"
            )
        if type(prior).__name__ != "KandinskyV22PriorPipeline":
            raise DiffDiffError(f"the Kandinsky prior must be a KandinskyV22PriorPipeline, got {type(prior).__name__}")
        super().__init__(pipe, prior=prior)
        self.prior = prior

    @classmethod
    def default_part(cls, name: str, pipe: Any) -> Optional[str]:
        if name == "prior" and hasattr(pipe, "prior_pipe"):
            return None  # a combined pipeline brings its own
        return super().default_part(name, pipe)

    def vae_scale(self) -> int:
        return 2 ** (len(self.pipe.movq.config.block_out_channels) - 1)

    def call_kwargs(self, image: Any, request: EditRequest, generator: torch.Generator,
                    size: tuple[int, int]) -> dict[str, Any]:
        # The prior draws from the same generator first, exactly as the combined pipeline does.
        embeds, negative = self.prior(
            prompt=request.prompt, negative_prompt=request.negative_prompt, num_images_per_prompt=request.num_images,
            num_inference_steps=self.prior_steps, generator=generator, guidance_scale=self.prior_guidance,
            output_type="pt", return_dict=False,
        )
        width, height = size
        kw: dict[str, Any] = dict(
            image=[image] * int(embeds.shape[0]), image_embeds=embeds, negative_image_embeds=negative,
            width=width, height=height, strength=request.strength, num_inference_steps=request.num_inference_steps,
            generator=generator,
        )
        if request.guidance_scale is not None:
            kw["guidance_scale"] = request.guidance_scale
        return self.with_pipeline_kwargs(kw, request)
