"""The denoiser and the VAE, called directly: DiffEdit's and the automatic maps' machinery.

:class:`NoisePredictor` is the pipeline's UNet as an epsilon predictor under text conditioning
(prompt encoding is family specific: SDXL's pooled embeddings and time ids); :func:`ddim_move`
writes out the DDIM arithmetic so the inversion and the decoding use exactly the same levels in
both directions; :func:`encode_image` / :func:`decode_latents` are the VAE codec at the model's
working size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image

from .errors import DiffDiffError, UnsupportedFeatureError
from .protocol import EditorLike

#: Families whose denoiser we know how to call directly.
SUPPORTED_FAMILIES = ("sd", "sdxl")


def unsupported_reason(editor: Any) -> Optional[str]:
    """Why automatic maps and DiffEdit cannot run on ``editor`` (None: they can).

    They call the UNet themselves with text conditioning only: a family they do not know, or a UNet
    an IP-Adapter was loaded into (it then demands an image prompt on every call), is refused.
    """
    family = getattr(editor, "family", None)
    if family not in SUPPORTED_FAMILIES:
        return f"automatic maps and DiffEdit support SD 1.x/2.x and SDXL, not the {family} family"
    unet = getattr(getattr(editor, "pipe", None), "unet", None)
    if getattr(getattr(unet, "config", None), "encoder_hid_dim_type", None) == "ip_image_proj":
        return "automatic maps and DiffEdit do not take an IP-Adapter's image prompt; load the model without ip_adapter="
    return None


def require_family(editor: EditorLike) -> None:
    """Automatic maps and DiffEdit call the UNet themselves: only where :func:`unsupported_reason` allows."""
    reason = unsupported_reason(editor)
    if reason is not None:
        raise UnsupportedFeatureError(reason)


@dataclass
class Conditioning:
    """Text conditioning for one prompt: token embeddings and SDXL's added inputs (batch 1)."""

    embeds: torch.Tensor
    added: Optional[dict[str, torch.Tensor]] = None

    def repeat(self, n: int) -> Conditioning:
        added = {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in self.added.items()} if self.added else None
        return Conditioning(self.embeds.repeat(n, 1, 1), added)

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        embeds = torch.cat([p.embeds for p in parts])
        if parts[0].added is None:
            return Conditioning(embeds)
        return Conditioning(embeds, {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added})  # type: ignore[index]


class NoisePredictor:
    """The pipeline's UNet as an epsilon predictor under text conditioning (SD or SDXL).

    Works on (B, C, h, w) latents in the variance-preserving parameterisation (x_t = sqrt(a) x0 +
    sqrt(1 - a) eps), which is what the UNet was trained on; v- and sample-prediction models are
    converted to epsilon so the DDIM arithmetic below is the same for all of them.
    """

    def __init__(self, pipe: Any, family: str, width: int, height: int) -> None:
        self.pipe = pipe
        self.family = family
        self.size = (height, width)  # SDXL's micro-conditioning wants (height, width)
        # A DDIM scheduler built from the model's config gives its noise levels and timestep spacing.
        self.ddim = DDIMScheduler.from_config(pipe.scheduler.config)
        self.alphas = self.ddim.alphas_cumprod.to(torch.float64)
        self.prediction_type = getattr(pipe.scheduler.config, "prediction_type", "epsilon")
        self.device, self.dtype = device_dtype(pipe.unet)
        self._cache: dict[tuple[str, Optional[str]], tuple[Conditioning, Conditioning]] = {}

    def alpha(self, t: Union[int, torch.Tensor]) -> float:
        return float(self.alphas[int(t)])

    # prompts ---------------------------------------------------------------------------------------
    def encode(self, prompt: str, negative_prompt: Optional[str] = None) -> tuple[Conditioning, Conditioning]:
        """(conditional, unconditional) conditioning for ``prompt``."""
        key = (prompt, negative_prompt)
        if key not in self._cache:
            with torch.inference_mode():
                self._cache[key] = self._encode_sdxl(prompt, negative_prompt) if self.family == "sdxl" \
                    else self._encode_sd(prompt, negative_prompt)
        return self._cache[key]

    def _encode_sd(self, prompt: str, negative_prompt: Optional[str]) -> tuple[Conditioning, Conditioning]:
        cond, uncond = self.pipe.encode_prompt(prompt, self.device, 1, True, negative_prompt)
        return Conditioning(cond), Conditioning(uncond)

    def _encode_sdxl(self, prompt: str, negative_prompt: Optional[str]) -> tuple[Conditioning, Conditioning]:
        pe, npe, pooled, npooled = self.pipe.encode_prompt(
            prompt=prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=negative_prompt,
        )
        h, w = self.size
        # SDXL micro-conditioning as its img2img pipeline sets it by default: no crop, full size;
        # refiners condition on an aesthetic score (6.0 positive, 2.5 negative) instead of target size.
        if getattr(self.pipe.config, "requires_aesthetics_score", False):
            ids, neg_ids = (h, w, 0, 0, 6.0), (h, w, 0, 0, 2.5)
        else:
            ids = neg_ids = (h, w, 0, 0, h, w)
        dev = pe.device

        def added(pool: torch.Tensor, t_ids: tuple[float, ...]) -> dict[str, torch.Tensor]:
            return {"text_embeds": pool, "time_ids": torch.tensor([t_ids], dtype=pe.dtype, device=dev)}

        return Conditioning(pe, added(pooled, ids)), Conditioning(npe, added(npooled, neg_ids))

    # prediction ------------------------------------------------------------------------------------
    def eps(self, x: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        """Epsilon prediction for latents ``x`` (B, C, h, w) at training timestep ``t``; ``cond`` has batch B."""
        kw: dict[str, Any] = {"encoder_hidden_states": cond.embeds.to(self.device, self.dtype)}
        if cond.added is not None:
            kw["added_cond_kwargs"] = {k: v.to(self.device, self.dtype) for k, v in cond.added.items()}
        t_in = torch.full((x.shape[0],), int(t), device=self.device, dtype=torch.long)
        with torch.inference_mode():
            out = self.pipe.unet(x.to(self.device, self.dtype), t_in, return_dict=False, **kw)[0]
        out = out.to(torch.float32)
        x32 = x.to(out.device, torch.float32)
        a = self.alpha(t)
        if self.prediction_type == "v_prediction":
            return a**0.5 * out + (1 - a) ** 0.5 * x32
        if self.prediction_type == "sample":
            return (x32 - a**0.5 * out) / max((1 - a) ** 0.5, 1e-8)
        return out

    def guided_eps(self, x: torch.Tensor, t: int, cond: Conditioning, uncond: Conditioning, guidance: float) -> torch.Tensor:
        """Classifier-free guided epsilon; one UNet pass when ``guidance`` is 1 (or less)."""
        b = x.shape[0]
        if guidance <= 1.0:
            e = self.eps(x, t, cond.repeat(b))
            if guidance == 1.0:
                return e
            return self.eps(x, t, uncond.repeat(b)) * (1 - guidance) + e * guidance
        both = self.eps(torch.cat([x, x]), t, Conditioning.cat([uncond.repeat(b), cond.repeat(b)]))
        e_u, e_c = both.chunk(2)
        return e_u + guidance * (e_c - e_u)


def device_dtype(module: Any) -> tuple[torch.device, torch.dtype]:
    """Where a denoiser runs: ModelMixin says so; a plain torch module by its first tensor."""
    if hasattr(module, "device") and hasattr(module, "dtype"):
        return module.device, module.dtype
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def ddim_move(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Deterministic DDIM move between two noise levels (alphas_cumprod); either direction.

    x0 is estimated from (x, eps) at ``alpha_from`` and re-noised with the same eps to ``alpha_to``.
    Decoding moves to a lower noise level, inversion to a higher one.
    """
    x0 = (x - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps


def work_image(editor: EditorLike, image: Image.Image) -> Image.Image:
    ww, wh = editor.work_size(*image.size)
    src = image.convert("RGB")
    return src if src.size == (ww, wh) else src.resize((ww, wh), Image.Resampling.LANCZOS)


def vae_for(pipe: Any) -> tuple[Any, torch.dtype]:
    """The VAE and the dtype to run it in (fp16 SDXL VAEs overflow: they ask to be upcast)."""
    vae = pipe.vae
    dtype = vae.dtype
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        dtype = torch.float32
    return vae, dtype


def encode_image(editor: EditorLike, image: Image.Image) -> torch.Tensor:
    """The image's latents (1, C, h, w) at the model's working size: the VAE posterior mean, scaled."""
    work = work_image(editor, image)
    pipe = editor.pipe
    vae, dtype = vae_for(pipe)
    px = pipe.image_processor.preprocess(work)
    original = vae.dtype
    with torch.inference_mode():
        if dtype != original:
            vae.to(dtype)
        try:
            dist = vae.encode(px.to(vae.device, dtype)).latent_dist
        finally:
            if dtype != original:
                vae.to(original)
    z = dist.mean.to(torch.float32)  # the mean, not a sample: the map and the inversion are deterministic
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z - shift
    return z * float(vae.config.scaling_factor)


def decode_latents(editor: EditorLike, latents: torch.Tensor) -> np.ndarray:
    """uint8 images (B, H, W, 3) from latents at the working size."""
    pipe = editor.pipe
    vae, dtype = vae_for(pipe)
    z = latents / float(vae.config.scaling_factor)
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        z = z + shift
    original = vae.dtype
    with torch.inference_mode():
        if dtype != original:
            vae.to(dtype)
        try:
            px = vae.decode(z.to(vae.device, dtype), return_dict=False)[0]
        finally:
            if dtype != original:
                vae.to(original)
    px = px.to(torch.float32)
    if not torch.isfinite(px).all():
        raise DiffDiffError("the model produced NaN/inf pixels (often an fp16 VAE overflow); retry with torch_dtype=float32")
    arr = ((px / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return arr
