"""Workarounds for version skew between the libraries diffdiff drives (one home for each).

* transformers >= 5.6 flattened ``CLIPTextModel``: its ``embeddings``, ``encoder`` and
  ``final_layer_norm`` now sit on the model itself and ``text_model`` is gone, while diffusers'
  SD 1.x/2.x pipelines still read ``text_encoder.text_model.final_layer_norm`` whenever
  ``clip_skip`` is set (diffusers issue #14124: ``'CLIPTextModel' object has no attribute
  'text_model'``). :func:`mend_pipeline` gives such an encoder a ``text_model`` that is the
  encoder itself, as a plain attribute (not a registered submodule, so its weights, state dict
  and device moves are unchanged), which is exactly the module diffusers means.
"""

from __future__ import annotations

from typing import Any


def _flattened_clip(module: Any) -> bool:
    return (type(module).__name__ == "CLIPTextModel" and hasattr(module, "final_layer_norm")
            and "text_model" not in getattr(module, "_modules", {}) and "text_model" not in vars(module))


def mend_pipeline(pipe: Any) -> Any:
    """Apply the workarounds to ``pipe``'s components in place; returns ``pipe``."""
    for value in list(getattr(pipe, "components", {}).values()):
        if _flattened_clip(value):
            object.__setattr__(value, "text_model", value)  # bypasses nn.Module's submodule registration
    return pipe
