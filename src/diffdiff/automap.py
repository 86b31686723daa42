"""Automatic change maps from text: where does an edit from one prompt to another belong?

Noise the image to one timestep with several noise draws, predict the noise under a *source*
prompt (what the image shows) and a *target* prompt (the edit), and average
|eps_target - eps_source| over draws and channels (DiffEdit, Couairon et al. 2022). DiffEdit
thresholds this into a binary mask; :func:`auto_map` returns it *continuous* (optionally smoothed
with :func:`diffdiff.maps.gaussian_blur`, scaled to [0, 1] by :func:`normalise_map`) so
Differential Diffusion can fade the edit out where the model is unsure. The defaults (noise level,
smoothing, scaling) live in :mod:`diffdiff.mapsettings`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .denoise import Conditioning, NoisePredictor, encode_image, require_family, work_image
from .errors import DiffDiffError
from .io import ImageLike, image_sha256, load_image
from .maps import gaussian_blur
from .mapsettings import MAP_CLAMP_RATIO, MAP_ENCODE_STRENGTH, MAP_NUM_MAPS, MAP_PEAK_RATIO, MAP_SMOOTH
from .protocol import EditorLike
from .request import check_prompt, check_seed, is_int, is_number
from .version import __version__

#: Noise draws evaluated per denoiser call in :func:`auto_map` (bounds memory on large images).
_DRAWS_PER_BATCH = 4
#: The peak is the n-th largest cell, so that one or two hot cells cannot darken the rest.
_PEAK_RANK = 3


def validate_map_params(
    source_prompt: Any, target_prompt: Any, num_maps: Any, encode_strength: Any, seed: Any,
    clamp_ratio: Any = MAP_CLAMP_RATIO, smooth: Any = MAP_SMOOTH, peak_ratio: Any = MAP_PEAK_RATIO,
) -> None:
    """Raise :class:`DiffDiffError` naming the first bad :func:`auto_map` parameter."""
    check_prompt(source_prompt, "source prompt")
    check_prompt(target_prompt, "target prompt")
    if not is_int(num_maps) or num_maps < 1:
        raise DiffDiffError(f"num_maps must be a positive integer, got {num_maps!r}")
    if not is_number(encode_strength) or not 0 < encode_strength <= 1:
        raise DiffDiffError(f"encode strength must be in (0, 1], got {encode_strength!r}")
    if not is_number(clamp_ratio) or clamp_ratio <= 0:
        raise DiffDiffError(f"clamp_ratio must be a positive number, got {clamp_ratio!r}")
    if not is_number(smooth) or smooth < 0:
        raise DiffDiffError(f"smooth must be a number >= 0, got {smooth!r}")
    if not is_number(peak_ratio) or not 0 <= peak_ratio <= 1:
        raise DiffDiffError(f"peak_ratio must be in [0, 1], got {peak_ratio!r}")
    check_seed(seed)


def normalise_map(raw: torch.Tensor, clamp_ratio: float = MAP_CLAMP_RATIO, peak_ratio: float = MAP_PEAK_RATIO,
                  winsorise: float = 0.99) -> torch.Tensor:
    """[0, 1] scaling: white at ``peak_ratio`` x the map's peak, but never below ``clamp_ratio`` x its mean.

    The peak term is DiffEdit's own rule (Couairon et al.: rescale the difference to [0, 1], then
    ``map > 0.5``): it marks the cells above ``peak_ratio / 2`` of the peak whatever the object's
    size. The mean term is diffusers' ``mask_thresholding_ratio`` rule (``peak_ratio=0``,
    ``clamp_ratio=3``: diffusers' DiffEdit mask, on a winsorised mean): it stops a map with no clear
    peak (prompts that barely differ) from being stretched to white. ``map > 0.5`` is then the
    cells above both cuts. A mean-only rule misses large objects: the object
    raises the mean it is measured against (benchmarks/QUALITY.md, "Automatic map").

    Robust to outliers: the peak is the third-largest cell and the mean is taken after clipping
    values above it (and above the ``winsorise`` quantile), so one or two hot cells, or a hot 1 %,
    can neither darken the rest nor move the mask. An all-zero difference (source prompt == target prompt) stays all zero.
    """
    flat = raw.flatten().to(torch.float64)
    if flat.numel() > 1:
        peak = torch.topk(flat, min(_PEAK_RANK, flat.numel())).values[-1]
        ref = flat.clamp(max=min(float(peak), float(torch.quantile(flat, winsorise, interpolation="lower")))).mean()
    else:
        ref = peak = flat.mean()
    scale = max(float(ref) * clamp_ratio, float(peak) * peak_ratio)
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
    settings: dict[str, Any]  # num_maps, encode_strength, clamp_ratio, smooth, peak_ratio

    @property
    def record(self) -> dict[str, Any]:
        """How the map was made, as metadata records it (:data:`RECORDED`): its settings and timestep."""
        return {**self.settings, "timestep": self.timestep}

    def to_image(self) -> Image.Image:
        return Image.fromarray(np.round(self.array * 255).astype(np.uint8), "L")


def compute_auto_map(
    editor: EditorLike,
    image: Image.Image,
    source_prompt: str,
    target_prompt: str,
    num_maps: int = MAP_NUM_MAPS,
    encode_strength: float = MAP_ENCODE_STRENGTH,
    seed: Optional[int] = None,
    clamp_ratio: float = MAP_CLAMP_RATIO,
    smooth: float = MAP_SMOOTH,
    peak_ratio: float = MAP_PEAK_RATIO,
) -> AutoMap:
    """The continuous change map for editing ``image`` from ``source_prompt`` to ``target_prompt``."""
    validate_map_params(source_prompt, target_prompt, num_maps, encode_strength, seed, clamp_ratio, smooth,
                        peak_ratio)
    require_family(editor)
    if seed is None:
        seed = secrets.randbits(31)
    latents = encode_image(editor, image)
    predictor = NoisePredictor(editor.pipe, editor.family, *work_image(editor, image).size)
    t_train = len(predictor.alphas)
    # The noise level of an img2img run at this strength (DiffEdit's mask_encode_strength).
    timestep = min(t_train - 1, max(0, int(round(encode_strength * t_train)) - 1))
    src, _ = predictor.encode(source_prompt)
    tgt, _ = predictor.encode(target_prompt)
    generator = torch.Generator().manual_seed(int(seed))
    raw = estimate_difference(predictor, latents, src, tgt, num_maps, timestep, generator)
    # Smooth first (if asked: per-draw noise is speckled), then normalise on the smoothed values.
    smoothed = torch.from_numpy(gaussian_blur(raw[0, 0].numpy(), smooth)).to(torch.float32)[None, None]
    latent_map = normalise_map(smoothed, clamp_ratio, peak_ratio)
    arr = upsample_map(latent_map, image.size)
    settings = {"num_maps": int(num_maps), "encode_strength": float(encode_strength),
                "clamp_ratio": float(clamp_ratio), "smooth": float(smooth), "peak_ratio": float(peak_ratio)}
    return AutoMap(latent=latent_map, array=arr, seed=int(seed), timestep=timestep, settings=settings)


def upsample_map(latent_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a (1, 1, h, w) map to an image-size (H, W) array."""
    w, h = size
    out = F.interpolate(latent_map.to(torch.float32), size=(h, w), mode="bilinear", align_corners=False)
    return out[0, 0].clamp(0, 1).numpy().astype(np.float32)


#: What an automatic map's metadata records of how it was made (an edit with it records these too).
RECORDED = ("num_maps", "encode_strength", "clamp_ratio", "smooth", "peak_ratio", "timestep")


def recorded_settings(map_image: Image.Image) -> dict[str, Any]:
    """How the :func:`auto_map` image ``map_image`` was made (its metadata's ``RECORDED`` entries)."""
    meta = map_image.info.get("diffdiff") or {}
    return {k: meta[k] for k in RECORDED if k in meta}


def auto_map(editor: EditorLike, image: ImageLike, source_prompt: str, target_prompt: str, **settings: Any) -> Image.Image:
    """The continuous change map as a PIL "L" image of the image's size (white = change).

    ``settings`` are :func:`compute_auto_map`'s (``num_maps``, ``encode_strength``, ``seed``,
    ``clamp_ratio``, ``smooth``, ``peak_ratio``). ``img.info["diffdiff"]`` records how it was made.
    """
    img = load_image(image, "image")
    m = compute_auto_map(editor, img, source_prompt, target_prompt, **settings)
    out = m.to_image()
    out.info["diffdiff"] = {
        "kind": "auto_map",
        "model": editor.model_name,
        "family": editor.family,
        "source_prompt": source_prompt,
        "target_prompt": target_prompt,
        **m.record,
        "seed": m.seed,
        "image_sha256": image_sha256(img),
        "diffdiff_version": __version__,
    }
    return out
