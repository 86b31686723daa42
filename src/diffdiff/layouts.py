"""Latent layouts and VAE latent normalisation, each described once for every model family.

The change map lives on one grid, ``(B, C, h, w)``. Pipelines keep their latents in one of three
layouts, told apart from the pipeline's components, never from its class name:

* ``grid``: plain 4-D ``(B, C, h, w)`` (UNets, SD3, PixArt, Sana, Lumina2, CogView4, HunyuanDiT...).
* ``packed``: 2x2 patches packed into a token sequence ``(B, h/2 * w/2, 4C)`` (Flux, Chroma,
  Flux Kontext, Qwen-Image). Recognised by a denoiser whose ``in_channels`` is four times the
  VAE's latent channels (SD3 and PixArt patchify inside: their ``in_channels`` equals the VAE's).
* the VAE's *frame axis*: video-style autoencoders (Qwen-Image's, Wan's) take and give 5-D
  ``(B, C, T, h, w)`` tensors; images are one frame. Recognised from the VAE's config
  (``temperal_downsample`` / ``z_dim``).

:class:`LatentCodec` encodes an image exactly as diffusers' img2img pipelines do (their
``image_processor``, ``retrieve_latents`` sampling with the user's generator, then the
normalisation ``(z - shift) * scaling`` or ``(z - latents_mean) * (scaling / latents_std)``; VQ
autoencoders' latents unscaled, as Kandinsky's pipelines use them), so our own noising starts from
the same latents as the pipeline's img2img sibling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from PIL import Image

from .errors import UnsupportedModelError

#: Component names under which diffusers pipelines keep their autoencoder.
VAE_NAMES = ("vae", "movq")
#: Component names under which diffusers pipelines keep their denoiser.
DENOISER_NAMES = ("transformer", "unet", "decoder", "prior")


def pack_2x2(grid: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, h/2 * w/2, 4C)``: diffusers' 2x2 token packing (Flux, Qwen-Image)."""
    b, c, h, w = grid.shape
    x = grid.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_2x2(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_2x2` for a latent grid of ``h`` x ``w``."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


@dataclass(frozen=True)
class LatentLayout:
    """How a pipeline holds its latents, and how they map to the ``(B, C, h, w)`` grid."""

    name: str  # "grid" or "packed"
    #: the latent grid must be a multiple of this (2 for 2x2 packing)
    grid_multiple: int = 1

    def to_grid(self, latents: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if self.name == "packed" and latents.ndim == 3:
            return unpack_2x2(latents, h, w)
        if latents.ndim == 5:  # (B, C, 1, h, w) from a frame-axis pipeline
            return latents[:, :, 0]
        return latents

    def from_grid(self, grid: torch.Tensor) -> torch.Tensor:
        return pack_2x2(grid) if self.name == "packed" else grid


GRID = LatentLayout("grid")
PACKED = LatentLayout("packed", grid_multiple=2)


def component(pipe: Any, names: tuple[str, ...]) -> tuple[Optional[str], Any]:
    """The first of ``names`` that ``pipe`` holds as a non-None component: (name, module)."""
    for name in names:
        module = getattr(pipe, name, None)
        if module is not None:
            return name, module
    return None, None


def _cfg(module: Any, key: str, default: Any = None) -> Any:
    config = getattr(module, "config", None)
    if config is None:
        return default
    value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
    return default if value is None else value


def latent_channels(vae: Any) -> int:
    return int(_cfg(vae, "latent_channels", None) or _cfg(vae, "z_dim", None) or _cfg(vae, "embed_dim", 4))


def has_frame_axis(vae: Any) -> bool:
    """A video-style autoencoder that takes 5-D (B, C, T, H, W) input (Qwen-Image's, Wan's)."""
    return _cfg(vae, "temperal_downsample", None) is not None or (
        _cfg(vae, "z_dim", None) is not None and _cfg(vae, "latent_channels", None) is None
    )


def detect_layout(pipe: Any) -> LatentLayout:
    """``packed`` when the denoiser reads 4x the VAE's channels as tokens (no patch embedding of its own)."""
    _, vae = component(pipe, VAE_NAMES)
    _, denoiser = component(pipe, DENOISER_NAMES)
    if vae is None or denoiser is None:
        return GRID
    in_ch = _cfg(denoiser, "in_channels", None)
    if in_ch is not None and int(in_ch) == 4 * latent_channels(vae):
        return PACKED
    return GRID


def vae_scale(pipe: Any) -> int:
    """Pixels per latent cell (8 for KL autoencoders, 32 for Sana's DC-AE)."""
    scale = getattr(pipe, "vae_scale_factor", None)
    if scale is None:
        scale = getattr(pipe, "movq_scale_factor", None)
    if scale is None:
        _, vae = component(pipe, VAE_NAMES)
        blocks = _cfg(vae, "block_out_channels", None)
        scale = 2 ** (len(blocks) - 1) if blocks else 8
    return int(scale)


@dataclass
class LatentCodec:
    """Encode an image into a pipeline's normalised latent grid, as its img2img sibling does."""

    pipe: Any
    vae: Any
    layout: LatentLayout
    frames: bool
    scale: int

    @classmethod
    def of(cls, pipe: Any) -> LatentCodec:
        name, vae = component(pipe, VAE_NAMES)
        if vae is None or not hasattr(vae, "encode"):
            raise UnsupportedModelError(f"{type(pipe).__name__} has no autoencoder with encode() (looked for: "
                                        + ", ".join(VAE_NAMES) + ")")
        return cls(pipe=pipe, vae=vae, layout=detect_layout(pipe), frames=has_frame_axis(vae), scale=vae_scale(pipe))

    def pixel_multiple(self) -> int:
        """Work sizes are multiples of this: the VAE's scale times what the denoiser needs of its grid
        (2 for 2x2 packing, the patch size of a DiT that patchifies itself, 2^(levels-1) for a UNet)."""
        return self.scale * max(self.layout.grid_multiple, self.grid_multiple())

    def grid_multiple(self) -> int:
        _, denoiser = component(self.pipe, DENOISER_NAMES)
        if self.layout.name == "packed" or denoiser is None:
            return self.layout.grid_multiple
        patch = _cfg(denoiser, "patch_size", None)
        if patch is not None:
            return int(patch[-1] if isinstance(patch, (tuple, list)) else patch)
        blocks = _cfg(denoiser, "block_out_channels", None)
        return 2 ** (len(blocks) - 1) if blocks else 1

    def latent_hw(self, width: int, height: int) -> tuple[int, int]:
        return height // self.scale, width // self.scale

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The image as a [-1, 1] tensor, through the pipeline's own image processor where it has one."""
        w, h = image.size
        processor = getattr(self.pipe, "image_processor", None)
        if processor is None or not hasattr(processor, "preprocess"):
            from diffusers.image_processor import VaeImageProcessor

            processor = VaeImageProcessor(vae_scale_factor=self.scale)
        return processor.preprocess(image, height=h, width=w)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        mean = _cfg(self.vae, "latents_mean", None)
        std = _cfg(self.vae, "latents_std", None)
        scaling = float(_cfg(self.vae, "scaling_factor", 1.0))
        if mean is not None and std is not None:
            shape = (1, -1) + (1,) * (z.ndim - 2)
            m = torch.tensor(mean).view(shape).to(z.device, z.dtype)
            inv = (scaling / torch.tensor(std)).view(shape).to(z.device, z.dtype)
            return (z - m) * inv
        shift = _cfg(self.vae, "shift_factor", None)
        if shift is not None:
            return (z - float(shift)) * scaling
        return scaling * z

    def encode(self, image: Image.Image, generator: torch.Generator, device: Any, dtype: torch.dtype) -> torch.Tensor:
        """Normalised latents ``(1, C, h, w)``; draws the posterior sample from ``generator`` first."""
        pixels = self.preprocess(image).to(device=device, dtype=dtype)
        if self.frames:
            pixels = pixels.unsqueeze(2)
        out = self.vae.encode(pixels)
        if hasattr(out, "latents"):
            # A VQ autoencoder (MoVQ of Kandinsky 2.2 / 3): pipelines use its latents unscaled, and
            # in contiguous memory (Kandinsky 3's img2img repeats them): the same float sums follow.
            z = out.latents.contiguous()
        else:
            if hasattr(out, "latent_dist"):
                z = out.latent_dist.sample(generator)
            elif hasattr(out, "latent"):  # Sana's DC-AE
                z = out.latent
            else:
                z = out[0]
            z = self.normalise(z)
        return z[:, :, 0] if z.ndim == 5 else z
