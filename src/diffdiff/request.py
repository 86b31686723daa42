"""One edit request: every parameter of an edit, validated once, carried through every layer.

The CLI, the web API, the batch runner and :meth:`diffdiff.Editor.edit` build an
:class:`EditRequest`; the editor, the crop flow, the tools and the model families take it whole
(k-diffusion's samplers share one head; our layers share one request). It checks itself on
construction (one clear line naming the first bad field) and produces its own metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import numpy as np

from .addon_inputs import check_control_from, check_scales
from .changemap import POLARITIES, Polarity
from .errors import DiffDiffError

OutputType = Literal["pil", "latent"]
CropResolution = Union[None, str, int]

#: Pipeline-call arguments diffdiff sets itself (from its own parameters, or as the machinery of the
#: edit: the schedule, the noise, the step callback, the output): ``pipeline_kwargs`` may not name them.
OWNED_PIPELINE_ARGUMENTS = frozenset({
    "prompt", "negative_prompt", "image", "mask_image", "latents", "strength", "num_inference_steps", "timesteps",
    "sigmas", "guidance_scale", "generator", "num_images_per_prompt", "output_type", "return_dict", "height",
    "width", "denoising_start", "denoising_end", "callback_on_step_end", "callback_on_step_end_tensor_inputs",
    "callback", "callback_steps", "control_image", "controlnet_conditioning_scale", "control_mode",
    "ip_adapter_image", "image_embeds", "negative_image_embeds",
})


def is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and bool(np.isfinite(x))


def check_prompt(value: Any, name: str = "prompt", allow_list: bool = False) -> None:
    """A prompt is a string (or, where batches allow it, a list of strings)."""
    if isinstance(value, str):
        return
    if allow_list and isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        return
    raise DiffDiffError(f"{name} must be a string")


def check_seed(seed: Any) -> None:
    if seed is not None and (not is_int(seed) or not 0 <= seed < 2**63):
        raise DiffDiffError(f"seed must be a non-negative integer, got {seed!r}")


def check_steps(steps: Any) -> None:
    if not is_int(steps) or steps < 1:
        raise DiffDiffError(f"steps must be a positive integer, got {steps!r}")


def check_guidance(guidance: Any, name: str = "guidance") -> None:
    if guidance is not None and (not is_number(guidance) or guidance < 0):
        raise DiffDiffError(f"{name} must be a number >= 0, got {guidance!r}")


def check_output_type(output_type: Any) -> None:
    if output_type not in ("pil", "latent"):
        raise DiffDiffError(f"output_type must be 'pil' or 'latent', got {output_type!r}")


def check_count(n: Any, name: str = "num_images") -> None:
    if not is_int(n) or n < 1:
        raise DiffDiffError(f"{name} must be a positive integer, got {n!r}")


@dataclass(frozen=True)
class EditRequest:
    """The parameters of one graded edit (everything but the image and the change map).

    ``polarity``: how the map is read (``"change"``: white = change; ``"keep"``: white = keep).
    ``crop``: denoise only the box around the changed region (``crop_padding`` px of context,
    ``crop_resolution`` None / ``"native"`` / pixels). ``skip_frozen``: run the denoiser only where
    pixels are free. ``pipeline_kwargs``: extra arguments for the diffusers call (inputs a pipeline
    needs that diffdiff does not model). ``metadata``: extra entries for the PNG metadata.
    Add-on inputs (:mod:`diffdiff.addon_inputs`, for what the editor has loaded): ``control_image``
    (one, or one per ControlNet; file paths or PIL images of the input's aspect ratio) or
    ``control_from="canny"``, ``controlnet_conditioning_scale`` (one, or one per ControlNet),
    ``control_mode`` (ControlNet Union's control type) and ``ip_adapter_image``.
    ``reference_images``: extra reference images for instruction-edit pipelines that take several
    (Qwen-Image-Edit-Plus); the edited input is always the first reference.
    """

    prompt: Union[str, list[str]]
    negative_prompt: Optional[str] = None
    num_inference_steps: int = 50
    guidance_scale: Optional[float] = None
    strength: float = 1.0
    seed: Optional[int] = None
    num_images: int = 1
    polarity: Polarity = "change"
    output_type: OutputType = "pil"
    paste_back: bool = True
    crop: bool = False
    crop_padding: int = 32
    crop_resolution: CropResolution = None
    skip_frozen: bool = False
    control_image: Any = None
    control_from: Optional[str] = None
    controlnet_conditioning_scale: Union[float, list[float], None] = None
    control_mode: Union[int, str, None] = None
    ip_adapter_image: Any = None
    reference_images: tuple[Any, ...] = ()
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_prompt(self.prompt, allow_list=True)
        if self.negative_prompt is not None:
            check_prompt(self.negative_prompt, "negative prompt")
        check_steps(self.num_inference_steps)
        check_guidance(self.guidance_scale)
        s = self.strength
        if not is_number(s) or not 0 <= s <= 1:
            raise DiffDiffError(f"strength must be between 0 and 1, got {s!r}")
        check_count(self.num_images)
        if self.polarity not in POLARITIES:
            raise DiffDiffError(f"polarity must be 'change' or 'keep', got {self.polarity!r}")
        check_seed(self.seed)
        check_output_type(self.output_type)
        if not is_int(self.crop_padding) or self.crop_padding < 0:
            raise DiffDiffError(f"crop_padding must be an integer >= 0, got {self.crop_padding!r}")
        if self.crop and self.output_type != "pil":
            raise DiffDiffError("crop=True returns images; use output_type='pil'")
        r = self.crop_resolution
        if r is not None and r != "native" and not (is_int(r) and r > 0):
            raise DiffDiffError(f"crop_resolution must be None, 'native' or a positive number of pixels, got {r!r}")
        check_control_from(self.control_from)
        check_scales(self.controlnet_conditioning_scale)
        check_pipeline_kwargs(self.pipeline_kwargs)
        object.__setattr__(self, "reference_images", check_references(self.reference_images))
        if self.metadata is None or not isinstance(self.metadata, dict):
            object.__setattr__(self, "metadata", dict(self.metadata or {}))

    # derived requests --------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> EditRequest:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_seed(self) -> EditRequest:
        """This request with a concrete seed (a random one drawn when none was given)."""
        return self if self.seed is not None else self.replace(seed=secrets.randbits(31))

    def with_metadata(self, extra: Optional[dict[str, Any]]) -> EditRequest:
        """This request with ``extra`` merged over its metadata entries."""
        if not extra:
            return self
        return self.replace(metadata={**self.metadata, **extra})

    # metadata -----------------------------------------------------------------------------------------
    def metadata_fields(self, default_guidance: Optional[float]) -> dict[str, Any]:
        """The request's part of an output's metadata (the seed must be resolved)."""
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": None if self.seed is None else int(self.seed),
            "steps": int(self.num_inference_steps),
            "guidance": self.guidance_scale if self.guidance_scale is not None else default_guidance,
            "strength": float(self.strength),
            "polarity": self.polarity,
            "num_images": int(self.num_images),
            "paste_back": bool(self.paste_back),
            "skip_frozen": bool(self.skip_frozen),
        }
        if self.reference_images:
            out["reference_images"] = [str(r) if isinstance(r, (str, os.PathLike)) else _describe(r)
                                       for r in self.reference_images]
        if self.pipeline_kwargs:
            out["pipeline_kwargs"] = {k: _describe(v) for k, v in self.pipeline_kwargs.items()}
        return out


def check_references(refs: Any) -> tuple[Any, ...]:
    """``reference_images``: None, one image, or a list of images (PIL images or file paths)."""
    if refs is None:
        return ()
    items = tuple(refs) if isinstance(refs, (list, tuple)) else (refs,)
    for r in items:
        if not (isinstance(r, (str, os.PathLike)) or hasattr(r, "convert")):
            raise DiffDiffError(f"reference_images must be images or image file paths, got {type(r).__name__}")
    return items


def _describe(value: Any) -> Any:
    """A JSON-friendly record of a pipeline argument: JSON values as they are (lists and string-keyed
    dicts element by element), tensors and images by their shape."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _describe(v) for k, v in value.items()}
    shape = getattr(value, "shape", None) or getattr(value, "size", None)
    return f"<{type(value).__name__} {tuple(shape) if shape is not None else ''}>".replace(" >", ">")


def check_pipeline_kwargs(kw: Any, name: str = "pipeline_kwargs") -> None:
    """Extra pipeline-call arguments: a dict of names to values, none of them one diffdiff sets itself."""
    if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
        raise DiffDiffError(f"{name} must be a dict of argument names to values")
    owned = sorted(OWNED_PIPELINE_ARGUMENTS.intersection(kw))
    if owned:
        raise DiffDiffError(f"{name}: {', '.join(repr(k) for k in owned)} {'is' if len(owned) == 1 else 'are'} set by "
                            "diffdiff itself; use its own parameter (prompt, steps, guidance, strength, seed, ...)")


def pipeline_kwargs_from_json(text: Optional[str], name: str = "pipeline_kwargs") -> dict[str, Any]:
    """``pipeline_kwargs`` given as JSON text (the CLI's ``--pipeline-kwargs``, the web API's field).

    None or empty: none. Otherwise a JSON object (strict JSON: no NaN or Infinity) checked by
    :func:`check_pipeline_kwargs`; anything else is one clear :class:`DiffDiffError` line naming ``name``.
    """
    if text is None or not text.strip():
        return {}

    def no_constant(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or "too deeply nested"
        raise DiffDiffError(f"{name} is not valid JSON ({reason}); give an object like "
                            "'{\"max_sequence_length\": 128}'") from None
    if not isinstance(value, dict):
        raise DiffDiffError(f"{name} must be a JSON object of argument names to values, got {_json_type(value)}")
    check_pipeline_kwargs(value, name)
    return value


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def validate_edit_params(
    prompt: Any,
    num_inference_steps: Any,
    guidance_scale: Any,
    strength: Any,
    num_images: Any,
    polarity: Any,
    seed: Any,
    output_type: Any = "pil",
) -> None:
    """Raise :class:`DiffDiffError` naming the first bad parameter (an :class:`EditRequest` built and dropped)."""
    EditRequest(prompt=prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                strength=strength, num_images=num_images, polarity=polarity, seed=seed, output_type=output_type)
