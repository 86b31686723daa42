"""DiffEdit (Couairon et al. 2022) and automatic change maps from text, on diffdiff's engine.

Two user-facing operations, both for SD 1.x/2.x and SDXL:

* :func:`auto_map`: where does the edit belong? Noise the image to one timestep with several noise
  draws, predict the noise under a *source* prompt (what the image shows) and a *target* prompt (the
  edit), and average |eps_target - eps_source| over draws and channels. DiffEdit thresholds this into a
  binary mask; we return it *continuous* (smoothed, robustly normalised to [0, 1]) so Differential
  Diffusion can fade the edit out where the model is unsure.
* :func:`diffedit`: DiffEdit proper. A binary mask (given, or ``auto_map > threshold``), a
  deterministic DDIM inversion of the image to ``encode_ratio`` under the source prompt, then DDIM
  decoding under the target prompt in which, outside the mask, the latents are replaced after every
  step by the inverted ones. That replacement is Differential Diffusion's blend with another reference
  trajectory, so it runs through :class:`diffdiff.hook.DifferentialStep` (``trajectory=``) and
  :func:`diffdiff.core.blend`: a 0/1 map through the blend means "always replaced" / "always free".

Noise prediction is family specific (prompt encoding, SDXL's pooled embeddings and time ids) and
lives in :class:`NoisePredictor`; the DDIM arithmetic is written out in :func:`ddim_move` so the
inversion and the decoding use exactly the same levels in both directions.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import __version__
from .changemap import MapLike, paste_back, prepare_change_map, to_latent_map
from .core import blend
from .errors import DiffDiffError
from .hook import DifferentialStep, NoiseCapture, Reference
from .io import image_sha256, open_image

if TYPE_CHECKING:
    from .editor import Editor

ImageLike = Union[Image.Image, str, os.PathLike]

#: Families whose denoiser we know how to call directly.
SUPPORTED_FAMILIES = ("sd", "sdxl")
#: Noise draws evaluated per denoiser call in :func:`auto_map` (bounds memory on large images).
_DRAWS_PER_BATCH = 4
#: Automatic-map defaults, picked by what localises best on the trained micro model
#: (benchmarks/QUALITY.md, "Automatic map"): light smoothing, and white at 7x the mean, so that
#: ``map > 0.5`` (diffedit's threshold) marks cells whose difference exceeds 3.5x the mean.
MAP_SMOOTH = 0.5
MAP_CLAMP_RATIO = 7.0


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and bool(np.isfinite(x))


def _check_prompt(value: Any, name: str) -> None:
    if not isinstance(value, str):
        raise DiffDiffError(f"{name} must be a string, got {type(value).__name__}")


def _check_seed(seed: Any) -> None:
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise DiffDiffError(f"seed must be a non-negative integer, got {seed!r}")


def validate_map_params(
    source_prompt: Any, target_prompt: Any, num_maps: Any, encode_strength: Any, seed: Any,
    clamp_ratio: Any = 3.0, smooth: Any = 1.0,
) -> None:
    """Raise :class:`DiffDiffError` naming the first bad :func:`auto_map` parameter."""
    _check_prompt(source_prompt, "source prompt")
    _check_prompt(target_prompt, "target prompt")
    if not _is_int(num_maps) or num_maps < 1:
        raise DiffDiffError(f"num_maps must be a positive integer, got {num_maps!r}")
    if not _is_num(encode_strength) or not 0 < encode_strength <= 1:
        raise DiffDiffError(f"encode strength must be in (0, 1], got {encode_strength!r}")
    if not _is_num(clamp_ratio) or clamp_ratio <= 0:
        raise DiffDiffError(f"clamp_ratio must be a positive number, got {clamp_ratio!r}")
    if not _is_num(smooth) or smooth < 0:
        raise DiffDiffError(f"smooth must be a number >= 0, got {smooth!r}")
    _check_seed(seed)


def validate_diffedit_params(
    source_prompt: Any, target_prompt: Any, threshold: Any, encode_ratio: Any, num_inference_steps: Any,
    guidance_scale: Any, num_images: Any, seed: Any, output_type: Any = "pil", eta: Any = 0.0,
    inversion_guidance: Any = 1.0, negative_prompt: Any = None,
) -> None:
    """Raise :class:`DiffDiffError` naming the first bad :func:`diffedit` parameter (no model needed)."""
    _check_prompt(source_prompt, "source prompt")
    _check_prompt(target_prompt, "target prompt")
    if negative_prompt is not None:
        _check_prompt(negative_prompt, "negative prompt")
    if not _is_num(threshold) or not 0 <= threshold < 1:
        raise DiffDiffError(f"threshold must be in [0, 1), got {threshold!r}")
    if not _is_num(encode_ratio) or not 0 < encode_ratio <= 1:
        raise DiffDiffError(f"encode ratio must be in (0, 1], got {encode_ratio!r}")
    if not _is_int(num_inference_steps) or num_inference_steps < 1:
        raise DiffDiffError(f"steps must be a positive integer, got {num_inference_steps!r}")
    if int(num_inference_steps * encode_ratio) < 1:
        raise DiffDiffError(
            f"{num_inference_steps} steps at encode ratio {encode_ratio} leave no step to run; raise either"
        )
    for name, g in (("guidance", guidance_scale), ("inversion guidance", inversion_guidance)):
        if g is not None and (not _is_num(g) or g < 0):
            raise DiffDiffError(f"{name} must be a number >= 0, got {g!r}")
    if not _is_int(num_images) or num_images < 1:
        raise DiffDiffError(f"num_images must be a positive integer, got {num_images!r}")
    if not _is_num(eta) or not 0 <= eta <= 1:
        raise DiffDiffError(f"eta must be in [0, 1], got {eta!r}")
    if output_type not in ("pil", "latent"):
        raise DiffDiffError(f"output_type must be 'pil' or 'latent', got {output_type!r}")
    _check_seed(seed)


def _require_family(editor: Editor) -> None:
    if editor.adapter.name not in SUPPORTED_FAMILIES:
        raise DiffDiffError(
            f"automatic maps and DiffEdit support SD 1.x/2.x and SDXL, not the {editor.adapter.name} family"
        )


def _load(image: ImageLike, what: str) -> Image.Image:
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, (str, os.PathLike)):
        img = open_image(image, what)
    else:
        raise DiffDiffError(f"{what} must be a PIL image or a file path, got {type(image).__name__}")
    if img.width < 1 or img.height < 1:
        raise DiffDiffError(f"{what} is empty")
    return img


# --------------------------------------------------------------------------------------------------
# the denoiser, family by family
# --------------------------------------------------------------------------------------------------
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
        from diffusers import DDIMScheduler

        self.pipe = pipe
        self.family = family
        self.size = (height, width)  # SDXL's micro-conditioning wants (height, width)
        # A DDIM scheduler built from the model's config gives its noise levels and timestep spacing.
        self.ddim = DDIMScheduler.from_config(pipe.scheduler.config)
        self.alphas = self.ddim.alphas_cumprod.to(torch.float64)
        self.prediction_type = getattr(pipe.scheduler.config, "prediction_type", "epsilon")
        self.device, self.dtype = _device_dtype(pipe.unet)
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


def _device_dtype(module: Any) -> tuple[torch.device, torch.dtype]:
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


# --------------------------------------------------------------------------------------------------
# images <-> latents
# --------------------------------------------------------------------------------------------------
def _work_image(editor: Editor, image: Image.Image) -> Image.Image:
    ww, wh = editor.work_size(*image.size)
    src = image.convert("RGB")
    return src if src.size == (ww, wh) else src.resize((ww, wh), Image.Resampling.LANCZOS)


def _vae_for(pipe: Any) -> tuple[Any, torch.dtype]:
    """The VAE and the dtype to run it in (fp16 SDXL VAEs overflow: they ask to be upcast)."""
    vae = pipe.vae
    dtype = vae.dtype
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        dtype = torch.float32
    return vae, dtype


def encode_image(editor: Editor, image: Image.Image) -> torch.Tensor:
    """The image's latents (1, C, h, w) at the model's working size: the VAE posterior mean, scaled."""
    work = _work_image(editor, image)
    pipe = editor.pipe
    vae, dtype = _vae_for(pipe)
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


def decode_latents(editor: Editor, latents: torch.Tensor) -> np.ndarray:
    """uint8 images (B, H, W, 3) from latents at the working size."""
    pipe = editor.pipe
    vae, dtype = _vae_for(pipe)
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


# --------------------------------------------------------------------------------------------------
# automatic change maps
# --------------------------------------------------------------------------------------------------
def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (1, 1, h, w) map with reflect padding (no dark borders)."""
    if sigma <= 0:
        return x
    radius = max(1, int(round(3 * sigma)))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (coords / sigma) ** 2)
    k = k / k.sum()
    h, w = x.shape[-2:]
    # Reflect padding needs pad < size; clamp the kernel on tiny grids.
    r_h, r_w = min(radius, h - 1), min(radius, w - 1)
    if r_h > 0:
        kh = k[radius - r_h: radius + r_h + 1]
        x = F.conv2d(F.pad(x, (0, 0, r_h, r_h), mode="reflect"), (kh / kh.sum()).view(1, 1, -1, 1))
    if r_w > 0:
        kw = k[radius - r_w: radius + r_w + 1]
        x = F.conv2d(F.pad(x, (r_w, r_w, 0, 0), mode="reflect"), (kw / kw.sum()).view(1, 1, 1, -1))
    return x


def normalise_map(raw: torch.Tensor, clamp_ratio: float = 3.0, winsorise: float = 0.99) -> torch.Tensor:
    """Robust [0, 1] normalisation: divide by ``clamp_ratio`` x the mean and clamp.

    This is DiffEdit's ``mask_thresholding_ratio`` rule (``map > 0.5`` marks values above
    ``clamp_ratio / 2`` x the mean: DiffEdit's mask for its ratio 3), with
    the mean taken after clipping values above the ``winsorise`` quantile: a few extreme pixels can
    neither darken the rest of the map nor move the mask. An all-zero difference (source prompt ==
    target prompt) stays all zero: nothing to change.
    """
    flat = raw.flatten().to(torch.float64)
    ref = flat.clamp(max=float(torch.quantile(flat, winsorise, interpolation="lower"))).mean() if flat.numel() > 1 else flat.mean()
    scale = float(ref) * clamp_ratio
    if not np.isfinite(scale) or scale <= 0:
        return torch.zeros_like(raw)
    return (raw / scale).clamp(0, 1)


def estimate_difference(
    predictor: NoisePredictor, latents: torch.Tensor, source: Conditioning, target: Conditioning,
    num_maps: int, timestep: int, generator: torch.Generator,
) -> torch.Tensor:
    """Mean over noise draws and channels of |eps_target - eps_source| at ``timestep``: (1, 1, h, w).

    DiffEdit compares classifier-free-guided predictions. With a shared unconditional branch the
    guided difference is exactly ``guidance * (eps(target) - eps(source))``: the unconditional term
    cancels and the factor disappears in the normalisation, so only the two conditional predictions
    are evaluated (a third fewer UNet passes, identical map).
    """
    a = predictor.alpha(timestep)
    total = torch.zeros(latents.shape[-2:], dtype=torch.float64)
    done = 0
    while done < num_maps:
        n = min(_DRAWS_PER_BATCH, num_maps - done)
        noise = torch.randn((n, *latents.shape[1:]), generator=generator, dtype=torch.float32)
        x_t = a**0.5 * latents.cpu() + (1 - a) ** 0.5 * noise
        both = predictor.eps(torch.cat([x_t, x_t]), timestep, Conditioning.cat([source.repeat(n), target.repeat(n)]))
        e_s, e_t = both.chunk(2)
        total += (e_t - e_s).abs().mean(dim=1).sum(dim=0).to(torch.float64).cpu()
        done += n
    return (total / num_maps).to(torch.float32)[None, None]


@dataclass
class AutoMap:
    """An automatic change map: the latent-grid values and the image-size float array."""

    latent: torch.Tensor  # (1, 1, h, w) in [0, 1]
    array: np.ndarray  # (H, W) float32 in [0, 1], the image's size
    seed: int
    timestep: int

    def to_image(self) -> Image.Image:
        return Image.fromarray(np.round(self.array * 255).astype(np.uint8), "L")


def compute_auto_map(
    editor: Editor,
    image: Image.Image,
    source_prompt: str,
    target_prompt: str,
    num_maps: int = 10,
    encode_strength: float = 0.5,
    seed: Optional[int] = None,
    clamp_ratio: float = MAP_CLAMP_RATIO,
    smooth: float = MAP_SMOOTH,
) -> AutoMap:
    """The continuous change map for editing ``image`` from ``source_prompt`` to ``target_prompt``."""
    validate_map_params(source_prompt, target_prompt, num_maps, encode_strength, seed, clamp_ratio, smooth)
    _require_family(editor)
    if seed is None:
        seed = secrets.randbits(31)
    latents = encode_image(editor, image)
    predictor = NoisePredictor(editor.pipe, editor.adapter.name, *_work_image(editor, image).size)
    t_train = len(predictor.alphas)
    # The noise level of an img2img run at this strength (DiffEdit's mask_encode_strength).
    timestep = min(t_train - 1, max(0, int(round(encode_strength * t_train)) - 1))
    src, _ = predictor.encode(source_prompt)
    tgt, _ = predictor.encode(target_prompt)
    generator = torch.Generator().manual_seed(int(seed))
    raw = estimate_difference(predictor, latents, src, tgt, num_maps, timestep, generator)
    # Smooth first (per-draw noise is speckled), then normalise on the smoothed values.
    latent_map = normalise_map(_gaussian_blur(raw, smooth), clamp_ratio)
    arr = _upsample(latent_map, image.size)
    return AutoMap(latent=latent_map, array=arr, seed=int(seed), timestep=timestep)


def _upsample(latent_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a (1, 1, h, w) map to an image-size (H, W) array."""
    w, h = size
    out = F.interpolate(latent_map.to(torch.float32), size=(h, w), mode="bilinear", align_corners=False)
    return out[0, 0].clamp(0, 1).numpy().astype(np.float32)


def auto_map(
    editor: Editor,
    image: ImageLike,
    source_prompt: str,
    target_prompt: str,
    num_maps: int = 10,
    encode_strength: float = 0.5,
    seed: Optional[int] = None,
    clamp_ratio: float = MAP_CLAMP_RATIO,
    smooth: float = MAP_SMOOTH,
) -> Image.Image:
    """The continuous change map as a PIL "L" image of the image's size (white = change).

    ``img.info["diffdiff"]`` records how it was made (prompts, seed, timestep).
    """
    img = _load(image, "image")
    m = compute_auto_map(editor, img, source_prompt, target_prompt, num_maps, encode_strength, seed, clamp_ratio, smooth)
    out = m.to_image()
    out.info["diffdiff"] = {
        "kind": "auto_map",
        "model": editor.model_name,
        "family": editor.adapter.name,
        "source_prompt": source_prompt,
        "target_prompt": target_prompt,
        "num_maps": int(num_maps),
        "encode_strength": float(encode_strength),
        "timestep": m.timestep,
        "clamp_ratio": float(clamp_ratio),
        "smooth": float(smooth),
        "seed": m.seed,
        "image_sha256": image_sha256(img),
        "diffdiff_version": __version__,
    }
    return out


# --------------------------------------------------------------------------------------------------
# DiffEdit: inversion and masked decoding
# --------------------------------------------------------------------------------------------------
def decoding_timesteps(predictor: NoisePredictor, num_inference_steps: int, encode_ratio: float) -> list[int]:
    """The model's DDIM timesteps for ``num_inference_steps``, truncated like img2img at ``encode_ratio``."""
    predictor.ddim.set_timesteps(num_inference_steps)
    full = [int(t) for t in predictor.ddim.timesteps]
    n = min(int(num_inference_steps * encode_ratio), num_inference_steps)
    return full[len(full) - n:]


def invert(
    predictor: NoisePredictor, latents: torch.Tensor, timesteps: Sequence[int], cond: Conditioning,
    uncond: Conditioning, guidance: float = 1.0,
) -> list[torch.Tensor]:
    """Deterministic DDIM inversion of clean ``latents`` up the (descending) ``timesteps``.

    Returns the inverted latents at each timestep, in decoding order: ``out[k]`` lives at
    ``timesteps[k]``, ``out[0]`` is the start of decoding. Each move up to level t uses the
    prediction at the current latents with t's label, mirroring the decoding step from t, which
    uses the same label (the usual DDIM-inversion approximation eps(x_t) ~ eps(x_{t-1})).
    """
    x = latents.to(torch.float32)
    alpha_from = 1.0  # the clean image
    out: list[torch.Tensor] = []
    for t in reversed(list(timesteps)):
        eps = predictor.guided_eps(x, t, cond, uncond, guidance)
        x = ddim_move(x, eps, alpha_from, predictor.alpha(t))
        alpha_from = predictor.alpha(t)
        out.append(x)
    return out[::-1]


@dataclass
class _ScheduleView:
    """What :class:`DifferentialStep` reads from a pipeline: ``pipe.scheduler.timesteps`` and ``order``."""

    scheduler: Any


@dataclass
class DiffEditRun:
    """Latents and bookkeeping of the last :func:`diffedit` run (for tests and debugging)."""

    clean: Optional[torch.Tensor] = None
    inverted: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)
    latent_mask: Optional[torch.Tensor] = None
    mask: Optional[np.ndarray] = None
    hook: Optional[DifferentialStep] = None


def decode(
    predictor: NoisePredictor, inverted: Sequence[torch.Tensor], clean: torch.Tensor, timesteps: Sequence[int],
    latent_mask: torch.Tensor, cond: Conditioning, uncond: Conditioning, guidance: float, num_images: int = 1,
    eta: float = 0.0, generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, DifferentialStep]:
    """DDIM decoding from ``inverted[0]`` under ``cond``, keeping the inverted trajectory outside the mask.

    After every step the latents outside ``latent_mask`` (0) are replaced by the inverted latents at
    the next timestep, inside (1) they follow the model: Differential Diffusion's hook with the
    inversion as its reference trajectory. As in DiffEdit, the final latents outside the mask are
    the clean original.
    """
    x = inverted[0].to(torch.float32).repeat(num_images, 1, 1, 1)
    schedule = SimpleNamespace(timesteps=torch.tensor(list(timesteps)), order=1)
    mask = latent_mask.to(x.device, torch.float32)
    hook = DifferentialStep(
        change=mask,
        capture=NoiseCapture(predictor.ddim),
        reference=Reference(clean=clean, noise=torch.zeros_like(clean)),  # unused: the trajectory supplies it
        trajectory=lambda step, lat: inverted[step].to(lat.dtype).expand_as(lat),
    )
    view = _ScheduleView(scheduler=schedule)
    n = len(timesteps)
    for i, t in enumerate(timesteps):
        a_t = predictor.alpha(t)
        a_next = predictor.alpha(timesteps[i + 1]) if i + 1 < n else 1.0
        eps = predictor.guided_eps(x, t, cond, uncond, guidance)
        if eta > 0 and i + 1 < n:
            # DDIM with stochasticity eta (Song et al. eq. 16): part of eps is replaced by fresh noise.
            sigma = eta * ((1 - a_next) / (1 - a_t) * (1 - a_t / a_next)) ** 0.5
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            z = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)  # CPU draws: same on any device
            x = a_next**0.5 * x0 + max(1 - a_next - sigma**2, 0.0) ** 0.5 * eps + sigma * z
        else:
            x = ddim_move(x, eps, a_t, a_next)
        x = hook(view, i, t, {"latents": x})["latents"]
    # The hook does not blend after the last step (the paper's rule); DiffEdit ends on the clean
    # original outside the mask. With a 0/1 mask any step before the end of the schedule applies
    # exactly that replacement, so the shared blend does it.
    x = blend(x, clean.to(x.dtype).expand_as(x), mask, n - 1, n)
    return x, hook


def prepare_mask(mask: Union[MapLike, str, os.PathLike], size: tuple[int, int]) -> np.ndarray:
    """A user's mask as an image-size 0/1 float array (white = edit; values >= 0.5 count as white)."""
    if isinstance(mask, (str, os.PathLike)):
        mask = open_image(mask, "mask")
    arr = prepare_change_map(mask, size, "change")
    return (arr >= 0.5).astype(np.float32)


def latent_mask_for(mask: np.ndarray, latent_hw: tuple[int, int]) -> torch.Tensor:
    """The mask on the latent grid: a latent cell is edited if any of its pixels is.

    Dilating (rather than rounding) lets the edit reach every masked pixel; pixels outside the mask
    are restored exactly by the paste-back anyway.
    """
    return (to_latent_map(mask, *latent_hw) > 0).to(torch.float32)


def diffedit(
    editor: Editor,
    image: ImageLike,
    source_prompt: str,
    target_prompt: str,
    mask: Union[MapLike, str, os.PathLike, None] = None,
    threshold: float = 0.5,
    encode_ratio: float = 0.5,
    num_inference_steps: int = 50,
    seed: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    negative_prompt: Optional[str] = None,
    num_images: int = 1,
    output_type: str = "pil",
    num_maps: int = 10,
    inversion_guidance: float = 1.0,
    eta: float = 0.0,
    paste_back_pixels: bool = True,
    metadata: Optional[dict[str, Any]] = None,
) -> Any:
    """DiffEdit ``image`` from ``source_prompt`` to ``target_prompt``; returns a list of PIL images.

    ``mask``: white = edit (given), or ``None`` for the automatic map thresholded at ``threshold``.
    ``output_type="latent"`` returns the final latents (B, C, h, w).
    """
    validate_diffedit_params(source_prompt, target_prompt, threshold, encode_ratio, num_inference_steps,
                             guidance_scale, num_images, seed, output_type, eta, inversion_guidance, negative_prompt)
    _require_family(editor)
    img = _load(image, "image")
    source = img.convert("RGB")
    if seed is None:
        seed = secrets.randbits(31)
    if mask is None:
        auto = compute_auto_map(editor, source, source_prompt, target_prompt, num_maps, encode_strength=0.5, seed=seed)
        mask_arr = (auto.array > threshold).astype(np.float32)
    else:
        mask_arr = prepare_mask(mask, source.size)
    guidance = float(guidance_scale if guidance_scale is not None else (editor.adapter.default_guidance() or 7.5))
    meta = {
        "kind": "diffedit",
        "model": editor.model_name,
        "family": editor.adapter.name,
        "source_prompt": source_prompt,
        "prompt": target_prompt,
        "negative_prompt": negative_prompt,
        "seed": int(seed),
        "steps": int(num_inference_steps),
        "guidance": guidance,
        "inversion_guidance": float(inversion_guidance),
        "encode_ratio": float(encode_ratio),
        "threshold": float(threshold) if mask is None else None,
        "mask": "auto" if mask is None else "given",
        "mask_fraction": float(mask_arr.mean()),
        "eta": float(eta),
        "num_images": int(num_images),
        "image_sha256": image_sha256(img),
        "scheduler": "DDIM (inverted)",
        "diffdiff_version": __version__,
    }
    if metadata:
        meta.update(metadata)
    run = DiffEditRun(mask=mask_arr)
    editor.last_diffedit = run  # type: ignore[attr-defined]
    if output_type == "pil" and not mask_arr.any():
        warnings.warn("the DiffEdit mask is empty: nothing to edit, returning the input unchanged",
                      _warning_category(), stacklevel=3)
        return [_finish(source.copy(), meta, i) for i in range(num_images)]

    work = _work_image(editor, source)
    predictor = NoisePredictor(editor.pipe, editor.adapter.name, *work.size)
    clean = encode_image(editor, source)
    timesteps = decoding_timesteps(predictor, num_inference_steps, encode_ratio)
    src_cond, src_uncond = predictor.encode(source_prompt, negative_prompt)
    tgt_cond, tgt_uncond = predictor.encode(target_prompt, negative_prompt)
    inverted = invert(predictor, clean, timesteps, src_cond, src_uncond, float(inversion_guidance))
    lmask = latent_mask_for(mask_arr, tuple(clean.shape[-2:]))  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(int(seed) + 1)  # +1: independent of the map's draws
    latents, hook = decode(predictor, inverted, clean, timesteps, lmask, tgt_cond, tgt_uncond, guidance,
                           num_images, eta, generator)
    run.clean, run.inverted, run.timesteps, run.latent_mask, run.hook = clean, inverted, timesteps, lmask, hook
    if output_type == "latent":
        return latents
    results = []
    for i, arr in enumerate(decode_latents(editor, latents)):
        res = Image.fromarray(arr, "RGB")
        if res.size != source.size:
            res = res.resize(source.size, Image.Resampling.LANCZOS)
        if paste_back_pixels:
            res = paste_back(res, source, mask_arr)
        results.append(_finish(res, meta, i))
    return results


def _warning_category() -> type[Warning]:
    from .editor import DiffDiffWarning

    return DiffDiffWarning


def _finish(img: Image.Image, meta: dict[str, Any], index: int) -> Image.Image:
    img.info["diffdiff"] = dict(meta, index=index)
    return img
