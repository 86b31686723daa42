"""Change maps from estimated depth: diffusers' Marigold depth pipeline, then :func:`diffdiff.maps.from_depth`.

Owns loading the depth model (a Marigold folder or hub id, cache first, one-line errors) and turning
its prediction into a depth image. Marigold predicts affine-invariant depth in [0, 1] with 0 at the
nearest point, so its image is drawn "white = far"; :func:`depth_map` passes that to
:func:`diffdiff.maps.from_depth`, which owns the near/far rule.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from .errors import DiffDiffError, ModelLoadError
from .loading import _cache_then_hub, dtype_kwargs, resolve_device_dtype
from .maps import from_depth


def load_depth_model(model: str | os.PathLike[str], device: Optional[str] = None, dtype: Any = None) -> Any:
    """A ``MarigoldDepthPipeline`` from a diffusers folder or hub id (the local cache first)."""
    import diffusers

    name = str(model)
    path = Path(name).expanduser()
    device, torch_dtype = resolve_device_dtype(device, dtype)
    kw = dtype_kwargs(torch_dtype)
    try:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelLoadError(f"depth model '{name}' is not a diffusers model folder (no model_index.json)")
            pipe = diffusers.MarigoldDepthPipeline.from_pretrained(str(path), **kw)
        elif path.exists() or name.startswith((".", "/", "~")):
            raise ModelLoadError(f"depth model '{name}' does not exist or is not a diffusers folder")
        else:
            pipe = _cache_then_hub(name, lambda **extra: diffusers.MarigoldDepthPipeline.from_pretrained(name, **kw, **extra))
    except ModelLoadError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ModelLoadError(f"could not load depth model '{name}': {text[0] if text else type(exc).__name__}") from exc
    if type(pipe).__name__ != "MarigoldDepthPipeline":
        raise ModelLoadError(f"depth model '{name}' is a {type(pipe).__name__}, not a Marigold depth pipeline")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def estimate_depth(pipe: Any, image: Image.Image, steps: Optional[int] = None, seed: int = 0,
                   ensemble_size: int = 1) -> np.ndarray:
    """Marigold's depth for ``image`` at its own size: float array (H, W) in [0, 1], 0 = nearest."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise DiffDiffError(f"depth steps must be a positive integer, got {steps!r}")
    if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or ensemble_size < 1:
        raise DiffDiffError(f"ensemble size must be a positive integer, got {ensemble_size!r}")
    with torch.inference_mode():
        out = pipe(image.convert("RGB"), num_inference_steps=steps, ensemble_size=ensemble_size,
                   generator=torch.Generator().manual_seed(int(seed)), output_type="np")
    depth = np.asarray(out.prediction, dtype=np.float64).reshape(out.prediction.shape[-3], out.prediction.shape[-2])
    return np.clip(depth, 0.0, 1.0)


def depth_image(depth: np.ndarray) -> Image.Image:
    """A depth array in [0, 1] as an 8-bit greyscale image (white = far)."""
    return Image.fromarray(np.round(np.clip(depth, 0, 1) * 255).astype(np.uint8), "L")


def depth_map(pipe: Any, image: Image.Image, near: float = 0.0, far: float = 1.0, normalize: bool = True,
              steps: Optional[int] = None, seed: int = 0) -> Image.Image:
    """A change map from Marigold's depth of ``image``: ``near`` at the nearest point, ``far`` at the farthest."""
    return from_depth(depth_image(estimate_depth(pipe, image, steps, seed)), near, far, white_is_near=False,
                      normalize=normalize)
