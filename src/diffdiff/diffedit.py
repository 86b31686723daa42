"""DiffEdit (Couairon et al. 2022) on diffdiff's engine.

A binary mask (given, or the automatic map of :mod:`diffdiff.automap` above ``threshold``), a
deterministic DDIM inversion of the image to ``encode_ratio`` under the source prompt, then DDIM
decoding under the target prompt in which, outside the mask, the latents are replaced after every
step by the inverted ones. That replacement is Differential Diffusion's blend with another
reference trajectory, so it runs through :class:`diffdiff.hook.DifferentialStep` (``trajectory=``,
its public :meth:`~diffdiff.hook.DifferentialStep.step`) and :func:`diffdiff.core.blend`: a 0/1 map
through the blend means "always replaced" / "always free".
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from .automap import compute_auto_map
from .changemap import MapLike, paste_back, prepare_change_map, to_latent_map
from .core import blend
from .denoise import Conditioning, NoisePredictor, ddim_move, decode_latents, encode_image, require_family, work_image
from .errors import DiffDiffError, DiffDiffWarning
from .hook import DifferentialStep, NoiseCapture, Reference
from .io import ImageLike, image_sha256, load_image, open_image
from .mapsettings import MAP_NUM_MAPS
from .protocol import EditorLike
from .request import check_output_type, check_prompt, check_seed, is_int, is_number
from .version import __version__


def validate_diffedit_params(
    source_prompt: Any, target_prompt: Any, threshold: Any, encode_ratio: Any, num_inference_steps: Any,
    guidance_scale: Any, num_images: Any, seed: Any, output_type: Any = "pil", eta: Any = 0.0,
    inversion_guidance: Any = 1.0, negative_prompt: Any = None,
) -> None:
    """Raise :class:`DiffDiffError` naming the first bad :func:`diffedit` parameter (no model needed)."""
    check_prompt(source_prompt, "source prompt")
    check_prompt(target_prompt, "target prompt")
    if negative_prompt is not None:
        check_prompt(negative_prompt, "negative prompt")
    if not is_number(threshold) or not 0 <= threshold < 1:
        raise DiffDiffError(f"threshold must be in [0, 1), got {threshold!r}")
    if not is_number(encode_ratio) or not 0 < encode_ratio <= 1:
        raise DiffDiffError(f"encode ratio must be in (0, 1], got {encode_ratio!r}")
    if not is_int(num_inference_steps) or num_inference_steps < 1:
        raise DiffDiffError(f"steps must be a positive integer, got {num_inference_steps!r}")
    if int(num_inference_steps * encode_ratio) < 1:
        raise DiffDiffError(
            f"{num_inference_steps} steps at encode ratio {encode_ratio} leave no step to run; raise either"
        )
    for name, g in (("guidance", guidance_scale), ("inversion guidance", inversion_guidance)):
        if g is not None and (not is_number(g) or g < 0):
            raise DiffDiffError(f"{name} must be a number >= 0, got {g!r}")
    if not is_int(num_images) or num_images < 1:
        raise DiffDiffError(f"num_images must be a positive integer, got {num_images!r}")
    if not is_number(eta) or not 0 <= eta <= 1:
        raise DiffDiffError(f"eta must be in [0, 1], got {eta!r}")
    check_output_type(output_type)
    check_seed(seed)


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
    schedule = torch.tensor(list(timesteps))
    mask = latent_mask.to(x.device, torch.float32)
    hook = DifferentialStep(
        change=mask,
        capture=NoiseCapture(predictor.ddim),
        reference=Reference(clean=clean, noise=torch.zeros_like(clean)),  # unused: the trajectory supplies it
        trajectory=lambda step, lat: inverted[step].to(lat.dtype).expand_as(lat),
    )
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
        x = hook.step(x, i, t, schedule)
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
    editor: EditorLike,
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
    num_maps: int = MAP_NUM_MAPS,
    inversion_guidance: float = 1.0,
    eta: float = 0.0,
    paste_back_pixels: bool = True,
    metadata: Optional[dict[str, Any]] = None,
) -> tuple[Any, DiffEditRun]:
    """DiffEdit ``image`` from ``source_prompt`` to ``target_prompt``: (list of PIL images, the run).

    ``mask``: white = edit (given), or ``None`` for the automatic map thresholded at ``threshold``.
    ``output_type="latent"`` returns the final latents (B, C, h, w).
    """
    validate_diffedit_params(source_prompt, target_prompt, threshold, encode_ratio, num_inference_steps,
                             guidance_scale, num_images, seed, output_type, eta, inversion_guidance, negative_prompt)
    require_family(editor)
    img = load_image(image, "image")
    source = img.convert("RGB")
    if seed is None:
        seed = secrets.randbits(31)
    auto_settings: Optional[dict[str, Any]] = None
    if mask is None:
        auto = compute_auto_map(editor, source, source_prompt, target_prompt, num_maps, seed=seed)
        mask_arr = (auto.array > threshold).astype(np.float32)
        auto_settings = auto.record
    else:
        mask_arr = prepare_mask(mask, source.size)
    guidance = float(guidance_scale if guidance_scale is not None else (editor.default_guidance() or 7.5))
    meta = {
        "kind": "diffedit",
        "model": editor.model_name,
        "family": editor.family,
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
        "auto_map": auto_settings,  # how the automatic mask was made (None: given)
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
    if output_type == "pil" and not mask_arr.any():
        warnings.warn("the DiffEdit mask is empty: nothing to edit, returning the input unchanged",
                      DiffDiffWarning, stacklevel=3)
        return [_finish(source.copy(), meta, i) for i in range(num_images)], run

    work = work_image(editor, source)
    predictor = NoisePredictor(editor.pipe, editor.family, *work.size)
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
        return latents, run
    results = []
    for i, arr in enumerate(decode_latents(editor, latents)):
        res = Image.fromarray(arr, "RGB")
        if res.size != source.size:
            res = res.resize(source.size, Image.Resampling.LANCZOS)
        if paste_back_pixels:
            res = paste_back(res, source, mask_arr)
        results.append(_finish(res, meta, i))
    return results, run


def _finish(img: Image.Image, meta: dict[str, Any], index: int) -> Image.Image:
    img.info["diffdiff"] = dict(meta, index=index)
    return img
