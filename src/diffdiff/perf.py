"""Memory settings for big images: tiled and sliced VAE switched on automatically above a size.

The denoiser works on latents (1/64 of the pixels), so past a couple of megapixels the VAE's
full-resolution activations dominate peak memory. Above :data:`AUTO_TILING_PIXELS` we switch on
diffusers' tiled VAE (overlapping tiles, blended) and sliced VAE (one image of a batch at a time);
below it we switch our own setting off again, because tiling changes pixels slightly and small
edits should be reproducible with or without diffdiff. A user's own ``vae.enable_tiling()`` is
never undone.

The other memory levers are already in place elsewhere: the editor runs under
``torch.inference_mode()``, diffusers uses PyTorch's SDPA attention by default (see
:func:`attention_backends`), and the image is VAE-encoded once per edit (the reference latents
are captured from the pipeline's own encode, :class:`diffdiff.hook.NoiseCapture`).
"""

from __future__ import annotations

from typing import Any, Optional

#: Work-size pixel count above which the VAE is tiled and sliced (about 1536 x 1536; SDXL's native
#: 1024 x 1024 and its usual aspect buckets stay untiled).
AUTO_TILING_PIXELS = 1536 * 1536

#: Smallest tile side in pixels. Real VAEs already use 512 (SD) or 1024 (SDXL) from their config;
#: tiny test VAEs say 64, which would mean thousands of tiles for a 4096 px image.
MIN_TILE = 512

# Attribute on the VAE remembering what we switched on (so we only ever undo our own settings).
_MARK = "_diffdiff_auto_memory"


def _pipes(target: Any) -> list[Any]:
    """The pipelines of an :class:`~diffdiff.Editor` (base and refiner), or a bare pipeline."""
    if hasattr(target, "adapter") and hasattr(target, "pipe"):
        return [p for p in (target.pipe, getattr(target, "refiner", None)) if p is not None]
    return [target]


def _set_tile(vae: Any, tile: int) -> None:
    # tile_latent_min_size must follow tile_sample_min_size (diffusers computes it once in __init__).
    levels = len(getattr(vae.config, "block_out_channels", (0, 0, 0, 0))) - 1
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = int(tile / (2**levels))


def configure_vae(vae: Any, width: int, height: int, threshold: Optional[int] = None) -> bool:
    """Tile/slice ``vae`` when ``width * height > threshold``; undo our own setting below it.

    Returns whether tiling is on afterwards. VAEs without tiling support (VQ, pixel-space models)
    are left alone.
    """
    if vae is None or not hasattr(vae, "use_tiling"):
        return False
    mark: dict[str, Any] | None = getattr(vae, _MARK, None)
    big = width * height > (AUTO_TILING_PIXELS if threshold is None else threshold)
    if big and mark is None and not vae.use_tiling:
        mark = {"tile": getattr(vae, "tile_sample_min_size", None), "slicing": False}
        vae.enable_tiling()
        tile = mark["tile"]
        if isinstance(tile, int) and tile < MIN_TILE:
            _set_tile(vae, MIN_TILE)
        if hasattr(vae, "use_slicing") and not vae.use_slicing:
            vae.enable_slicing()
            mark["slicing"] = True
        setattr(vae, _MARK, mark)
    elif not big and mark is not None:
        vae.disable_tiling()
        if isinstance(mark["tile"], int):
            _set_tile(vae, mark["tile"])
        if mark["slicing"]:
            vae.disable_slicing()
        delattr(vae, _MARK)
    return bool(vae.use_tiling)


def configure_memory(target: Any, width: int, height: int, threshold: Optional[int] = None) -> bool:
    """:func:`configure_vae` for every pipeline of an editor (or one pipeline) at a work size."""
    on = False
    for pipe in _pipes(target):
        on = configure_vae(getattr(pipe, "vae", None), width, height, threshold) or on
    return on


def attention_backends(pipe: Any) -> set[str]:
    """Class names of the attention processors of the pipeline's denoiser (``AttnProcessor2_0`` = SDPA)."""
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    procs = getattr(model, "attn_processors", None)
    if not procs:
        return set()
    return {type(p).__name__ for p in procs.values()}


def count_vae_encodes(pipe: Any) -> dict[str, int]:
    """Wrap ``pipe.vae.encode`` with a counter (for tests and benchmarks); returns the live counter.

    Call ``restore_vae_encode(pipe)`` to take the wrapper off again.
    """
    vae = pipe.vae
    counter = {"encode": 0}
    original = vae.encode

    def counted(*args: Any, **kwargs: Any) -> Any:
        counter["encode"] += 1
        return original(*args, **kwargs)

    vae.encode = counted  # instance attribute shadows the method
    vae._diffdiff_encode_counter = counter
    return counter


def restore_vae_encode(pipe: Any) -> None:
    vae = pipe.vae
    for name in ("encode", "_diffdiff_encode_counter"):
        vae.__dict__.pop(name, None)
