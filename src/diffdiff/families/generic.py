"""Any other diffusers img2img pipeline whose per-step callback exposes standard ``latents``.

Accepted when the pipeline takes ``image``, ``strength`` and ``callback_on_step_end``, lists
``latents`` among its callback tensors, and has a scheduler with ``add_noise`` (or, for flow
matching, ``scale_noise``). The work size is passed as ``height``/``width`` where accepted.
"""

from __future__ import annotations

from typing import Any

from ..pipeinfo import call_parameter_names
from .base import Adapter


class GenericAdapter(Adapter):
    name = "generic"
    pass_size = True

    def __init__(self, pipe: Any, **parts: Any) -> None:
        super().__init__(pipe, **parts)
        if not hasattr(pipe.scheduler, "add_noise"):
            self.noise_method = "scale_noise"  # type: ignore[misc]  # a flow-matching scheduler

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        params = call_parameter_names(pipe)
        scheduler = getattr(pipe, "scheduler", None)
        return (
            {"image", "strength", "callback_on_step_end"} <= params
            and "latents" in getattr(pipe, "_callback_tensor_inputs", [])
            and (hasattr(scheduler, "add_noise") or hasattr(scheduler, "scale_noise"))
            and hasattr(pipe, "vae")
        )
