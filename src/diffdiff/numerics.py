"""Guards against silent numerical failure (the classic: an fp16 VAE overflowing to NaN/inf).

A NaN image clamps to black when saved, so users get a black picture and no hint why. We wrap the
VAE's ``decode`` for the duration of a run: a non-finite result from a half-precision VAE is
decoded again in float32 (as SDXL's ``force_upcast`` does); if it is still non-finite the run
fails with a clear message instead of saving garbage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from .errors import DiffDiffError

NON_FINITE_MESSAGE = (
    "the model produced NaN/inf values (numerical overflow); nothing was saved. "
    "Try torch_dtype=float32 (CLI: --dtype fp32), another seed, or fewer steps"
)


def _tensor_of(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def is_finite(output: Any) -> bool:
    t = _tensor_of(output)
    return t is None or bool(torch.isfinite(t).all())


@contextmanager
def finite_vae_decode(vae: Any) -> Iterator[dict[str, int]]:
    """Within the block, ``vae.decode`` retries in float32 when a low-precision decode is not finite.

    Yields a dict counting ``retries`` (for tests and logs).
    """
    stats = {"retries": 0}
    if vae is None or not hasattr(vae, "decode"):
        yield stats
        return
    original = vae.decode

    def decode(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = original(z, *args, **kwargs)
        if is_finite(out):
            return out
        low_precision = vae.dtype in (torch.float16, torch.bfloat16)
        if not low_precision:
            raise DiffDiffError(NON_FINITE_MESSAGE)
        stats["retries"] += 1
        dtype = vae.dtype
        vae.to(torch.float32)
        try:
            out32 = original(z.to(torch.float32), *args, **kwargs)
        finally:
            vae.to(dtype)
        if not is_finite(out32):
            raise DiffDiffError(NON_FINITE_MESSAGE)
        t = _tensor_of(out32)
        assert t is not None
        # Decoded pixels lie in about [-1, 1]: safe to hand back in the pipeline's dtype.
        t = t.to(dtype)
        if isinstance(out32, torch.Tensor):
            return t
        if hasattr(out32, "sample"):
            out32.sample = t
            return out32
        return (t, *out32[1:])

    vae.decode = decode
    try:
        yield stats
    finally:
        try:
            del vae.decode  # back to the class method
        except AttributeError:
            vae.decode = original


def to_uint8_images(images: Any) -> np.ndarray:
    """Pipeline ``output_type="np"`` floats in [0, 1] as uint8 (B, H, W, 3), refusing NaN/inf."""
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        return arr
    if not np.all(np.isfinite(arr)):
        raise DiffDiffError(NON_FINITE_MESSAGE)
    return (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
